"""The two training engines, chosen as Keras chooses its backend: `KERAS_BACKEND`.

  tensorflow (default)  a tf.function loop under tf.distribute, fed by tf.data
                        (engines/tf_engine.py)
  jax                   one jitted step over stateless variables, the dataset held
                        on the accelerators as uint8 (engines/jax_engine.py)

Both run the same recipe (training.Trainer), on the same epoch plan
(datasets/plan.py), and read and write the same run directories: a ticket found
with one engine transfers, or resumes, with the other. Nothing outside this
package imports TensorFlow or JAX for training.
"""

import contextlib
import os
import sys

import keras

ENGINES = ("tensorflow", "jax")


class ConfigurationError(ValueError):
    """The engine cannot run as asked (backend, devices, batch split); one line for the user."""


class Runtime:
    """What an engine sets up once per process: devices, precision, distribution.

    Subclasses implement `epoch_loop`; the rest has single-process defaults.
    """

    name = None
    num_replicas = 1
    is_chief = True          # only the chief writes run directories
    loss_scaling = False     # float16 needs loss scaling; bfloat16 does not

    def __init__(self):
        self.cache = {}      # what training builds once per process (training.Trainer)

    def release(self):
        """Forgets what earlier runs of this process built (compiled steps, datasets)."""
        self.cache.clear()

    def scope(self):
        """Where models and optimizers are built (a tf.distribute scope on TensorFlow)."""
        return contextlib.nullcontext()

    def check_workers_agree(self, value, what):
        """Raises WorkerError unless every worker holds the same `value` (multi-worker runs)."""

    def cluster_errors(self):
        """Exception types that mean a peer worker stopped (one line, not a traceback)."""
        return ()

    def epoch_loop(self, model, optimizer, plan, config):
        """An object with train_epoch(epoch, progress) and evaluate(split) for `model`."""
        raise NotImplementedError

    def environment(self):
        """Engine, versions and devices, for run records."""
        raise NotImplementedError


def backend():
    return keras.backend.backend()


PRECISIONS = ("off", "bfloat16", "float16")
JIT_COMPILE = ("auto", "on", "off")


def setup(*, seed, deterministic=False, mixed_precision="off", strategy="default",
          cpu_devices=0, worker_timeout=600, jit_compile="auto", steps_per_execution=16,
          compilation_cache=None):
    """The Runtime of the engine KERAS_BACKEND names; call once per process, before any model.

    strategy: default (every local accelerator, or one CPU device), mirrored (every
    device of one kind), one_device, multi_worker (several hosts: TF_CONFIG on
    TensorFlow, Slurm's or JAX's environment on JAX).
    mixed_precision: off, bfloat16, or float16 (with loss scaling; TensorFlow only).
    jit_compile: XLA on the TensorFlow engine; auto is on with GPUs, off on CPUs (the
    JAX engine always compiles).
    steps_per_execution: training steps per tf.function call (TensorFlow engine).
    compilation_cache: the JAX engine's persistent compilation cache (None: the default
    directory, compilation_cache_dir(); "": none).
    """
    if mixed_precision not in PRECISIONS:
        raise ConfigurationError(f"--mixed_precision must be one of {', '.join(PRECISIONS)}, "
                                 f"got {mixed_precision!r}")
    if jit_compile not in JIT_COMPILE:
        raise ConfigurationError(f"--jit_compile must be one of {', '.join(JIT_COMPILE)}, "
                                 f"got {jit_compile!r}")
    if steps_per_execution < 1:
        raise ConfigurationError("--steps_per_execution must be >= 1")
    name = backend()
    if name == "tensorflow":
        from lth_keras.engines import tf_engine as engine
    elif name == "jax":
        from lth_keras.engines import jax_engine as engine
    else:
        raise ConfigurationError(f"KERAS_BACKEND={name} is not an engine of lth_keras: use "
                                 f"{' or '.join(ENGINES)}")
    return engine.Runtime(seed=seed, deterministic=deterministic,
                          mixed_precision=mixed_precision, strategy=strategy,
                          cpu_devices=cpu_devices, worker_timeout=worker_timeout,
                          jit_compile=jit_compile, steps_per_execution=steps_per_execution,
                          compilation_cache=compilation_cache)


def compilation_cache_dir(setting=None):
    """The persistent compilation cache's directory: `setting`, else
    $LTH_KERAS_COMPILATION_CACHE, else ~/.cache/lth_keras/jax; "" (either way) is none."""
    if setting is None:
        setting = os.environ.get("LTH_KERAS_COMPILATION_CACHE")
    if setting is None:
        setting = os.path.join(os.path.expanduser("~"), ".cache", "lth_keras", "jax")
    return setting or None


def set_precision(mixed_precision):
    """Keras's global dtype policy for --mixed_precision (a later run may switch it back)."""
    if mixed_precision != "off":
        keras.mixed_precision.set_global_policy(f"mixed_{mixed_precision}")
    elif keras.mixed_precision.global_policy().name.startswith("mixed_"):
        keras.mixed_precision.set_global_policy(keras.config.floatx())


_process_runtime = None


def process_runtime():
    """The Runtime `runtime` made in this process, or None."""
    return _process_runtime


def runtime(*, seed, deterministic=False, mixed_precision="off", strategy="default",
            cpu_devices=0, worker_timeout=600, jit_compile="auto", steps_per_execution=16,
            compilation_cache=None):
    """This process's Runtime: `setup` on the first call; later calls (a notebook's next
    run) reuse it with their own seed, precision and compilation settings. Its devices
    are fixed for the process: a later call that asks for others is refused."""
    global _process_runtime
    devices = {"strategy": strategy, "cpu_devices": cpu_devices,
               "worker_timeout": worker_timeout, "deterministic": deterministic,
               "compilation_cache": compilation_cache}
    per_run = dict(seed=seed, mixed_precision=mixed_precision, jit_compile=jit_compile,
                   steps_per_execution=steps_per_execution)
    if _process_runtime is None:
        _process_runtime = setup(**devices, **per_run)
        _process_runtime.devices_settings = devices
        return _process_runtime
    made = _process_runtime.devices_settings
    if made != devices:
        changed = ", ".join(f"{k}={devices[k]} (was {made[k]})" for k in devices
                            if devices[k] != made[k])
        raise ConfigurationError(f"this process already trains with other devices: {changed}; "
                                 "devices are set up once per process, so start a new one")
    _process_runtime.release()
    _process_runtime.configure(**per_run)
    return _process_runtime


# A separate process, because the frameworks block in C++ while they wait for workers
# (TensorFlow holding the GIL, for an hour; JAX then aborts with a C++ stack trace): no
# thread or signal handler of ours would run.
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
def watchdog(seconds, message):
    """Kills this process with `message` on stderr if the block takes longer than `seconds`."""
    import subprocess

    program = os.path.basename(sys.argv[0]).removesuffix(".py")
    guard = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()),
                              str(seconds), f"{program}: error: {message}"])
    try:
        yield
    finally:
        guard.kill()
        guard.wait()
