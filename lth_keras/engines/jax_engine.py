"""The JAX engine: one jitted step over stateless variables, the dataset on the accelerators.

Imported only when KERAS_BACKEND=jax; needs keras and JAX, never TensorFlow.

- The dataset's splits live on the devices as uint8, replicated. A step gathers
  its batch, samples the plan's crops (the corner-aligned bilinear arithmetic
  of tf.image.crop_and_resize), makes grayscale RGB and normalises, all inside
  the jitted step: no image crosses from host to device per step. The epoch
  plan (indices and sample positions) is uploaded once per epoch.
- The step carries the model's and optimizer's values, the metric sums and its
  position in the epoch; the host reads the sums once per epoch, and checks for
  NaN there.
- Data parallel over every device with keras.distribution.DataParallel: the
  batch is sharded, variables are replicated, and the compiler adds the
  all-reduces. BatchNormalization's batch mean is then over the global batch,
  which is what synchronized BatchNormalization is on TensorFlow.
- Several hosts: jax.distributed.initialize from Slurm's (or JAX's) environment;
  only process 0 writes.
"""

import json
import os
import random
import sys

import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lth_keras.engines import engine
from lth_keras.errors import ConfigurationError
from lth_keras.layers import gradient_masks, mask_gradients
from lth_keras.training import (batch_statistics, batch_sums, batchnorm_layers, cross_entropy,
                                loss_dtype, training_loss)

_PROGRESS_READS = 20  # host reads of the running metrics per epoch, on a terminal only


class Runtime(engine.Runtime):
    """Devices, precision and data parallelism of this process, on JAX, from the run's
    settings (settings.Run; its steps_per_execution is the TensorFlow engine's: the host
    never waits for a step here) and the recipe's (settings.Training: seed, precision)."""

    name = "jax"

    def __init__(self, run, training):
        super().__init__()
        self._device_data = {}
        # Compiled steps by step_signature: kept across the runs of a process (release()
        # forgets models and data, not compilations).
        self._compiled = {}
        self.configure(run, training)
        strategy, cpu_devices = run.strategy, run.cpu_devices
        # These are read when JAX first starts its backends, which has not happened yet.
        if cpu_devices > 1:
            try:
                jax.config.update("jax_num_cpu_devices", cpu_devices)
            except RuntimeError as e:
                raise ConfigurationError(f"--cpu_devices={cpu_devices}: JAX had already "
                                         f"started its devices ({e})") from e
        if run.deterministic:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                       + " --xla_gpu_deterministic_ops=true").strip()
        cache = engine.compilation_cache_dir(run.compilation_cache)
        if cache:
            # Every step of a run compiles in seconds (ResNet-50: 20 s on an H200), and a
            # grid starts many processes of the same shapes: the second one loads them.
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        self.compilation_cache = cache
        if keras.config.floatx() == "float64":
            _enable_float64()
        if strategy == "multi_worker":
            _join_cluster(run.worker_timeout)

        devices = jax.local_devices()[:1] if strategy == "one_device" else jax.devices()
        self.devices = devices
        self.num_replicas = len(devices)
        self.is_chief = jax.process_index() == 0
        self.mesh = None
        if len(devices) > 1:
            distribution = keras.distribution.DataParallel(
                devices=[f"{d.platform}:{d.id}" for d in devices])
            keras.distribution.set_distribution(distribution)
            self.mesh = distribution.device_mesh.backend_mesh

    def configure(self, run, training):
        if training.mixed_precision == "float16":
            raise ConfigurationError("--mixed_precision=float16 needs loss scaling, which the "
                                     "JAX engine does not do: use --mixed_precision=bfloat16")
        if run.jit_compile == "off":
            raise ConfigurationError("the JAX engine always compiles with XLA: --jit_compile=off "
                                     "is the TensorFlow engine's")
        # θ_0 and the epoch plan come from numpy; nothing of JAX's is random here.
        random.seed(training.seed)
        np.random.seed(training.seed)
        # bfloat16 keeps float32's exponent range: no loss scaling.
        engine.set_precision(training.mixed_precision)

    def release(self):
        super().release()
        self._device_data.clear()

    # -- placement ------------------------------------------------------------

    def replicated(self, array):
        """A host array as a device array, the whole of it on every device."""
        if self.mesh is None:
            return jax.device_put(array, self.devices[0])
        return _global_array(array, NamedSharding(self.mesh, P()))

    def values(self, variables):
        """The variables' values as the compiled steps take and return them: on one
        device, committed to it. (A fresh variable's value is uncommitted, and jit
        compiles a step again for committed arguments: a second compilation of every
        step in each run, 8 s for ResNet-20 on a CPU.)"""
        if self.mesh is None:
            return [jax.device_put(v.value, self.devices[0]) for v in variables]
        return [v.value for v in variables]

    def batch_sharded(self, array, axis):
        """A host array (the same on every host) split over the devices along `axis`."""
        if self.mesh is None:
            return jax.device_put(array, self.devices[0])
        spec = [None] * array.ndim
        spec[axis] = "batch"
        return _global_array(array, NamedSharding(self.mesh, P(*spec)))

    def device_data(self, plan):
        """The plan's dataset on the devices, uploaded once per plan and split."""
        key = id(plan)
        if key not in self._device_data:
            if plan.batch_size % self.num_replicas:
                raise ConfigurationError(
                    f"--batch_size={plan.batch_size} must be a multiple of the "
                    f"{self.num_replicas} devices it is split over")
            self._device_data[key] = (plan, DeviceData(self, plan))
        return self._device_data[key][1]

    # -- the engine interface ---------------------------------------------------

    def worker_values(self, value):
        if jax.process_count() == 1:
            return None
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(np.array([float(value)])))

    def cluster_errors(self):
        if jax.process_count() == 1:
            return ()
        return (jax.errors.JaxRuntimeError,)

    def epoch_loop(self, model, optimizer, plan, training):
        return EpochLoop(self, model, optimizer, plan, training)

    def compiled_steps(self, model, optimizer, plan, training):
        """The CompiledSteps of this model's signature, made on its first use."""
        key = step_signature(model, optimizer, plan, training)
        if key not in self._compiled:
            self._compiled[key] = CompiledSteps(model, optimizer, plan, training)
        return self._compiled[key]

    def environment(self):
        import jaxlib

        return {"engine": self.name, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                "devices": [f"{d.platform}:{d.id} ({d.device_kind})" for d in self.devices],
                "accelerators": [d.device_kind for d in self.devices if d.platform != "cpu"],
                "processes": jax.process_count(), "compilation_cache": self.compilation_cache}


def _enable_float64():
    """float64 end to end, as on TensorFlow (the engines are compared in float64).

    JAX computes in float32 unless x64 is on, and Keras's type promotion maps
    float64 to float32 on every backend but TensorFlow, so BatchNormalization
    would still normalise in float32; that private table is lifted here.
    """
    jax.config.update("jax_enable_x64", True)
    try:
        from keras.src.backend.common import dtypes
        dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"
    except (ImportError, AttributeError):
        from absl import logging
        logging.warning("this Keras version keeps BatchNormalization in float32 on JAX")


def _join_cluster(timeout):
    """jax.distributed.initialize from Slurm's environment (srun) or JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID."""
    kwargs = {}
    for name, key, cast in (("JAX_COORDINATOR_ADDRESS", "coordinator_address", str),
                            ("JAX_NUM_PROCESSES", "num_processes", int),
                            ("JAX_PROCESS_ID", "process_id", int)):
        if os.environ.get(name):
            kwargs[key] = cast(os.environ[name])
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        # CPU processes exchange gradients through gloo (tests, CPU clusters).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        # JAX's own timeout aborts the process with a C++ stack trace: ours comes first.
        with engine.watchdog(timeout, f"not every process of the cluster joined within "
                                       f"{timeout} s (--worker_timeout); start them all"):
            jax.distributed.initialize(initialization_timeout=int(timeout) + 60, **kwargs)
    except (ValueError, RuntimeError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), str(e))
        raise ConfigurationError(
            f"--strategy=multi_worker could not join the cluster ({first.strip()}): run under "
            "srun, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID on "
            "every process") from e


def _global_array(array, sharding):
    # Every process holds the whole host array (the dataset, or the plan, which is a
    # function of (seed, epoch)), so each device takes its part of it.
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def to_host(array):
    """A device array as numpy; replicated arrays are read from this process's copy."""
    if not array.is_fully_addressable:
        array = array.addressable_data(0)
    return np.asarray(jax.device_get(array))


class DeviceData:
    """A dataset's splits on the devices (uint8 images, int32 labels), and the
    padded evaluation order of each split."""

    def __init__(self, runtime, plan):
        self.runtime = runtime
        self.plan = plan
        self._splits = {}
        self._evaluation = {}
        self.normalisation = (runtime.replicated(np.asarray(plan.mean, np.float32)),
                              runtime.replicated(np.asarray(plan.std, np.float32)))

    def split(self, name):
        if name not in self._splits:
            data = self.plan.split(name)
            self._splits[name] = (self.runtime.replicated(data.images),
                                  self.runtime.replicated(data.labels.astype(np.int32)))
        return self._splits[name]

    def evaluation(self, name):
        """(batches, order (batches, B), weights (batches, B), rows (B, S), columns (B, S)):
        the plan's evaluation order (the last batch padded with weight 0), centre crops."""
        if name not in self._evaluation:
            order, weights = self.plan.evaluation_order(name)
            centre = np.broadcast_to(self.plan.centre_box(), (self.plan.batch_size, 4))
            rows, columns = self.plan.sample_positions(centre, name)
            self._evaluation[name] = (
                len(order), self.runtime.batch_sharded(order.astype(np.int32), axis=1),
                self.runtime.batch_sharded(weights, axis=1),
                self.runtime.batch_sharded(rows, axis=0),
                self.runtime.batch_sharded(columns, axis=0))
        return self._evaluation[name]


def _round_float32(x, zero):
    """x, rounded to float32 where it stands: an exact no-op that the compiler cannot
    see through (`zero` is a runtime int32 zero).

    XLA's CPU backend fuses a multiply and the add after it into one FMA, which
    rounds once where TensorFlow's kernels round twice; passing the product
    through the integer domain keeps the two roundings, so both engines produce
    the same pixels bit for bit.
    """
    bits = jax.lax.bitcast_convert_type(x, jnp.int32) | zero
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def crop_and_resize(images, indices, rows, columns, zero):
    """Bilinear samples of images[indices] at `rows` (B, S) x `columns` (B, S), float32.

    The positions come from InputPlan.sample_positions; from there on this is
    tf.image.crop_and_resize's arithmetic (floor, ceil, two lerps across, one
    down; 0 outside the image), rounded as it rounds. Gathers stay in uint8
    until the four corners are known. `zero`: see _round_float32.
    """
    f32 = jnp.float32
    height, width = images.shape[1], images.shape[2]

    def corners(pos, extent):
        inside = (pos >= 0) & (pos <= extent - 1)
        low = jnp.floor(pos)
        low_i = jnp.clip(low.astype(jnp.int32), 0, extent - 1)
        high_i = jnp.clip(jnp.ceil(pos).astype(jnp.int32), 0, extent - 1)
        return low_i, high_i, pos - low, inside

    top, bottom, y_lerp, y_in = corners(rows, height)
    left, right, x_lerp, x_in = corners(columns, width)
    which = indices[:, None]
    top_rows = images[which, top]          # (B, S, W, C) uint8
    bottom_rows = images[which, bottom]

    def pick(row_block, cols):
        return jnp.take_along_axis(row_block, cols[:, None, :, None], axis=2).astype(f32)

    top_left, top_right = pick(top_rows, left), pick(top_rows, right)
    bottom_left, bottom_right = pick(bottom_rows, left), pick(bottom_rows, right)
    x_lerp = x_lerp[:, None, :, None]
    upper = top_left + _round_float32((top_right - top_left) * x_lerp, zero)
    lower = bottom_left + _round_float32((bottom_right - bottom_left) * x_lerp, zero)
    crops = upper + _round_float32((lower - upper) * y_lerp[:, :, None, None], zero)
    inside = y_in[:, :, None, None] & x_in[:, None, :, None]
    return jnp.where(inside, crops, f32(0))


def _divide(numerator, denominator):
    """numerator / denominator rounded as IEEE division, as TensorFlow's kernels do.

    XLA rewrites a division by a broadcast value into a multiplication by its
    reciprocal, which rounds twice; the barrier hides the broadcast from it.
    """
    return numerator / jax.lax.optimization_barrier(
        jnp.broadcast_to(denominator, numerator.shape).astype(numerator.dtype))


def make_batch(plan, images, labels, indices, rows, columns, zero, mean=None, std=None):
    """The plan's normalised float32 batch (B, S, S, C) and its labels, on the device.
    `mean`, `std`: the normalisation as arrays (the steps pass them in, so that one
    compiled step serves datasets of other statistics); default the plan's."""
    crops = crop_and_resize(images, indices, rows, columns, zero)
    if crops.shape[-1] == 1 and plan.channels == 3:
        crops = jnp.repeat(crops, 3, axis=-1)
    mean = jnp.asarray(plan.mean if mean is None else mean).reshape(1, 1, 1, plan.channels)
    std = jnp.asarray(plan.std if std is None else std).reshape(1, 1, 1, plan.channels)
    return _divide(_divide(crops, jnp.float32(255.0)) - mean, std), labels[indices]


def step_signature(model, optimizer, plan, training):
    """Everything the compiled steps of `model` depend on beyond their arguments' shapes:
    the architecture (layer configs: names, sizes, BN momentum, dtype policies), the
    variables, the optimizer (its schedule: base LR, steps per epoch, boundaries), the
    fed channels, the batch, the weight decay and the loss dtype. Models that agree on
    it compute the same function of the same values, so they share one compilation."""
    return json.dumps({
        "model": _config(model),
        "variables": [(v.path, tuple(v.shape), str(v.dtype), v.trainable)
                      for v in model.variables],
        "optimizer": _config(optimizer), "channels": plan.channels,
        "batch": plan.batch_size, "weight_decay": training.weight_decay,
        "loss": loss_dtype()}, sort_keys=True, default=str)


def _config(obj):
    """obj.get_config() without importing TensorFlow. Keras's serializer asks whether
    TensorFlow is installed (to recognise its TensorShape, DType and TypeSpec), and on a
    machine that has it the answer imports it: 2-5 s per process, for a check that no
    object can pass while TensorFlow is not imported."""
    lazy = getattr(getattr(keras.src.utils, "module_utils", None), "tensorflow", None)
    if "tensorflow" in sys.modules or getattr(lazy, "_available", True) is not None:
        return obj.get_config()
    lazy._available = False
    try:
        return obj.get_config()
    finally:
        lazy._available = None


class CompiledSteps:
    """The jitted train, evaluation and precise-BN steps of one architecture and recipe.

    They are pure functions of the values passed in (variables, optimizer state,
    device data, normalisation), traced once from the first model of a signature
    (`step_signature`); every later model with that signature, in any later run of
    the process, reuses them and their compilations.
    """

    def __init__(self, model, optimizer, plan, training):
        kernels = [i for i, v in enumerate(model.trainable_variables)
                   if v.path.endswith("/kernel")]
        wd = training.weight_decay
        batch = plan.batch_size
        # Where each trainable kernel's mask, and each BN moving statistic, sits among the
        # non-trainable values.
        position_of = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
        masks = [None if m is None else position_of[id(m)]
                 for m in gradient_masks(model, model.trainable_variables)]
        self._batchnorm = batchnorm_layers(model)
        self.statistics = [position_of[id(v)] for layer in self._batchnorm
                           for v in (layer.moving_mean, layer.moving_variance)]

        def train_step(state, images, labels, mean, std, order, rows, columns):
            trainable, non_trainable, optimizer_values, sums, position = state
            # The position is never negative: its minimum with 0 is a zero the
            # compiler cannot fold (see _round_float32).
            x, y = make_batch(plan, images, labels, order[position], rows[position],
                              columns[position], jnp.minimum(position, 0), mean, std)

            def loss_fn(trainable):
                logits, new_non_trainable = model.stateless_call(
                    trainable, non_trainable, x, training=True)
                logits, losses = cross_entropy(y, logits)
                # The global batch: its gradients are all-reduced by the compiler.
                loss = training_loss(losses, [trainable[i] for i in kernels], wd, batch)
                return loss, (new_non_trainable, losses, logits)

            grads, (new_non_trainable, losses, logits) = jax.grad(loss_fn, has_aux=True)(trainable)
            grads = mask_gradients(grads, [None if j is None else non_trainable[j]
                                           for j in masks])
            new_trainable, new_optimizer_values = optimizer.stateless_apply(
                optimizer_values, grads, trainable)
            sums = sums + jnp.stack(batch_sums(losses, logits, y))
            return (new_trainable, new_non_trainable, new_optimizer_values, sums, position + 1)

        def eval_step(state, trainable, non_trainable, images, labels, mean, std, order, valid,
                      rows, columns):
            sums, position = state
            x, y = make_batch(plan, images, labels, order[position], rows, columns,
                              jnp.minimum(position, 0), mean, std)
            logits, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            logits, losses = cross_entropy(y, logits)
            return sums + jnp.stack(batch_sums(losses, logits, y, valid[position])), position + 1

        def statistics_step(state, trainable, non_trainable, images, labels, mean, std, order,
                            rows, columns):
            # Traced under training.batch_statistics: a training-mode call leaves each
            # BN layer's moving mean and variance at this batch's own.
            sums, position = state
            x, _ = make_batch(plan, images, labels, order[position], rows[position],
                              columns[position], jnp.minimum(position, 0), mean, std)
            _, new_non_trainable = model.stateless_call(trainable, non_trainable, x,
                                                        training=True)
            sums = [total + new_non_trainable[i].astype(jnp.float32)
                    for total, i in zip(sums, self.statistics)]
            return sums, position + 1

        # The carried state is donated: its buffers are reused by the next step.
        self.train = jax.jit(train_step, donate_argnums=0)
        self.evaluate = jax.jit(eval_step, donate_argnums=0)
        self._statistics = jax.jit(statistics_step, donate_argnums=0)

    def batch_statistics(self, *args):
        with batch_statistics(self._batchnorm):
            return self._statistics(*args)


class EpochLoop(engine.EpochLoop):
    """Epochs of one model over the device data, with the steps of its signature."""

    def __init__(self, runtime, model, optimizer, plan, training):
        self.runtime = runtime
        self.model = model
        self.optimizer = optimizer
        self.plan = plan
        self.data = runtime.device_data(plan)
        self.steps = runtime.compiled_steps(model, optimizer, plan, training)

    def _zeros(self):
        return self.runtime.replicated(np.zeros(3, loss_dtype())), \
            self.runtime.replicated(np.zeros((), np.int32))

    def _training_batches(self, epoch, steps=None):
        """The device-side (order, rows, columns) of epoch `epoch`'s first `steps` batches."""
        order, boxes = self.plan.train_plan(epoch)
        if steps is not None:
            order, boxes = order[:steps], boxes[:steps]
        order = self.runtime.batch_sharded(order.astype(np.int32), axis=1)
        rows, columns = (self.runtime.batch_sharded(p, axis=1)
                         for p in self.plan.sample_positions(boxes))
        return order, rows, columns

    def train_epoch(self, epoch, *, start_step=0, sums=None, progress=None, stop=None,
                    end_step=None):
        """Trains epoch `epoch` from step `start_step` up to `end_step` (None: its end),
        with the sums so far; returns (sums: loss, correct, count, steps done), read once
        at its end. `stop()` true ends it early, after the step in flight."""
        order, rows, columns = self._training_batches(epoch)
        images, labels = self.data.split("train")
        mean, std = self.data.normalisation
        model, optimizer = self.model, self.optimizer
        state = (self.runtime.values(model.trainable_variables),
                 self.runtime.values(model.non_trainable_variables),
                 self.runtime.values(optimizer.variables),
                 self.runtime.replicated(np.zeros(3, loss_dtype()) if sums is None
                                         else np.asarray(sums, loss_dtype())),
                 self.runtime.replicated(np.int32(start_step)))
        steps = self.plan.steps_per_epoch if end_step is None else end_step
        every = max(1, steps // _PROGRESS_READS)
        done = start_step
        while done < steps and not (stop and stop()):
            state = self.steps.train(state, images, labels, mean, std, order, rows, columns)
            done += 1
            if progress and (done % every == 0 or done == steps):
                totals = to_host(state[3])
                progress.update(done, [("loss", totals[0] / totals[2]),
                                       ("accuracy", totals[1] / totals[2])])
        trainable, non_trainable, optimizer_values, sums, _ = state
        for variables, values in ((model.trainable_variables, trainable),
                                  (model.non_trainable_variables, non_trainable),
                                  (optimizer.variables, optimizer_values)):
            for variable, value in zip(variables, values):
                variable.assign(value)
        return to_host(sums).astype(np.float64), done

    def recompute_batchnorm(self, epoch, batches):
        """Precise BN: every BatchNormalization's moving mean and variance become the
        average of their values over the first `batches` training batches of epoch
        `epoch` (its crops), at the current weights."""
        if not self.steps.statistics:
            return
        batches = min(int(batches), self.plan.steps_per_epoch)
        order, rows, columns = self._training_batches(epoch, batches)
        images, labels = self.data.split("train")
        mean, std = self.data.normalisation
        non_trainable = self.model.non_trainable_variables
        trainable = self.runtime.values(self.model.trainable_variables)
        values = self.runtime.values(non_trainable)
        state = ([self.runtime.replicated(np.zeros(non_trainable[i].shape, np.float32))
                  for i in self.steps.statistics],
                 self.runtime.replicated(np.zeros((), np.int32)))
        for _ in range(batches):
            state = self.steps.batch_statistics(state, trainable, values, images, labels, mean,
                                                std, order, rows, columns)
        for i, total in zip(self.steps.statistics, state[0]):
            non_trainable[i].assign((total / batches).astype(non_trainable[i].dtype))

    def evaluate(self, split):
        """{"loss", "accuracy"} on a split, in inference mode."""
        images, labels = self.data.split(split)
        mean, std = self.data.normalisation
        batches, order, valid, rows, columns = self.data.evaluation(split)
        trainable = self.runtime.values(self.model.trainable_variables)
        non_trainable = self.runtime.values(self.model.non_trainable_variables)
        state = self._zeros()
        for _ in range(batches):
            state = self.steps.evaluate(state, trainable, non_trainable, images, labels, mean,
                                        std, order, valid, rows, columns)
        totals = to_host(state[0]).astype(np.float64)
        return {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}
