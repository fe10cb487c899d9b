"""How long the TensorFlow engine waits when an epoch's input iterator is deleted.

  python -m tools.benchmark.iterator_deletion [--epochs=6] [--steps=150] [--step_s=0.05]

The engine makes a fresh iterator for every training epoch, precise-BN pass and
evaluation. tf.data's autotuning thread sleeps between optimisations (its period grows
towards a minute as a run goes on), and deleting an iterator waits for it. The strategy's
distributed iterator feeds each device through a per-device dataset with default options,
autotuning included, whatever the pipeline's own options say; the engine's one-replica
path iterates the pipeline's dataset itself. For each way, this consumes `--epochs` epochs
of the real InputPipeline (synthetic CIFAR-shaped data, `--steps` batches of 64 each,
`--step_s` of sleep standing in for a training step) and times each `del iterator`.
Prints one line per way: the median and the largest wait, and the ratio of the medians.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def waits(make_iterator, pipeline, epochs, step_s):
    """Seconds each deletion of an epoch's iterator took."""
    seconds = []
    for epoch in range(epochs):
        iterator = make_iterator(pipeline.train_epoch(epoch))
        for _ in iterator:
            time.sleep(step_s)
        start = time.perf_counter()
        del iterator
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--step_s", type=float, default=0.05)
    args = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    from lth_keras.datasets.pipeline import InputPipeline
    from tools import fixtures

    data = fixtures.synthetic_dataset("cifar_like", (37, 37, 3), 10, args.steps * 64, 64)
    pipeline = InputPipeline(data, image_size=32, batch_size=64, seed=0)
    strategy = tf.distribute.MirroredStrategy(["/CPU:0"])
    ways = {"distributed iterator": lambda ds: iter(strategy.experimental_distribute_dataset(ds)),
            "the dataset's own (one replica)": iter}
    medians = {}
    for name, make in ways.items():
        seconds = waits(make, pipeline, args.epochs, args.step_s)
        medians[name] = statistics.median(seconds)
        print(f"{name}: deletion median {medians[name]:.3f} s, largest {max(seconds):.3f} s "
              f"over {args.epochs} epochs of {args.steps} steps")
    a, b = medians.values()
    print(f"ratio of medians (distributed / own): {a / max(b, 1e-6):.0f}")


if __name__ == "__main__":
    main()
