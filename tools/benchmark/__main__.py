"""Training throughput: masked vs plain layers, custom loop vs fit, input pipeline, devices,
the JAX engine vs the TensorFlow engine.

  python -m tools.benchmark [--models=resnet20,lenet_300_100] [--steps=30]
                            [--output=outputs/benchmark]

(from the repository's root; `python tools/benchmark ...` runs it from anywhere).
The main process runs the TensorFlow engine (it sets KERAS_BACKEND=tensorflow for
itself and its workers) and, for each model, the in-process comparisons, each
interleaved on the same batches (harness.py):

  masked / dense                masked_vs_dense.py
  epoch loop / per-step sync    epoch_loop_vs_per_step_sync.py
  custom / fit                  custom_vs_fit.py
  pipeline / train              pipeline_vs_training.py

then those that need fresh processes, for which it runs itself with the internal
--worker and --engine_worker flags:

  mirrored 2 vs 1               mirrored.py (skipped on GPU machines)
  peak RSS                      isolated_memory.py (--isolated_memory)
  JAX / TF engine               jax_vs_tf.py (--engines)
  large dataset                 large_dataset.py (--large_dataset)

The main process, which ran everything, reports its own peak RSS too.
--paper_cost prints lth_keras.costs.paper_cost instead of measuring.

Data: a seeded synthetic in-memory ImageDataset (Fashion-MNIST-shaped for LeNet,
CIFAR-shaped for ResNet-20, 256 px for ResNet-50), the same for every
configuration, so no files are needed. ResNet-50 at 224 px is added when a GPU is
visible (--mixed_precision optional there). Writes benchmark.json and benchmark.md
to --output (atomically) and prints the table.
"""

import os
import sys
import time

PROCESS_START = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from absl import app, logging  # noqa: E402

from tools import fixtures  # noqa: E402
from tools.benchmark import (custom_vs_fit, epoch_loop_vs_per_step_sync,  # noqa: E402
                             isolated_memory, jax_vs_tf, large_dataset, masked_vs_dense,
                             mirrored, pipeline_vs_training)
from tools.benchmark.harness import (FLAGS, SPECS, distributed_batches,  # noqa: E402
                                     gpu_peak_mib, input_data, peak_rss_mib, premade_dataset)
from tools.benchmark.report import format_markdown  # noqa: E402


def measure_in_process(spec, runtime, pipeline, config):
    """The four interleaved comparisons of one model, in this process."""
    num_classes = pipeline.dataset.num_classes
    batches = distributed_batches(runtime.strategy, premade_dataset(pipeline, 8))
    results, (masked, masked_step) = masked_vs_dense.measure(spec, runtime, pipeline, config,
                                                             batches)
    steps = max(3, FLAGS.epoch_steps)
    dataset = premade_dataset(pipeline, steps)
    results["custom_vs_fit"] = custom_vs_fit.measure(spec, runtime, num_classes, masked_step,
                                                     dataset, steps)
    results["epoch_loop_vs_per_step_sync"] = epoch_loop_vs_per_step_sync.measure(
        runtime, masked, pipeline, config, masked_step, dataset, steps)
    results["pipeline_vs_training"] = pipeline_vs_training.measure(pipeline, masked_step,
                                                                   batches)
    return results


def paper_cost():
    """lth_keras.costs.paper_cost of flags/paper.cfg and flags/paper_grid.cfg."""
    from lth_keras import costs, grid, settings

    def preset(groups, name):
        return settings.from_arguments(groups, [f"--flagfile={os.path.join(ROOT, 'flags', name)}"])[0]

    runs = grid.runs_of(preset(settings.EXPERIMENT, "paper_grid.cfg")[settings.Grid])
    return costs.paper_cost(preset(settings.FIND_TICKETS, "paper.cfg"), runs,
                            [float(r) for r in FLAGS.paper_images_per_s], FLAGS.paper_epochs)


def write_json(path, result):
    import json

    with open(path, "w") as f:
        json.dump(result, f)


def main(argv):
    logging.set_verbosity(logging.WARNING)  # tf.distribute logs a line per strategy and dataset
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.engine_worker:
        jax_vs_tf.serve()
        return
    if FLAGS.paper_cost:
        print(paper_cost(), end="")
        return
    # Everything else measures the TensorFlow engine (KERAS_BACKEND is read at import).
    os.environ["KERAS_BACKEND"] = "tensorflow"
    if FLAGS.worker == "large_dataset":
        write_json(FLAGS.worker_output,
                   large_dataset.worker(FLAGS.large_dataset_cache, PROCESS_START))
        return
    if FLAGS.worker:
        write_json(FLAGS.worker_output,
                   isolated_memory.worker(FLAGS.worker, SPECS[FLAGS.worker_model], FLAGS.devices))
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
    # one runtime (strategy) per process; the pipeline (and data) per model
    runtime = fixtures.setup(FLAGS.mixed_precision, 1)
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
            result["mirrored"] = mirrored.measure(name)
        if FLAGS.isolated_memory:
            print(f"[benchmark] {name}: isolated-memory workers", file=sys.stderr, flush=True)
            result["isolated"] = isolated_memory.measure(name, result.get("mirrored"))
        report["models"][name] = result
    if FLAGS.engines:
        print(f"[benchmark] {FLAGS.engines_model}: JAX engine vs TF engine workers",
              file=sys.stderr, flush=True)
        report["engines"] = jax_vs_tf.measure()
    if FLAGS.large_dataset:
        report["large_dataset"] = large_dataset.measure()
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


if __name__ == "__main__":
    app.run(main)
