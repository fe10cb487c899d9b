"""The two training engines, chosen as Keras chooses its backend: `KERAS_BACKEND`.

  tensorflow (default)  a tf.function loop under tf.distribute, fed by tf.data
                        (engines/tf_engine.py)
  jax                   one jitted step over stateless variables, the dataset held
                        on the accelerators as uint8 (engines/jax_engine.py)

Both run the same recipe (training.Trainer), on the same epoch plan
(datasets/epoch_plan.py), and read and write the same run directories: a ticket found
with one engine transfers, or resumes, with the other. Nothing outside this
package imports TensorFlow or JAX for training.

This module chooses the engine; what both build on is engines/engine.py, which the
engines import (never this package), so the imports run one way.
"""

import keras

from lth_keras import settings
from lth_keras.engines.engine import ConfigurationError, Runtime

__all__ = ["ConfigurationError", "Runtime", "backend", "process_runtime", "runtime", "setup"]

ENGINES = ("tensorflow", "jax")

# The fields of settings.Run that fix a process's devices: set up once per process.
DEVICE_FIELDS = ("strategy", "cpu_devices", "worker_timeout", "deterministic",
                 "compilation_cache")


def backend():
    return keras.backend.backend()


def setup(run=None, training=None):
    """The Runtime of the engine KERAS_BACKEND names; call once per process, before any model.

    `run` (settings.Run) sets the devices and compilation, `training` (settings.Training)
    the seed and precision; None is their defaults. They are taken as checked
    (settings' check, which the binaries and the Python API run first).
    """
    run = settings.Run() if run is None else run
    training = settings.Training() if training is None else training
    name = backend()
    if name == "tensorflow":
        from lth_keras.engines import tf_engine as engine
    elif name == "jax":
        from lth_keras.engines import jax_engine as engine
    else:
        raise ConfigurationError(f"KERAS_BACKEND={name} is not an engine of lth_keras: use "
                                 f"{' or '.join(ENGINES)}")
    return engine.Runtime(run, training)


_process_runtime = None


def process_runtime():
    """The Runtime `runtime` made in this process, or None."""
    return _process_runtime


def runtime(run=None, training=None):
    """This process's Runtime: `setup` on the first call; later calls (a notebook's next
    run) reuse it with their own seed, precision and compilation settings. Its devices
    (DEVICE_FIELDS of `run`) are fixed for the process: a later call that asks for
    others is refused."""
    global _process_runtime
    run = settings.Run() if run is None else run
    training = settings.Training() if training is None else training
    if _process_runtime is None:
        _process_runtime = setup(run, training)
        _process_runtime.devices_settings = run
        return _process_runtime
    made = _process_runtime.devices_settings
    changed = ", ".join(f"{k}={getattr(run, k)} (was {getattr(made, k)})"
                        for k in DEVICE_FIELDS if getattr(run, k) != getattr(made, k))
    if changed:
        raise ConfigurationError(f"this process already trains with other devices: {changed}; "
                                 "devices are set up once per process, so start a new one")
    _process_runtime.release()
    _process_runtime.configure(run, training)
    return _process_runtime
