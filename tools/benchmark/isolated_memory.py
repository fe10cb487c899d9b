"""peak RSS: what each configuration needs alone.

The VmHWM of a fresh process that ran one configuration by itself (warm-up and
timed steps): the masked and the dense custom step, model.fit and the input
pipeline. "Baseline" is the worker's RSS after importing TensorFlow and building
the data, before any model. A worker's step time is not interleaved with anything.
"""

from tools import fixtures
from tools.benchmark import custom_vs_fit, masked_vs_dense, pipeline_vs_training
from tools.benchmark.harness import (FLAGS, distributed_batches, gpu_peak_mib,
                                     input_data, peak_rss_mib, premade_dataset, rss_mib,
                                     run_worker, summary, timed_step)

MEMORY_STEPS = 10  # timed steps of a worker that is only there for its peak RSS


def worker(kind, spec, devices):
    """--worker=KIND: runs one configuration alone; returns its timing and memory."""
    runtime = fixtures.setup(FLAGS.mixed_precision, devices)
    strategy = runtime.strategy
    pipeline, config = input_data(spec)
    if devices > 1 and runtime.num_replicas != devices:
        raise RuntimeError(f"asked for {devices} devices, the strategy has "
                           f"{runtime.num_replicas}")
    baseline = rss_mib()
    batch, steps = FLAGS.batch_size, max(1, FLAGS.steps)
    num_classes = pipeline.dataset.num_classes
    if kind == "pipeline":
        timing = pipeline_vs_training.pipeline_result(pipeline)["pipeline"]
    elif kind == "fit":
        model = custom_vs_fit.fit_model(spec, runtime, num_classes, jit_compile=False)
        steps = max(3, steps)
        dataset = premade_dataset(pipeline, steps)
        custom_vs_fit.fit_epoch(model, dataset.take(max(1, FLAGS.warmup)))
        timing = custom_vs_fit.epoch_summary([custom_vs_fit.fit_epoch(model, dataset)], steps,
                                             batch)
    else:
        masked, dense = masked_vs_dense.build_pair(spec, runtime, num_classes)
        model = masked if kind == "custom_masked" else dense
        step = masked_vs_dense.train_step(model, pipeline, config, runtime)
        batches = distributed_batches(strategy, premade_dataset(pipeline, min(steps, 8)))
        for i in range(max(1, FLAGS.warmup)):
            timed_step(step, batches[i % len(batches)])
        timing = summary([timed_step(step, batches[i % len(batches)]) for i in range(steps)],
                         batch)
    return {"kind": kind, "model": spec.model, "devices": devices, **timing,
            "baseline_rss_mib": baseline, "peak_rss_mib": peak_rss_mib(),
            "gpu_peak_mib": gpu_peak_mib()}


def measure(model, mirrored=None):
    """{configuration: worker result}; the mirrored workers' results (if any) stand for
    the masked custom step on 1 and 2 devices."""
    isolated = {}
    if mirrored:
        isolated["custom step, masked, 1 device"] = mirrored["devices_1"]
        isolated["custom step, masked, 2 devices"] = mirrored["devices_2"]
    else:
        isolated["custom step, masked, 1 device"] = run_worker("custom_masked", model)
    # Memory only: the peak is reached within a few steps, so fewer of them.
    steps = min(FLAGS.steps, MEMORY_STEPS)
    isolated["custom step, dense"] = run_worker("custom_dense", model, steps=steps)
    isolated["model.fit, masked, no XLA"] = run_worker("fit", model, steps=steps)
    isolated["input pipeline alone"] = run_worker("pipeline", model, steps=steps)
    return isolated
