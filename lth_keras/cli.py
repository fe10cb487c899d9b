"""Flags and process set-up shared by the binaries (find_tickets, transfer, ...).

Importing this module defines the common flags once; each binary adds its own.
"""

import os
import sys

from absl import app, flags, logging

# TensorFlow's C++ info and warning lines (oneDNN, CUDA probing, grappler) drown the
# progress of a run; errors still show. An explicit setting by the user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS

# --- data and model -----------------------------------------------------------
flags.DEFINE_string("data_dir", None,
                    "Directory with the original dataset files (archives or image folders).")
flags.DEFINE_string("model", "resnet20", "Architecture: resnet50, resnet20, lenet_300_100, conv4.")
flags.DEFINE_integer("image_size", 32, "Side of the (random / centre) crop fed to the model.")
flags.DEFINE_float("train_fraction", 1.0,
                   "Seeded stratified fraction of the training split to use, in (0, 1].")
flags.DEFINE_float("val_fraction", 0.1,
                   "Fraction of the training split carved out for validation when the "
                   "dataset has no validation split.")
flags.DEFINE_list("split", None,
                  "For an image folder without val/ or test/: seeded stratified train,val,test "
                  "fractions to carve, e.g. 0.7,0.1,0.2.")
flags.DEFINE_bool("skip_bad_images", False,
                  "Skip (and count) unreadable images in image folders instead of failing.")
flags.DEFINE_string("cache_dir", None,
                    "Where image folders are kept decoded at their storage size, memory-mapped "
                    "by every run (default: $LTH_KERAS_CACHE, else ~/.cache/lth_keras/images); "
                    "'' keeps them in memory only.")
flags.DEFINE_float("bn_momentum", 0.9,
                   "BatchNorm moving-average momentum (Keras default 0.99 breaks early stopping "
                   "on small targets; see BUILD_NOTES.md).")
# --- training recipe ------------------------------------------------------------
flags.DEFINE_integer("seed", 0, "Fixes θ_0, the validation carve, the data order and the crops.")
flags.DEFINE_integer("batch_size", 64, "Global batch size (summed over replicas).")
flags.DEFINE_float("learning_rate", 0.1, "Initial SGD learning rate.")
flags.DEFINE_float("momentum", 0.9, "Nesterov momentum.")
flags.DEFINE_float("weight_decay", 1e-5, "L2 weight decay on conv and dense kernels.")
flags.DEFINE_float("lr_decay", 0.0,
                   "Keras-2 style inverse-time LR decay per step: lr / (1 + decay * step). Off by "
                   "default; the paper's 'decay factor' may have meant this.")
flags.DEFINE_list("lr_boundaries", ["50", "60", "75"],
                  "Epochs at which the learning rate is multiplied by 0.1.")
flags.DEFINE_integer("max_epochs", 100, "Upper bound on the epochs of one training run.")
flags.DEFINE_integer("patience", 5, "Early-stopping patience on the validation loss.")
# --- runtime ----------------------------------------------------------------------
# The engine is Keras's backend: KERAS_BACKEND=tensorflow (default) or jax.
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "one_device", "multi_worker"],
                  "Devices to train on: default (every GPU, or one CPU device), mirrored "
                  "(every device), one_device, multi_worker (several hosts: TF_CONFIG on "
                  "TensorFlow; srun or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID "
                  "on JAX).")
flags.DEFINE_integer("worker_timeout", 600,
                     "multi_worker: seconds to wait for every worker to join.")
flags.DEFINE_integer("cpu_devices", 0,
                     "Split the CPU into this many logical devices (tests and benchmarks).")
flags.DEFINE_bool("deterministic", False,
                  "Deterministic kernels: bit-identical runs on CPU (slower).")
flags.DEFINE_enum("mixed_precision", "off", ["off", "bfloat16", "float16"],
                  "Mixed-precision compute (GPUs): bfloat16 (Ampere and later; no loss "
                  "scaling) or float16 (with loss scaling; TensorFlow engine only). Variables "
                  "and masks stay float32.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "on", "off"],
                  "XLA for the TensorFlow engine's steps: auto is on with GPUs, off on CPUs "
                  "(where XLA is slower). The JAX engine always compiles.")
flags.DEFINE_integer("steps_per_execution", 16,
                     "Training steps per tf.function call (TensorFlow engine): the host reads "
                     "no result between them.")
flags.DEFINE_float("checkpoint_every", 600,
                   "Seconds between epoch checkpoints of a level in progress (0: after every "
                   "epoch). SIGINT/SIGTERM always write one, even mid-epoch.")
flags.DEFINE_string("output_dir", None, "Run directory (default: a readable name under outputs/).")


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


def check(condition, message):
    if not condition:
        raise UserError(message)


def training_config():
    """The TrainingConfig that the flags describe."""
    from lth_keras.training import TrainingConfig
    try:
        boundaries = tuple(int(b) for b in FLAGS.lr_boundaries)
    except ValueError:
        raise UserError(f"--lr_boundaries must be integers, got {FLAGS.lr_boundaries}")
    check(FLAGS.learning_rate > 0, "--learning_rate must be > 0")
    check(FLAGS.max_epochs >= 1, "--max_epochs must be >= 1")
    check(FLAGS.patience >= 1, "--patience must be >= 1")
    check(FLAGS.weight_decay >= 0 and FLAGS.lr_decay >= 0,
          "--weight_decay and --lr_decay must be >= 0")
    check(FLAGS.checkpoint_every >= 0, "--checkpoint_every must be >= 0 (seconds)")
    check(FLAGS.steps_per_execution >= 1, "--steps_per_execution must be >= 1")
    return TrainingConfig(learning_rate=FLAGS.learning_rate, momentum=FLAGS.momentum,
                          weight_decay=FLAGS.weight_decay, lr_boundaries=boundaries,
                          lr_decay=FLAGS.lr_decay, max_epochs=FLAGS.max_epochs,
                          patience=FLAGS.patience, mixed_precision=FLAGS.mixed_precision,
                          checkpoint_every=FLAGS.checkpoint_every)


def check_common_flags():
    check(FLAGS.batch_size >= 1, "--batch_size must be >= 1")
    check(FLAGS.image_size >= 8, "--image_size must be >= 8")
    check(0.0 < FLAGS.train_fraction <= 1.0, "--train_fraction must be in (0, 1]")
    check(0.0 < FLAGS.val_fraction < 1.0, "--val_fraction must be in (0, 1)")
    check(0.0 <= FLAGS.bn_momentum < 1.0, "--bn_momentum must be in [0, 1)")


def load_dataset(name):
    """The dataset the data flags describe: a source, a paper target or an image folder."""
    from lth_keras import datasets
    return datasets.load_dataset(name, data_dir=FLAGS.data_dir, seed=FLAGS.seed,
                                 val_fraction=FLAGS.val_fraction,
                                 train_fraction=FLAGS.train_fraction,
                                 image_size=FLAGS.image_size, split=FLAGS.split,
                                 skip_bad_images=FLAGS.skip_bad_images,
                                 cache_dir=(datasets.cache.default_dir()
                                            if FLAGS.cache_dir is None else FLAGS.cache_dir))


_runtime = None


def setup_runtime():
    """The engine's Runtime (KERAS_BACKEND): seeds, determinism, precision, devices;
    once per process."""
    global _runtime
    from lth_keras import engines

    _runtime = engines.setup(seed=FLAGS.seed, deterministic=FLAGS.deterministic,
                             mixed_precision=FLAGS.mixed_precision, strategy=FLAGS.strategy,
                             cpu_devices=FLAGS.cpu_devices, worker_timeout=FLAGS.worker_timeout,
                             jit_compile=FLAGS.jit_compile,
                             steps_per_execution=FLAGS.steps_per_execution)
    return _runtime


def run(main):
    """app.run(main), turning expected failures into one clear line and exit status 1, and
    SIGINT/SIGTERM into a saved state, one line and exit status 128 + the signal."""
    from lth_keras import artifacts, weights
    from lth_keras.datasets import DataError
    from lth_keras.engines import ConfigurationError
    from lth_keras.training import (TrainingDivergedError, TrainingInterrupted, WorkerError,
                                    interruptions)

    expected = (UserError, DataError, weights.WeightsMismatchError, TrainingDivergedError,
                artifacts.ArtifactError, WorkerError, ConfigurationError)
    program = os.path.basename(sys.argv[0]).removesuffix(".py")

    def fail(message):
        logging.flush()
        print(f"{program}: error: {message}", file=sys.stderr)
        sys.exit(1)

    def guarded(argv):
        interruptions.install()
        try:
            return main(argv)
        except expected as e:
            fail(e)
        except TrainingInterrupted as e:
            logging.flush()
            print(f"{program}: {e}", file=sys.stderr)
            sys.exit(128 + e.signum)
        except Exception as e:
            # What a collective raises when a peer worker dies or its link breaks.
            if _runtime is None or not isinstance(e, _runtime.cluster_errors()):
                raise
            text = getattr(e, "message", None) or str(e)
            first = next((line for line in text.splitlines() if line.strip()), "")
            fail(f"a worker of the cluster stopped or cannot be reached ({first.strip()}); "
                 "restart every worker with the same command: finished levels are kept")

    app.run(guarded)
