"""What both engines build on: the Runtime and EpochLoop interfaces and the helpers they
share.

The engines (tf_engine.py, jax_engine.py) import this module, never the package:
lth_keras.engines chooses an engine and imports it, so the imports run one way.
Nothing here imports TensorFlow or JAX.
"""

import contextlib
import os
import sys

import keras

from lth_keras.errors import ConfigurationError, WorkerError

__all__ = ["ConfigurationError", "EpochLoop", "Runtime", "compilation_cache_dir",
           "set_precision", "watchdog"]


class Runtime:
    """What an engine sets up once per process: devices, precision, distribution.

    Made from the run's settings (`settings.Run`: devices, compilation) and the
    recipe's (`settings.Training`: seed, precision). Subclasses implement
    `epoch_loop`; the rest has single-process defaults.
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

    def configure(self, run, training):
        """The settings a later run of the same process may change (seed, precision,
        compilation), from `run` (settings.Run) and `training` (settings.Training)."""

    def scope(self):
        """Where models and optimizers are built (a tf.distribute scope on TensorFlow)."""
        return contextlib.nullcontext()

    def worker_values(self, value):
        """`value` (a number) as every worker of the run holds it, one per worker; None
        in a single-process run."""
        return None

    def check_workers_agree(self, value, what):
        """Raises WorkerError unless every worker holds the same `value` (e.g. finished levels).

        Workers that resumed from different states would train different levels
        and exchange gradients of different models; this is also the rendezvous.
        """
        check_agreement(self.worker_values(value), what)

    def cluster_errors(self):
        """Exception types that mean a peer worker stopped (one line, not a traceback)."""
        return ()

    def epoch_loop(self, model, optimizer, plan, training):
        """The EpochLoop that trains and evaluates `model` with `optimizer` on `plan`."""
        raise NotImplementedError

    def environment(self):
        """Engine, versions and devices, for run records."""
        raise NotImplementedError


class EpochLoop:
    """What training.Trainer calls to train and evaluate one model on one input plan: every
    method an engine's loop implements (tf_engine.EpochLoop, jax_engine.EpochLoop)."""

    def train_epoch(self, epoch, *, start_step=0, sums=None, progress=None, stop=None,
                    end_step=None):
        """Trains epoch `epoch` (0-based) of the plan from batch `start_step` up to
        `end_step` (None: the epoch's end), adding to `sums` (loss, correct, count; None:
        zeros); returns (sums, steps done). `stop()` true ends it early, at a step
        boundary (a signal); `progress` a keras Progbar to update."""
        raise NotImplementedError

    def evaluate(self, split):
        """{"loss", "accuracy"} of the model on `split` ("val", "test"), in inference mode."""
        raise NotImplementedError

    def recompute_batchnorm(self, epoch, batches):
        """Precise BN: every BatchNormalization's moving mean and variance become the average
        of their values over the first `batches` training batches of epoch `epoch` (its
        crops), at the current weights. A model without BatchNorm is left as it is."""
        raise NotImplementedError


def check_agreement(values, what):
    """Raises WorkerError unless `values` (one per worker; None: a single process) are equal."""
    if values is None:
        return
    low, high = min(values), max(values)
    if low != high:
        raise WorkerError(f"the workers disagree on {what} ({low:g} vs {high:g}): every "
                          "worker must see the same run directory (a shared filesystem)")


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
