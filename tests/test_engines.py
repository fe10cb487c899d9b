"""The JAX engine beside the TensorFlow one: same pixels, same arithmetic, shared run
directories, resuming, bfloat16, and a JAX path that runs with TensorFlow missing.

Each engine is Keras's backend, fixed when a process imports keras; this process
runs TensorFlow, so the JAX side runs in subprocesses (KERAS_BACKEND=jax).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import (HISTOLOGY, REPO, TICKET_ROUNDS, TINY_TICKETS, expected_start_digest,
                      in_process, kill_find_tickets_mid_level, needs_histology, run_binary)
from lth_keras import lottery, pruning, weights
from lth_keras.datasets import DataError, ImageDataset, InputPipeline, Split

jax = pytest.importorskip("jax", reason="the JAX engine needs jax (pip install -e '.[dev]')")

pytestmark = pytest.mark.slow

# The JAX runs of this module: the tiny tickets of conftest, with more epochs a level
# so that a run can be killed in the middle of one.
JAX_TICKETS = [*TINY_TICKETS, "--max_epochs=8", "--patience=8"]
TRANSFER = ["--max_epochs=2", "--patience=2", "--batch_size=32", "--learning_rate=0.01",
            "--train_fraction=0.1", "--deterministic", "--seed=5"]


@pytest.fixture(scope="module")
def without_tensorflow(tmp_path_factory):
    """The environment of a JAX process in which `import tensorflow` fails."""
    shadow = tmp_path_factory.mktemp("no_tensorflow")
    for package in ("tensorflow", "tensorflow_datasets"):
        (shadow / package).mkdir()
        (shadow / package / "__init__.py").write_text(
            f"raise ImportError('{package} is not installed here (test)')\n")
    return {**os.environ, "KERAS_BACKEND": "jax",
            "PYTHONPATH": os.pathsep.join([str(shadow), REPO])}


def _find_tickets_jax(data_dir, output_dir, env, *extra, **popen):
    return run_binary("lth_keras.find_tickets", "--source=fashion_mnist",
                      f"--data_dir={data_dir}", f"--output_dir={output_dir}", *JAX_TICKETS,
                      *extra, env=env, **popen)


@pytest.fixture(scope="module")
def jax_tickets(tiny_fashion_dir, tmp_path_factory, without_tensorflow):
    """Tiny tickets found by the JAX engine with TensorFlow missing."""
    out = str(tmp_path_factory.mktemp("jax") / "tickets")
    proc = _find_tickets_jax(tiny_fashion_dir, out, without_tensorflow)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return lottery.TicketRun(out)


# ---------------------------------------------------------------------------
# The same pixels
# ---------------------------------------------------------------------------

def _dataset(size, channels, n=40, seed=0):
    rng = np.random.default_rng(seed)

    def split(m):
        return Split(rng.integers(0, 256, (m, size, size, channels), dtype=np.uint8),
                     np.arange(m) % 4)

    return ImageDataset("pixels", ("a", "b", "c", "d"), split(n), split(13), split(11))


@pytest.mark.parametrize("stored,fed", [(1, None), (1, 3), (3, None)])
def test_without_a_crop_both_engines_feed_the_stored_pixels_bit_for_bit(stored, fed):
    """crop=none: no resize and no crop; the batch is (pixels / 255 - mean) / std in float32,
    exactly, with 1 channel kept (fed=None: the data's own) or replicated to 3."""
    import jax.numpy as jnp

    from lth_keras.engines.jax_engine import make_batch

    dataset = _dataset(28, stored)
    plan = InputPipeline(dataset, image_size=28, batch_size=8, seed=3, crop="none", channels=fed)
    channels = fed or stored
    assert plan.channels == channels and plan.mean.shape == (channels,)

    def expected(images):
        pixels = images.astype(np.float32)
        if pixels.shape[-1] != channels:
            pixels = np.repeat(pixels, channels, axis=-1)
        return (pixels / np.float32(255) - plan.mean) / plan.std

    order, boxes = plan.train_plan(1)
    rows, columns = plan.sample_positions(boxes)
    make = jax.jit(lambda images, labels, indices, rows, columns, position: make_batch(
        plan, images, labels, indices, rows, columns, jnp.minimum(position, 0)))
    train = plan.split("train")
    for step, (x_tf, _) in enumerate(plan.train_epoch(1)):
        want = expected(train.images[order[step]])
        assert x_tf.shape == (8, 28, 28, channels)
        np.testing.assert_array_equal(x_tf.numpy(), want)
        x_jax, _ = make(train.images, train.labels, order[step], rows[step], columns[step],
                        np.int32(step))
        np.testing.assert_array_equal(np.asarray(x_jax), want)
    n = len(plan.split("val"))
    x_eval = np.concatenate([x.numpy() for x, _, _ in plan.evaluation("val")])[:n]
    np.testing.assert_array_equal(x_eval, expected(plan.split("val").images))


def test_without_a_crop_the_images_must_be_the_model_size():
    with pytest.raises(DataError, match="set --image_size=28"):
        InputPipeline(_dataset(28, 1), image_size=16, batch_size=8, seed=0, crop="none")
    with pytest.raises(DataError, match="3-channel images but the model takes 1"):
        InputPipeline(_dataset(28, 3), image_size=28, batch_size=8, seed=0, crop="none",
                      channels=1)


@pytest.mark.parametrize("size,channels,image_size", [(28, 1, 16), (37, 3, 32), (9, 3, 8),
                                                      (100, 3, 224)])
def test_both_engines_make_the_same_batch_pixels(size, channels, image_size):
    # Same (seed, epoch, split): the TF engine's tf.data batches and the JAX engine's
    # in-step batches (jax_engine.make_batch, jitted as in its step).
    import jax.numpy as jnp

    from lth_keras.engines.jax_engine import make_batch

    plan = InputPipeline(_dataset(size, channels), image_size=image_size, batch_size=8, seed=3)
    make = jax.jit(lambda images, labels, indices, rows, columns, position: make_batch(
        plan, images, labels, indices, rows, columns, jnp.minimum(position, 0)))

    def jax_batches(split, order, rows, columns):
        data = plan.split(split)
        return [tuple(np.asarray(t) for t in make(data.images, data.labels, o, r, c, np.int32(i)))
                for i, (o, r, c) in enumerate(zip(order, rows, columns))]

    order, boxes = plan.train_plan(2)
    rows, columns = plan.sample_positions(boxes)
    for (x_tf, y_tf), (x_jax, y_jax) in zip(plan.train_epoch(2),
                                            jax_batches("train", order, rows, columns)):
        assert np.abs(x_tf.numpy() - x_jax).max() <= 1e-4
        np.testing.assert_array_equal(y_tf.numpy(), y_jax)
    # Evaluation: every example once, centre-cropped.
    n = len(plan.split("val"))
    centre = np.broadcast_to(plan.centre_box(), (n, 4))
    rows, columns = plan.sample_positions(centre, "val")
    x_tf = np.concatenate([x.numpy() for x, _, _ in plan.evaluation("val")])[:n]
    [(x_jax, _)] = jax_batches("val", [np.arange(n)], [rows], [columns])
    assert x_tf.shape == x_jax.shape == (n, image_size, image_size, 3)
    assert np.abs(x_tf - x_jax).max() <= 1e-4


# ---------------------------------------------------------------------------
# The same arithmetic
# ---------------------------------------------------------------------------

def _engine_worker(task, out, backend, env=None):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "engine_worker.py"),
                           task, str(out)], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**(env or os.environ), "KERAS_BACKEND": backend,
                                         "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


@pytest.fixture(scope="module")
def float64_runs(tmp_path_factory):
    """engine_worker.py float64 under each engine (one process each, for both tests)."""
    folder = tmp_path_factory.mktemp("float64")
    return {backend: _engine_worker("float64", folder / f"{backend}.npz", backend)
            for backend in ("tensorflow", "jax")}


def test_both_engines_train_a_resnet_alike_in_float64(float64_runs):
    # From the same θ_0, five steps (five one-step epochs) with momentum, weight decay,
    # BatchNormalization and the epoch plan's batches: the same losses to 1e-8 and the
    # same validation metrics after each step.
    tf_run, jax_run = float64_runs["tensorflow"], float64_runs["jax"]
    assert tf_run["theta_0"] == jax_run["theta_0"]
    assert len(tf_run["train_loss"]) == 5
    np.testing.assert_allclose(jax_run["train_loss"], tf_run["train_loss"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(jax_run["val_loss"], tf_run["val_loss"], rtol=0, atol=1e-8)
    np.testing.assert_array_equal(jax_run["val_accuracy"], tf_run["val_accuracy"])
    assert len(set(np.round(tf_run["train_loss"], 6))) == 5  # it did train
    for key in (k for k in tf_run if k.startswith("w/")):
        np.testing.assert_allclose(jax_run[key], tf_run[key], rtol=0, atol=1e-9, err_msg=key)


def test_precise_bn_is_the_average_of_the_batches_statistics_on_both_engines(float64_runs):
    """--precise_bn: each BN layer's moving mean and variance become the mean, over the
    batches, of its input's batch mean and variance in training mode (computed here from
    the raw pixels), on either engine alike, and the layers keep their momentum."""
    runs = {backend: {k[len("precise_bn/"):]: v for k, v in run.items()
                      if k.startswith("precise_bn/")} for backend, run in float64_runs.items()}
    for backend, run in runs.items():
        np.testing.assert_array_equal(run["momenta_after"], run["momenta_before"])
        names = [k[len("mean/"):] for k in run if k.startswith("mean/")]
        assert len(names) == 9  # every BN layer of ResNet-8 (7 + 2 projections)
        for name in names:
            for stat in ("mean", "var"):
                # float64 up to the summation orders of two convolution libraries; the
                # moving average it replaces differs by 1e-2 here.
                np.testing.assert_allclose(run[f"engine_{stat}/{name}"], run[f"{stat}/{name}"],
                                           rtol=1e-6, atol=1e-8, err_msg=f"{backend} {name}")
    # Across engines, after an epoch of training in float64 (weights equal to 1e-9).
    for key in runs["jax"]:
        np.testing.assert_allclose(runs["jax"][key], runs["tensorflow"][key], rtol=1e-5,
                                   atol=1e-6, err_msg=key)


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_bfloat16_keeps_pruned_weights_exactly_zero(tmp_path, backend):
    run = _engine_worker("bfloat16", tmp_path / "bf16.npz", backend)
    assert str(run["policy"]) == "mixed_bfloat16"
    masks = [k[len("mask/"):] for k in run if k.startswith("mask/")]
    assert masks
    for path in masks:
        mask, before, after = run[f"mask/{path}"], run[f"before/{path}"], run[f"after/{path}"]
        assert after.dtype == np.float32  # variables stay float32
        assert np.all(after[mask == 0] == 0), path
        assert np.any(after[mask == 1] != before[mask == 1]), path
        np.testing.assert_array_equal(run[f"stored_mask/{path}"], mask)


# ---------------------------------------------------------------------------
# Shared run directories
# ---------------------------------------------------------------------------

def test_jax_tickets_without_tensorflow(jax_tickets):
    config = jax_tickets.config()
    assert config["environment"]["engine"] == "jax"
    assert "tensorflow" not in config["environment"]
    assert jax_tickets.finished_levels() == list(range(TICKET_ROUNDS + 1))
    alive = [sum(int(m.sum()) for m in jax_tickets.mask(level).values())
             for level in range(TICKET_ROUNDS + 1)]
    assert all(after == pruning.survivors(before, 0.2) for before, after in zip(alive, alive[1:]))
    for level in range(TICKET_ROUNDS + 1):
        theta_i, masks = jax_tickets.theta_i(level), jax_tickets.mask(level)
        weights.check_arrays_hold_masks(theta_i, masks)
    assert jax_tickets.metrics(0)["test"]["accuracy"] > 0.3  # 10 classes
    assert os.listdir(jax_tickets.file("tensorboard", "level_00"))


def _check_transfer(tickets, out):
    run = lottery.TransferRun(out)
    assert run.finished_levels() == tickets.finished_levels()
    theta_k = tickets.theta("k")
    for level in run.finished_levels():
        mask, tuned = tickets.mask(level), run.weights(level)
        weights.check_arrays_hold_masks(tuned, mask)
        assert run.metrics(level)["start_digest"] == expected_start_digest(run, theta_k, mask)
    return run


@needs_histology
def test_tickets_found_with_jax_transfer_with_tensorflow(jax_tickets, tmp_path):
    out = str(tmp_path / "tf_transfer")
    in_process("transfer", f"--tickets={jax_tickets.path}", f"--target={HISTOLOGY}",
               f"--output_dir={out}", *TRANSFER)  # this process runs TensorFlow
    assert _check_transfer(jax_tickets, out).config()["environment"]["engine"] == "tensorflow"


@needs_histology
def test_tickets_found_with_tensorflow_transfer_with_jax(tiny_tickets, tmp_path,
                                                         without_tensorflow):
    out = str(tmp_path / "jax_transfer")
    proc = run_binary("lth_keras.transfer", f"--tickets={tiny_tickets.path}",
                      f"--target={HISTOLOGY}", f"--output_dir={out}", *TRANSFER,
                      env=without_tensorflow)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _check_transfer(tiny_tickets, out).config()["environment"]["engine"] == "jax"


# ---------------------------------------------------------------------------
# Resuming
# ---------------------------------------------------------------------------

def test_jax_run_killed_mid_level_resumes_bit_identical(jax_tickets, tiny_fashion_dir,
                                                        tmp_path, without_tensorflow):
    out = str(tmp_path / "killed")
    # JAX's epochs of this tiny run take milliseconds: poll often.
    kill_find_tickets_mid_level(["--source=fashion_mnist", f"--data_dir={tiny_fashion_dir}",
                                 f"--output_dir={out}", *JAX_TICKETS], out, poll=0.002,
                                env=without_tensorflow)

    resumed = _find_tickets_jax(tiny_fashion_dir, out, without_tensorflow)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    killed = lottery.TicketRun(out)
    for name in ("theta_0", "theta_k"):
        a, b = jax_tickets.theta(name[-1]), killed.theta(name[-1])
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    for level in range(TICKET_ROUNDS + 1):
        for read in (lottery.TicketRun.mask, lottery.TicketRun.theta_i):
            a, b = read(jax_tickets, level), read(killed, level)
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), level
        a, b = jax_tickets.metrics(level), killed.metrics(level)
        assert [dict(h, seconds=0) for h in a["history"]] == \
            [dict(h, seconds=0) for h in b["history"]], level
        assert a["test"] == b["test"]


def test_jax_divergence_is_one_line_naming_the_epoch(tiny_fashion_dir, tmp_path,
                                                      without_tensorflow):
    proc = _find_tickets_jax(tiny_fashion_dir, str(tmp_path / "nan"), without_tensorflow,
                             "--learning_rate=1e12", "--momentum=0.9")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("find_tickets: error: the training loss became") and \
        "in epoch 1" in last, last


def test_a_tensorflow_run_killed_mid_level_resumes_on_jax(tiny_tickets, tiny_fashion_dir,
                                                         tmp_path, without_tensorflow):
    # The epoch checkpoint (model, optimizer slots by path, early-stopping state) is
    # engine-neutral: JAX continues the level TensorFlow was in, from its last epoch.
    out = str(tmp_path / "moved")
    args = ["--source=fashion_mnist", f"--data_dir={tiny_fashion_dir}", f"--output_dir={out}",
            *TINY_TICKETS]
    kill_find_tickets_mid_level(args, out)
    resumed = run_binary("lth_keras.find_tickets", *args, env=without_tensorflow)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch" in resumed.stderr
    moved = lottery.TicketRun(out)
    assert moved.finished_levels() == tiny_tickets.finished_levels()
    for name in ("0", "k"):  # written by TensorFlow before the kill
        a, b = tiny_tickets.theta(name), moved.theta(name)
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    a, b = tiny_tickets.metrics(1)["history"], moved.metrics(1)["history"]
    assert dict(a[0], seconds=0) == dict(b[0], seconds=0)  # the epoch TensorFlow trained
    assert [e["train_loss"] for e in b] == pytest.approx([e["train_loss"] for e in a],
                                                         rel=1e-4)
    last = TICKET_ROUNDS
    agree = np.mean([np.mean(tiny_tickets.mask(last)[k] == moved.mask(last)[k])
                     for k in moved.mask(last)])
    assert agree > 0.999
