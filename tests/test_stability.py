"""Instability analysis on cases whose answer is known: a copy at the run's own k is the
ticket level, copies on one data order have a barrier of 0, the path's ends are the
copies, and BatchNorm statistics at the inner points are re-estimated."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, find_tiny_tickets_here, in_process, run_binary
from lth_keras import artifacts, weights
from lth_keras.lottery import tickets as ticket_search
from lth_keras.lottery.directory import StabilityRun

pytestmark = pytest.mark.slow

# tiny_tickets: LeNet (no BatchNorm), levels 0..2, rewind epoch 1, seed 3.
LEVELS, POINTS = "0,2", 5


def _stability(tickets, output_dir, *extra, data_dir):
    return run_binary("lth_keras.stability", f"--tickets={tickets}", f"--data_dir={data_dir}",
                      f"--output_dir={output_dir}", "--deterministic", *extra)


def _stability_here(tickets, output_dir, *extra, data_dir):
    """_stability in this process (conftest.in_process); returns the StabilityRun."""
    return in_process("stability", f"--tickets={tickets}", f"--data_dir={data_dir}",
                      f"--output_dir={output_dir}", "--deterministic", *extra)


@pytest.fixture(scope="module")
def stability_run(tiny_tickets, tiny_fashion_dir, tmp_path_factory):
    return _stability_here(tiny_tickets.path, str(tmp_path_factory.mktemp("stability") / "run"),
                           f"--levels={LEVELS}", f"--points={POINTS}", data_dir=tiny_fashion_dir)


def test_every_level_and_rewind_point_has_a_path_of_the_points_asked(stability_run):
    paths = stability_run.paths()
    assert sorted(paths) == [(0, 0), (0, 1), (2, 0), (2, 1)]  # k: θ_0 and the run's θ_k
    for (level, k), path in paths.items():
        assert [p["alpha"] for p in path["points"]] == list(np.linspace(0, 1, POINTS))
        errors = [1 - p["test"]["accuracy"] for p in path["points"]]
        assert path["barrier"]["test"] == pytest.approx(max(errors) - (errors[0] + errors[-1]) / 2)
        assert path["bn"].startswith("none")  # LeNet has no BatchNorm
    for name in ("stability.csv", "stability.md", "stability.png"):
        assert os.path.getsize(stability_run.file(name)) > 0
    leftovers = [f for _, _, files in os.walk(stability_run.path) for f in files
                 if f.endswith(".tmp") or f == "checkpoint.npz"]
    assert not leftovers


def test_copies_start_from_the_ticket_mask_times_theta_k(tiny_tickets, stability_run):
    for k, theta in ((0, tiny_tickets.theta("0")), (1, tiny_tickets.theta("k"))):
        for copy in (0, 1):
            run = stability_run.copy(k, copy)
            for level in (0, 2):
                mask = tiny_tickets.mask(level)
                assert run.metrics(level)["start_digest"] == ticket_search.expected_start_digest(
                    theta, mask), (k, copy, level)
                tuned = run.weights(level)
                assert all(np.all(tuned[p][m == 0] == 0) for p, m in mask.items())


def test_copy_a_at_the_runs_own_rewind_point_is_the_ticket_level(tiny_tickets, stability_run):
    # Copy A trains on the ticket run's own data order with its recipe: from θ_k at a
    # pruned level, and from θ_0 at level 0, it is the ticket run's level bit for bit.
    for k, level in ((1, 2), (0, 0)):
        copy = stability_run.copy(k, 0)
        assert weights.digest(copy.weights(level)) == weights.digest(tiny_tickets.theta_i(level))
        assert copy.metrics(level)["test"] == tiny_tickets.metrics(level)["test"]
    # Copy B sees another data order: another network.
    other = stability_run.copy(1, 1)
    assert weights.digest(other.weights(2)) != weights.digest(tiny_tickets.theta_i(2))


def test_the_paths_ends_reproduce_the_copies_own_test_error(stability_run):
    for (level, k), path in stability_run.paths().items():
        for end, copy in ((path["points"][0], 0), (path["points"][-1], 1)):
            own = stability_run.copy(k, copy).metrics(level)["test"]
            assert end["test"]["accuracy"] == own["accuracy"], (level, k, copy)
            assert end["test"]["loss"] == pytest.approx(own["loss"], rel=1e-6)


def test_a_rerun_skips_every_finished_copy_and_path(tiny_tickets, tiny_fashion_dir,
                                                    stability_run, tmp_path):
    out = str(tmp_path / "rerun")
    shutil.copytree(stability_run.path, out)
    stamp = os.stat(os.path.join(out, "paths", "level_02_k_01.json")).st_mtime_ns
    # The default data orders named as they resolve (the ticket seed 3, and 4): the same run.
    proc = _stability(tiny_tickets.path, out, f"--levels={LEVELS}", f"--points={POINTS}",
                      "--data_orders=3,4", data_dir=tiny_fashion_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| level | weights left | k |" in proc.stdout  # the report's table
    assert "level 2, k=1, copy B: finished already, skipping" in proc.stderr
    assert "level 2, k=1: path evaluated already, skipping" in proc.stderr
    assert os.stat(os.path.join(out, "paths", "level_02_k_01.json")).st_mtime_ns == stamp


def test_copies_on_one_data_order_have_no_barrier_through_the_api(tiny_tickets,
                                                                  tiny_fashion_dir, tmp_path):
    # The same start, recipe and data order twice: one network, so every point of the
    # path is that network and the barrier is exactly 0. Run through the Python API.
    import lth_keras
    from lth_keras.analysis import stability

    run = lth_keras.stability(tickets=tiny_tickets, data_dir=tiny_fashion_dir,
                              output_dir=str(tmp_path / "same_order"), levels=[2],
                              rewind_points=[1], data_orders=[7, 7], points=3,
                              deterministic=True, verbose=False)
    assert len(stability.rows(run)) == 1
    assert os.path.getsize(run.file("stability.md")) > 0
    path = run.paths()[2, 1]
    assert path["barrier"] == {"val": 0.0, "test": 0.0}
    assert len({p["test"]["accuracy"] for p in path["points"]}) == 1
    assert weights.digest(run.copy(1, 0).weights(2)) == weights.digest(run.copy(1, 1).weights(2))
    assert run.config()["identity"]["data_orders"] == [7, 7]


def test_a_killed_stability_run_resumes_to_the_same_paths(tiny_tickets, tiny_fashion_dir,
                                                          stability_run, tmp_path):
    out = tmp_path / "killed"
    # Level 2 only: its copies at k = 0 (copy A, then B), then at k = 1, then the paths.
    args = [sys.executable, "-m", "lth_keras.stability", f"--tickets={tiny_tickets.path}",
            f"--data_dir={tiny_fashion_dir}", f"--output_dir={out}", "--deterministic",
            "--levels=2", f"--points={POINTS}", "--checkpoint_every=0"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    landmark = out / "k_00" / "copy_1" / "levels" / "level_02" / "metrics.json"
    deadline = time.monotonic() + 240
    while not landmark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert landmark.exists() and not (out / "paths" / "level_02_k_01.json").exists()
    resumed = _stability_here(tiny_tickets.path, str(out), "--levels=2", f"--points={POINTS}",
                              data_dir=tiny_fashion_dir)
    assert sorted(resumed.paths()) == [(2, 0), (2, 1)]
    for key, path in resumed.paths().items():
        assert path["points"] == stability_run.paths()[key]["points"], key


def test_a_rewind_point_the_run_does_not_hold_is_one_line_and_nothing_written(
        tiny_tickets, tiny_fashion_dir, tmp_path):
    out = tmp_path / "never"
    proc = _stability(tiny_tickets.path, out, "--rewind_points=0,3", data_dir=tiny_fashion_dir)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("stability: error: ")
    assert "after epochs 0,1 only, not 3: find tickets with --save_epochs=3" in lines[-1]
    assert not out.exists()


def test_save_epochs_keeps_level_0s_weights_and_leaves_the_run_alone(tiny_fashion_dir,
                                                                     tiny_tickets, tmp_path):
    run = find_tiny_tickets_here(tiny_fashion_dir, str(tmp_path / "saved"), "--rounds=0",
                                 "--save_epochs=2")
    assert run.saved_epochs() == [0, 1, 2]
    theta_2 = run.theta_at(2)
    assert weights.digest(theta_2) != weights.digest(run.theta("k"))
    # --save_epochs is bookkeeping: the same run, the same hash and the same level 0.
    assert run.config()["hparams_hash"] == tiny_tickets.config()["hparams_hash"]
    assert run.metrics(0)["test"] == tiny_tickets.metrics(0)["test"]


@pytest.fixture(scope="module")
def bn_tickets(tiny_fashion_dir, tmp_path_factory):
    """Tiny ResNet-8 tickets (BatchNorm), levels 0..1, rewind epoch 1."""
    return find_tiny_tickets_here(tiny_fashion_dir, str(tmp_path_factory.mktemp("bn") / "tickets"),
                                  "--model=resnet8", "--image_size=8", "--rounds=1",
                                  "--max_epochs=2")


def _scaled_statistics(run):
    """Both copies' stored BatchNorm statistics made nonsense (the weights as they are)."""
    for copy in (0, 1):
        path = run.copy(1, copy).level_file(1, "weights.npz")
        arrays = artifacts.read_arrays(path)
        for name in arrays:
            if name.endswith("moving_variance"):
                arrays[name] = arrays[name] * 1e4
            elif name.endswith("moving_mean"):
                arrays[name] = arrays[name] + 50.0
        artifacts.write_arrays(path, arrays)


def test_batchnorm_statistics_at_inner_points_are_re_estimated(bn_tickets, tiny_fashion_dir,
                                                               tmp_path):
    common = ["--levels=1", "--rewind_points=1", "--points=3"]
    clean = str(tmp_path / "clean")
    _stability_here(bn_tickets.path, clean, *common, data_dir=tiny_fashion_dir)
    middle = StabilityRun(clean).paths()[1, 1]["points"][1]
    assert StabilityRun(clean).paths()[1, 1]["bn"] == "reestimate"
    # The inner point's statistics come from the interpolated network on training
    # batches, not from the copies: nonsense stored in both copies leaves it unchanged.
    for bn in ("reestimate", "interpolate"):
        # The copies as trained, their statistics spoiled; --bn=interpolate is another
        # run, so it gets the copies but not the clean run's record.
        spoiled = str(tmp_path / f"spoiled_{bn}")
        shutil.copytree(clean, spoiled, ignore=None if bn == "reestimate" else
                        shutil.ignore_patterns("config.json", "paths"))
        _scaled_statistics(StabilityRun(spoiled))
        _stability_here(bn_tickets.path, spoiled, *common, f"--bn={bn}",
                        data_dir=tiny_fashion_dir)
        # The copies changed, so the path was evaluated again.
        path = StabilityRun(spoiled).paths()[1, 1]
        assert path["copies"] != StabilityRun(clean).paths()[1, 1]["copies"]
        if bn == "reestimate":
            assert path["points"][1] == middle
        else:
            assert path["points"][1]["test"] != middle["test"]


def test_analyze_reports_every_stability_run_it_finds(stability_run, tiny_tickets, tmp_path):
    import lth_keras

    root = tmp_path / "runs"
    root.mkdir()
    os.symlink(stability_run.path, root / "stability")
    os.symlink(tiny_tickets.path, root / "tickets")
    report = lth_keras.analyze([str(root)], mask_overlap=False, output_dir=str(tmp_path / "out"))
    rows = report.tables["stability_stability"]
    assert [(r["level"], r["k"]) for r in rows] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    assert rows[-1]["test_barrier"] == stability_run.paths()[2, 1]["barrier"]["test"]
    for ext in ("md", "csv", "png"):
        assert (tmp_path / "out" / f"stability_stability.{ext}").stat().st_size > 0
    assert "stability_stability" in report.figures


@pytest.mark.parametrize("flags, needle", [
    ([], "--tickets is required"),
    (["--tickets=/nonexistent"], "--tickets=/nonexistent: no such directory"),
    (["--data_orders=1,2,3"], "--data_orders takes the two copies' seeds"),
    (["--points=2"], "--points must be >= 3"),
    (["--bn_batches=0"], "--bn_batches must be >= 1"),
    (["--levels=9"], "--levels 9 not in"),
    (["--seed=4"], "--seed is the ticket run's"),
])
def test_bad_stability_settings_are_one_line_and_nothing_written(tiny_tickets, tmp_path, flags,
                                                                 needle):
    out = tmp_path / "never"
    tickets = [] if flags[:1] == [] or flags[0].startswith("--tickets") else [
        f"--tickets={tiny_tickets.path}"]
    proc = run_binary("lth_keras.stability", *tickets, *flags, f"--output_dir={out}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert needle in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_a_ticket_run_missing_a_mask_is_named_before_anything_runs(tiny_tickets, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_tickets.path, damaged)
    os.remove(damaged / "levels" / "level_02" / "mask.npz")
    out = tmp_path / "never"
    proc = run_binary("lth_keras.stability", f"--tickets={damaged}", "--levels=0,2",
                      f"--output_dir={out}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"stability: error: {damaged} lacks levels/level_02/mask.npz: its find_tickets run is "
        "incomplete or damaged; run its command again to repair it")
    assert not out.exists()
