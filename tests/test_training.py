"""The training loop: masks hold under momentum and weight decay, schedules, failures."""

import dataclasses
import os
import signal

import numpy as np
import pytest

from lth_keras import engines, models, settings, training, weights
from lth_keras.datasets import InputPlan, load_source


@pytest.fixture(scope="module")
def pipeline(tiny_fashion_dir):
    dataset = load_source("fashion_mnist", data_dir=tiny_fashion_dir, seed=0)
    return InputPlan(dataset, image_size=16, batch_size=32, seed=0)


@pytest.fixture(scope="module")
def strategy():
    """The engine's runtime (this process runs the default, TensorFlow)."""
    return engines.setup(settings.Run(deterministic=True))


def _model(strategy, name="resnet8", seed=0):
    with strategy.scope():
        return models.build_model(name, input_shape=(16, 16, 3), num_classes=10, seed=seed)


def test_masked_weights_stay_exactly_zero_with_momentum_and_weight_decay(pipeline, strategy):
    model = _model(strategy)
    rng = np.random.default_rng(0)
    masks = {k: (rng.random(v.shape) < 0.3).astype(np.float32)
             for k, v in weights.get_masks(model).items()}
    weights.set_masks(model, masks)
    before = weights.get_kernels(model)
    config = settings.Training(learning_rate=0.05, momentum=0.9, weight_decay=1e-2,
                               max_epochs=2, patience=5)
    trainer = training.Trainer(model, pipeline, config, strategy, verbose=False)
    trainer.fit()
    after = weights.get_kernels(model)
    for path, mask in masks.items():
        assert np.all(after[path][mask == 0] == 0), path
        assert np.any(after[path][mask == 1] != before[path][mask == 1]), path
        np.testing.assert_array_equal(weights.get_masks(model)[path], mask)


def test_fit_keeps_the_best_validation_epoch(pipeline, strategy):
    model = _model(strategy, "lenet_300_100")
    config = settings.Training(learning_rate=0.01, max_epochs=4, patience=1)
    result = training.Trainer(model, pipeline, config, strategy, verbose=False).fit()
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert result.val["loss"] == min(losses)
    # the weights left in the model are the kept ones: evaluating them gives the same loss
    again = training.Trainer(model, pipeline, config, strategy, verbose=False).evaluate("val")
    assert again["loss"] == pytest.approx(result.val["loss"], rel=1e-5)
    assert 0.0 <= result.test["accuracy"] <= 1.0


def test_min_epochs_delays_early_stopping(pipeline, strategy):
    # With a learning rate of 0 the validation loss never improves after epoch 1, so
    # patience 1 stops at epoch 2; min_epochs=4 must hold it to exactly 4.
    config = settings.Training(learning_rate=0.0, max_epochs=6, patience=1)
    runs = [training.Trainer(_model(strategy, "lenet_300_100"), pipeline, config, strategy,
                             verbose=False).fit(min_epochs=m) for m in (0, 4)]
    assert [r.epochs for r in runs] == [2, 4]
    assert [r.stopped_early for r in runs] == [True, True]


def test_nan_loss_stops_with_a_clear_error(pipeline, strategy):
    model = _model(strategy, "lenet_300_100")
    config = settings.Training(learning_rate=1e12, momentum=0.9, max_epochs=3)
    with pytest.raises(training.TrainingDivergedError, match="loss became"):
        training.Trainer(model, pipeline, config, strategy, verbose=False).fit()


def test_the_engine_options_are_checked_once_by_the_settings():
    # The flags are enums; the Python API's options and settings objects are checked by
    # Run.check and Training.check, which the engines rely on.
    with pytest.raises(settings.SettingsError, match="--strategy must be one of default, "
                                                     "mirrored, one_device, multi_worker"):
        settings.Run(strategy="tpu").check()
    with pytest.raises(settings.SettingsError, match="--jit_compile must be one of"):
        settings.Run(jit_compile="yes").check()
    with pytest.raises(settings.SettingsError, match="--mixed_precision must be one of off, "
                                                     "bfloat16, float16, got 'fp8'"):
        settings.Training(mixed_precision="fp8").check()


def test_a_process_keeps_its_devices_and_takes_each_run_s_recipe(monkeypatch):
    class Made:
        devices_settings = settings.Run()

        def release(self):
            self.released = True

        def configure(self, run, training):
            self.configured = run, training

    made = Made()
    monkeypatch.setattr(engines, "_process_runtime", made)
    run, recipe = settings.Run(jit_compile="on", steps_per_execution=4), settings.Training(seed=3)
    assert engines.runtime(run, recipe) is made
    assert made.released and made.configured == (run, recipe)
    with pytest.raises(engines.ConfigurationError, match=r"other devices: cpu_devices=2 \(was "
                                                         r"0\), deterministic=True"):
        engines.runtime(settings.Run(cpu_devices=2, deterministic=True))


def test_schedule_anneals_at_epoch_boundaries_and_decays():
    schedule = training.EpochSchedule(0.1, steps_per_epoch=10, boundaries=(2, 4), factor=0.1,
                                      decay=0.0)
    assert [round(schedule.lr_at_epoch(e), 8) for e in range(6)] == \
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    decayed = training.EpochSchedule(0.1, 10, (), 0.1, decay=0.5)
    assert float(decayed(4)) == pytest.approx(0.1 / 3)


def test_checkpoint_resume_continues_identically(pipeline, strategy, tmp_path):
    config = settings.Training(learning_rate=0.01, max_epochs=3, patience=5)

    straight = _model(strategy, "lenet_300_100", seed=5)
    full = training.Trainer(straight, pipeline, config, strategy, verbose=False).fit()

    resumed = _model(strategy, "lenet_300_100", seed=5)
    ckpt = str(tmp_path / "ckpt.npz")
    short = dataclasses.replace(config, max_epochs=2)
    training.Trainer(resumed, pipeline, short, strategy, checkpoint_every=0,
                     verbose=False).fit(checkpoint_path=ckpt)
    result = training.Trainer(resumed, pipeline, config, strategy, checkpoint_every=0,
                              verbose=False).fit(checkpoint_path=ckpt)
    assert result.history == [dict(h, seconds=r["seconds"]) for h, r in
                              zip(full.history, result.history)]
    a, b = weights.snapshot(straight), weights.snapshot(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_corrupt_checkpoint_is_reported_and_ignored(pipeline, strategy, tmp_path, caplog):
    ckpt = tmp_path / "ckpt.npz"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    model = _model(strategy, "lenet_300_100")
    config = settings.Training(learning_rate=0.01, max_epochs=1)
    with caplog.at_level("WARNING"):
        result = training.Trainer(model, pipeline, config, strategy,
                                  verbose=False).fit(checkpoint_path=str(ckpt))
    assert result.epochs == 1
    reports = [r.getMessage() for r in caplog.records if "ignoring the unreadable" in
               r.getMessage()]
    assert len(reports) == 1 and str(ckpt) in reports[0], caplog.text


def test_checkpoints_are_written_by_time_not_by_epoch(pipeline, strategy, tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    model = _model(strategy, "lenet_300_100")
    config = settings.Training(learning_rate=0.01, max_epochs=2)
    training.Trainer(model, pipeline, config, strategy, checkpoint_every=3600,
                     verbose=False).fit(checkpoint_path=str(ckpt))
    assert not ckpt.exists()


class _StopAfter:
    """Stands in for the signal handler: a stop request after `calls` checks."""

    def __init__(self, calls):
        self.calls, self.signum = calls, None

    def requested(self):
        self.calls -= 1
        if self.calls < 0:
            self.signum = signal.SIGTERM
        return self.signum is not None


def test_a_signal_mid_epoch_saves_a_checkpoint_that_resumes_bit_identical(
        pipeline, strategy, tmp_path, monkeypatch):
    config = settings.Training(learning_rate=0.01, max_epochs=3)
    straight = _model(strategy, "lenet_300_100", seed=7)
    full = training.Trainer(straight, pipeline, config, strategy, verbose=False).fit()

    ckpt = str(tmp_path / "ckpt.npz")
    monkeypatch.setattr(strategy, "steps_per_execution", 1)  # a check after every step
    resumed = _model(strategy, "lenet_300_100", seed=7)
    monkeypatch.setattr(training, "interruptions", _StopAfter(pipeline.steps_per_epoch + 3))
    with pytest.raises(training.TrainingInterrupted, match="SIGTERM") as stopped:
        training.Trainer(resumed, pipeline, config, strategy, checkpoint_every=3600,
                         verbose=False).fit(checkpoint_path=ckpt)
    assert stopped.value.checkpoint == ckpt and os.path.exists(ckpt)
    monkeypatch.undo()
    result = training.Trainer(resumed, pipeline, config, strategy, checkpoint_every=3600,
                              verbose=False).fit(checkpoint_path=ckpt)
    assert [dict(h, seconds=0) for h in result.history] == \
        [dict(h, seconds=0) for h in full.history]
    a, b = weights.snapshot(straight), weights.snapshot(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_signal_that_came_before_training_stops_it_before_a_step(pipeline, strategy,
                                                                    monkeypatch):
    from lth_keras import signals

    model = _model(strategy, "lenet_300_100")
    before = weights.snapshot(model)
    monkeypatch.setattr(signals.interruptions, "signum", signal.SIGTERM)
    config = settings.Training(learning_rate=0.01, max_epochs=1)
    with pytest.raises(training.TrainingInterrupted, match="SIGTERM"):
        training.Trainer(model, pipeline, config, strategy, verbose=False).fit()
    after = weights.snapshot(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not signals.interruptions.training


@pytest.mark.slow
def test_xla_trains_like_the_graph_without_it(pipeline, strategy, monkeypatch):
    # --jit_compile=on on a CPU (auto leaves it off there): the same arithmetic fused by
    # another compiler. From the same θ_0 on the same batches, the first steps' losses and
    # the validation loss after them agree to float32 rounding (an untrained ResNet's
    # chaotic early steps then amplify it, as across devices or engines).
    from lth_keras.datasets.pipeline import InputPipeline

    config = settings.Training(learning_rate=0.01)
    batches = list(InputPipeline.of(pipeline).train_epoch(0).take(3))
    results = {}
    for jit in (False, True):
        monkeypatch.setattr(strategy, "jit_compile", jit)
        model = _model(strategy, seed=11)
        trainer = training.Trainer(model, pipeline, config, strategy, verbose=False)
        losses = [float(s[0] / s[2]) for s in
                  (trainer.loop._train_step(x, y).numpy() for x, y in batches)]
        results[jit] = losses, trainer.evaluate("val")["loss"]
    (plain, plain_val), (xla, xla_val) = results[False], results[True]
    assert xla[0] == pytest.approx(plain[0], rel=1e-5)
    assert xla == pytest.approx(plain, rel=1e-4)
    assert xla_val == pytest.approx(plain_val, rel=1e-3)


def test_weight_decay_is_lambda_times_w_on_kernels_only(pipeline, strategy):
    # One SGD step (momentum 0) on one batch, with and without weight decay λ, from the
    # same weights: the difference must be -lr·λ·w on every conv and dense kernel, and
    # nothing on biases and BatchNorm (γ, β and the moving statistics).
    from lth_keras.datasets import Split

    train = pipeline.dataset.train
    one_batch = dataclasses.replace(pipeline.dataset,
                                    train=Split(train.images[:32], train.labels[:32]))
    plan = InputPlan(one_batch, image_size=16, batch_size=32, seed=0)
    assert plan.steps_per_epoch == 1
    lr, decay = 0.1, 0.01
    start, after = None, {}
    for wd in (0.0, decay):
        model = _model(strategy)
        start = start or weights.snapshot(model)
        config = settings.Training(learning_rate=lr, momentum=0.0, weight_decay=wd,
                                   max_epochs=1)
        training.Trainer(model, plan, config, strategy, verbose=False).loop.train_epoch(0)
        after[wd] = weights.snapshot(model)
    kernels = [p for p in start if p.endswith("/kernel")]
    assert kernels and any(p.endswith("/gamma") for p in start)
    for path, w in start.items():
        difference = after[decay][path] - after[0.0][path]
        if path in kernels:
            np.testing.assert_allclose(difference, -lr * decay * w, rtol=1e-3, atol=1e-7,
                                       err_msg=path)
        else:
            np.testing.assert_array_equal(difference, 0, err_msg=path)


def test_tensorboard_shows_each_epoch_once_after_a_resume(pipeline, strategy, tmp_path):
    # A run logs epochs 1-2 but its last checkpoint is after epoch 1 (it was killed before
    # the next): resumed, it logs epoch 2 again. TensorBoard must show each epoch once.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board, ckpt = str(tmp_path / "board"), str(tmp_path / "ckpt.npz")
    config = settings.Training(learning_rate=0.01, max_epochs=1, patience=5)
    model = _model(strategy, "lenet_300_100", seed=2)

    def fit(max_epochs):
        return training.Trainer(model, pipeline, dataclasses.replace(config, max_epochs=max_epochs),
                                strategy, checkpoint_every=0, verbose=False,
                                tensorboard_dir=board).fit(checkpoint_path=ckpt)

    fit(1)
    after_epoch_1 = open(ckpt, "rb").read()
    fit(2)  # logs epoch 2, then "dies": its epoch-2 checkpoint is lost
    with open(ckpt, "wb") as f:
        f.write(after_epoch_1)
    result = fit(3)
    reader = EventAccumulator(board)
    reader.Reload()
    points = [(s.step, s.value) for s in reader.Scalars("val/loss")]
    assert [step for step, _ in points] == [1, 2, 3], points
    assert [value for _, value in points] == pytest.approx(
        [h["val_loss"] for h in result.history])


def test_noisy_stop_is_read_from_the_curves():
    def history(train, val, first_epoch=1):
        return [{"epoch": e, "train_accuracy": a, "val_loss": v}
                for e, a, v in zip(range(first_epoch, first_epoch + len(train)), train, val)]

    # Best at epoch 1 of 3 with patience 2, training accuracy 0.47 -> 0.97: flagged.
    assert training.noisy_stop(history([0.47, 0.58, 0.97], [1, 2, 3]), 1, True, 2)
    # The same curves but the run did not stop early (it reached max_epochs): not.
    assert not training.noisy_stop(history([0.47, 0.58, 0.97], [1, 2, 3]), 1, False, 2)
    # Best epoch beyond patience: an ordinary stop.
    assert not training.noisy_stop(history([0.4, 0.5, 0.6, 0.7, 0.8], [5, 4, 3, 4, 5]), 3, True, 2)
    # Training accuracy flat after the best epoch (it had converged): not noise.
    assert not training.noisy_stop(history([0.90, 0.91, 0.905], [1, 2, 3]), 1, True, 2)
    # A history that starts at epoch 2 (it began mid-training): the best epoch is found by
    # its number, not its position (0.47 at epoch 2 -> 0.97).
    assert training.noisy_stop(history([0.47, 0.95, 0.97], [1, 2, 3], first_epoch=2), 2, True, 2)


@pytest.mark.slow
def test_a_stop_on_a_lagging_validation_loss_is_flagged_and_precise_bn_prevents_it(
        colour_target, tmp_path, absl_log):
    """A run built to stop on lagging BatchNorm statistics: ResNet-20 with Keras's default BN
    momentum 0.99 at lr 0.1 on a 64-image target (4 steps an epoch), so the eval-mode
    validation loss explodes while the network learns. It stops at epoch 3 with its best
    at epoch 1 and ends at chance: flagged in metrics.json and warned about. With
    --precise_bn the statistics are re-estimated before each validation and the same run
    trains on."""
    from conftest import in_process

    common = ["--model=resnet20", "--image_size=16", "--rounds=0", "--max_epochs=8",
              "--patience=2", "--batch_size=16", "--learning_rate=0.1", "--bn_momentum=0.99",
              "--deterministic", f"--source={colour_target}"]
    runs = {}
    for name, extra in (("lagging", []), ("precise", ["--precise_bn=4"])):
        logged = len(absl_log())
        run = in_process("find_tickets", *common, *extra, f"--output_dir={tmp_path / name}")
        runs[name] = (run.metrics(0), absl_log()[logged:])
    lagging, stderr = runs["lagging"]
    assert lagging["noisy_stop"] is True and lagging["best_epoch"] == 1
    assert lagging["stopped_early"] and lagging["epochs"] == 3
    assert "level 0 stopped early on a noisy validation loss" in stderr
    precise, stderr = runs["precise"]
    assert precise["noisy_stop"] is False and "noisy validation loss" not in stderr
    assert precise["best_epoch"] > 3
    assert precise["test"]["accuracy"] > lagging["test"]["accuracy"] + 0.5
