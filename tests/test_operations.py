"""Operations: one process per run directory, directories that never block a corrected
command, permissions, and OS errors and Ctrl-C as one line."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import REPO, TICKET_ROUNDS, TINY_TICKETS, find_tiny_tickets
from lth_keras import artifacts, lottery
from lth_keras.lottery import directory, levels


START_UP_NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cuInit",
                  "Could not find cuda drivers", "rebuild TensorFlow")


def assert_quiet_start(stderr):
    """None of the frameworks' start-up lines (real warnings would still show)."""
    noise = [n for n in START_UP_NOISE if n in stderr]
    assert not noise or os.path.exists("/dev/nvidiactl") and noise == ["cuInit"], noise


@pytest.mark.slow
def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(tiny_fashion_dir,
                                                                         tmp_path):
    out = str(tmp_path / "busy")
    with directory.locked(out):  # this test process holds the run directory
        proc = find_tiny_tickets(tiny_fashion_dir, out)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"find_tickets: error: {out} is in use by another process (PID "
                    f"{os.getpid()}); wait for it to finish or stop it"), last
    assert os.listdir(out) == [directory.LOCK_FILE]  # nothing of a run was written


@pytest.mark.slow
def test_a_directory_without_finished_work_does_not_block_a_corrected_command(
        tiny_tickets, tiny_fashion_dir, tmp_path):
    # What a run that failed before its first level leaves: a record and θ_0.
    out = tmp_path / "failed"
    out.mkdir()
    for name in ("config.json", "theta_0.npz"):
        shutil.copy(os.path.join(tiny_tickets.path, name), out / name)
    proc = find_tiny_tickets(tiny_fashion_dir, str(out), "--prune_rate=0.3", "--rounds=0",
                             "--max_epochs=1", "--rewind_epoch=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "re-initialised" in proc.stderr
    assert_quiet_start(proc.stderr)
    config = lottery.TicketRun(str(out)).config()
    assert config["hparams"]["prune_rate"] == 0.3
    assert lottery.TicketRun(str(out)).finished_levels() == [0]


def test_artifacts_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        artifacts.write_json(str(tmp_path / "group.json"), {})
        os.umask(0o077)
        artifacts.write_json(str(tmp_path / "private.json"), {})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "group.json").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "private.json").st_mode) == 0o600


@pytest.mark.slow
def test_an_os_error_is_one_line_naming_the_path(tiny_fashion_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = blocker / "run"
    proc = find_tiny_tickets(tiny_fashion_dir, str(out))
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == f"find_tickets: error: Not a directory: {out}", lines[-1]
    assert "Traceback" not in proc.stderr
    assert blocker.read_text() == "not a directory"


def _catches_sigterm(pid):
    """Whether the process has a SIGTERM handler: Python has none of its own, so it is
    the binary's, installed before the frameworks are imported."""
    with open(f"/proc/{pid}/status") as status:
        caught = next(line for line in status if line.startswith("SigCgt:")).split()[1]
    return int(caught, 16) >> (signal.SIGTERM - 1) & 1


def test_ctrl_c_before_training_is_one_line_and_exit_130(tiny_fashion_dir, tmp_path):
    out = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "lth_keras.find_tickets",
                             "--source=fashion_mnist", f"--data_dir={tiny_fashion_dir}",
                             f"--output_dir={out}", *TINY_TICKETS], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not _catches_sigterm(proc.pid) and time.time() < deadline:
        time.sleep(0.01)
    # Now it imports TensorFlow, whose import catches Exception in places: a stop
    # request raised there used to be swallowed (the run went on) or broke the import.
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "find_tickets: interrupted by SIGINT; finished levels are kept: run the same command "
        "again to resume")


def test_a_signal_is_not_swallowed_by_library_code_and_is_remembered(monkeypatch):
    from lth_keras.signals import TrainingInterrupted, interruptions

    monkeypatch.setattr(interruptions, "signum", None)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interruptions.install()
    try:
        with pytest.raises(TrainingInterrupted, match="SIGTERM"):
            try:  # what a framework's import or a file reader does around its work
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs here
            except Exception:
                pytest.fail("the stop request was taken for an ordinary error")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    # Remembered: if the exception is lost all the same (raised in a garbage-collector
    # callback, which Python only prints), training refuses to start; see test_training.
    assert interruptions.requested() and interruptions.signum == signal.SIGTERM


@pytest.mark.slow
def test_the_transfer_printout_names_its_condition(tiny_tickets, tiny_fashion_dir, tmp_path):
    from conftest import run_binary

    out = str(tmp_path / "reinit")
    proc = run_binary("lth_keras.transfer", f"--tickets={tiny_tickets.path}",
                      "--target=fashion_mnist", f"--data_dir={tiny_fashion_dir}", "--reinit",
                      "--levels=0", "--max_epochs=1", "--batch_size=32", "--checkpoint_every=0",
                      f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_quiet_start(proc.stderr)
    title = proc.stdout.strip().splitlines()[0]
    # Seed 3: the ticket run's, which a transfer takes unless given.
    assert title == ("transfer to fashion_mnist: reinit of tickets from fashion_mnist, "
                     "lenet_300_100 at 16 px, seed 3"), title
    assert json.loads(open(os.path.join(out, "config.json")).read())["condition"] == "reinit"


def test_a_ticket_run_missing_theta_k_is_named_before_the_target_is_read(tiny_tickets,
                                                                        tmp_path):
    from conftest import run_binary

    copy = tmp_path / "tickets"
    shutil.copytree(tiny_tickets.path, copy)
    os.remove(copy / "theta_k.npz")
    start = time.time()
    proc = run_binary("lth_keras.transfer", f"--tickets={copy}", "--target=/no/such/target",
                      f"--output_dir={tmp_path / 'never'}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"transfer: error: {copy} lacks theta_k.npz: its find_tickets run is "
                    "incomplete or damaged; run its command again to repair it"), last
    assert time.time() - start < 30  # no framework import, no data read
    assert not (tmp_path / "never").exists()


def test_a_level_at_chance_accuracy_is_warned_about():
    def metrics(val, test):
        return {"val": {"accuracy": val}, "test": {"accuracy": test}}

    warning = levels.chance_warning(3, metrics(0.1, 0.105), 10)
    assert warning.startswith("level 3 ended at chance accuracy (val 0.1000, test 0.1050")
    assert levels.chance_warning(3, metrics(0.1, 0.12), 10) is None  # 2 points above: learning
    assert levels.chance_warning(0, metrics(0.34, 0.3), 3) == (
        "level 0 ended at chance accuracy (val 0.3400, test 0.3000; chance is 0.3333 with "
        "3 classes): check the learning rate and the data")


def test_an_empty_class_folder_in_train_is_named_as_empty(tmp_path):
    from conftest import make_colour_folder
    from lth_keras.datasets import DataError
    from lth_keras.datasets.folders import scan_image_folder

    root = make_colour_folder(tmp_path / "colours")
    os.makedirs(os.path.join(root, "train", "violet"))  # made, never filled
    with pytest.raises(DataError, match=r"train/violet: empty class folder"):
        scan_image_folder(root)


def test_compare_runs_tells_identical_runs_from_changed_ones(tiny_tickets, tmp_path):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import compare_runs

    copy = tmp_path / "copy"
    shutil.copytree(tiny_tickets.path, copy)
    compared, problems = compare_runs.compare(tiny_tickets.path, str(copy))
    assert compared >= 3 * (TICKET_ROUNDS + 1) and problems == []
    # Another machine's speed is not a difference; another weight is.
    metrics = copy / "levels" / "level_01" / "metrics.json"
    record = json.loads(metrics.read_text())
    record["history"][0]["seconds"] += 1.0
    metrics.write_text(json.dumps(record))
    assert compare_runs.compare(tiny_tickets.path, str(copy))[1] == []
    theta = copy / "levels" / "level_01" / "theta_i.npz"
    arrays = artifacts.read_arrays(str(theta))
    name = next(iter(arrays))
    arrays[name] = arrays[name] + 1
    artifacts.write_arrays(str(theta), arrays)
    assert compare_runs.compare(tiny_tickets.path, str(copy))[1] == [
        "differs: levels/level_01/theta_i.npz"]
