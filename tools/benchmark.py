"""Training throughput: masked vs plain layers, custom loop vs fit, input pipeline, devices,
the JAX engine vs the TensorFlow engine.

  python tools/benchmark.py [--models=resnet20,lenet_300_100] [--steps=30]
                            [--output=outputs/benchmark]

Each ratio compares configurations measured in one process on the same batches,
interleaved (A B, B A, A B ...), so a load change on a shared machine hits both
sides alike. Times are medians after warm-up. The main process runs the
TensorFlow engine (it sets KERAS_BACKEND=tensorflow for itself and its workers).

  masked / dense     the Trainer's compiled step (Trainer.loop._train_step) on the
                     masked model and on models.fold_masks of it: plain
                     Conv2D/Dense, same architecture and initial weights.
                     Alternates step by step, without XLA and with it (the GPU
                     default). Target <= 1.03.
  epoch loop / per-step sync
                     the Trainer's epoch loop (steps_per_execution steps a
                     tf.function call, sums on the device, one read an epoch) vs
                     the loop it replaced (one call and one host read a step), on
                     the same pre-made batches, epochs alternating.
  custom / fit       a per-step-sync epoch (iterate a distributed dataset, call
                     the compiled step, read its sums) vs model.fit (SGD Nesterov,
                     same batch, jit_compile=False) over the same pre-made batches,
                     epochs alternating. Step time = median gap between step ends;
                     per-epoch overhead = the rest of the epoch. Keras' default
                     jit_compile="auto" resolves to no XLA on CPU and under
                     tf.distribute, so no XLA variant is run.
  pipeline / train   images/s of InputPipeline epochs iterated alone (a real-size
                     training split) over images/s the masked step consumes, each
                     pipeline epoch followed by 8 timed steps. Target >= 3.

Three measurements need fresh processes, so the script runs itself with the
internal --worker and --engine_worker flags:
  JAX / TF engine    the JAX engine's step against the TF engine's on --engines_model
                     (ResNet-20), on CPU (JAX_PLATFORMS=cpu, no GPU visible).
                     KERAS_BACKEND is fixed at import, so each engine is a long-lived
                     --engine_worker process under its own KERAS_BACKEND (the JAX one
                     never imports TensorFlow). Each builds the masked model (80% pruned) and
                     times the Trainer's real epoch loop, Trainer.loop.train_epoch,
                     over a synthetic split of --epoch_steps batches: input included
                     (tf.data on TF; on JAX the data on the device, cropped inside the
                     jitted step, metrics read once per epoch). After one warm-up
                     (compiling) epoch each, the processes run an epoch in turn
                     (A B, B A, A B ...) for --epochs rounds; step time = epoch time /
                     steps. Skipped with a note when JAX is not installed; --noengines
                     turns it off.
  mirrored 2 vs 1    MirroredStrategy over 2 logical CPU devices vs 1 device (the
                     logical devices must exist before TensorFlow starts, and a
                     process has one strategy). Sequential processes, not
                     interleaved. Skipped on GPU machines.
  large dataset      (--large_dataset) ResNet-20 at 224 px on a synthetic folder of
                     --large_dataset_images 256-px images (2.4 GB decoded for 12,000)
                     under MirroredStrategy over 2 logical CPU devices, in three
                     processes: the first run (decodes the folder into the on-disk
                     cache), a later run (memory-maps it) and one without the cache
                     (decodes into memory). Each reports its load time, its time
                     from process start to the end of the first step, its step
                     time, its peak RSS and its anonymous / file-backed RSS.
  peak RSS           VmHWM of a process that ran one configuration alone (warm-up
                     and timed steps). The main process, which ran everything,
                     reports its own peak. "Baseline" is a worker's RSS after
                     importing TensorFlow and building the data.

Data: a seeded synthetic in-memory ImageDataset (Fashion-MNIST-shaped for LeNet,
CIFAR-shaped for ResNet-20, 256 px for ResNet-50), the same for every
configuration, so no files are needed. ResNet-50 at 224 px is added when a GPU is
visible (--mixed_precision optional there). Writes benchmark.json and benchmark.md
to --output (atomically) and prints the table.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROCESS_START = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

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

MASKED_DENSE_TARGET = 1.03
MEMORY_STEPS = 10  # timed steps of a worker that is only there for its peak RSS
PIPELINE_TARGET = 3.0


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


def gpu_peak_mib():
    import tensorflow as tf
    if not tf.config.list_logical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


# --------------------------------------------------------------------------- #
# Set-up shared by the main process and the workers
# --------------------------------------------------------------------------- #

def synthetic_dataset(spec, batch_size, seed=0, train_images=None):
    """Seeded random uint8 images with labels; the same for every configuration."""
    import numpy as np

    from lth_keras.datasets import ImageDataset, Split

    rng = np.random.default_rng(seed)

    def split(n):
        images = rng.integers(0, 256, size=(n,) + spec.data_shape, dtype=np.uint8)
        return Split(images, np.arange(n) % spec.num_classes)

    return ImageDataset(f"synthetic_{spec.model}", tuple(f"c{i}" for i in range(spec.num_classes)),
                        split(train_images or FLAGS.train_images or spec.train_images),
                        split(batch_size), split(batch_size))


def setup(devices=1):
    """The TensorFlow engine's runtime (its tf.distribute strategy is runtime.strategy);
    call once per process, before any model."""
    from lth_keras import engines

    return engines.setup(seed=0, mixed_precision=FLAGS.mixed_precision,
                         strategy="mirrored" if devices > 1 else "default", cpu_devices=devices)


def input_data(spec):
    """(pipeline, training config) of a model: its synthetic data, the same in every process."""
    from lth_keras import training
    from lth_keras.datasets.pipeline import InputPipeline

    pipeline = InputPipeline(synthetic_dataset(spec, FLAGS.batch_size),
                             image_size=spec.image_size, batch_size=FLAGS.batch_size, seed=0)
    return pipeline, training.TrainingConfig(mixed_precision=FLAGS.mixed_precision)


def build_pair(spec, runtime, num_classes):
    """(masked model with an 80%-pruned mask, the dense baseline: plain layers, same θ_0)."""
    from lth_keras import models, pruning, weights

    with runtime.scope():
        masked = models.build_model(spec.model, input_shape=(spec.image_size,) * 2 + (3,),
                                    num_classes=num_classes, seed=0)
        dense = models.fold_masks(masked)  # all-ones masks: the plain architecture
    # Mask values do not change the arithmetic; a ticket-like mask keeps it realistic.
    masks = pruning.prune(weights.get_kernels(masked), weights.get_masks(masked), 0.8)
    weights.set_masks(masked, masks)
    return masked, dense


def fit_model(spec, strategy, num_classes, jit_compile):
    """A masked model compiled for model.fit with the Trainer's optimizer settings."""
    import keras

    from lth_keras import models

    with strategy.scope():
        model = models.build_model(spec.model, input_shape=(spec.image_size,) * 2 + (3,),
                                   num_classes=num_classes, seed=0)
        optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
        if FLAGS.mixed_precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=jit_compile)
    return model


def premade_dataset(pipeline, steps):
    """`steps` training batches materialised in memory, as a tf.data.Dataset of batches."""
    import tensorflow as tf

    batches = list(pipeline.train_epoch(0).repeat().take(steps))
    images = tf.stack([b[0] for b in batches])
    labels = tf.stack([b[1] for b in batches])
    return tf.data.Dataset.from_tensor_slices((images, labels)).cache().prefetch(2)


def distributed_batches(strategy, dataset):
    return list(strategy.experimental_distribute_dataset(dataset))


def timed_step(step, batch):
    """Seconds of one compiled step, synchronised by reading its results (as Trainer does)."""
    start = time.perf_counter()
    [float(t) for t in step(*batch)]
    return time.perf_counter() - start


def custom_epoch(strategy, step, dataset):
    """Timestamps of a per-step-sync epoch (every step's sums read by the host, as the
    Trainer did until lth_keras 0.2): its call, then the end of every step."""
    stamps = [time.perf_counter()]
    for images, labels in strategy.experimental_distribute_dataset(dataset):
        [float(t) for t in step(images, labels)]
        stamps.append(time.perf_counter())
    return stamps


def sync_free_epoch(strategy, train_steps, dataset, steps, per_call):
    """Seconds of an epoch as the Trainer runs it now: `per_call` steps per tf.function
    call, sums kept on the device, one host read at the end."""
    import tensorflow as tf

    start = time.perf_counter()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    totals = tf.zeros(3, tf.float64)
    for done in range(0, steps, per_call):
        totals += train_steps(iterator, tf.constant(min(per_call, steps - done)))
    totals.numpy()
    return time.perf_counter() - start


def _batch_clock():
    import keras

    class BatchClock(keras.callbacks.Callback):
        """Records when each batch's logs are ready, without changing how fit runs.

        async_safe keeps Keras' asynchronous callback dispatch on (a callback with
        batch hooks would otherwise turn it off); the logs are converted to Python
        numbers before the hook runs, so a stamp follows the end of its step.
        """
        async_safe = True

        def __init__(self):
            super().__init__()
            self.stamps = []

        def on_train_batch_end(self, batch, logs=None):
            self.stamps.append(time.perf_counter())

    return BatchClock()


def fit_epoch(model, dataset):
    """Timestamps of one model.fit epoch: its call, every step's end, its return."""
    clock = _batch_clock()
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    return [start] + sorted(clock.stamps) + [time.perf_counter()]


def epoch_summary(epochs, steps, batch):
    """Per-step time of the steady state and the per-epoch overhead, from timestamps.

    A step's time is the gap between consecutive step ends (the first gap, which
    holds the iterator set-up, excluded), pooled over the epochs: its median is
    robust to the load spikes of a shared machine. The overhead is what an epoch
    costs beyond `steps` such steps (iterator, callbacks, executor set-up).
    """
    gaps = [b - a for stamps in epochs for a, b in zip(stamps[1:steps], stamps[2:steps + 1])]
    totals = [stamps[-1] - stamps[0] for stamps in epochs]
    step = statistics.median(gaps)
    return {**summary(gaps, batch), "epoch_s": statistics.median(totals),
            "epochs": len(epochs), "per_epoch_overhead_s": statistics.median(totals) - steps * step}


def pipeline_epoch(pipeline, epoch):
    """(seconds, images, seconds to the first batch) of one pass over the training split."""
    start = time.perf_counter()
    images, first = 0, None
    for x, _ in pipeline.train_epoch(epoch):
        images += int(x.shape[0])
        first = first or time.perf_counter() - start
    return time.perf_counter() - start, images, first


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
# The main process: interleaved comparisons
# --------------------------------------------------------------------------- #

def measure_in_process(spec, runtime, pipeline, config):
    import numpy as np

    from lth_keras import weights
    from lth_keras.training import Trainer

    batch = FLAGS.batch_size
    num_classes = pipeline.dataset.num_classes
    strategy = runtime.strategy
    results = {}

    # 1. masked vs dense: the Trainer's compiled step on the same pre-made batches, without
    # XLA (the CPU default) and with it (the GPU default), which fuses the gradient mask
    # into the optimizer's update.
    batches = distributed_batches(strategy, premade_dataset(pipeline, 8))
    cursor = {}

    def stepper(name, step):
        cursor[name] = 0

        def call():
            i = cursor[name] = (cursor[name] + 1) % len(batches)
            return timed_step(step, batches[i])
        return call

    default_jit = runtime.jit_compile
    for key, jit in (("masked_vs_dense", False), ("masked_vs_dense_xla", True)):
        runtime.jit_compile = jit
        masked, dense = build_pair(spec, runtime, num_classes)
        masked_step = Trainer(masked, pipeline, config, runtime, verbose=False).loop._train_step
        dense_step = Trainer(dense, pipeline, config, runtime, verbose=False).loop._train_step
        times = interleave({"masked": stepper("masked", masked_step),
                            "dense": stepper("dense", dense_step)},
                           max(2, FLAGS.steps), FLAGS.warmup)
        results[key] = {
            "masked": summary(times["masked"], batch), "dense": summary(times["dense"], batch),
            **ratios(times["masked"], times["dense"]), "target": MASKED_DENSE_TARGET,
            "jit_compile": jit,
            "masked_weights": int(sum(int(np.prod(k.shape)) for k in
                                      weights.get_masks(masked).values()))}
        if jit == default_jit:
            default_pair = masked, masked_step
    runtime.jit_compile = default_jit
    masked, masked_step = default_pair

    # 2. custom loop vs model.fit over the same pre-made batches, epochs interleaved.
    steps = max(3, FLAGS.epoch_steps)
    dataset = premade_dataset(pipeline, steps)
    fit_masked = fit_model(spec, strategy, num_classes, jit_compile=False)
    times = interleave({"custom": lambda: custom_epoch(strategy, masked_step, dataset),
                        "fit": lambda: fit_epoch(fit_masked, dataset)},
                       max(2, FLAGS.epochs), 1)
    loop = {name: epoch_summary(epochs, steps, batch) for name, epochs in times.items()}
    auto = fit_model(spec, strategy, num_classes, jit_compile="auto").jit_compile
    results["custom_vs_fit"] = {
        **loop, "steps_per_epoch": steps,
        "ratio": loop["custom"]["median_s"] / loop["fit"]["median_s"],
        "epoch_ratio": loop["custom"]["epoch_s"] / loop["fit"]["epoch_s"],
        "fit_jit_compile": False, "keras_auto_jit_compile_resolves_to": bool(auto)}

    # 3. the epoch loop (no per-step host read) vs the per-step-sync loop it replaced
    # (lth_keras 0.2: every step's sums read back), same batches, epochs interleaved.
    trainer = Trainer(masked, pipeline, config, runtime, verbose=False)
    per_call = runtime.steps_per_execution

    def per_step_sync_epoch():
        stamps = custom_epoch(strategy, masked_step, dataset)
        return stamps[-1] - stamps[0]

    times = interleave(
        {"epoch_loop": lambda: sync_free_epoch(strategy, trainer.loop._train_steps, dataset,
                                               steps, per_call),
         "per_step_sync": per_step_sync_epoch},
        max(2, FLAGS.epochs), 1)
    results["epoch_loop_vs_per_step_sync"] = {
        "epoch_loop": summary([t / steps for t in times["epoch_loop"]], batch),
        "per_step_sync": summary([t / steps for t in times["per_step_sync"]], batch),
        **ratios(times["epoch_loop"], times["per_step_sync"]),
        "steps_per_epoch": steps, "steps_per_execution": per_call}

    # 4. the input pipeline alone vs what the training step consumes, interleaved
    def train_block(steps=8):
        return statistics.median(stepper("masked", masked_step)() for _ in range(steps))

    results["pipeline_vs_training"] = pipeline_result(pipeline, train_block)
    return results


def pipeline_result(pipeline, train_step_s=None):
    """Epoch throughput of the pipeline iterated alone (after one warm-up epoch).

    With `train_step_s` (a callable timing a few training steps, returning the
    median seconds per step), every pipeline epoch is followed by such a block, so
    the ratio pairs measurements taken under the same machine load.
    """
    batch = FLAGS.batch_size
    pipeline_epoch(pipeline, 0)  # builds the split tensors, warms the map function
    runs, steps = [], []
    for e in range(max(1, FLAGS.pipeline_epochs)):
        runs.append(pipeline_epoch(pipeline, e + 1))
        if train_step_s:
            steps.append(train_step_s())
    seconds, images = [r[0] for r in runs], runs[0][1]
    first = statistics.median(r[2] for r in runs)
    result = {"pipeline": {**summary(seconds, images), "images_per_epoch": images,
                           "first_batch_s": first,
                           # after the first batch: what a long epoch converges to
                           "steady_images_per_s": (images - batch) / max(
                               statistics.median(seconds) - first, 1e-9)}}
    if train_step_s:
        paired = [(images / s) / (batch / t) for s, t in zip(seconds, steps)]
        result.update(training_images_per_s=batch / statistics.median(steps),
                      ratio=statistics.median(paired), target=PIPELINE_TARGET)
    return result


# --------------------------------------------------------------------------- #
# Workers: one configuration per fresh process
# --------------------------------------------------------------------------- #

def worker(kind, spec, devices):
    """Runs one configuration alone; returns its timing and memory."""
    from lth_keras.training import Trainer

    runtime = setup(devices)
    strategy = runtime.strategy
    pipeline, config = input_data(spec)
    if devices > 1 and runtime.num_replicas != devices:
        raise RuntimeError(f"asked for {devices} devices, the strategy has "
                           f"{runtime.num_replicas}")
    baseline = rss_mib()
    batch, steps = FLAGS.batch_size, max(1, FLAGS.steps)
    num_classes = pipeline.dataset.num_classes
    if kind == "pipeline":
        timing = pipeline_result(pipeline)["pipeline"]
    elif kind == "fit":
        model = fit_model(spec, strategy, num_classes, jit_compile=False)
        steps = max(3, steps)
        dataset = premade_dataset(pipeline, steps)
        fit_epoch(model, dataset.take(max(1, FLAGS.warmup)))
        timing = epoch_summary([fit_epoch(model, dataset)], steps, batch)
    else:
        masked, dense = build_pair(spec, runtime, num_classes)
        model = masked if kind == "custom_masked" else dense
        step = Trainer(model, pipeline, config, runtime, verbose=False).loop._train_step
        batches = distributed_batches(strategy, premade_dataset(pipeline, min(steps, 8)))
        for i in range(max(1, FLAGS.warmup)):
            timed_step(step, batches[i % len(batches)])
        timing = summary([timed_step(step, batches[i % len(batches)]) for i in range(steps)],
                         batch)
    return {"kind": kind, "model": spec.model, "devices": devices, **timing,
            "baseline_rss_mib": baseline, "peak_rss_mib": peak_rss_mib(),
            "gpu_peak_mib": gpu_peak_mib()}


# --------------------------------------------------------------------------- #
# The large-dataset case: a folder bigger than a comfortable in-memory constant
# --------------------------------------------------------------------------- #

LARGE_CLASSES = 10
LARGE_SIZE = 256          # the files' side; image_size 224 stores them at 256
LARGE_IMAGE_SIZE = 224


def write_large_folder(root, n, seed=0):
    """`n` smooth random 256-px PNGs in train/val/test (80/10/10) class folders, written
    once (a folder that has them all is reused)."""
    from PIL import Image

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        with open(done) as f:
            if int(f.read()) == n:
                return root
    import numpy as np

    rng = np.random.default_rng(seed)
    counts = {"train": n - 2 * (n // 10), "val": n // 10, "test": n // 10}
    k = 0
    for split, count in counts.items():
        for i in range(count):
            label = i % LARGE_CLASSES
            folder = os.path.join(root, split, f"c{label}")
            os.makedirs(folder, exist_ok=True)
            # An 8x8 colour grid upsampled: compresses well, decodes like a photograph.
            grid = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            image = Image.fromarray(grid).resize((LARGE_SIZE, LARGE_SIZE), Image.BILINEAR)
            image.save(os.path.join(folder, f"{k:06d}.png"), compress_level=1)
            k += 1
    with open(done, "w") as f:
        f.write(str(n))
    return root


def _memory_mib():
    """Peak, anonymous and file-backed resident memory of this process (MiB)."""
    return {"peak_rss_mib": peak_rss_mib(), "rss_anon_mib": (_status_kib("RssAnon") or 0) / 1024,
            "rss_file_mib": (_status_kib("RssFile") or 0) / 1024}


def large_dataset_worker(folder, cache_dir):
    """Trains ResNet-20 at 224 px on the folder under MirroredStrategy over 2 logical CPU
    devices; times loading and the first step from the process's start."""
    start = PROCESS_START
    from lth_keras import datasets, engines, models, pruning, weights
    from lth_keras.datasets import InputPlan
    from lth_keras.training import Trainer, TrainingConfig

    runtime = engines.setup(seed=0, strategy="mirrored", cpu_devices=2)
    runtime.steps_per_execution = 1  # stop right after the first step to time it
    imported = time.perf_counter() - start
    dataset = datasets.load_dataset(folder, image_size=LARGE_IMAGE_SIZE, cache_dir=cache_dir)
    loaded = time.perf_counter() - start
    plan = InputPlan(dataset, image_size=LARGE_IMAGE_SIZE, batch_size=FLAGS.batch_size, seed=0)
    with runtime.scope():
        model = models.build_model("resnet20", input_shape=(LARGE_IMAGE_SIZE,) * 2 + (3,),
                                   num_classes=dataset.num_classes, seed=0)
    weights.set_masks(model, pruning.prune(weights.get_kernels(model),
                                           weights.get_masks(model), 0.8))
    trainer = Trainer(model, plan, TrainingConfig(), runtime, verbose=False)
    steps = FLAGS.large_dataset_steps or plan.steps_per_epoch
    calls = {"n": 0}

    def stop_after(n):
        def stop():
            calls["n"] += 1
            return calls["n"] > n
        return stop

    sums, done = trainer.loop.train_epoch(0, stop=stop_after(1))
    first_step = time.perf_counter() - start
    calls["n"] = 0
    rest = time.perf_counter()
    sums, done = trainer.loop.train_epoch(0, start_step=done, sums=sums,
                                          stop=stop_after(steps - done))
    rest = time.perf_counter() - rest
    return {"cache_dir": cache_dir, "images": len(dataset.train) + len(dataset.val)
            + len(dataset.test), "dataset_bytes": int(sum(
                dataset.split(s).images.nbytes for s in ("train", "val", "test"))),
            "replicas": runtime.num_replicas, "import_and_setup_s": imported,
            "load_s": loaded - imported, "time_to_first_step_s": first_step,
            "steps": done, "steps_per_epoch": plan.steps_per_epoch,
            "step_s": rest / max(1, done - 1), "cached": bool(dataset.details.get("cache")),
            **_memory_mib()}


def measure_large_dataset():
    """The large-dataset case in fresh processes: the folder's first load (decoded into the
    cache), a later load (memory-mapped), and the same without the cache (in memory)."""
    folder = write_large_folder(os.path.join(FLAGS.large_dataset_dir, "folder"),
                                FLAGS.large_dataset_images)
    cache_dir = os.path.join(FLAGS.large_dataset_dir, "cache")
    if os.path.isdir(cache_dir):
        import shutil
        shutil.rmtree(cache_dir)
    results = {}
    for name, cache in (("cache, first run", cache_dir), ("cache, later runs", cache_dir),
                        ("in memory, no cache", "")):
        print(f"[benchmark] large dataset: {name}", file=sys.stderr, flush=True)
        results[name] = run_worker("large_dataset", "resnet20", devices=2,
                                   extra=[f"--large_dataset_cache={cache}",
                                          f"--large_dataset_dir={FLAGS.large_dataset_dir}",
                                          f"--large_dataset_steps={FLAGS.large_dataset_steps}"])
    return {"folder": folder, "images": FLAGS.large_dataset_images, "runs": results}


def run_worker(kind, model, devices=1, steps=None, extra=()):
    """Runs this script with --worker in a fresh process; returns its JSON."""
    steps = FLAGS.steps if steps is None else steps
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "worker.json")
        command = [sys.executable, os.path.abspath(__file__), f"--worker={kind}",
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


# --------------------------------------------------------------------------- #
# Engines: the JAX engine's epoch loop against the TF engine's, a process each
# --------------------------------------------------------------------------- #

ENGINES = ("jax", "tensorflow")  # A / B of the ratio


def engine_worker(reply):
    """--engine_worker: the engine KERAS_BACKEND names trains a masked --engines_model.

    After one warm-up epoch (compilation) it replies with its set-up, then runs one
    epoch per line of stdin, replying with its seconds per step; it ends at EOF.
    `reply(dict)` writes one JSON line to the main process.
    """
    if os.environ.get("KERAS_BACKEND") == "jax":
        try:
            import jax  # noqa: F401
        except ImportError as e:
            reply({"skipped": f"JAX is not installed ({e})"})
            return
    from lth_keras import engines, models, pruning, weights
    from lth_keras.datasets import InputPlan
    from lth_keras.training import Trainer, TrainingConfig

    spec, batch = SPECS[FLAGS.engines_model], FLAGS.batch_size
    runtime = engines.setup(seed=0)
    plan = InputPlan(synthetic_dataset(spec, batch, train_images=max(2, FLAGS.epoch_steps) * batch),
                     image_size=spec.image_size, batch_size=batch, seed=0)
    with runtime.scope():
        model = models.build_model(spec.model, input_shape=(spec.image_size,) * 2 + (3,),
                                   num_classes=spec.num_classes, seed=0)
    weights.set_masks(model, pruning.prune(weights.get_kernels(model),
                                           weights.get_masks(model), 0.8))
    loop = Trainer(model, plan, TrainingConfig(), runtime, verbose=False).loop

    def epoch_s(epoch):
        start = time.perf_counter()
        loop.train_epoch(epoch)
        return time.perf_counter() - start

    reply({"engine": runtime.name, "environment": runtime.environment(),
           "steps_per_epoch": plan.steps_per_epoch, "warmup_epoch_s": epoch_s(0)})
    for epoch, _ in enumerate(sys.stdin, start=1):
        seconds = epoch_s(epoch)
        reply({"epoch_s": seconds, "step_s": seconds / plan.steps_per_epoch})


class EngineWorker:
    """This script with --engine_worker under one KERAS_BACKEND, on CPU."""

    def __init__(self, backend):
        self.backend = backend
        self._log = tempfile.TemporaryFile("w+")  # its stderr, read if it fails
        env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
               "CUDA_VISIBLE_DEVICES": "-1"}
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--engine_worker",
             f"--batch_size={FLAGS.batch_size}", f"--epoch_steps={FLAGS.epoch_steps}",
             f"--engines_model={FLAGS.engines_model}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)

    def receive(self):
        """The worker's next reply (a dict); RuntimeError with its stderr if it ended."""
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            self._log.seek(0)
            raise RuntimeError(f"the {self.backend} engine worker failed (exit "
                               f"{self._proc.returncode}):\n{self._log.read()[-3000:]}")
        return json.loads(line)

    def epoch(self):
        """Seconds per step of one more training epoch."""
        try:
            self._proc.stdin.write("go\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # it ended: receive() reports why
        return self.receive()["step_s"]

    def close(self, kill=False):
        """Ends the worker: EOF on its stdin (it returns when idle), or kill."""
        if kill:
            self._proc.kill()
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._log.close()


def measure_engines():
    """The JAX engine's epoch loop against the TF engine's, epochs interleaved."""
    workers, ready, finished = {}, {}, False
    try:
        for backend in ENGINES:  # both set up and compile at once: untimed
            workers[backend] = EngineWorker(backend)
        for backend, w in workers.items():
            ready[backend] = w.receive()
            if "skipped" in ready[backend]:
                return {"skipped": ready[backend]["skipped"]}
        times = interleave({backend: w.epoch for backend, w in workers.items()},
                           max(2, FLAGS.epochs), 0)
        finished = True
    finally:
        for w in workers.values():  # a skip or a failure leaves the other one busy
            w.close(kill=not finished)
    spec = SPECS[FLAGS.engines_model]
    return {"model": spec.model, "image_size": spec.image_size,
            "steps_per_epoch": ready["tensorflow"]["steps_per_epoch"],
            **{backend: {**summary(times[backend], FLAGS.batch_size),
                         "warmup_epoch_s": ready[backend]["warmup_epoch_s"],
                         "environment": ready[backend]["environment"]}
               for backend in ENGINES},
            **ratios(times["jax"], times["tensorflow"])}


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #

def _ms(seconds):
    return f"{1000 * seconds:.1f} ms"


def _rate(s):
    return f"{_ms(s['median_s'])} ({s['images_per_s']:,.0f} img/s)"


def _verdict(ratio, target, at_most):
    ok = ratio <= target if at_most else ratio >= target
    return f"{'≤' if at_most else '≥'} {target:g}: {'ok' if ok else 'MISSED'}"


def _ratios(r):
    return f"{r['ratio']:.3f} (pairs {r['median_paired_ratio']:.3f})"


def format_markdown(report):
    settings = report["settings"]
    lines = [f"# Benchmark: {report['environment']['device']}, batch {settings['batch_size']}",
             "", "Step times are medians after warm-up; A / B below 1 means A is faster. "
             "A / B: ratio of the medians (median of the interleaved pairs' ratios).", "",
             "| model | comparison | A | B | A / B | target |",
             "|---|---|---|---|---|---|"]
    memory = ["", "| model | configuration, alone in its own process | peak RSS | "
                  "baseline RSS | median step (not interleaved) |", "|---|---|---:|---:|---:|"]
    for name, r in report["models"].items():
        label = f"{name} ({r['image_size']} px)"
        for key, how in (("masked_vs_dense", "no XLA"), ("masked_vs_dense_xla", "XLA")):
            md = r[key]
            lines.append(f"| {label} | masked / dense, Trainer step ({how}), "
                         f"{md['masked']['calls']} interleaved steps | {_rate(md['masked'])} | "
                         f"{_rate(md['dense'])} | {_ratios(md)} | "
                         f"{_verdict(md['ratio'], md['target'], True)} |")
        el = r["epoch_loop_vs_per_step_sync"]
        lines.append(f"| {label} | epoch loop ({el['steps_per_execution']} steps a call, one "
                     f"read an epoch) / per-step-sync loop, {el['epoch_loop']['calls']} "
                     f"interleaved epochs of {el['steps_per_epoch']} steps | "
                     f"{_rate(el['epoch_loop'])} | {_rate(el['per_step_sync'])} | "
                     f"{_ratios(el)} | |")
        cf = r["custom_vs_fit"]
        lines.append(f"| {label} | custom loop / model.fit (jit_compile=False), step time in "
                     f"{cf['custom']['epochs']} interleaved epochs of {cf['steps_per_epoch']} "
                     f"steps | {_rate(cf['custom'])} | {_rate(cf['fit'])} | {cf['ratio']:.3f} | |")
        lines.append(f"| {label} | … whole epochs, set-up included (overhead per epoch: "
                     f"{_ms(cf['custom']['per_epoch_overhead_s'])} vs "
                     f"{_ms(cf['fit']['per_epoch_overhead_s'])}) | {_ms(cf['custom']['epoch_s'])} "
                     f"| {_ms(cf['fit']['epoch_s'])} | {cf['epoch_ratio']:.3f} | |")
        pt = r["pipeline_vs_training"]
        lines.append(f"| {label} | input pipeline alone / training step consumption, "
                     f"{pt['pipeline']['calls']} epochs of {pt['pipeline']['images_per_epoch']:,} "
                     f"images, each followed by 8 steps | "
                     f"{pt['pipeline']['images_per_s']:,.0f} img/s | "
                     f"{pt['training_images_per_s']:,.0f} img/s | {pt['ratio']:.2f} | "
                     f"{_verdict(pt['ratio'], pt['target'], False)} |")
        mirrored = r.get("mirrored")
        if mirrored:
            one, two = mirrored["devices_1"], mirrored["devices_2"]
            lines.append(f"| {label} | MirroredStrategy 2 / 1 logical CPU devices, masked "
                         f"step (separate processes, not interleaved) | {_rate(two)} | "
                         f"{_rate(one)} | {mirrored['ratio']:.3f} | |")
        for key, w in (r.get("isolated") or {}).items():
            step = (_ms(w["median_s"]) + (" / epoch" if key.startswith("input") else ""))
            if w.get("gpu_peak_mib"):
                step += f" (GPU peak {w['gpu_peak_mib']:,.0f} MiB)"
            memory.append(f"| {label} | {key} | {w['peak_rss_mib']:,.0f} MiB | "
                          f"{w['baseline_rss_mib']:,.0f} MiB | {step} |")
    e = report.get("engines")
    if e and "skipped" not in e:
        lines.append(f"| {e['model']} ({e['image_size']} px) | JAX engine / TF engine on CPU, "
                     f"epoch loop step (Trainer.loop.train_epoch, input included, a process "
                     f"each), {e['jax']['calls']} interleaved epochs of {e['steps_per_epoch']} "
                     f"steps | {_rate(e['jax'])} | {_rate(e['tensorflow'])} | {_ratios(e)} | |")
    memory.append(f"| all | the main process (all in-process comparisons above) | "
                  f"{report['main_process_peak_rss_mib']:,.0f} MiB | | |")
    large = report.get("large_dataset")
    if large:
        first = next(iter(large["runs"].values()))
        memory += ["", f"Large dataset: ResNet-20 at {LARGE_IMAGE_SIZE} px on "
                       f"{large['images']:,} images of {LARGE_SIZE} px "
                       f"({first['dataset_bytes'] / 2**30:.2f} GiB decoded), MirroredStrategy "
                       f"over {first['replicas']} logical CPU devices, a process each.", "",
                   "| run | load | time to the first step | step | peak RSS | anonymous / "
                   "file-backed RSS at the end |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in large["runs"].items():
            memory.append(f"| {name} | {r['load_s']:.1f} s | {r['time_to_first_step_s']:.1f} s "
                          f"| {_ms(r['step_s'])} ({r['steps']} steps) | "
                          f"{r['peak_rss_mib']:,.0f} MiB | {r['rss_anon_mib']:,.0f} / "
                          f"{r['rss_file_mib']:,.0f} MiB |")
    notes = [""]
    for name, r in report["models"].items():
        md = r["masked_vs_dense"]
        if md["ratio"] > md["target"]:
            extra_ms = 1000 * (md["masked"]["median_s"] - md["dense"]["median_s"])
            notes.append(
                f"{name}: masked / dense without XLA {md['ratio']:.3f} misses "
                f"{md['target']:g}. The masked step multiplies the gradients of "
                f"{md['masked_weights']:,} kernel weights by their masks, one memory-bound "
                f"pass that TensorFlow does not fuse without XLA (+{extra_ms:.2f} ms a step "
                "here); XLA (the default on GPUs) fuses it into the optimizer's update.")
    if e and "skipped" in e:
        notes += ["", f"JAX engine / TF engine: skipped ({e['skipped']})."]
    notes += ["", "Baseline RSS: the worker process after importing TensorFlow and building "
             "the data, before any model. model.fit: Keras' jit_compile='auto' resolves to "
             f"{report['keras_auto_jit_compile']} here, so fit and the custom loop both run "
             "without XLA. On a shared machine absolute times drift; compare the ratios."]
    return "\n".join(lines + memory + notes) + "\n"


# --------------------------------------------------------------------------- #

def main(argv):
    logging.set_verbosity(logging.WARNING)  # tf.distribute logs a line per strategy and dataset
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.engine_worker:
        # Replies go to the original stdout; anything else printed goes to stderr.
        channel = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)

        def reply(message):
            channel.write(json.dumps(message) + "\n")
            channel.flush()

        engine_worker(reply)
        return
    if FLAGS.paper_cost:
        print(paper_cost(), end="")
        return
    # Everything else measures the TensorFlow engine (KERAS_BACKEND is read at import).
    os.environ["KERAS_BACKEND"] = "tensorflow"
    if FLAGS.worker == "large_dataset":
        result = large_dataset_worker(os.path.join(FLAGS.large_dataset_dir, "folder"),
                                      FLAGS.large_dataset_cache)
        with open(FLAGS.worker_output, "w") as f:
            json.dump(result, f)
        return
    if FLAGS.worker:
        spec = SPECS[FLAGS.worker_model]
        result = worker(FLAGS.worker, spec, FLAGS.devices)
        with open(FLAGS.worker_output, "w") as f:
            json.dump(result, f)
        return

    import tensorflow as tf

    from lth_keras import artifacts

    gpus = tf.config.list_physical_devices("GPU")
    names = FLAGS.models or (["resnet20", "lenet_300_100"] + (["resnet50"] if gpus else []))
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise app.UsageError(f"unknown --models {unknown}; known: {sorted(SPECS)}")
    if FLAGS.mixed_precision != "off" and not gpus:
        raise app.UsageError("--mixed_precision needs a GPU")

    start = time.time()
    runtime = setup()  # one runtime (strategy) per process; the pipeline (and data) per model
    report = {"settings": {k: FLAGS[k].value for k in (
                  "steps", "warmup", "epoch_steps", "epochs", "batch_size", "pipeline_epochs",
                  "train_images",
                  "mirrored", "isolated_memory", "engines", "large_dataset",
                  "mixed_precision")},
              "environment": {**artifacts.environment_record(runtime),
                              "device": f"GPU x{len(gpus)}" if gpus else
                              f"CPU ({os.cpu_count()} cores)"},
              "models": {}}
    for name in names:
        spec = SPECS[name]
        print(f"[benchmark] {name}: in-process comparisons", file=sys.stderr, flush=True)
        pipeline, config = input_data(spec)
        result = {"image_size": spec.image_size,
                  **measure_in_process(spec, runtime, pipeline, config)}
        if FLAGS.mirrored and gpus:
            result["mirrored"] = None  # logical CPU devices only; a GPU run uses its GPUs
        elif FLAGS.mirrored:
            print(f"[benchmark] {name}: MirroredStrategy workers", file=sys.stderr, flush=True)
            one = run_worker("custom_masked", name, 1)
            two = run_worker("custom_masked", name, 2)
            result["mirrored"] = {"devices_1": one, "devices_2": two,
                                  "ratio": two["median_s"] / one["median_s"]}
        if FLAGS.isolated_memory:
            print(f"[benchmark] {name}: isolated-memory workers", file=sys.stderr, flush=True)
            isolated = {}
            if result.get("mirrored"):
                isolated["custom step, masked, 1 device"] = result["mirrored"]["devices_1"]
                isolated["custom step, masked, 2 devices"] = result["mirrored"]["devices_2"]
            else:
                isolated["custom step, masked, 1 device"] = run_worker("custom_masked", name)
            # Memory only: the peak is reached within a few steps, so fewer of them.
            steps = min(FLAGS.steps, MEMORY_STEPS)
            isolated["custom step, dense"] = run_worker("custom_dense", name, steps=steps)
            isolated["model.fit, masked, no XLA"] = run_worker("fit", name, steps=steps)
            isolated["input pipeline alone"] = run_worker("pipeline", name, steps=steps)
            result["isolated"] = isolated
        report["models"][name] = result
    if FLAGS.engines:
        print(f"[benchmark] {FLAGS.engines_model}: JAX engine vs TF engine workers",
              file=sys.stderr, flush=True)
        report["engines"] = measure_engines()
    if FLAGS.large_dataset:
        report["large_dataset"] = measure_large_dataset()
    report["main_process_peak_rss_mib"] = peak_rss_mib()
    report["keras_auto_jit_compile"] = any(
        r["custom_vs_fit"]["keras_auto_jit_compile_resolves_to"] for r in report["models"].values())
    report["gpu_peak_mib"] = gpu_peak_mib()
    report["seconds"] = time.time() - start

    markdown = format_markdown(report)
    artifacts.write_json(os.path.join(FLAGS.output, "benchmark.json"), report)
    artifacts.write_bytes(os.path.join(FLAGS.output, "benchmark.md"), markdown.encode())
    print(markdown, end="")
    print(f"written: {os.path.join(FLAGS.output, 'benchmark.json')} and benchmark.md "
          f"({report['seconds']:.0f} s)")


def paper_cost():
    """Markdown: images, FLOPs and hours of flags/paper.cfg's ticket search and of
    flags/paper_grid.cfg, at --paper_images_per_s."""
    import numpy as np

    from lth_keras import costs, grid, models

    from lth_keras import settings

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    preset = settings.parse(settings.FIND_TICKETS,
                            [f"--flagfile={os.path.join(root, 'flags', 'paper.cfg')}"])
    paper_grid = settings.parse(settings.EXPERIMENT,
                                [f"--flagfile={os.path.join(root, 'flags', 'paper_grid.cfg')}"]
                                )[settings.Grid]
    model_settings, data = preset[settings.Model], preset[settings.Data]
    pruning, size = preset[settings.Pruning], preset[settings.Model].image_size
    model = models.build_model(model_settings.model, input_shape=(size, size, 3),
                               num_classes=10, seed=0)
    flops = costs.forward_flops(model)
    head = 2 * int(np.prod(model.get_layer(models.HEAD_NAME).kernel.shape))
    epochs = FLAGS.paper_epochs or preset[settings.Training].max_epochs
    common = dict(rounds=pruning.rounds, epochs_per_level=epochs,
                  forward=flops["dense"], prunable=flops["dense"] - head,
                  prune_rate=pruning.prune_rate, val_fraction=data.val_fraction,
                  source_train_fraction=data.train_fraction)
    runs = grid.runs_of(paper_grid)
    search = [r for r in runs if r.name == "tickets/cifar10-seed0"]
    rows = [("one ticket search (CIFAR-10, one seed)", costs.grid_cost(search, **common)),
            (f"the paper grid ({len(runs)} runs)", costs.grid_cost(runs, **common))]
    rates = [float(r) for r in FLAGS.paper_images_per_s]
    lines = [f"# What the paper's protocol costs: {model_settings.model} at {size} px, "
             f"{pruning.rounds + 1} levels, {epochs} epochs per level",
             "", f"Forward pass: {costs.format_flops(flops['dense'])} per image; training "
             f"counts {costs.TRAINING_PASSES} passes. Masked FLOPs assume every prunable "
             "layer at the level's density (what sparse kernels could save; dense GPU kernels "
             "spend the dense figure).", "",
             "| what | levels | training images | training FLOPs, dense | with the masks | "
             + " | ".join(f"hours at {r:,.0f} img/s" for r in rates) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(rates)]
    for label, cost in rows:
        hours = " | ".join(f"{cost['images'] / r / 3600:,.1f}" for r in rates)
        lines.append(f"| {label} | {cost['levels']:,} | {cost['images']:,} | "
                     f"{costs.format_flops(cost['training_flops']['dense'])} | "
                     f"{costs.format_flops(cost['training_flops']['masked'])} | {hours} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    app.run(main)
