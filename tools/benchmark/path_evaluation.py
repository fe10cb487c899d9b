"""Where the time of one point of an instability path goes, before and after the input fix.

  python -m tools.benchmark.path_evaluation [--points=11] [--rounds=3]

A point of a path (lottery/stability.evaluate_path) loads the interpolated weights,
re-estimates BatchNorm's statistics on 20 training batches, and evaluates validation and
test. This measures each phase on ResNet-20 at 32 px with the study's split sizes
(synthetic CIFAR-shaped data: 8,100 training, 2,000 validation, 4,997 test images), on
the TensorFlow engine, two ways interleaved in one process, `--rounds` paths each:

  before   every iterator through the strategy's distributed iterator, with tf.data's
           autotuning on (the engine up to lth_keras 0.6): each deletion waits for the
           autotuning thread's sleep;
  after    the one-replica engine's own iterators, autotuning off (pipeline.py,
           tf_engine._iterate).

Prints the median seconds per phase and per path of `--points` points, and the ratio
before / after. What remains after is compute: the forward passes themselves.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

PHASES = ("weights", "batchnorm", "val", "test")


def measure_point(trainer, ends, alpha, keep):
    """Seconds of each phase of one point of the path between `ends`."""
    from lth_keras import weights
    from lth_keras.lottery.instability import interpolate

    seconds = {}
    start = time.perf_counter()
    weights.assign(trainer.model, interpolate(ends[0], ends[1], alpha, keep))
    seconds["weights"] = time.perf_counter() - start
    start = time.perf_counter()
    trainer.loop.recompute_batchnorm(0, 20)
    seconds["batchnorm"] = time.perf_counter() - start
    for split in ("val", "test"):
        start = time.perf_counter()
        trainer.evaluate(split)
        seconds[split] = time.perf_counter() - start
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import numpy as np
    import tensorflow as tf

    from lth_keras import settings, weights
    from lth_keras.datasets import ImageDataset, Split
    from lth_keras.datasets.epoch_plan import InputPlan
    from lth_keras.engines import tf_engine
    from lth_keras.training import Trainer
    from tools import fixtures

    runtime = fixtures.setup()
    rng = np.random.default_rng(0)

    def split(n):
        return Split(rng.integers(0, 256, (n, 37, 37, 3), dtype=np.uint8), np.arange(n) % 10)

    data = ImageDataset("cifar_like", tuple(f"c{i}" for i in range(10)), split(8100),
                        split(2000), split(4997))
    plan = InputPlan(data, image_size=32, batch_size=64, seed=0)
    model = fixtures.masked_model(runtime, "resnet20", 32, 10)
    training = settings.Training(learning_rate=0.05, precise_bn=20)
    trainer = Trainer(model, plan, training, runtime, verbose=False)
    a = weights.snapshot(model)
    b = {k: (v + np.float32(0.01) * rng.standard_normal(v.shape).astype(v.dtype)
             if np.issubdtype(v.dtype, np.floating) else v) for k, v in a.items()}
    keep = set(weights.mask_paths(model))
    after_iterate = tf_engine.EpochLoop._iterate
    pipeline = trainer.loop.pipeline

    def before_iterate(loop, dataset):
        return iter(loop.strategy.experimental_distribute_dataset(dataset))

    ways = {"before": (before_iterate, True), "after": (after_iterate, False)}
    results = {way: {phase: [] for phase in PHASES} for way in ways}
    alphas = np.linspace(0, 1, args.points)
    for iterate, autotune in ways.values():  # warm-up: every step traced once, untimed
        tf_engine.EpochLoop._iterate = iterate
        measure_point(trainer, (a, b), 0.5, keep)
    for _ in range(args.rounds):
        for way, (iterate, autotune) in ways.items():
            tf_engine.EpochLoop._iterate = iterate
            options = tf.data.Options()
            options.deterministic, options.autotune.enabled = True, autotune
            pipeline._options = options
            pipeline._evaluation.clear()  # evaluation datasets carry the options they had
            for alpha in alphas:
                for phase, seconds in measure_point(trainer, (a, b), alpha, keep).items():
                    results[way][phase].append(seconds)
    tf_engine.EpochLoop._iterate = after_iterate
    print(f"ResNet-20, 32 px, {args.points} points a path, median over {args.rounds} paths "
          f"a way ({tf.config.threading.get_intra_op_parallelism_threads() or 'default'} "
          "intra-op threads):")
    print("| phase | before (s) | after (s) | before / after |")
    print("|---|---:|---:|---:|")
    totals = {}
    for phase in PHASES:
        b_s, a_s = (statistics.median(results[w][phase]) for w in ("before", "after"))
        totals[phase] = (b_s, a_s)
        print(f"| {phase} | {b_s:.3f} | {a_s:.3f} | {b_s / a_s:.2f} |")
    path_b = args.points * sum(t[0] for t in totals.values())
    path_a = args.points * sum(t[1] for t in totals.values())
    print(f"| a path of {args.points} points | {path_b:.1f} | {path_a:.1f} | "
          f"{path_b / path_a:.2f} |")


if __name__ == "__main__":
    main()
