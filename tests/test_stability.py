"""Instability analysis on cases whose answer is known: copies train a fixed budget from
their rewind point (a copy from θ_0 on the ticket's data order for level 0's best epochs
is that level; a copy from a step inside an epoch continues the exact batches), copies
on one data order have no barrier, copies with permuted hidden units a large one, every
point is evaluated alike (the re-estimated end is the copy as precise BN evaluates it),
and several pairs, rewind points in steps and masks per k are what they say."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, absl_log, find_tiny_tickets_here, in_process, run_binary  # noqa: F401
from lth_keras import artifacts, weights
from lth_keras.lottery import tickets as ticket_search
from lth_keras.lottery.directory import StabilityRun

pytestmark = pytest.mark.slow

# tiny_tickets: LeNet (no BatchNorm), levels 0..2, rewind epoch 1, seed 3, 8 steps an epoch
# (270 training images, batch 32).
LEVELS, POINTS, STEPS_PER_EPOCH = "0,2", 5, 8


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
                           f"--levels={LEVELS}", f"--points={POINTS}", "--pairs=2",
                           data_dir=tiny_fashion_dir)


def _budget(tiny_tickets):
    return tiny_tickets.metrics(0)["epochs"] * STEPS_PER_EPOCH


def test_every_level_rewind_point_and_pair_has_a_path_of_the_points_asked(stability_run):
    paths = stability_run.paths()
    # k: θ_0 and the run's θ_k (epoch 1); two pairs each.
    assert sorted(paths) == [(level, k, pair) for level in (0, 2) for k in ("00", "01")
                             for pair in (0, 1)]
    alphas = np.linspace(0, 1, POINTS)
    for (level, k, pair), path in paths.items():
        assert [p["alpha"] for p in path["points"]] == list(alphas)
        for split in ("val", "test"):
            errors = [1 - p[split]["accuracy"] for p in path["points"]]
            assert path["barrier"][split] == pytest.approx(
                max(errors) - (errors[0] + errors[-1]) / 2)
            assert path["inside"][split] == pytest.approx(max(
                e - ((1 - a) * errors[0] + a * errors[-1]) for a, e in zip(alphas, errors)))
            assert path["end_gap"][split] == pytest.approx(abs(errors[0] - errors[-1]))
        assert path["bn"].startswith("none")  # LeNet has no BatchNorm
        assert [c["copy"] for c in path["copies"]] == [2 * pair, 2 * pair + 1]
    for name in ("stability.csv", "stability.pairs.csv", "stability.md", "stability.png"):
        assert os.path.getsize(stability_run.file(name)) > 0
    assert "the ticket run's, rewound to epoch 1, at every k" in open(
        stability_run.file("stability.md")).read()
    leftovers = [f for _, _, files in os.walk(stability_run.path) for f in files
                 if f.endswith(".tmp") or f == "checkpoint.npz"]
    assert not leftovers


def test_every_copy_trains_the_fixed_budget_on_a_data_order_of_its_own(tiny_tickets,
                                                                        stability_run):
    budget = _budget(tiny_tickets)
    orders = set()
    for k, first in (("00", 0), ("01", STEPS_PER_EPOCH)):
        for copy in range(4):
            run = stability_run.copy(k, copy)
            for level in (0, 2):
                m = run.metrics(level)
                # T - k steps from step k, nothing stopped early, the final weights kept.
                assert m["budget"] == {"first_step": first, "last_step": budget,
                                       "steps": budget - first}
                assert sum(e["images"] for e in m["history"]) == (budget - first) * 32
                assert not m["stopped_early"] and m["best_epoch"] == m["epochs"]
                assert m["k_steps"] == first
            orders.add(run.metrics(0)["data_order"])
    assert orders == {3, 4, 5, 6}  # the ticket seed + 0..3: two pairs, four orders


def test_a_copy_from_theta_0_for_level_0s_best_epochs_is_that_level(tiny_tickets,
                                                                    tiny_fashion_dir, tmp_path):
    # On the ticket's own data order, from θ_0 with a fresh optimizer and the schedule from
    # step 0, a copy trained exactly as many steps as level 0's kept epoch ends on θ_i(0).
    best = tiny_tickets.metrics(0)["best_epoch"]
    run = _stability_here(tiny_tickets.path, str(tmp_path / "known"), "--levels=0",
                          "--rewind_points=0", f"--budget={best}", "--pairs=1",
                          "--data_orders=3,4", "--points=3", data_dir=tiny_fashion_dir)
    copy = run.copy("00", 0)
    assert copy.metrics(0)["budget"]["steps"] == best * STEPS_PER_EPOCH
    assert weights.digest(copy.weights(0)) == weights.digest(tiny_tickets.theta_i(0))
    assert copy.metrics(0)["test"] == tiny_tickets.metrics(0)["test"]
    # Copy B sees another data order: another network.
    assert weights.digest(run.copy("00", 1).weights(0)) != weights.digest(
        tiny_tickets.theta_i(0))


def test_copies_start_from_the_ticket_mask_times_theta_k(tiny_tickets, stability_run):
    for k, theta in (("00", tiny_tickets.theta("0")), ("01", tiny_tickets.theta("k"))):
        for copy in range(4):
            run = stability_run.copy(k, copy)
            for level in (0, 2):
                mask = tiny_tickets.mask(level)
                assert run.metrics(level)["start_digest"] == ticket_search.expected_start_digest(
                    theta, mask), (k, copy, level)
                weights.check_arrays_hold_masks(run.weights(level), mask)


def test_the_paths_ends_reproduce_the_copies_own_test_error(stability_run):
    assert len(stability_run.paths()) == 8  # the loop checks something
    for (level, k, pair), path in stability_run.paths().items():
        for end, copy in ((path["points"][0], 2 * pair), (path["points"][-1], 2 * pair + 1)):
            own = stability_run.copy(k, copy).metrics(level)["test"]
            assert end["test"]["accuracy"] == own["accuracy"], (level, k, copy)
            assert end["test"]["loss"] == pytest.approx(own["loss"], rel=1e-6)


def test_rewind_points_in_steps_continue_the_exact_batches(tiny_fashion_dir, tmp_path):
    # Plain SGD (momentum 0, so a fresh optimizer at the rewind point changes nothing): a
    # copy from θ at step 4 (mid-epoch) on the ticket's data order continues the very
    # trajectory that passed through it, and ends where the copy from θ_0 ends. The learning
    # rate anneals after epoch 1 (step 8), so this holds only if the copy's schedule
    # continues from step 4 rather than starting again.
    common = ["--rounds=0", "--momentum=0", "--lr_boundaries=1"]
    saved = find_tiny_tickets_here(tiny_fashion_dir, str(tmp_path / "saved"), *common,
                                   "--save_steps=4,16")
    plain = find_tiny_tickets_here(tiny_fashion_dir, str(tmp_path / "plain"), *common)
    # Step 16 is epoch 2: kept as that epoch's file. Snapshots change nothing of the run.
    assert saved.saved_steps() == [0, 4, 8, 16] and saved.saved_epochs() == [0, 1, 2]
    assert os.path.exists(saved.file("theta_step_000004.npz"))
    assert weights.digest(saved.theta_i(0)) == weights.digest(plain.theta_i(0))
    assert saved.config()["hparams_hash"] == plain.config()["hparams_hash"]
    run = _stability_here(saved.path, str(tmp_path / "steps"), "--levels=0",
                          "--rewind_points=0,4it", "--pairs=1", "--data_orders=3,4",
                          "--points=3", data_dir=tiny_fashion_dir)
    assert sorted(run.paths()) == [(0, "00", 0), (0, "004it", 0)]
    # The boundary (step 8) falls inside the budget, and the report says the copies anneal.
    budget = run.record().stability.budget_steps
    assert budget > 8 and run.record().stability.annealed_at_epochs == (1,)
    from_step_4 = run.copy("004it", 0)
    assert from_step_4.metrics(0)["budget"]["first_step"] == 4
    assert weights.digest(from_step_4.weights(0)) == weights.digest(run.copy("00", 0).weights(0))
    # Its own data order (copy B) does not.
    assert weights.digest(run.copy("004it", 1).weights(0)) != weights.digest(
        run.copy("00", 1).weights(0))


def test_a_rerun_skips_every_finished_copy_and_path(tiny_tickets, tiny_fashion_dir,
                                                    stability_run, tmp_path):
    out = str(tmp_path / "rerun")
    shutil.copytree(stability_run.path, out)
    stamp = os.stat(os.path.join(out, "paths", "level_02_k_01_pair_1.json")).st_mtime_ns
    proc = _stability(tiny_tickets.path, out, f"--levels={LEVELS}", f"--points={POINTS}",
                      "--pairs=2", data_dir=tiny_fashion_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| level | weights left | k | pairs |" in proc.stdout  # the report's table
    assert "level 2, k=01, copy 3: finished already, skipping" in proc.stderr
    assert "level 2, k=01, pair 1: path evaluated already, skipping" in proc.stderr
    assert os.stat(os.path.join(out, "paths", "level_02_k_01_pair_1.json")).st_mtime_ns == stamp


def test_negative_control_copies_on_one_data_order_have_no_barrier(tiny_tickets,
                                                                   tiny_fashion_dir, tmp_path):
    # The same start, recipe and data order twice: one network, so every point of the
    # path is that network and every number is exactly 0. Run through the Python API.
    import lth_keras
    from lth_keras.analysis import stability_report as stability

    run = lth_keras.stability(tickets=tiny_tickets, data_dir=tiny_fashion_dir,
                              output_dir=str(tmp_path / "same_order"), levels=[2],
                              rewind_points=["1"], pairs=1, data_orders=[7, 7], points=3,
                              deterministic=True, verbose=False)
    assert len(stability.pair_rows(run)) == 1
    assert os.path.getsize(run.file("stability.md")) > 0
    path = run.paths()[2, "01", 0]
    for name in ("barrier", "inside", "end_gap"):
        assert path[name] == {"val": 0.0, "test": 0.0}
    assert len({p["test"]["accuracy"] for p in path["points"]}) == 1
    assert weights.digest(run.copy("01", 0).weights(2)) == weights.digest(
        run.copy("01", 1).weights(2))
    assert run.config()["identity"]["data_orders"] == [7, 7]


def _permuted(arrays):
    """The same LeNet with the hidden units of its first layer (fc1) in reverse order: it
    computes the same function, but its weights lie elsewhere."""
    order = np.arange(arrays["fc1/kernel"].shape[1])[::-1]
    out = dict(arrays)
    for name in ("fc1/kernel", "fc1/mask"):
        out[name] = arrays[name][:, order]
    out["fc1/bias"] = arrays["fc1/bias"][order]
    for name in ("fc2/kernel", "fc2/mask"):
        out[name] = arrays[name][order]
    return out


def test_positive_control_permuted_hidden_units_cross_a_barrier(tiny_tickets, tiny_fashion_dir,
                                                                stability_run, tmp_path):
    # Copy B replaced by copy A with its hidden units permuted: the ends are one function
    # (no end gap), and the straight path between them leaves the basin: the tiny copies
    # are at about 70%, their midpoint 7-10 points lower, well above the 2% threshold.
    out = tmp_path / "permuted"
    shutil.copytree(stability_run.path, out)
    run = StabilityRun(str(out))
    a = run.copy("01", 0).weights(0)
    artifacts.write_arrays(run.copy("01", 1).level_file(0, "weights.npz"), _permuted(a))
    _stability_here(tiny_tickets.path, str(out), f"--levels={LEVELS}", f"--points={POINTS}",
                    "--pairs=2", data_dir=tiny_fashion_dir)
    path = run.paths()[0, "01", 0]
    assert path["end_gap"]["val"] == 0 and path["end_gap"]["test"] == 0
    for split in ("val", "test"):
        assert path["barrier"][split] > 0.05
        assert path["inside"][split] == path["barrier"][split]


def test_a_killed_stability_run_resumes_to_the_same_paths(tiny_tickets, tiny_fashion_dir,
                                                          stability_run, tmp_path):
    out = tmp_path / "killed"
    # Level 2 only: its copies at k = 0 (copies 0-3), then at k = 1, then the paths.
    args = [sys.executable, "-m", "lth_keras.stability", f"--tickets={tiny_tickets.path}",
            f"--data_dir={tiny_fashion_dir}", f"--output_dir={out}", "--deterministic",
            "--levels=2", f"--points={POINTS}", "--pairs=2", "--checkpoint_every=0"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    landmark = out / "k_00" / "copy_1" / "levels" / "level_02" / "metrics.json"
    deadline = time.monotonic() + 240
    while not landmark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert landmark.exists() and not (out / "paths" / "level_02_k_01_pair_0.json").exists()
    resumed = _stability_here(tiny_tickets.path, str(out), "--levels=2", f"--points={POINTS}",
                              "--pairs=2", data_dir=tiny_fashion_dir)
    assert sorted(resumed.paths()) == [(2, k, p) for k in ("00", "01") for p in (0, 1)]  # 4
    for key, path in resumed.paths().items():
        assert path["points"] == stability_run.paths()[key]["points"], key


def test_a_rewind_point_the_run_does_not_hold_is_one_line_and_nothing_written(
        tiny_tickets, tiny_fashion_dir, tmp_path):
    out = tmp_path / "never"
    proc = _stability(tiny_tickets.path, out, "--rewind_points=0,3", data_dir=tiny_fashion_dir)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("stability: error: ")
    assert "at 0 ep, 1 ep only, not 3 ep: find tickets with --save_epochs" in lines[-1]
    assert not out.exists()
    late = _stability(tiny_tickets.path, out, "--rewind_points=1", "--budget=8it",
                      data_dir=tiny_fashion_dir)
    assert late.returncode == 1 and "not before the budget's end, step 8" in late.stderr
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


def test_snapshots_asked_of_a_finished_level_0_are_named_as_missing(tiny_tickets,
                                                                    tiny_fashion_dir, tmp_path,
                                                                    absl_log):
    out = tmp_path / "finished"
    shutil.copytree(tiny_tickets.path, out)
    find_tiny_tickets_here(tiny_fashion_dir, str(out), "--save_epochs=2", "--save_steps=3")
    assert "is finished without its weights at steps 3, 16 (--save_epochs/--save_steps)" \
        in absl_log()
    assert not (out / "theta_epoch_02.npz").exists()


def test_masks_per_rewind_point_come_from_runs_rewound_there(tiny_tickets, tiny_fashion_dir,
                                                             tmp_path):
    rewound_to_0 = find_tiny_tickets_here(tiny_fashion_dir, str(tmp_path / "k0"),
                                          "--rewind_epoch=0")
    run = _stability_here(tiny_tickets.path, str(tmp_path / "per_k"), "--levels=2",
                          "--pairs=1", "--points=3", f"--mask_runs=0:{rewound_to_0.path}",
                          data_dir=tiny_fashion_dir)
    # At k = 0 the copies start from the k = 0 run's ticket, m_2 ⊙ θ_0; at k = 1 from the
    # ticket run's own.
    assert run.copy("00", 0).metrics(2)["start_digest"] == ticket_search.expected_start_digest(
        rewound_to_0.theta("k"), rewound_to_0.mask(2))
    assert run.copy("01", 0).metrics(2)["start_digest"] == ticket_search.expected_start_digest(
        tiny_tickets.theta("k"), tiny_tickets.mask(2))
    assert weights.digest(rewound_to_0.mask(2)) != weights.digest(tiny_tickets.mask(2))
    text = open(run.file("stability.md")).read()
    # Each k named with its masks: k = 1 has no run of its own, so it uses the ticket run's.
    assert ("Masks: per k, from runs rewound to it where given (k=00: "
            f"{os.path.basename(rewound_to_0.path)}, k=01: the ticket run's).") in text
    assert run.record().stability.masks["00"] == os.path.abspath(rewound_to_0.path)
    # A run that differs in more than its rewind epoch is refused, in one line.
    other_seed = find_tiny_tickets_here(tiny_fashion_dir, str(tmp_path / "seed4"),
                                        "--rewind_epoch=0", "--seed=4", "--rounds=0")
    proc = _stability(tiny_tickets.path, tmp_path / "never", "--levels=0",
                      f"--mask_runs=0:{other_seed.path}", data_dir=tiny_fashion_dir)
    assert proc.returncode == 1 and "differs from" in proc.stderr.splitlines()[-1]
    assert "in more than its rewind epoch (seed)" in proc.stderr.splitlines()[-1]
    # A mask run for a rewind point the analysis would not try is refused, not left unused.
    proc = _stability(tiny_tickets.path, tmp_path / "never", "--levels=2", "--rewind_points=1",
                      f"--mask_runs=0:{rewound_to_0.path}", data_dir=tiny_fashion_dir)
    assert proc.returncode == 1 and "not among --rewind_points" in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "never").exists()


@pytest.fixture(scope="module")
def bn_tickets(tiny_fashion_dir, tmp_path_factory):
    """Tiny ResNet-8 tickets (BatchNorm), levels 0..1, rewind epoch 1."""
    return find_tiny_tickets_here(tiny_fashion_dir, str(tmp_path_factory.mktemp("bn") / "tickets"),
                                  "--model=resnet8", "--image_size=8", "--rounds=1",
                                  "--max_epochs=2")


def _scaled_statistics(run):
    """Both copies' stored BatchNorm statistics made nonsense (the weights as they are)."""
    for copy in (0, 1):
        path = run.copy("01", copy).level_file(1, "weights.npz")
        arrays = artifacts.read_arrays(path)
        for name in arrays:
            if name.endswith("moving_variance"):
                arrays[name] = arrays[name] * 1e4
            elif name.endswith("moving_mean"):
                arrays[name] = arrays[name] + 50.0
        artifacts.write_arrays(path, arrays)


def test_every_point_is_evaluated_alike_the_ends_re_estimated(bn_tickets, tiny_fashion_dir,
                                                              tmp_path):
    # Copies trained with precise BN on 2 batches: their own evaluation after the last
    # epoch re-estimates the statistics on the first 2 batches of that epoch, which is
    # what the path does at every point. So copy A's end is copy A, evaluated directly.
    common = ["--levels=1", "--rewind_points=1", "--points=3", "--pairs=1", "--precise_bn=2",
              "--bn_batches=2"]
    clean = str(tmp_path / "clean")
    _stability_here(bn_tickets.path, clean, *common, data_dir=tiny_fashion_dir)
    path = StabilityRun(clean).paths()[1, "01", 0]
    assert path["bn"] == "reestimate"
    own = StabilityRun(clean).copy("01", 0).metrics(1)
    assert path["points"][0]["val"]["accuracy"] == own["val"]["accuracy"]
    assert path["points"][0]["val"]["loss"] == pytest.approx(own["val"]["loss"], rel=1e-6)
    assert path["points"][0]["test"] == own["test"]
    # Statistics come from the network at each point, the ends included, never from the
    # copies: nonsense stored in both copies changes no point. Interpolated statistics
    # (another run) keep the copies' own at the ends, and carry the nonsense.
    for bn in ("reestimate", "interpolate"):
        spoiled = str(tmp_path / f"spoiled_{bn}")
        shutil.copytree(clean, spoiled, ignore=None if bn == "reestimate" else
                        shutil.ignore_patterns("config.json", "paths"))
        _scaled_statistics(StabilityRun(spoiled))
        _stability_here(bn_tickets.path, spoiled, *common, f"--bn={bn}",
                        data_dir=tiny_fashion_dir)
        again = StabilityRun(spoiled).paths()[1, "01", 0]
        assert again["copies"] != path["copies"]  # the copies changed: evaluated again
        if bn == "reestimate":
            assert again["points"] == path["points"]
        else:
            assert again["points"][0]["test"] != path["points"][0]["test"]
            assert again["points"][1]["test"] != path["points"][1]["test"]


def test_analyze_reports_every_stability_run_it_finds(stability_run, tiny_tickets, tmp_path):
    import lth_keras

    root = tmp_path / "runs"
    root.mkdir()
    os.symlink(stability_run.path, root / "stability")
    os.symlink(tiny_tickets.path, root / "tickets")
    report = lth_keras.analyze([str(root)], mask_overlap=False, output_dir=str(tmp_path / "out"))
    rows = report.tables["stability_stability"]
    assert [(r["level"], r["k"], r["pairs"]) for r in rows] == [
        (0, "00", 2), (0, "01", 2), (2, "00", 2), (2, "01", 2)]
    paths = stability_run.paths()
    assert rows[-1]["test_barrier"] == pytest.approx(np.mean(
        [paths[2, "01", p]["barrier"]["test"] for p in (0, 1)]))
    for ext in ("md", "csv", "pairs.csv", "png"):
        assert (tmp_path / "out" / f"stability_stability.{ext}").stat().st_size > 0
    assert "stability_stability" in report.figures


@pytest.mark.parametrize("flags, needle", [
    ([], "--tickets is required"),
    (["--tickets=/nonexistent"], "--tickets=/nonexistent: no such directory"),
    (["--data_orders=1,2,3"], "--data_orders takes the copies' seeds, two per pair: 6"),
    (["--pairs=0"], "--pairs must be >= 1"),
    (["--pairs=2", "--data_orders=1,2,1,3"], "seed 1 is in more than one pair"),
    (["--points=2"], "--points must be >= 3"),
    (["--bn_batches=0"], "--bn_batches must be >= 1"),
    (["--rewind_points=2x"], "'2x' is not a point of training"),
    (["--budget=ten"], "'ten' is not a point of training"),
    (["--mask_runs=x"], "--mask_runs takes K:RUN pairs"),
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


def test_the_records_copied_for_git_carry_a_stability_report_by_this_checkouts_rules(
        stability_run, tmp_path):
    """tools/reference_records.py copies a stability run's paths, not its report: the report
    in the copy is what this checkout writes from those paths, even where the grid's own
    report came from other code (a worktree at an older commit)."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import reference_records
    from lth_keras.analysis import stability_report

    grid = tmp_path / "grid"
    shutil.copytree(stability_run.path, grid / "stability" / "x")
    (grid / "stability" / "x" / "stability.md").write_text("a report older code wrote\n")
    copy = tmp_path / "copy"
    assert reference_records.copy_records(str(grid), str(copy)) > 0
    copied = StabilityRun(str(copy / "stability" / "x"))
    assert copied.paths() == stability_run.paths()
    _, expected, _ = stability_report.report(stability_run,
                                             stability_report.threshold_of(stability_run))
    for suffix, name in stability_report.REPORT_FILES.items():
        assert (copy / "stability" / "x" / name).read_bytes() == expected[suffix], name
    assert not any(p.suffix == ".npz" for p in copy.rglob("*"))
    assert reference_records.copy_records(str(grid), str(copy)) == 0  # nothing changed since
