"""The training recipe shared by every stage and both engines.

SGD with Nesterov momentum, L2 weight decay on kernels, step LR annealing at
fixed epochs (optionally inverse-time decay), early stopping on validation loss
that keeps the best weights, epoch checkpoints for resuming, TensorBoard.

The recipe lives here, backend-neutral; the compiled steps that run an epoch
come from the engine (lth_keras.engines): a tf.function loop under
tf.distribute, or a jitted JAX step.
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
from absl import logging
from keras import ops

from lth_keras import artifacts, weights
from lth_keras.errors import TrainingDivergedError
from lth_keras.signals import TrainingInterrupted, interruptions


# The factor the learning rate is multiplied by at each of --lr_boundaries (the paper's).
LR_FACTOR = 0.1


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Step annealing at epoch boundaries, times optional inverse-time decay (keras.ops:
    the same schedule inside a tf.function and a jitted JAX step)."""

    def __init__(self, base_lr, steps_per_epoch, boundaries, factor, decay):
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.boundaries = tuple(int(b) for b in boundaries)
        self.factor = float(factor)
        self.decay = float(decay)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        epoch = ops.floor(step / self.steps_per_epoch)
        passed = sum((ops.cast(epoch >= b, "float32") for b in self.boundaries),
                     ops.zeros((), "float32"))
        lr = self.base_lr * ops.power(self.factor, passed)
        return lr / (1.0 + self.decay * step)

    def lr_at_epoch(self, epoch):
        """The learning rate of the first step of `epoch` (0-based), in Python."""
        step = epoch * self.steps_per_epoch
        passed = sum(epoch >= b for b in self.boundaries)
        return self.base_lr * self.factor ** passed / (1.0 + self.decay * step)

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
    noisy_stop: bool = False  # see noisy_stop()
    budget: dict = None    # a fixed budget: {"first_step", "last_step", "steps"}

    def as_dict(self):
        out = dataclasses.asdict(self)
        if self.budget is None:  # early-stopped levels record what they always have
            del out["budget"]
        return out


class Trainer:
    """Trains one model with a fresh optimizer and LR schedule, on the process's engine.

    `training` is the recipe (settings.Training; its seed, batch size and precision
    are the plan's and the runtime's); `runtime` the engine's (lth_keras.engines.setup);
    `plan` the InputPlan of the data. The model must have been built under
    `runtime.scope()`. `checkpoint_every` (settings.Run.checkpoint_every): seconds
    between epoch checkpoints, 0 after every epoch.
    """

    def __init__(self, model, plan, training, runtime, *, checkpoint_every=600.0,
                 verbose=True, tensorboard_dir=None, hparams=None, density=None):
        self.model = model
        self.plan = plan
        self.training = training
        self.checkpoint_every = checkpoint_every
        self.runtime = runtime
        self.verbose = verbose
        self.schedule = EpochSchedule(training.learning_rate, plan.steps_per_epoch,
                                      training.lr_boundaries, LR_FACTOR, training.lr_decay)
        # Every level trains the same model on the same data with the same recipe, from a
        # fresh optimizer: the optimizer and the compiled loop are made once, and the
        # optimizer's variables are reset to their initial values (zero momentum, step 0)
        # instead of being rebuilt, so that no level retraces or recompiles the steps.
        key = ("trainer", id(model), id(plan), training)
        if key not in runtime.cache:
            optimizer = self._make_optimizer(model, training, runtime)
            initial = [np.array(v.numpy()) for v in optimizer.variables]
            runtime.cache[key] = (model, plan, optimizer, initial,
                                  runtime.epoch_loop(model, optimizer, plan, training))
        _, _, self.optimizer, initial, self.loop = runtime.cache[key]
        for variable, value in zip(self.optimizer.variables, initial):
            variable.assign(value)
        self._writer = None
        if tensorboard_dir and runtime.is_chief:
            from lth_keras.summaries import SummaryWriter

            self._writer = SummaryWriter(tensorboard_dir)
            self._write_header(hparams, density)

    def _make_optimizer(self, model, training, runtime):
        with runtime.scope():
            # Fixed names: Keras numbers unnamed optimizers (sgd_1, ...) per process, and
            # checkpoints key the optimizer's slots by their paths.
            optimizer = keras.optimizers.SGD(learning_rate=self.schedule,
                                             momentum=training.momentum,
                                             nesterov=True, name="sgd")
            if runtime.loss_scaling:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer,
                                                                name="loss_scale_optimizer")
            # Built here, in the scope, so its slots are distributed like the model.
            optimizer.build(model.trainable_variables)
        return optimizer

    # ---- loops ------------------------------------------------------------
    def evaluate(self, split):
        """{"loss", "accuracy"} on a split, in inference mode."""
        return self.loop.evaluate(split)

    def _train_epoch(self, epoch, state, end_step=None):
        """Trains epoch `epoch` from `state`'s step on (with its sums), up to `end_step`
        (None: the epoch's end); (sums, steps done)."""
        progress = None
        if self.verbose and sys.stdout.isatty():
            progress = keras.utils.Progbar(self.plan.steps_per_epoch,
                                           stateful_metrics=["loss", "accuracy"])
        sums, done = self.loop.train_epoch(epoch, start_step=state["step"], sums=state["sums"],
                                           progress=progress, stop=interruptions.requested,
                                           end_step=end_step)
        if not math.isfinite(sums[0]):
            raise TrainingDivergedError(
                f"the training loss became {sums[0]} in epoch {epoch + 1}; lower "
                "--learning_rate or check the data")
        return sums, done

    def fit(self, *, checkpoint_path=None, min_epochs=0, on_epoch_end=None,
            metrics_tag="", first_step=0, last_step=None, snapshot_steps=(), on_step=None):
        """Trains and leaves the kept weights in the model: to early stopping, keeping the
        best-validation-loss weights; or, with `last_step`, for a fixed budget.

        Args:
          checkpoint_path: an .npz of the training state, written at the end of an epoch
            once `checkpoint_every` seconds have passed since the last one, and
            whenever SIGINT/SIGTERM stop the run (then in the middle of an epoch). If it
            exists, training resumes from it (an unreadable one is reported and ignored).
          min_epochs: early stopping may not stop before this many epochs.
          on_epoch_end: called as on_epoch_end(epoch) after each 1-based epoch,
            before that epoch is checkpointed (the θ_k snapshot hook).
          metrics_tag: prefix for log lines.
          first_step: the global step training starts from (a rewind point inside level
            0's training): its epoch and batch, and the learning rate schedule at it.
          last_step: a fixed budget: train up to this global step, no early stopping, and
            keep the final weights (Frankle et al.'s copies "trained to completion").
          snapshot_steps, on_step: on_step(step) is called when training reaches each of
            these global steps (the --save_steps hook), inside an epoch too.
        """
        recipe = self.training
        steps_per_epoch = self.plan.steps_per_epoch
        fixed = last_step is not None
        # step/sums: how far into epoch `epoch` a run interrupted mid-epoch had got.
        state = {"epoch": first_step // steps_per_epoch, "history": [],
                 "best_val_loss": math.inf, "best_epoch": 0, "wait": 0,
                 "step": first_step % steps_per_epoch, "sums": None}
        if first_step:  # the schedule goes on from the rewind point; momentum starts fresh
            self.optimizer.iterations.assign(first_step)
        best = None
        if checkpoint_path and os.path.exists(checkpoint_path):
            restored = self._restore(checkpoint_path)
            if restored:
                state, best = restored
                state.setdefault("step", 0)
                state.setdefault("sums", None)
                logging.info("%sresuming after epoch %d, step %d from %s", metrics_tag,
                             state["epoch"], state["step"], checkpoint_path)
                for record in state["history"]:  # the curves so far (see summaries.py)
                    self._write_epoch(record)
        self.runtime.check_workers_agree(state["epoch"], "the epoch to resume from")

        def checkpoint():
            if checkpoint_path and self.runtime.is_chief:
                self._save(checkpoint_path, state, best)

        def interrupted(done):
            state["step"] = done
            checkpoint()
            raise TrainingInterrupted(interruptions.signum, checkpoint_path)

        last_saved = time.monotonic()
        stopped_early = False
        interruptions.training = True
        try:
            while True:
                epoch = state["epoch"]
                if fixed:
                    if epoch * steps_per_epoch + state["step"] >= last_step:
                        break
                elif epoch >= recipe.max_epochs:
                    break
                elif state["wait"] >= recipe.patience and epoch >= min_epochs:
                    stopped_early = True
                    break
                end = (min(steps_per_epoch, last_step - epoch * steps_per_epoch) if fixed
                       else steps_per_epoch)
                begin = max(0, first_step - epoch * steps_per_epoch)
                lr = self.schedule.lr_at_epoch(epoch)
                start = time.time()
                stops = sorted(s - epoch * steps_per_epoch for s in snapshot_steps
                               if state["step"] < s - epoch * steps_per_epoch < end)
                for stop in [*stops, end]:
                    sums, done = self._train_epoch(epoch, state, end_step=stop)
                    state["sums"] = [float(x) for x in sums]
                    if done < stop:  # stopped by a signal
                        interrupted(done)
                    state["step"] = done
                    if stop < end and on_step:
                        on_step(epoch * steps_per_epoch + stop)
                state.update(step=0, sums=None)
                if recipe.precise_bn:
                    # The moving statistics of a fast-moving network lag its weights; the
                    # validation loss (early stopping's signal) is then the lag's.
                    self.loop.recompute_batchnorm(epoch, recipe.precise_bn)
                val = self.evaluate("val")
                record = {"epoch": epoch + 1, "lr": lr, "train_loss": sums[0] / sums[2],
                          "train_accuracy": sums[1] / sums[2], "val_loss": val["loss"],
                          "val_accuracy": val["accuracy"],
                          "images": int((end - begin) * self.plan.batch_size),
                          "seconds": time.time() - start}
                state["history"].append(record)
                state["epoch"] = epoch + 1
                if fixed or val["loss"] < state["best_val_loss"]:
                    state.update(best_val_loss=val["loss"], best_epoch=epoch + 1, wait=0)
                    # A fixed budget keeps the final weights: written when training ends.
                    best = None if fixed else weights.snapshot(self.model)
                else:
                    state["wait"] += 1
                self._log_epoch(record, metrics_tag)
                if on_epoch_end:
                    on_epoch_end(epoch + 1)
                if interruptions.requested():
                    checkpoint()
                    raise TrainingInterrupted(interruptions.signum, checkpoint_path)
                if time.monotonic() - last_saved >= self.checkpoint_every:
                    checkpoint()
                    last_saved = time.monotonic()
        finally:
            interruptions.training = False

        if fixed:
            if not state["history"]:
                raise TrainingDivergedError(f"a budget of step {last_step} from step "
                                            f"{first_step} trains nothing")
        elif best is None:
            raise TrainingDivergedError(
                f"the validation loss was never finite in {state['epoch']} epochs")
        else:
            weights.assign(self.model, best)
        kept = next(r for r in state["history"] if r["epoch"] == state["best_epoch"])
        stopped = stopped_early or (not fixed and state["wait"] >= recipe.patience)
        result = TrainingResult(
            history=state["history"], best_epoch=state["best_epoch"], epochs=state["epoch"],
            stopped_early=stopped,
            val={"loss": kept["val_loss"], "accuracy": kept["val_accuracy"]},
            test=self.evaluate("test"),
            noisy_stop=noisy_stop(state["history"], state["best_epoch"], stopped,
                                  recipe.patience),
            budget={"first_step": first_step, "last_step": last_step,
                    "steps": last_step - first_step} if fixed else None)
        if self._writer:
            self._writer.scalar("test/accuracy", result.test["accuracy"], result.best_epoch)
            self._writer.scalar("test/loss", result.test["loss"], result.best_epoch)
            self._writer.close()
        return result

    def _write_header(self, hparams, density):
        """The run's hparams (TensorBoard's HParams tab) and its density, once."""
        if hparams:
            self._writer.hparams(hparams)
        if density is not None:
            self._writer.scalar("density", density, 0)
        self._writer.flush()

    def _log_epoch(self, record, tag):
        if self.verbose:
            logging.info("%sepoch %d: loss %.4f acc %.4f | val loss %.4f acc %.4f | "
                         "lr %.3g | %.1fs", tag, record["epoch"], record["train_loss"],
                         record["train_accuracy"], record["val_loss"],
                         record["val_accuracy"], record["lr"], record["seconds"])
        self._write_epoch(record)

    def _write_epoch(self, record):
        if self._writer:
            for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
                split, _, metric = key.partition("_")
                name = f"{split}/{metric}" if metric else key
                self._writer.scalar(name, record[key], record["epoch"])
            self._writer.flush()

    # ---- epoch checkpoints --------------------------------------------------
    # Optimizer slots are keyed by variable path, as weights are, so that either
    # engine resumes the other's checkpoint.
    def _save(self, path, state, best):
        arrays = {f"model/{k}": v for k, v in weights.snapshot(self.model).items()}
        arrays.update({f"best/{k}": v for k, v in best.items()} if best else {})
        arrays.update({f"optimizer/{v.path}": np.array(v.numpy())
                       for v in self.optimizer.variables})
        arrays["state"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
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
        optimizer_values = part("optimizer/")
        if set(optimizer_values) != {v.path for v in self.optimizer.variables}:
            raise artifacts.ArtifactError(f"{path} holds the state of another optimizer")
        weights.assign(self.model, part("model/"))
        for v in self.optimizer.variables:
            v.assign(optimizer_values[v.path])
        return state, (part("best/") or None)


def batchnorm_layers(model):
    """The model's BatchNormalization layers, in a stable order."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def batch_statistics(layers):
    """While a step is traced inside this block, a training-mode call of `layers` sets
    their moving mean and variance to the batch's own statistics (momentum 0: the
    update moving·0 + batch·1 is exact). An engine's precise-BN step averages those
    over batches; the training step, traced outside, keeps the layers' momentum."""
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


# How much training accuracy must still have risen after the best epoch for an early
# stop to count as noisy: more than the epoch-to-epoch jitter of a converged run.
NOISY_STOP_RISE = 0.02


def noisy_stop(history, best_epoch, stopped_early, patience):
    """Whether early stopping fired on noise: the kept (best-validation-loss) epoch came
    within `patience` epochs of the start, and training accuracy rose by more than
    NOISY_STOP_RISE after it. Then the validation loss went up while the network was
    still learning, which on a small split with BatchNorm is most often the eval-mode
    statistics lagging the weights (--precise_bn), not overfitting."""
    if not stopped_early or not history or best_epoch > patience:
        return False
    best = next(r for r in history if r["epoch"] == best_epoch)
    rise = history[-1]["train_accuracy"] - best["train_accuracy"]
    return bool(rise > NOISY_STOP_RISE)


def loss_dtype():
    """float32 (mixed precision included), or float64 when Keras' floatx is float64."""
    return "float64" if keras.config.floatx() == "float64" else "float32"


# ---- the loss and the metrics, for the engines' compiled steps -----------------------
# Written once, in keras.ops: both engines trace this arithmetic into their steps (a
# tf.function per replica, a jitted JAX step); they only compile, distribute and feed it.

def cross_entropy(labels, outputs):
    """(logits, per-example cross-entropy) of a batch's model outputs, both in
    loss_dtype() (the loss is float32 under mixed precision)."""
    dtype = loss_dtype()
    logits = ops.cast(outputs, dtype)
    losses = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return logits, ops.cast(losses, dtype)


def training_loss(losses, kernels, weight_decay, global_batch, replicas=1):
    """What a training step differentiates: the per-example `losses` summed and divided by
    the global batch size, plus weight_decay/2 · Σ w² over `kernels` (L2 on kernels).

    `replicas`: how many replicas' gradients are summed (TensorFlow's tf.distribute, each
    replica holding a part of the batch); the weight decay is shared among them. A step
    that differentiates the global batch (JAX) has 1.
    """
    loss = ops.sum(losses) / global_batch
    if weight_decay:
        dtype = losses.dtype
        l2 = sum(ops.sum(ops.square(ops.cast(k, dtype))) for k in kernels)
        decay = 0.5 * weight_decay * l2
        if replicas > 1:
            decay = decay / replicas
        loss = loss + decay
    return loss


def batch_sums(losses, logits, labels, weights=None):
    """Loss sum, correct count and example count of a (per-replica) batch, in the losses'
    dtype; `weights` 0 marks padding (an evaluation's last batch)."""
    dtype = losses.dtype
    correct = ops.cast(ops.equal(ops.argmax(logits, axis=-1), labels), dtype)
    if weights is None:
        return ops.sum(losses), ops.sum(correct), ops.cast(ops.shape(labels)[0], dtype)
    weights = ops.cast(weights, dtype)
    return ops.sum(losses * weights), ops.sum(correct * weights), ops.sum(weights)
