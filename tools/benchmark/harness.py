"""The benchmark's harness: its flags, the models it knows, the timing and memory
primitives every measurement uses, and fresh worker processes.

Each ratio compares configurations measured in one process on the same batches,
interleaved (A B, B A, A B ...), so that a load change on a shared machine hits both
sides alike; times are medians after warm-up. What needs a process of its own (a
peak RSS, a strategy over other devices, another KERAS_BACKEND) runs this package
again with an internal flag (run_worker).
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from tools import fixtures

flags.DEFINE_list("models", None,
                  "Models to benchmark (default: resnet20,lenet_300_100, plus resnet50 at 224 px "
                  "when a GPU is visible).")
flags.DEFINE_integer("steps", 30, "Timed training steps per configuration, after warm-up.")
flags.DEFINE_integer("warmup", 5, "Untimed steps per configuration (tracing, allocator).")
flags.DEFINE_integer("epoch_steps", 16,
                     "Steps of one epoch in the custom loop / fit and JAX / TF engine comparisons.")
flags.DEFINE_integer("epochs", 4,
                     "Timed epochs of each side in the custom loop / fit and JAX / TF engine "
                     "comparisons.")
flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_integer("pipeline_epochs", 3, "Timed passes over the training split (pipeline).")
flags.DEFINE_integer("train_images", 0,
                     "Size of the synthetic training split (0: the real dataset's, e.g. 54,000 "
                     "for Fashion-MNIST); smaller makes quick runs.")
flags.DEFINE_bool("mirrored", True, "Time MirroredStrategy on 2 logical CPU devices vs 1.")
flags.DEFINE_bool("isolated_memory", True,
                  "Measure each configuration's peak RSS in its own process.")
flags.DEFINE_bool("engines", True,
                  "Time the JAX engine's ResNet-20 epoch loop against the TF engine's on CPU, "
                  "one process each.")
flags.DEFINE_enum("mixed_precision", "off", ["off", "bfloat16", "float16"],
                  "Mixed-precision compute (GPU runs; float16 with loss scaling).")
flags.DEFINE_string("engines_model", "resnet20", "Model of the JAX engine / TF engine comparison.")
flags.DEFINE_string("output", "outputs/benchmark", "Directory for benchmark.json / .md.")
flags.DEFINE_bool("large_dataset", False,
                  "Also run the large-dataset case: ResNet-20 at 224 px on a synthetic image "
                  "folder of --large_dataset_images at 256 px under MirroredStrategy over 2 "
                  "logical CPU devices; peak memory and time to the first step.")
flags.DEFINE_integer("large_dataset_images", 12_000, "Images of the large-dataset folder.")
flags.DEFINE_string("large_dataset_dir", "outputs/benchmark/large_folder",
                    "Where the large-dataset folder is written once (and its cache kept).")
flags.DEFINE_integer("large_dataset_steps", 0,
                     "Training steps of the large-dataset case (0: one epoch).")
flags.DEFINE_string("large_dataset_cache", None,
                    "Internal: the large-dataset worker's --cache_dir ('' : in memory).")
flags.DEFINE_bool("paper_cost", False,
                  "Print what the paper's protocol costs instead of measuring: images, FLOPs "
                  "and hours of one source-seed ticket search and of the whole grid.")
flags.DEFINE_list("paper_images_per_s", ["6108", "5"],
                  "--paper_cost: training throughputs (img/s) to turn images into hours "
                  "(defaults: masked ResNet-50 at 224 px, bf16, batch 128 on an H200 through "
                  "Keras-JAX, and on this project's 2-core CPU).")
flags.DEFINE_integer("paper_epochs", None,
                     "--paper_cost: epochs per level (default: the preset's --max_epochs, an "
                     "upper bound that early stopping cuts).")
# internal: one configuration in a fresh process
flags.DEFINE_enum("worker", None, ["custom_masked", "custom_dense", "fit", "pipeline",
                                    "large_dataset"],
                  "Internal: run one configuration alone and write its JSON to --worker_output.")
flags.DEFINE_string("worker_model", None, "Internal: the worker's model.")
flags.DEFINE_string("worker_output", None, "Internal: where the worker writes its JSON.")
flags.DEFINE_integer("devices", 1, "Internal: logical CPU devices of the worker's strategy.")
flags.DEFINE_bool("engine_worker", False,
                  "Internal: train epochs on the engine KERAS_BACKEND names, one per line of "
                  "stdin, replying with a JSON line each.")

FLAGS = flags.FLAGS

PACKAGE = os.path.dirname(os.path.abspath(__file__))  # `python PACKAGE` runs __main__.py


@dataclasses.dataclass(frozen=True)
class Spec:
    """A benchmarked model: its input size and the synthetic data it trains on."""
    model: str
    image_size: int
    data_shape: tuple   # stored images (H, W, C), uint8
    num_classes: int
    train_images: int   # size of the synthetic training split


SPECS = {
    # Training splits of the real datasets' size (Fashion-MNIST 54,000 and CIFAR-10
    # 45,000 after the validation carve), so a pipeline epoch is a real one.
    "lenet_300_100": Spec("lenet_300_100", 28, (28, 28, 1), 10, 54_000),
    "resnet20": Spec("resnet20", 32, (32, 32, 3), 10, 45_000),
    "conv4": Spec("conv4", 32, (32, 32, 3), 10, 45_000),
    "resnet50": Spec("resnet50", 224, (256, 256, 3), 1000, 4_096),
}


# --------------------------------------------------------------------------- #
# Process facts
# --------------------------------------------------------------------------- #

def _status_kib(field):
    """VmRSS / VmHWM of this process in KiB (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mib():
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
        import resource
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = kib / 1024 if sys.platform == "darwin" else kib
    return kib / 1024


def rss_mib():
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def memory_mib():
    """Peak, anonymous and file-backed resident memory of this process (MiB)."""
    return {"peak_rss_mib": peak_rss_mib(), "rss_anon_mib": (_status_kib("RssAnon") or 0) / 1024,
            "rss_file_mib": (_status_kib("RssFile") or 0) / 1024}


def gpu_peak_mib():
    import tensorflow as tf
    if not tf.config.list_logical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


# --------------------------------------------------------------------------- #
# Data, shared by the main process and the workers
# --------------------------------------------------------------------------- #

def synthetic_dataset(spec, train_images=None):
    """A model's seeded synthetic dataset; the same for every configuration."""
    return fixtures.synthetic_dataset(
        f"synthetic_{spec.model}", spec.data_shape, spec.num_classes,
        train=train_images or FLAGS.train_images or spec.train_images,
        held_out=FLAGS.batch_size)


def input_data(spec):
    """(pipeline, training config) of a model: its synthetic data, the same in every process."""
    from lth_keras import settings
    from lth_keras.datasets.pipeline import InputPipeline

    pipeline = InputPipeline(synthetic_dataset(spec), image_size=spec.image_size,
                             batch_size=FLAGS.batch_size, seed=0)
    return pipeline, settings.Training(mixed_precision=FLAGS.mixed_precision)


def premade_dataset(pipeline, steps):
    """`steps` training batches materialised in memory, as a tf.data.Dataset of batches."""
    import tensorflow as tf

    batches = list(pipeline.train_epoch(0).repeat().take(steps))
    images = tf.stack([b[0] for b in batches])
    labels = tf.stack([b[1] for b in batches])
    return tf.data.Dataset.from_tensor_slices((images, labels)).cache().prefetch(2)


def distributed_batches(strategy, dataset):
    return list(strategy.experimental_distribute_dataset(dataset))


# --------------------------------------------------------------------------- #
# Timing
# --------------------------------------------------------------------------- #

def timed_step(step, batch):
    """Seconds of one compiled step, synchronised by reading its results (as Trainer does)."""
    start = time.perf_counter()
    [float(t) for t in step(*batch)]
    return time.perf_counter() - start


def cycling_step(step, batches):
    """A call timing `step` on the next of `batches` each time (timed_step)."""
    cursor = {"i": 0}

    def call():
        cursor["i"] = (cursor["i"] + 1) % len(batches)
        return timed_step(step, batches[cursor["i"]])
    return call


def per_step_sync_epoch(strategy, step, dataset):
    """Timestamps of a per-step-sync epoch (every step's sums read by the host, as the
    Trainer did until lth_keras 0.2): its call, then the end of every step."""
    stamps = [time.perf_counter()]
    for images, labels in strategy.experimental_distribute_dataset(dataset):
        [float(t) for t in step(images, labels)]
        stamps.append(time.perf_counter())
    return stamps


def interleave(configs, rounds, warmup):
    """{name: [result, ...]}: each config's warm-up calls, then `rounds` calls of each.

    The calls alternate A B, B A, A B ... (one call each per round), so a change in
    machine load hits every configuration alike.
    """
    names = list(configs)
    for name in names:
        for _ in range(warmup):
            configs[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(configs[name]())
    return times


def summary(seconds, images_per_call):
    median = statistics.median(seconds)
    return {"median_s": median, "images_per_s": images_per_call / median,
            "calls": len(seconds), "min_s": min(seconds), "max_s": max(seconds)}


def ratios(a, b):
    """A / B of paired interleaved timings: of the medians, of the minima, median of pairs."""
    return {"ratio": statistics.median(a) / statistics.median(b),
            "ratio_of_minima": min(a) / min(b),
            "median_paired_ratio": statistics.median(x / y for x, y in zip(a, b))}


# --------------------------------------------------------------------------- #
# Workers: one configuration per fresh process
# --------------------------------------------------------------------------- #

def run_worker(kind, model, devices=1, steps=None, extra=()):
    """Runs this package with --worker in a fresh process; returns its JSON."""
    steps = FLAGS.steps if steps is None else steps
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "worker.json")
        command = [sys.executable, PACKAGE, f"--worker={kind}",
                   f"--worker_model={model}", f"--devices={devices}",
                   f"--worker_output={out}", f"--steps={steps}",
                   f"--warmup={FLAGS.warmup}", f"--batch_size={FLAGS.batch_size}",
                   f"--epoch_steps={FLAGS.epoch_steps}", f"--train_images={FLAGS.train_images}",
                   f"--pipeline_epochs={FLAGS.pipeline_epochs}",
                   f"--mixed_precision={FLAGS.mixed_precision}", *extra]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=7200)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"benchmark worker {kind} {model} x{devices} failed "
                               f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)
