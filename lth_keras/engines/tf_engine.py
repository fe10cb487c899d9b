"""The TensorFlow engine: a custom tf.function loop under tf.distribute, fed by tf.data.

Imported only when KERAS_BACKEND is tensorflow (the default).
"""

import os

import keras
import numpy as np
import tensorflow as tf

from lth_keras.engines import engine
from lth_keras.errors import ConfigurationError
from lth_keras.layers import gradient_masks, mask_gradients
from lth_keras.training import (batch_statistics, batch_sums, batchnorm_layers, cross_entropy,
                                training_loss)


class _OwnRetracing:
    """Drops TensorFlow's "triggered tf.function retracing" warning about this module's
    loops: each run (and each model) makes its own EpochLoop, whose steps are traced once
    each, which TensorFlow's detector counts as retracing of the same code. Warnings
    about any other function still show."""

    def filter(self, record):
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message and "EpochLoop." in message)


tf.get_logger().addFilter(_OwnRetracing())


class Runtime(engine.Runtime):
    """A tf.distribute strategy, precision and determinism for this process, from the
    run's settings (settings.Run; its compilation_cache is the JAX engine's: TensorFlow
    retraces its loop per run) and the recipe's (settings.Training: seed, precision)."""

    name = "tensorflow"

    def __init__(self, run, training):
        super().__init__()
        self._pipelines = {}
        if run.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.strategy = make_strategy(run.strategy, run.cpu_devices, run.worker_timeout)
        # After the strategy: listing devices starts TensorFlow's runtime, which fixes the
        # logical devices the strategy may have split the CPU into.
        self.configure(run, training)
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.is_chief = is_chief(self.strategy)

    def configure(self, run, training):
        keras.utils.set_random_seed(training.seed)
        engine.set_precision(training.mixed_precision)
        # float16's narrow exponent needs loss scaling; bfloat16 has float32's.
        self.loss_scaling = training.mixed_precision == "float16"
        # XLA: the usual speed-up for ResNets on GPUs, 1.8x slower on CPUs.
        gpus = bool(tf.config.list_logical_devices("GPU"))
        self.jit_compile = {"on": True, "off": False, "auto": gpus}[run.jit_compile]
        self.steps_per_execution = int(run.steps_per_execution)

    def release(self):
        super().release()
        self._pipelines.clear()

    def scope(self):
        return self.strategy.scope()

    def worker_values(self, value):
        return worker_values(self.strategy, value)

    def cluster_errors(self):
        if not _is_multi_worker(self.strategy):
            return ()
        # What a collective op raises when a peer worker dies or its link breaks.
        return (tf.errors.UnavailableError, tf.errors.AbortedError,
                tf.errors.CancelledError, tf.errors.DeadlineExceededError)

    def pipeline(self, plan):
        """The tf.data pipeline of `plan`, made once (it holds the dataset's tensors)."""
        from lth_keras.datasets.pipeline import InputPipeline

        key = id(plan)
        if key not in self._pipelines:
            self._pipelines[key] = (plan, InputPipeline.of(plan))
        return self._pipelines[key][1]

    def epoch_loop(self, model, optimizer, plan, training):
        return EpochLoop(self, model, optimizer, self.pipeline(plan), training)

    def environment(self):
        accelerators = [tf.config.experimental.get_device_details(gpu).get("device_name",
                                                                            gpu.name)
                        for gpu in tf.config.list_physical_devices("GPU")]
        return {"engine": self.name, "tensorflow": tf.__version__,
                "devices": [d.name for d in tf.config.list_logical_devices()],
                "accelerators": accelerators,
                "jit_compile": self.jit_compile, "steps_per_execution": self.steps_per_execution}


def make_strategy(name="default", cpu_devices=0, worker_timeout=600):
    """A tf.distribute strategy by name; call once per process, before building models.

    default: MirroredStrategy over the visible GPUs, or the CPU when there are none
      (or over `cpu_devices` logical CPUs when that is > 1).
    mirrored: MirroredStrategy over every logical device of one kind.
    one_device: the first GPU, or the CPU.
    multi_worker: MultiWorkerMirroredStrategy configured by TF_CONFIG.
    """
    if cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigurationError(
                "--strategy=multi_worker needs the TF_CONFIG environment variable")
        # TensorFlow waits for missing workers for an hour and ignores SIGTERM meanwhile.
        with engine.watchdog(worker_timeout, f"not every worker of TF_CONFIG joined within "
                                              f"{worker_timeout} s (--worker_timeout); start them all"):
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            engine.check_agreement(worker_values(strategy, 0), "rendezvous")
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(devices[0])
    if name == "default" and not gpus and cpu_devices <= 1:
        devices = devices[:1]
    return tf.distribute.MirroredStrategy(devices)


def _is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._num_workers > 1


def worker_values(strategy, value):
    """`value` as every worker holds it (one per worker), None unless multi-worker."""
    if not _is_multi_worker(strategy):
        return None
    local = tf.constant([float(value)], tf.float64)

    @tf.function
    def every_value():
        return strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0)

    return every_value().numpy()


def is_chief(strategy):
    """Only the chief writes artifacts in multi-worker training."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


class EpochLoop(engine.EpochLoop):
    """Compiled train and eval steps of one model; epochs over the tf.data pipeline.

    The host never waits for a step: `steps_per_execution` steps run in one
    tf.function call, their sums accumulate on the device (in float64, so the
    result does not depend on how steps are grouped into calls), and the host
    reads them once per epoch (and, on a terminal, once per call for the progress
    bar). With `jit_compile`, XLA compiles the per-replica step.

    The model and optimizer must have been built under the strategy's scope.
    """

    def __init__(self, runtime, model, optimizer, pipeline, training):
        self.strategy = runtime.strategy
        self.model = model
        self.optimizer = optimizer
        self.pipeline = pipeline
        self.training = training
        self.loss_scaling = runtime.loss_scaling
        self.jit_compile = runtime.jit_compile
        self.steps_per_execution = runtime.steps_per_execution
        self._kernels = [v for v in model.trainable_variables if v.path.endswith("/kernel")]
        self._train_step, self._train_steps = self._make_train_steps()
        self._eval_steps = self._make_eval_steps()
        self._batchnorm = batchnorm_layers(model)
        self._statistics = [v for layer in self._batchnorm
                            for v in (layer.moving_mean, layer.moving_variance)]
        self._statistics_steps = self._make_statistics_steps()

    def _make_train_steps(self):
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        kernels, wd = self._kernels, self.training.weight_decay
        global_batch = self.pipeline.batch_size
        scale_loss = self.loss_scaling
        masks = gradient_masks(model, model.trainable_variables)

        def step_fn(images, labels):
            with tf.GradientTape() as tape:
                logits, losses = cross_entropy(labels, model(images, training=True))
                # Each replica's gradients are summed: the weight decay is shared among them.
                loss = training_loss(losses, kernels, wd, global_batch,
                                     strategy.num_replicas_in_sync)
                scaled = optimizer.scale_loss(loss) if scale_loss else loss
            grads = mask_gradients(tape.gradient(scaled, model.trainable_variables), masks)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return batch_sums(losses, logits, labels)

        if self.jit_compile:
            step_fn = tf.function(step_fn, jit_compile=True)

        def reduced_step(images, labels):
            per_replica = strategy.run(step_fn, args=(images, labels))
            return tf.stack([strategy.reduce("SUM", s, axis=None) for s in per_replica])

        @tf.function
        def train_step(images, labels):
            """One step; its sums (benchmarks time it by reading them)."""
            return reduced_step(images, labels)

        @tf.function
        def train_steps(iterator, steps):
            sums = tf.zeros(3, tf.float64)
            for _ in tf.range(steps):
                images, labels = next(iterator)
                sums += tf.cast(reduced_step(images, labels), tf.float64)
            return sums

        return train_step, train_steps

    def _make_eval_steps(self):
        model, strategy = self.model, self.strategy

        def step_fn(images, labels, weights):
            logits, losses = cross_entropy(labels, model(images, training=False))
            return batch_sums(losses, logits, labels, weights)

        if self.jit_compile:
            step_fn = tf.function(step_fn, jit_compile=True)

        @tf.function
        def eval_steps(iterator, steps):
            sums = tf.zeros(3, tf.float64)
            for _ in tf.range(steps):
                per_replica = strategy.run(step_fn, args=next(iterator))
                sums += tf.cast(tf.stack([strategy.reduce("SUM", s, axis=None)
                                          for s in per_replica]), tf.float64)
            return sums

        return eval_steps

    def _make_statistics_steps(self):
        model, strategy, statistics = self.model, self.strategy, self._statistics

        def forward(images):
            model(images, training=True)

        @tf.function
        def statistics_steps(iterator, steps):
            # Traced under training.batch_statistics: after each training-mode call the
            # moving statistics are the batch's own (over the global batch: synchronized BN).
            sums = [tf.zeros(v.shape, tf.float32) for v in statistics]
            for _ in tf.range(steps):
                images, _ = next(iterator)
                strategy.run(forward, args=(images,))
                sums = [total + tf.cast(v.value, tf.float32)
                        for total, v in zip(sums, statistics)]
            return sums

        return statistics_steps

    def _iterate(self, dataset):
        """An iterator over `dataset`'s batches for strategy.run. With one replica (a CPU, one
        GPU) it is the dataset's own: the strategy's distributed iterator feeds each device
        through a per-device dataset whose tf.data autotuning cannot be turned off, and its
        deletion at the end of every epoch and evaluation waited for that thread's sleep
        (seconds to a minute, no CPU in use; tools/benchmark/iterator_deletion.py)."""
        if self.strategy.num_replicas_in_sync == 1:
            return iter(dataset)
        return iter(self.strategy.experimental_distribute_dataset(dataset))

    def recompute_batchnorm(self, epoch, batches):
        """Precise BN: every BatchNormalization's moving mean and variance become the
        average of their values over the first `batches` training batches of epoch
        `epoch` (its crops), at the current weights."""
        if not self._statistics:
            return
        batches = min(int(batches), self.pipeline.steps_per_epoch)
        iterator = self._iterate(self.pipeline.train_epoch(epoch, 0))
        with batch_statistics(self._batchnorm):
            sums = self._statistics_steps(iterator, tf.constant(batches))
        for variable, total in zip(self._statistics, sums):
            variable.assign(tf.cast(total / batches, variable.dtype))

    def evaluate(self, split):
        """{"loss", "accuracy"} on a split, in inference mode (one host read)."""
        dataset = self.pipeline.evaluation(split)
        steps = self.pipeline.evaluation_batches(split)
        iterator = self._iterate(dataset)
        totals = self._eval_steps(iterator, tf.constant(steps)).numpy()
        return {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}

    def train_epoch(self, epoch, *, start_step=0, sums=None, progress=None, stop=None,
                    end_step=None):
        """Trains epoch `epoch` from step `start_step` up to `end_step` (None: its end),
        with the sums so far; returns (sums: loss, correct, count, steps done). `stop()`
        true ends it early, at a call boundary."""
        steps = self.pipeline.steps_per_epoch if end_step is None else end_step
        iterator = self._iterate(self.pipeline.train_epoch(epoch, start_step))
        totals = tf.constant(np.zeros(3) if sums is None else np.asarray(sums), tf.float64)
        done = start_step
        while done < steps and not (stop and stop()):
            calls = min(self.steps_per_execution, steps - done)
            totals += self._train_steps(iterator, tf.constant(calls))
            done += calls
            if progress:
                t = totals.numpy()
                progress.update(done, [("loss", t[0] / t[2]), ("accuracy", t[1] / t[2])])
        return totals.numpy(), done

