"""End-to-end find_tickets runs on tiny data in the original Fashion-MNIST format."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import (HISTOLOGY, REPO, TICKET_ROUNDS, TINY_TICKETS, find_tiny_tickets,
                      find_tiny_tickets_here, in_process, kill_find_tickets_mid_level,
                      needs_histology, run_binary)
from lth_keras import lottery, weights
from lth_keras.errors import UserError
from lth_keras.lottery import tickets

pytestmark = pytest.mark.slow

ROUNDS = TICKET_ROUNDS
TINY = TINY_TICKETS
_find_tickets = find_tiny_tickets


@pytest.fixture
def tiny_run(tiny_tickets):
    return tiny_tickets


def test_run_directory_has_the_documented_layout(tiny_run):
    for name in ("config.json", "theta_0.npz", "theta_k.npz", "summary.csv", "summary.md"):
        assert os.path.isfile(tiny_run.file(name)), name
    for level in range(ROUNDS + 1):
        for name in ("mask.npz", "theta_i.npz", "metrics.json"):
            assert os.path.isfile(tiny_run.level_file(level, name)), (level, name)
        assert not os.path.exists(tiny_run.level_file(level, "checkpoint.npz"))
        assert os.listdir(tiny_run.file("tensorboard", f"level_{level:02d}"))
    config = tiny_run.config()
    assert config["hparams"]["model"] == "lenet_300_100"
    assert len(config["dataset"]["fingerprint"]) == 64
    assert config["environment"]["tensorflow"].startswith("2.")
    leftovers = [f for _, _, files in os.walk(tiny_run.path) for f in files if f.endswith(".tmp")]
    assert not leftovers
    # What each level cost: images, wall time, FLOPs; summary.md adds them up.
    for level in range(ROUNDS + 1):
        metrics = tiny_run.metrics(level)
        cost = metrics["cost"]
        assert cost["images"] == sum(e["images"] for e in metrics["history"]) > 0
        assert cost["training_flops"]["masked"] <= cost["training_flops"]["dense"]
    assert cost["training_flops"]["masked"] < cost["training_flops"]["dense"]  # pruned
    with open(tiny_run.file("summary.md")) as f:
        assert "Total over 3 level(s)" in f.read()


def test_summary_fraction_pruned_grows_by_the_rate(tiny_run):
    rows = tiny_run.summary()
    assert [r["level"] for r in rows] == list(range(ROUNDS + 1))
    alive = [int(sum(m.sum() for m in tiny_run.mask(level).values()))
             for level in range(ROUNDS + 1)]
    for before, after in zip(alive, alive[1:]):
        assert after == round(before * 0.8)
    for r, n in zip(rows, alive):
        assert r["fraction_pruned"] == pytest.approx(1 - n / alive[0])
    assert rows[0]["test_accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_each_level_starts_from_m_times_theta_k_bit_for_bit(tiny_run):
    theta_k = tiny_run.theta("k")
    theta_0 = tiny_run.theta("0")
    for level in range(ROUNDS + 1):
        masks = tiny_run.mask(level)
        start = dict(theta_0 if level == 0 else theta_k)
        for kernel_path, mask in masks.items():
            start[kernel_path] = start[kernel_path] * mask
            start[kernel_path.rsplit("/", 1)[0] + "/mask"] = mask
        assert weights.digest(start) == tiny_run.metrics(level)["start_digest"], level


def test_pruned_weights_are_exactly_zero_after_training(tiny_run):
    for level in range(1, ROUNDS + 1):
        theta_i, masks = tiny_run.theta_i(level), tiny_run.mask(level)
        for path, mask in masks.items():
            assert np.all(theta_i[path][mask == 0] == 0)
            np.testing.assert_array_equal(theta_i[path.rsplit("/", 1)[0] + "/mask"], mask)


def test_masks_shrink_monotonically(tiny_run):
    for level in range(1, ROUNDS + 1):
        before, after = tiny_run.mask(level - 1), tiny_run.mask(level)
        assert all(np.all(after[k] <= before[k]) for k in before)


def test_rerun_skips_finished_levels(tiny_run, tiny_fashion_dir, absl_log):
    stamps = {f: os.stat(tiny_run.level_file(0, f)).st_mtime_ns for f in ("theta_i.npz",)}
    find_tiny_tickets_here(tiny_fashion_dir, tiny_run.path)
    assert f"level {ROUNDS}: finished already, skipping" in absl_log()
    assert os.stat(tiny_run.level_file(0, "theta_i.npz")).st_mtime_ns == stamps["theta_i.npz"]


def test_rerun_with_other_settings_is_refused(tiny_run, tiny_fashion_dir):
    stamp = os.stat(tiny_run.config_path).st_mtime_ns
    with pytest.raises(UserError, match="prune_rate"):
        find_tiny_tickets_here(tiny_fashion_dir, tiny_run.path, "--prune_rate=0.5")
    assert os.stat(tiny_run.config_path).st_mtime_ns == stamp


def test_killed_mid_level_resumes_to_the_same_masks(tiny_run, tiny_fashion_dir, tmp_path):
    out = str(tmp_path / "killed")
    kill_find_tickets_mid_level(["--source=fashion_mnist", f"--data_dir={tiny_fashion_dir}",
                                 f"--output_dir={out}", *TINY], out)

    killed_run = find_tiny_tickets_here(tiny_fashion_dir, out)  # resumed here
    for level in range(ROUNDS + 1):
        a, b = tiny_run.mask(level), killed_run.mask(level)
        assert all(np.array_equal(a[k], b[k]) for k in a), level
        assert killed_run.metrics(level)["test"] == tiny_run.metrics(level)["test"]


def test_find_tickets_on_two_mirrored_cpu_devices(tiny_fashion_dir, tmp_path):
    # Exactness against one device (ResNet-20, synchronised BatchNorm included) is shown in
    # float64 by test_distributed.py; here the binary runs on 2 replicas and behaves like
    # the 1-replica run of the same command.
    common = ["--model=lenet_300_100", "--image_size=16", "--rounds=1", "--max_epochs=2",
              "--rewind_epoch=1", "--batch_size=32", "--learning_rate=0.002", "--deterministic"]
    flags = ["--source=fashion_mnist", f"--data_dir={tiny_fashion_dir}", *common]
    # One replica in this process; two in a process of their own (devices are set up once).
    one = in_process("find_tickets", *flags, f"--output_dir={tmp_path / 'one'}")
    proc = run_binary("lth_keras.find_tickets", *flags, f"--output_dir={tmp_path / 'two'}",
                      "--strategy=mirrored", "--cpu_devices=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = lottery.TicketRun(str(tmp_path / "two"))
    assert (one.config()["replicas"], two.config()["replicas"]) == (1, 2)
    assert one.config()["hparams_hash"] == two.config()["hparams_hash"]
    first = [r.metrics(0)["history"][0]["train_loss"] for r in (one, two)]
    assert first[1] == pytest.approx(first[0], rel=0.03)
    # Level 0's training, seen through what it moved: trained apart in float32 the weights
    # are not bit-equal, but from the same θ_0, batches and recipe the two updates must
    # point the same way with the same size (a replica that trained on other data, or a
    # gradient not averaged over the global batch, would not).
    theta_0 = one.theta("0")
    updates = [np.concatenate([(r.theta_i(0)[k] - theta_0[k]).ravel() for k in sorted(theta_0)
                               if k.endswith("kernel")]) for r in (one, two)]
    cosine = float(updates[0] @ updates[1] / np.linalg.norm(updates[0]) /
                   np.linalg.norm(updates[1]))
    size = float(np.linalg.norm(updates[1]) / np.linalg.norm(updates[0]))
    assert cosine > 0.95 and abs(size - 1) < 0.05, (cosine, size)


def test_missing_dataset_fails_fast_with_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "never"
    start = time.time()
    proc = run_binary("lth_keras.find_tickets", "--source=cifar10", f"--data_dir={empty}",
                      f"--output_dir={out}", timeout=120)
    assert proc.returncode == 1
    assert time.time() - start < 60  # of which TensorFlow's import is most
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("find_tickets: error:") and "cifar-10" in last and "--data_dir" in last
    assert not out.exists()


@pytest.mark.parametrize("flag,needle", [("--prune_rate=1.5", "--prune_rate"),
                                         ("--rewind_epoch=7", "--rewind_epoch"),
                                         ("--train_fraction=0", "--train_fraction")])
def test_impossible_flags_fail_with_one_line(tmp_path, tiny_fashion_dir, flag, needle):
    out = tmp_path / "never"
    proc = _find_tickets(tiny_fashion_dir, out, "--max_epochs=5", flag)
    assert proc.returncode == 1
    assert needle in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()


@needs_histology
def test_tickets_on_an_image_folder_target(tmp_path):
    out = str(tmp_path / "histology")
    run = in_process("find_tickets", f"--source={HISTOLOGY}", f"--output_dir={out}",
                     "--model=lenet_300_100", "--image_size=16", "--rounds=1", "--max_epochs=2",
                     "--rewind_epoch=1", "--batch_size=32", "--learning_rate=0.01",
                     "--train_fraction=0.25", "--deterministic")
    summary = run.config()["dataset"]
    assert summary["num_classes"] == 4
    assert run.finished_levels() == [0, 1]
    assert run.metrics(0)["test"]["accuracy"] > 0.25


def test_mixed_precision_run_keeps_masks(tiny_fashion_dir, tmp_path):
    out = str(tmp_path / "mixed")
    # LeNet: TensorFlow's float16 convolutions on a CPU are emulated and take minutes;
    # the JAX engine's bfloat16 check (test_engines.py) trains a masked ResNet-20.
    proc = _find_tickets(tiny_fashion_dir, out, "--mixed_precision=float16", "--rounds=1",
                         "--max_epochs=1", "--rewind_epoch=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = lottery.TicketRun(out)
    theta_i, masks = run.theta_i(1), run.mask(1)
    assert theta_i[next(iter(masks))].dtype == np.float32  # variables stay float32
    for path, mask in masks.items():
        assert np.all(theta_i[path][mask == 0] == 0)


def test_sigterm_saves_the_state_and_the_run_resumes_identically(tiny_run, tiny_fashion_dir,
                                                                 tmp_path, absl_log):
    # Slurm's preemption: SIGTERM in the middle of level 1, with no time-based checkpoint
    # due for an hour. The run stops after the step in flight, writes the checkpoint, says
    # so in one line and exits 143; the same command then finishes bit-identical.
    out = tmp_path / "preempted"
    args = [sys.executable, "-m", "lth_keras.find_tickets", "--source=fashion_mnist",
            f"--data_dir={tiny_fashion_dir}", f"--output_dir={out}", *TINY,
            "--checkpoint_every=3600", "--steps_per_execution=1"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    # After level 1's first epoch, two remain (patience 2 cannot stop it sooner).
    before = []
    for line in proc.stderr:
        before.append(line)
        if "level 1: epoch 1:" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = "".join(before) + err
    assert proc.returncode == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    checkpoint = out / "levels" / "level_01" / "checkpoint.npz"
    assert last == (f"find_tickets: interrupted by SIGTERM; its state is in {checkpoint}: run "
                    "the same command again to resume"), last
    assert checkpoint.exists() and not lottery.TicketRun(str(out)).is_finished(1)

    again = find_tiny_tickets_here(tiny_fashion_dir, str(out), "--checkpoint_every=3600")
    assert "resuming after epoch" in absl_log()
    for level in range(ROUNDS + 1):
        for read in (lottery.TicketRun.mask, lottery.TicketRun.theta_i):
            a, b = read(tiny_run, level), read(again, level)
            assert all(np.array_equal(a[k], b[k]) for k in a), level
        assert [dict(h, seconds=0) for h in tiny_run.metrics(level)["history"]] == \
            [dict(h, seconds=0) for h in again.metrics(level)["history"]]


def test_theta_k_is_the_weights_after_epoch_k_of_level_0(tiny_run, tiny_fashion_dir, tmp_path):
    # The same level 0 stopped after epoch k (= --rewind_epoch, 1 here) ends with θ_k.
    k = int(next(a for a in TINY if a.startswith("--rewind_epoch=")).split("=")[1])
    after_k = find_tiny_tickets_here(tiny_fashion_dir, str(tmp_path / "epoch_k"), "--rounds=0",
                                     f"--max_epochs={k}", "--rewind_epoch=0").theta_i(0)
    theta_k = tiny_run.theta("k")
    assert sorted(after_k) == sorted(theta_k)
    assert all(np.array_equal(after_k[p], theta_k[p]) for p in theta_k)
    assert not all(np.array_equal(theta_k[p], tiny_run.theta("0")[p]) for p in theta_k)


def test_batchnorm_statistics_are_rewound_with_the_weights(tiny_fashion_dir, tmp_path):
    # ResNet-8 has BatchNorm: a pruned level starts from θ_k's moving statistics, not
    # from those the previous level ended with. The level's recorded start (a digest of
    # every variable when it began) is m ⊙ θ_k with θ_k's statistics.
    run = find_tiny_tickets_here(tiny_fashion_dir, str(tmp_path / "bn"), "--model=resnet8",
                                 "--image_size=8", "--rounds=1", "--max_epochs=2",
                                 "--batch_size=64")
    theta_k, theta_i = run.theta("k"), run.theta_i(0)
    moving = [p for p in theta_k if p.endswith("moving_mean")]
    assert moving and any(not np.array_equal(theta_k[p], theta_i[p]) for p in moving)
    assert tickets.expected_start_digest(theta_k, run.mask(1)) == \
        run.metrics(1)["start_digest"]
    assert tickets.expected_start_digest(theta_i, run.mask(1)) != \
        run.metrics(1)["start_digest"]


def test_the_run_records_the_processor_and_accelerators_it_ran_on(tiny_run):
    """float32 results differ between processors: config.json names the one it ran on."""
    environment = tiny_run.config()["environment"]
    with open("/proc/cpuinfo") as f:
        info = f.read()
    model = next(line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name"))
    flags = set(next(line.split(":", 1)[1].split() for line in info.splitlines()
                     if line.startswith("flags")))
    assert environment["cpu"] == model
    assert environment["cpu_features"] and set(environment["cpu_features"]) <= flags
    assert environment["cpu_count"] == os.cpu_count()
    assert environment["accelerators"] == []  # no GPU here


def test_masks_are_stored_as_bool_and_read_as_float32(tiny_run):
    with np.load(tiny_run.level_file(1, "mask.npz")) as stored:
        assert {stored[k].dtype for k in stored.files} == {np.dtype(bool)}
    masks = tiny_run.mask(1)
    assert {m.dtype for m in masks.values()} == {np.dtype(np.float32)}
    theta_i = tiny_run.theta_i(1)
    for path, mask in masks.items():  # θ_i keeps its float32 mask variables
        np.testing.assert_array_equal(theta_i[path.rsplit("/", 1)[0] + "/mask"], mask)
