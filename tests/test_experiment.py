"""The experiment grid: expansion, sharding, and an interrupted tiny grid that resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_TICKETS, fabricated_record, make_colour_folder, run_binary
from lth_keras import grid

SMALL = dict(sources=["fashion_mnist", "cifar10"], targets=["human_lba", "/data/my_slides"],
             seeds=[0, 1], conditions=list(grid.CONDITIONS), related=[("human_lba", "mouse_lba")],
             train_fractions=[0.5])


def test_grid_expands_to_the_expected_runs():
    runs = grid.expand(**SMALL)
    names = [run.name for run in runs]
    assert len(names) == len(set(names))
    expected = set()
    for s in (0, 1):
        expected |= {f"tickets/{d}-seed{s}" for d in
                     ("fashion_mnist", "cifar10", "human_lba", "my_slides")}
        expected |= {f"tickets/{d}-seed{s}-frac0.5" for d in ("human_lba", "my_slides")}
        for target in ("human_lba", "my_slides"):
            expected |= {f"transfer/{target}/{src}-{c}-seed{s}" for src in
                         ("fashion_mnist", "cifar10") for c in ("rewind", "final")}
            # source_reinit, source_random: the natural sources' masks on fresh weights,
            # random masks of their density from θ_k.
            expected |= {f"transfer/{target}/{src}-{c}-seed{s}"
                         for src in ("fashion_mnist", "cifar10") for c in ("reinit", "random")}
            # target_transfer: the target's own tickets fine-tuned on it with a fresh head.
            expected |= {f"transfer/{target}/{target}-reinit-seed{s}",
                         f"transfer/{target}/{target}-random-seed{s}",
                         f"transfer/{target}/{target}-rewind-seed{s}",
                         f"transfer/{target}/dense-scratch-seed{s}"}
        expected.add(f"transfer/mouse_lba/human_lba-rewind-seed{s}")
        # The instability analysis of every ticket run but the fractions' and related ones.
        expected |= {f"stability/{d}-seed{s}" for d in
                     ("fashion_mnist", "cifar10", "human_lba", "my_slides")}
    assert set(names) == expected
    by_name = {run.name: run for run in runs}
    assert by_name["transfer/my_slides/cifar10-final-seed1"].needs == ("tickets/cifar10-seed1",)
    assert by_name["transfer/my_slides/cifar10-final-seed1"].values["init"] == "final"
    assert by_name["transfer/human_lba/human_lba-reinit-seed0"].needs == (
        "tickets/human_lba-seed0",)
    assert by_name["transfer/human_lba/human_lba-reinit-seed0"].values["reinit"] is True
    # One find_tickets run per (dataset, seed, fraction), shared by every transfer from it.
    assert by_name["transfer/my_slides/cifar10-random-seed1"].values["random_mask"] is True
    assert sum(r.needs == ("tickets/fashion_mnist-seed0",) for r in runs) == 11
    # (2 targets × rewind, final, scratch, source_reinit, source_random; its stability)
    assert by_name["stability/cifar10-seed1"].binary == "stability"
    # Targets are used whole; natural sources keep their preset's subset.
    assert by_name["tickets/my_slides-seed0"].values["train_fraction"] == 1
    assert "train_fraction" not in by_name["tickets/cifar10-seed0"].values
    assert by_name["tickets/human_lba-seed1-frac0.5"].values["train_fraction"] == 0.5
    # A natural source given as a folder keeps its preset's subset too.
    folder = grid.expand(sources=["/data/cifar10_jpeg"], targets=["histo"], seeds=[0],
                         conditions=["rewind"])
    assert folder[0].values == {"source": "/data/cifar10_jpeg", "seed": 0}
    # Every run comes after the runs it needs.
    position = {name: i for i, name in enumerate(names)}
    assert all(position[n] < position[run.name] for run in runs for n in run.needs)


def test_scratch_starts_once_theta_0_exists_other_transfers_wait_for_every_level(tmp_path):
    by_name = {run.name: run for run in grid.expand(**SMALL)}
    scratch = by_name["transfer/human_lba/dense-scratch-seed0"]
    rewind = by_name["transfer/human_lba/fashion_mnist-rewind-seed0"]
    assert scratch.needs == rewind.needs == ("tickets/fashion_mnist-seed0",)
    root = str(tmp_path)
    states = {"tickets/fashion_mnist-seed0": grid.PARTIAL}
    assert not scratch.can_start(root, states.get) and not rewind.can_start(root, states.get)
    # A ticket run writes θ_0 when it starts, long before its last level.
    os.makedirs(os.path.join(root, "tickets/fashion_mnist-seed0"))
    open(os.path.join(root, "tickets/fashion_mnist-seed0", "theta_0.npz"), "wb").close()
    assert scratch.can_start(root, states.get) and not rewind.can_start(root, states.get)
    states["tickets/fashion_mnist-seed0"] = grid.DONE
    assert rewind.can_start(root, states.get)


def test_a_transfer_of_every_level_grows_with_its_ticket_run(tmp_path):
    """Raising the rounds of a finished grid extends its ticket runs, and the transfers of
    every level (no --levels) must then be partial too, not left at the old levels."""
    import json

    runs = {run.name: run for run in grid.expand(
        sources=["fashion_mnist"], targets=["colours"], seeds=[0],
        conditions=["rewind", "scratch"], transfer_levels="all")}
    tickets = runs["tickets/fashion_mnist-seed0"]
    rewind = runs["transfer/colours/fashion_mnist-rewind-seed0"]
    scratch = runs["transfer/colours/dense-scratch-seed0"]
    root = str(tmp_path)

    def fabricate(run, config, levels):
        path = run.directory(root)
        for level in levels:
            os.makedirs(os.path.join(path, "levels", f"level_{level:02d}"))
            open(os.path.join(path, "levels", f"level_{level:02d}", "metrics.json"), "w").close()
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f)

    fabricate(tickets, fabricated_record("find_tickets", ["--rounds=2"]), [0, 1, 2])
    fabricate(rewind, fabricated_record("transfer", ["--target=colours"], levels=[0, 1, 2]),
              [0, 1, 2])
    fabricate(scratch, fabricated_record("transfer", ["--target=colours", "--scratch"],
                                         levels=[0]), [0])
    assert [grid.state(r, root, rounds=2) for r in (tickets, rewind, scratch)] == [grid.DONE] * 3
    # The preset now asks for 3 rounds: the tickets and the transfer of every level are
    # partial; scratch (level 0 only) stays done.
    assert [grid.state(r, root, rounds=3) for r in (tickets, rewind, scratch)] == [
        grid.PARTIAL, grid.PARTIAL, grid.DONE]
    # A transfer of chosen levels wants only those.
    chosen = grid.GridRun(rewind.name, "transfer", {**rewind.values, "levels": "0,2"},
                          rewind.tickets)
    assert grid.state(chosen, root, rounds=3) == grid.DONE


def test_grid_refuses_impossible_conditions():
    with pytest.raises(ValueError, match="target_tickets"):
        grid.expand(**dict(SMALL, conditions=["reinit"]))
    with pytest.raises(ValueError, match="unknown"):
        grid.expand(**dict(SMALL, conditions=["rewinds"]))


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 7, 200])
def test_sharding_partitions_the_runs(num_tasks):
    runs = grid.expand(**SMALL)
    shards = [grid.shard(runs, i, num_tasks) for i in range(num_tasks)]
    flat = [run.name for s in shards for run in s]
    assert sorted(flat) == sorted(run.name for run in runs)  # nothing lost, nothing twice
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        grid.shard(runs, num_tasks, num_tasks)


# ---- a tiny grid, run for real ---------------------------------------------------------

@pytest.fixture
def tiny_grid(tmp_path, tiny_fashion_dir):
    (tmp_path / "tickets.cfg").write_text(
        "\n".join(a for a in TINY_TICKETS if not a.startswith("--seed")) + "\n")
    (tmp_path / "transfer.cfg").write_text(
        "--max_epochs=2\n--patience=2\n--batch_size=16\n--learning_rate=0.01\n--deterministic\n")
    target = make_colour_folder(tmp_path / "colours")
    root = tmp_path / "grid"
    args = ["--sources=fashion_mnist", f"--targets={target}", "--seeds=0",
            "--conditions=rewind,scratch", f"--tickets_flagfile={tmp_path / 'tickets.cfg'}",
            f"--transfer_flagfile={tmp_path / 'transfer.cfg'}", f"--data_dir={tiny_fashion_dir}",
            f"--output_dir={root}"]
    return root, args


@pytest.mark.slow
def test_interrupted_grid_resumes_without_redoing_finished_runs(tiny_grid):
    root, args = tiny_grid
    # Task 1 of 2 holds scratch, whose θ_0 task 0's tickets write: it says so and skips it.
    proc = run_binary("lth_keras.experiment", *args, "--task_index=1", "--num_tasks=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("dense-scratch-seed0: skipped, its tickets tickets/fashion_mnist-seed0 are not "
            "started yet") in proc.stdout

    # Kill the whole grid (and its child) once the tickets are done.
    tickets = grid.GridRun("tickets/fashion_mnist-seed0", "find_tickets", ())
    proc = subprocess.Popen([sys.executable, "-m", "lth_keras.experiment", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while grid.state(tickets, root) != grid.DONE and time.time() < deadline:
        assert proc.poll() is None, "the grid ended before the tickets were done"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    theta_0 = os.path.join(root, tickets.name, "theta_0.npz")
    stamp = os.stat(theta_0).st_mtime_ns

    listing = run_binary("lth_keras.experiment", *args, "--list")
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "tickets/fashion_mnist-seed0" in listing.stdout and "3 runs: 1 done" in listing.stdout

    resumed = run_binary("lth_keras.experiment", *args)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "tickets/fashion_mnist-seed0: done, skipped" in resumed.stdout
    assert os.stat(theta_0).st_mtime_ns == stamp
    runs = grid.expand(sources=["fashion_mnist"], targets=["colours"], seeds=[0],
                       conditions=["rewind", "scratch"])
    assert [grid.state(run, root) for run in runs] == [grid.DONE] * 3
    again = run_binary("lth_keras.experiment", *args)
    assert again.stdout.count("done, skipped") == 3


def test_grid_with_bad_flags_fails_with_one_line(tmp_path):
    proc = run_binary("lth_keras.experiment", "--targets=x", "--conditions=reinit",
                      f"--output_dir={tmp_path / 'never'}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("experiment: error:")
    assert not (tmp_path / "never").exists()


def test_transfer_seeds_make_pairs_in_an_order_that_keeps_them_whole():
    runs = grid.expand(sources=["fashion_mnist"], targets=["histo"], seeds=[0, 1],
                       conditions=["rewind", "source_reinit", "scratch"], transfer_levels="0,7",
                       reinit_levels="7", transfer_seeds=[0, 1, 2], tickets_first=False)
    names = [run.name for run in runs]
    assert names[:4] == ["tickets/fashion_mnist-seed0", "transfer/histo/dense-scratch-seed0-t0",
                         "transfer/histo/fashion_mnist-rewind-seed0-t0",
                         "transfer/histo/fashion_mnist-reinit-seed0-t0"]
    assert names[10] == "tickets/fashion_mnist-seed1" and len(names) == 20
    by_name = {run.name: run for run in runs}
    reinit = by_name["transfer/histo/fashion_mnist-reinit-seed1-t2"]
    assert reinit.values == {"target": "histo", "seed": 2, "train_fraction": 1, "reinit": True,
                             "levels": "7"}
    assert reinit.needs == ("tickets/fashion_mnist-seed1",)
    assert by_name["transfer/histo/fashion_mnist-rewind-seed1-t2"].values["levels"] == "0,7"
    assert by_name["transfer/histo/dense-scratch-seed1-t0"].needs == ("tickets/fashion_mnist-seed1",)
    # Sharded, the tickets still come first.
    sharded = grid.expand(sources=["fashion_mnist"], targets=["histo"], seeds=[0, 1],
                          conditions=["rewind", "scratch"], transfer_seeds=[0, 1])
    assert [run.binary for run in sharded[:2]] == ["find_tickets"] * 2


def test_controls_take_their_own_transfer_seeds_and_levels():
    """The study's allocation: ticket and scratch with every transfer seed, the controls
    (source_reinit, source_random, target_transfer) with the first only, at their levels."""
    runs = grid.expand(sources=["cifar10"], targets=["histo"], seeds=[3],
                       conditions=["rewind", "scratch", "source_reinit", "source_random",
                                   "target_tickets", "target_transfer"],
                       transfer_levels="0,5", reinit_levels="5", transfer_seeds=[0, 1],
                       control_transfer_seeds=[0], tickets_first=False)
    by_name = {run.name: run for run in runs}
    assert {name for name in by_name if name.startswith("transfer/")} == {
        f"transfer/histo/{run}" for run in (
            "dense-scratch-seed3-t0", "dense-scratch-seed3-t1", "cifar10-rewind-seed3-t0",
            "cifar10-rewind-seed3-t1", "cifar10-reinit-seed3-t0", "cifar10-random-seed3-t0",
            "histo-rewind-seed3-t0")}
    own = by_name["transfer/histo/histo-rewind-seed3-t0"]
    assert own.needs == ("tickets/histo-seed3",)
    assert own.values == {"target": "histo", "seed": 0, "train_fraction": 1, "levels": "5"}
    assert by_name["transfer/histo/cifar10-rewind-seed3-t1"].values["levels"] == "0,5"
    with pytest.raises(ValueError, match="target_transfer fine-tunes the target tickets"):
        grid.expand(sources=["cifar10"], targets=["histo"], seeds=[0],
                    conditions=["target_transfer"])


def test_stability_with_masks_per_rewind_point_gets_runs_rewound_there(tmp_path):
    runs = grid.expand(sources=[], targets=["fashion_mnist"], seeds=[1],
                       conditions=["target_tickets", "stability"], reinit_levels="0,7",
                       mask_rewind_epochs=[0, 2], tickets_first=False)
    by_name = {run.name: run for run in runs}
    assert [run.name for run in runs] == [
        "tickets/fashion_mnist-seed1", "tickets/fashion_mnist-seed1-k0",
        "tickets/fashion_mnist-seed1-k2", "stability/fashion_mnist-seed1"]
    assert by_name["tickets/fashion_mnist-seed1-k2"].values["rewind_epoch"] == 2
    analysis = by_name["stability/fashion_mnist-seed1"]
    assert analysis.needs == ("tickets/fashion_mnist-seed1", "tickets/fashion_mnist-seed1-k0",
                              "tickets/fashion_mnist-seed1-k2")
    assert analysis.settings_values(str(tmp_path)) == {
        "output_dir": str(tmp_path / "stability/fashion_mnist-seed1"), "levels": "0,7",
        "tickets": str(tmp_path / "tickets/fashion_mnist-seed1"),
        "mask_runs": (f"0:{tmp_path / 'tickets/fashion_mnist-seed1-k0'}",
                      f"2:{tmp_path / 'tickets/fashion_mnist-seed1-k2'}")}
    # The grid's command line overrides the tickets preset's device settings; the run's
    # own placement overrides both.
    presets = grid.Presets({}, {"engine": "tf", "deterministic": True, "output_dir": "x"})
    values = presets.run_values(analysis, {"engine": "jax"}, str(tmp_path))
    assert values["engine"] == "jax" and values["deterministic"] is True
    assert values["output_dir"] == str(tmp_path / "stability/fashion_mnist-seed1")
    # Across a process boundary, a list flag given once (one given twice keeps the last).
    assert grid.settings.flag_text("mask_runs", ("0:a", "2:b")) == "--mask_runs=0:a,2:b"


def test_tickets_of_another_grid_are_read_where_they_are(tmp_path):
    layout = grid.Layout(str(tmp_path / "b"), tickets_dir=str(tmp_path / "a" / "tickets"))
    run = grid.GridRun("transfer/t/x-rewind-seed0", "transfer", {"seed": 0},
                       tickets="tickets/x-seed0")
    assert run.settings_values(layout) == {
        "output_dir": str(tmp_path / "b" / "transfer/t/x-rewind-seed0"), "seed": 0,
        "tickets": str(tmp_path / "a" / "tickets" / "x-seed0")}
    assert grid.GridRun("tickets/x-seed0", "find_tickets", {}).directory(layout) == str(
        tmp_path / "a" / "tickets" / "x-seed0")


def test_a_primary_level_must_be_one_the_grid_trains(tmp_path):
    proc = run_binary("lth_keras.experiment", "--targets=x", "--transfer_levels=0,6",
                      "--primary_level=5", "--list", f"--output_dir={tmp_path / 'g'}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "experiment: error: --primary_level=5 is not one of --transfer_levels=0,6")


@pytest.mark.slow
def test_a_grid_in_one_process_trains_as_child_processes_do(tiny_grid, tmp_path):
    """--in_process on the JAX engine: the second transfer reuses the steps the first one
    compiled (same architecture, other weights and seed), and must train exactly as the
    same transfer alone in a fresh process. The grid records itself and its timings."""
    import json

    pytest.importorskip("jax")
    root, args = tiny_grid
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = run_binary("lth_keras.experiment", *args, "--in_process", "--transfer_seeds=0,1",
                      "--primary_level=1", "--conditions=rewind,scratch,stability",
                      "--reinit_levels=2", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "(in this process)" in proc.stdout
    record = json.loads((root / "grid.json").read_text())
    assert record["primary_level"] == 1 and record["settings"]["grid"]["in_process"] is True
    timings = json.loads((root / "logs" / "timings.json").read_text())["runs"]
    assert len(timings) == 6 and all(r["exit"] == 0 for r in timings.values())
    # The stability run of the tickets, at level 2 and every rewind point they hold.
    from lth_keras.lottery.directory import StabilityRun
    stability = StabilityRun(str(root / "stability" / "fashion_mnist-seed0"))
    assert sorted(stability.paths()) == [(2, k, pair) for k in ("00", "01") for pair in range(3)]
    assert (root / "stability" / "fashion_mnist-seed0" / "stability.md").exists()
    by_name = {run.name: run for run in grid.expand(
        sources=["fashion_mnist"], targets=["colours"], seeds=[0],
        conditions=["rewind", "stability"], reinit_levels="2")}
    assert grid.state(by_name["stability/fashion_mnist-seed0"], str(root)) == grid.DONE
    in_grid = root / "transfer" / "colours" / "fashion_mnist-rewind-seed0-t1"
    config = json.loads((in_grid / "config.json").read_text())
    alone = tmp_path / "alone"
    transfer_cfg = next(a for a in args if a.startswith("--transfer_flagfile=")).split("=", 1)[1]
    proc = run_binary("lth_keras.transfer", f"--flagfile={transfer_cfg}",
                      f"--tickets={root / 'tickets' / 'fashion_mnist-seed0'}",
                      f"--target={config['settings']['transfer']['target']}", "--seed=1",
                      "--train_fraction=1", f"--output_dir={alone}", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for level in (0, 1, 2):
        a, b = (json.loads((d / "levels" / f"level_{level:02d}" / "metrics.json").read_text())
                for d in (in_grid, alone))
        assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
        assert a["test"] == b["test"] and a["start_digest"] == b["start_digest"]


def test_a_resumed_grid_adds_to_the_timings_its_earlier_invocations_recorded(tmp_path):
    root = str(tmp_path)
    first = grid.Timings(root, 0, 1)
    first.record("tickets/a-seed0", 12.5, 0)
    first.record("transfer/t/b-seed0-t0", 3.0, 1)
    again = grid.Timings(root, 0, 1)  # the grid started again, in a new session
    again.record("transfer/t/b-seed0-t0", 4.0, 0)
    runs = json.loads((tmp_path / "logs" / "timings.json").read_text())["runs"]
    assert sorted(runs) == ["tickets/a-seed0", "transfer/t/b-seed0-t0"]
    assert (runs["tickets/a-seed0"]["seconds"], runs["tickets/a-seed0"]["exit"]) == (12.5, 0)
    assert (runs["transfer/t/b-seed0-t0"]["seconds"], runs["transfer/t/b-seed0-t0"]["exit"]) \
        == (4.0, 0)
    assert all(r["finished_at"].endswith("+00:00") for r in runs.values())
