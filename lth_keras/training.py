"""The training recipe shared by every stage: a custom tf.function loop under tf.distribute.

SGD with Nesterov momentum, L2 weight decay on kernels, step LR annealing at
fixed epochs (optionally inverse-time decay), early stopping on validation loss
that keeps the best weights, per-epoch checkpoints for resuming, TensorBoard.
"""

import contextlib
import dataclasses
import json
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from lth_keras import artifacts, weights

STRATEGIES = ("default", "mirrored", "one_device", "multi_worker")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf."""


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The recipe of PROTOCOL.md "Training"; defaults are the paper's."""
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-5          # L2 on kernels: loss += wd/2 * sum(w^2)
    lr_boundaries: tuple = (50, 60, 75)  # epochs at which the LR is multiplied by lr_factor
    lr_factor: float = 0.1
    lr_decay: float = 0.0               # Keras-2 style inverse-time decay per step (off)
    max_epochs: int = 100
    patience: int = 5
    mixed_precision: bool = False


def make_strategy(name="default", cpu_devices=0, worker_timeout=600):
    """A tf.distribute strategy by name; call once per process, before building models.

    default: MirroredStrategy over the visible GPUs, or the CPU when there are none
      (or over `cpu_devices` logical CPUs when that is > 1).
    mirrored: MirroredStrategy over every logical device of one kind.
    one_device: the first GPU, or the CPU.
    multi_worker: MultiWorkerMirroredStrategy configured by TF_CONFIG.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")
    if cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable")
        # TensorFlow waits for missing workers for an hour and ignores SIGTERM meanwhile.
        with _watchdog(worker_timeout, f"not every worker of TF_CONFIG joined within "
                                       f"{worker_timeout} s (--worker_timeout); start them all"):
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            check_workers_agree(strategy, 0, "rendezvous")
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(devices[0])
    if name == "default" and not gpus and cpu_devices <= 1:
        devices = devices[:1]
    return tf.distribute.MirroredStrategy(devices)


class WorkerError(RuntimeError):
    """The workers of a multi-worker run disagree, or one of them is gone."""


# A separate process, because TensorFlow blocks in C++ holding the GIL while it waits
# for workers: no thread or signal handler of ours would run.
_WATCHDOG = """
import os, sys, time
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
end = time.time() + seconds
while time.time() < end:
    time.sleep(0.5)
    if os.getppid() != parent:
        sys.exit(0)
sys.stderr.write(message + "\\n")
os.kill(parent, 9)
"""


@contextlib.contextmanager
def _watchdog(seconds, message):
    """Kills this process with `message` on stderr if the block takes longer than `seconds`."""
    import subprocess

    program = os.path.basename(sys.argv[0]).removesuffix(".py")
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()),
                                 str(seconds), f"{program}: error: {message}"])
    try:
        yield
    finally:
        watchdog.kill()
        watchdog.wait()


def _is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._num_workers > 1


def check_workers_agree(strategy, value, what):
    """Raises WorkerError unless every worker holds the same `value` (e.g. finished levels).

    Workers that resumed from different states would train different levels
    and exchange gradients of different models; this is also the rendezvous.
    """
    if not _is_multi_worker(strategy):
        return
    local = tf.constant([float(value)], tf.float64)

    @tf.function
    def every_value():
        return strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0)

    values = every_value().numpy()
    low, high = values.min(), values.max()
    if low != high:
        raise WorkerError(f"the workers disagree on {what} ({low:g} vs {high:g}): every "
                          "worker must see the same run directory (a shared filesystem)")


def is_chief(strategy):
    """Only the chief writes artifacts in multi-worker training."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Step annealing at epoch boundaries, times optional inverse-time decay."""

    def __init__(self, base_lr, steps_per_epoch, boundaries, factor, decay):
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.boundaries = tuple(int(b) for b in boundaries)
        self.factor = float(factor)
        self.decay = float(decay)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        epoch = tf.floor(step / self.steps_per_epoch)
        passed = tf.add_n([tf.cast(epoch >= b, tf.float32) for b in self.boundaries]
                          + [tf.constant(0.0)])
        lr = self.base_lr * tf.pow(self.factor, passed)
        return lr / (1.0 + self.decay * step)

    def lr_at_epoch(self, epoch):
        return float(self(epoch * self.steps_per_epoch))

    def get_config(self):
        return dict(base_lr=self.base_lr, steps_per_epoch=self.steps_per_epoch,
                    boundaries=self.boundaries, factor=self.factor, decay=self.decay)


@dataclasses.dataclass
class TrainingResult:
    history: list          # one dict of metrics per epoch
    best_epoch: int        # 1-based epoch whose weights were kept
    epochs: int            # epochs run
    stopped_early: bool
    val: dict              # {"loss", "accuracy"} of the kept weights
    test: dict

    def as_dict(self):
        return dataclasses.asdict(self)


class Trainer:
    """Trains one model with a fresh optimizer and LR schedule.

    The model must have been built under `strategy.scope()`.
    """

    def __init__(self, model, pipeline, config, strategy, *, tensorboard_dir=None,
                 hparams=None, density=None, verbose=True):
        self.model = model
        self.pipeline = pipeline
        self.config = config
        self.strategy = strategy
        self.verbose = verbose
        self.chief = is_chief(strategy)
        self.schedule = EpochSchedule(config.learning_rate, pipeline.steps_per_epoch,
                                      config.lr_boundaries, config.lr_factor, config.lr_decay)
        with strategy.scope():
            optimizer = keras.optimizers.SGD(learning_rate=self.schedule,
                                             momentum=config.momentum,
                                             nesterov=config.nesterov)
            if config.mixed_precision:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            # Built here, in the scope, so its slots are mirrored like the model.
            optimizer.build(model.trainable_variables)
        self.optimizer = optimizer
        self._kernels = [v for v in model.trainable_variables
                         if v.path.endswith("/kernel")]
        self._writer = (tf.summary.create_file_writer(tensorboard_dir)
                        if tensorboard_dir and self.chief else None)
        if self._writer:
            self._write_header(hparams, density)
        self._train_step = self._make_train_step()
        self._eval_step = self._make_eval_step()

    # ---- compiled steps -------------------------------------------------
    def _make_train_step(self):
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        kernels, wd = self._kernels, self.config.weight_decay
        global_batch = self.pipeline.batch_size
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                             reduction=None)
        scale_loss = self.config.mixed_precision

        dtype = _loss_dtype()

        def step_fn(images, labels):
            with tf.GradientTape() as tape:
                logits = tf.cast(model(images, training=True), dtype)
                per_example = tf.cast(loss_fn(labels, logits), dtype)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                if wd:
                    l2 = tf.add_n([tf.reduce_sum(tf.square(tf.cast(k, dtype)))
                                   for k in kernels])
                    # Divided by the replica count because gradients are summed.
                    loss += 0.5 * wd * l2 / strategy.num_replicas_in_sync
                scaled = optimizer.scale_loss(loss) if scale_loss else loss
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return _batch_sums(per_example, logits, labels)

        @tf.function
        def train_step(images, labels):
            sums = strategy.run(step_fn, args=(images, labels))
            return [strategy.reduce("SUM", s, axis=None) for s in sums]

        return train_step

    def _make_eval_step(self):
        model, strategy = self.model, self.strategy
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                             reduction=None)

        dtype = _loss_dtype()

        def step_fn(images, labels):
            logits = tf.cast(model(images, training=False), dtype)
            return _batch_sums(tf.cast(loss_fn(labels, logits), dtype), logits, labels)

        @tf.function
        def eval_step(images, labels):
            sums = strategy.run(step_fn, args=(images, labels))
            return [strategy.reduce("SUM", s, axis=None) for s in sums]

        return eval_step

    # ---- loops ------------------------------------------------------------
    def evaluate(self, split):
        """{"loss", "accuracy"} on a split, in inference mode."""
        totals = np.zeros(3)
        dataset = self.strategy.experimental_distribute_dataset(self.pipeline.evaluation(split))
        for images, labels in dataset:
            totals += [float(t) for t in self._eval_step(images, labels)]
        return {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}

    def _train_epoch(self, epoch):
        steps = self.pipeline.steps_per_epoch
        progbar = keras.utils.Progbar(steps, verbose=1 if sys.stdout.isatty() else 0,
                                      stateful_metrics=["loss", "accuracy"]) \
            if self.verbose else None
        totals = np.zeros(3)
        dataset = self.strategy.experimental_distribute_dataset(
            self.pipeline.train_epoch(epoch))
        for step, (images, labels) in enumerate(dataset, start=1):
            totals += [float(t) for t in self._train_step(images, labels)]
            if not math.isfinite(totals[0]):
                raise TrainingDivergedError(
                    f"the training loss became {totals[0]} at epoch {epoch + 1}, step {step}; "
                    "lower --learning_rate or check the data")
            if progbar:
                progbar.update(step, [("loss", totals[0] / totals[2]),
                                      ("accuracy", totals[1] / totals[2])])
        return {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}

    def fit(self, *, checkpoint_path=None, min_epochs=0, on_epoch_end=None,
            metrics_tag=""):
        """Trains to early stopping and leaves the best-validation-loss weights in the model.

        Args:
          checkpoint_path: an .npz written after every epoch; if it exists, training
            resumes from it (an unreadable one is reported and ignored).
          min_epochs: early stopping may not stop before this many epochs.
          on_epoch_end: called as on_epoch_end(epoch) after each 1-based epoch,
            before that epoch is checkpointed (the θ_k snapshot hook).
          metrics_tag: prefix for log lines.
        """
        cfg = self.config
        state = {"epoch": 0, "history": [], "best_val_loss": math.inf, "best_epoch": 0,
                 "wait": 0}
        best = None
        if checkpoint_path and os.path.exists(checkpoint_path):
            restored = self._restore(checkpoint_path)
            if restored:
                state, best = restored
                logging.info("%sresuming after epoch %d from %s", metrics_tag,
                             state["epoch"], checkpoint_path)
        check_workers_agree(self.strategy, state["epoch"], "the epoch to resume from")

        stopped_early = False
        while state["epoch"] < cfg.max_epochs:
            if state["wait"] >= cfg.patience and state["epoch"] >= min_epochs:
                stopped_early = True
                break
            epoch = state["epoch"]
            lr = self.schedule.lr_at_epoch(epoch)
            start = time.time()
            train = self._train_epoch(epoch)
            val = self.evaluate("val")
            record = {"epoch": epoch + 1, "lr": lr, "train_loss": train["loss"],
                      "train_accuracy": train["accuracy"], "val_loss": val["loss"],
                      "val_accuracy": val["accuracy"], "seconds": time.time() - start}
            state["history"].append(record)
            state["epoch"] = epoch + 1
            if val["loss"] < state["best_val_loss"]:
                state.update(best_val_loss=val["loss"], best_epoch=epoch + 1, wait=0)
                best = weights.snapshot(self.model)
            else:
                state["wait"] += 1
            self._log_epoch(record, metrics_tag)
            if on_epoch_end:
                on_epoch_end(epoch + 1)
            if checkpoint_path and self.chief:
                self._save(checkpoint_path, state, best)

        if best is None:
            raise TrainingDivergedError(
                f"the validation loss was never finite in {state['epoch']} epochs")
        weights.assign(self.model, best)
        kept = state["history"][state["best_epoch"] - 1]
        result = TrainingResult(
            history=state["history"], best_epoch=state["best_epoch"], epochs=state["epoch"],
            stopped_early=stopped_early or state["wait"] >= cfg.patience,
            val={"loss": kept["val_loss"], "accuracy": kept["val_accuracy"]},
            test=self.evaluate("test"))
        if self._writer:
            with self._writer.as_default():
                tf.summary.scalar("test/accuracy", result.test["accuracy"], step=result.best_epoch)
                tf.summary.scalar("test/loss", result.test["loss"], step=result.best_epoch)
            self._writer.flush()
        return result

    def _write_header(self, hparams, density):
        """The run's hparams (TensorBoard's HParams tab) and its density, once."""
        from tensorboard.plugins.hparams import api as hp

        with self._writer.as_default():
            if hparams:
                # The plugin takes scalars and strings only.
                hp.hparams({k: v if isinstance(v, (bool, int, float, str)) else str(v)
                            for k, v in hparams.items()})
            if density is not None:
                tf.summary.scalar("density", density, step=0)
        self._writer.flush()

    def _log_epoch(self, record, tag):
        if self.verbose:
            logging.info("%sepoch %d: loss %.4f acc %.4f | val loss %.4f acc %.4f | "
                         "lr %.3g | %.1fs", tag, record["epoch"], record["train_loss"],
                         record["train_accuracy"], record["val_loss"],
                         record["val_accuracy"], record["lr"], record["seconds"])
        if self._writer:
            with self._writer.as_default():
                for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
                    split, _, metric = key.partition("_")
                    name = f"{split}/{metric}" if metric else key
                    tf.summary.scalar(name, record[key], step=record["epoch"])

    # ---- epoch checkpoints --------------------------------------------------
    def _save(self, path, state, best):
        arrays = {f"model/{k}": v for k, v in weights.snapshot(self.model).items()}
        arrays.update({f"best/{k}": v for k, v in best.items()} if best else {})
        for i, v in enumerate(self.optimizer.variables):
            arrays[f"optimizer/{i:04d}"] = np.array(v.numpy())
        arrays["state"] = np.frombuffer(
            json.dumps(state).encode(), dtype=np.uint8)
        artifacts.write_arrays(path, arrays)

    def _restore(self, path):
        try:
            arrays = artifacts.read_arrays(path)
            state = json.loads(arrays.pop("state").tobytes().decode())
        except (artifacts.ArtifactError, KeyError, ValueError) as e:
            logging.warning("ignoring the unreadable checkpoint %s (%s); the level restarts",
                            path, e)
            return None
        def part(prefix):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        weights.assign(self.model, part("model/"))
        optimizer_values = part("optimizer/")
        if len(optimizer_values) != len(self.optimizer.variables):
            raise artifacts.ArtifactError(f"{path} holds the state of another optimizer")
        for i, v in enumerate(self.optimizer.variables):
            v.assign(optimizer_values[f"{i:04d}"])
        return state, (part("best/") or None)


def _loss_dtype():
    """float32 (mixed precision included), or float64 when Keras' floatx is float64."""
    return tf.float64 if keras.config.floatx() == "float64" else tf.float32


def _batch_sums(per_example_loss, logits, labels):
    """Loss sum, correct count and example count of a (per-replica) batch."""
    dtype = per_example_loss.dtype
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels),
                      dtype)
    count = tf.cast(tf.shape(labels)[0], dtype)
    return tf.reduce_sum(per_example_loss), tf.reduce_sum(correct), count
