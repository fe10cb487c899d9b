"""Crash safety: SIGKILL at random points, and damaged artifacts, never change the result."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TICKET_ROUNDS, TINY_TICKETS, find_tiny_tickets_here

sys.path.insert(0, os.path.join(REPO, "tools"))
import chaos  # noqa: E402

pytestmark = pytest.mark.slow


def test_chaos_kills_resume_to_identical_masks_and_metrics(tiny_fashion_dir, tmp_path):
    args = ["--source=fashion_mnist", f"--data_dir={tiny_fashion_dir}",
            *[a for a in TINY_TICKETS if a != "--deterministic"]]
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "chaos.py"), "--kills=2",
                           "--seed=1", f"--workdir={tmp_path}", "--", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.load(open(tmp_path / "chaos.json"))
    assert report["identical"] and not report["differences"]
    assert report["kills_landed"] == 2 == sum(k["killed"] for k in report["kills"])
    assert "2 of 2 kills landed" in proc.stdout


def test_chaos_fails_when_its_kills_cannot_land(tiny_fashion_dir, tmp_path):
    # A run with no pruned level finishes before the first kill (after level 1's pruning)
    # can land: that is not a pass.
    args = ["--source=fashion_mnist", f"--data_dir={tiny_fashion_dir}",
            *[a for a in TINY_TICKETS if a != "--deterministic"],
            "--rounds=0", "--max_epochs=1", "--rewind_epoch=0"]
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "chaos.py"), "--kills=10",
                           f"--workdir={tmp_path}", "--", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "only 0 of 10 kills landed" in proc.stderr
    assert json.load(open(tmp_path / "chaos.json"))["kills_landed"] == 0


def _copy(run, destination):
    shutil.copytree(run.path, destination)
    return str(destination)


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _assert_same_result(reference_dir, other_dir):
    assert chaos.compare(reference_dir, other_dir) == []
    assert chaos.check_readable(other_dir) == []


@pytest.mark.parametrize("damaged", ["levels/level_01/theta_i.npz", "levels/level_02/metrics.json",
                                     "theta_k.npz", "theta_0.npz"])
def test_damaged_artifact_is_reported_and_recomputed(tiny_tickets, tiny_fashion_dir, tmp_path,
                                                     absl_log, damaged):
    copy = _copy(tiny_tickets, tmp_path / "run")
    _truncate(os.path.join(copy, damaged))
    find_tiny_tickets_here(tiny_fashion_dir, copy)
    assert os.path.basename(damaged) in absl_log()  # reported, by name
    if damaged != "theta_0.npz":
        first = 0 if damaged == "theta_k.npz" else int(damaged.split("_")[1][:2])
        assert f"recomputing levels {first}..{TICKET_ROUNDS}" in absl_log()
    _assert_same_result(tiny_tickets.path, copy)


def test_damaged_epoch_checkpoint_is_ignored_and_the_level_restarts(tiny_tickets,
                                                                   tiny_fashion_dir, tmp_path,
                                                                   absl_log):
    copy = _copy(tiny_tickets, tmp_path / "run")
    level_dir = os.path.join(copy, "levels", f"level_{TICKET_ROUNDS:02d}")
    for name in os.listdir(level_dir):
        if name != "mask.npz":
            os.remove(os.path.join(level_dir, name))
    with open(os.path.join(level_dir, "checkpoint.npz"), "wb") as f:
        f.write(b"PK\x03\x04 a checkpoint cut short")
    find_tiny_tickets_here(tiny_fashion_dir, copy)
    assert "ignoring the unreadable checkpoint" in absl_log()
    _assert_same_result(tiny_tickets.path, copy)
    assert np.array_equal(np.load(os.path.join(copy, "theta_0.npz"))["fc1/kernel"],
                          tiny_tickets.theta("0")["fc1/kernel"])


def _empty_metrics(run_dir):
    with open(os.path.join(run_dir, "levels", "level_02", "metrics.json"), "w") as f:
        f.write("{}")
    return 2, "lacks"


def _mask_of_another_level(run_dir):
    levels = os.path.join(run_dir, "levels")
    shutil.copy(os.path.join(levels, "level_01", "mask.npz"),
                os.path.join(levels, "level_02", "mask.npz"))
    return 2, "start_digest"


def _theta_k_of_another_run(run_dir):
    shutil.copy(os.path.join(run_dir, "theta_0.npz"), os.path.join(run_dir, "theta_k.npz"))
    return 0, "theta_k.npz does not give the start"


def _stale_checkpoints(run_dir):
    # Level 2 was in progress (with a checkpoint from level 1's old mask) when level 1
    # was found damaged; and a crash left a checkpoint in finished level 0.
    levels = os.path.join(run_dir, "levels")
    for name in ("metrics.json", "theta_i.npz"):
        os.remove(os.path.join(levels, "level_02", name))
    shutil.copy(os.path.join(levels, "level_02", "mask.npz"),
                os.path.join(levels, "level_02", "checkpoint.npz"))
    shutil.copy(os.path.join(levels, "level_00", "mask.npz"),
                os.path.join(levels, "level_00", "checkpoint.npz"))
    _truncate(os.path.join(levels, "level_01", "theta_i.npz"))
    return 1, "theta_i.npz"


@pytest.mark.parametrize("damage", [_empty_metrics, _mask_of_another_level,
                                    _theta_k_of_another_run, _stale_checkpoints],
                         ids=lambda f: f.__name__.strip("_"))
def test_artifacts_that_read_but_are_wrong_are_recomputed(tiny_tickets, tiny_fashion_dir,
                                                          tmp_path, absl_log, damage):
    copy = _copy(tiny_tickets, tmp_path / "run")
    first, reported = damage(copy)
    find_tiny_tickets_here(tiny_fashion_dir, copy)
    assert reported in absl_log()
    last = TICKET_ROUNDS if damage is not _stale_checkpoints else 1
    assert f"recomputing levels {first}..{last}" in absl_log()
    _assert_same_result(tiny_tickets.path, copy)
    assert not glob.glob(os.path.join(copy, "levels", "*", "checkpoint.npz"))
