"""custom / fit: the custom training loop against model.fit.

A per-step-sync epoch (iterate a distributed dataset, call the compiled step, read
its sums) against model.fit (SGD Nesterov, same batch, jit_compile=False) over the
same pre-made batches, epochs alternating. Step time = median gap between step
ends; per-epoch overhead = the rest of the epoch. Keras' default
jit_compile="auto" resolves to no XLA on CPU and under tf.distribute, so no XLA
variant is run.
"""

import statistics
import time

from tools import fixtures
from tools.benchmark.harness import FLAGS, interleave, per_step_sync_epoch, summary


def fit_model(spec, runtime, num_classes, jit_compile):
    """A masked model compiled for model.fit with the Trainer's optimizer settings."""
    import keras

    model = fixtures.model(runtime, spec.model, spec.image_size, num_classes)
    with runtime.scope():
        optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
        if FLAGS.mixed_precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=jit_compile)
    return model


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


def measure(spec, runtime, num_classes, masked_step, dataset, steps):
    """The custom loop's epochs (masked_step) against model.fit's over `dataset`, a
    pre-made dataset of `steps` batches, epochs interleaved."""
    strategy = runtime.strategy
    fit_masked = fit_model(spec, runtime, num_classes, jit_compile=False)
    times = interleave({"custom": lambda: per_step_sync_epoch(strategy, masked_step, dataset),
                        "fit": lambda: fit_epoch(fit_masked, dataset)},
                       max(2, FLAGS.epochs), 1)
    loop = {name: epoch_summary(epochs, steps, FLAGS.batch_size) for name, epochs in times.items()}
    auto = fit_model(spec, runtime, num_classes, jit_compile="auto").jit_compile
    return {**loop, "steps_per_epoch": steps,
            "ratio": loop["custom"]["median_s"] / loop["fit"]["median_s"],
            "epoch_ratio": loop["custom"]["epoch_s"] / loop["fit"]["epoch_s"],
            "fit_jit_compile": False, "keras_auto_jit_compile_resolves_to": bool(auto)}
