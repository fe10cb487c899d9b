"""pipeline / train: whether the input pipeline keeps up with the training step.

Images/s of InputPipeline epochs iterated alone (a real-size training split) over
the images/s the masked step consumes, each pipeline epoch followed by 8 timed
steps, so that both sides of a pair see the same machine load. Target >= 3.
"""

import statistics
import time

from tools.benchmark.harness import FLAGS, cycling_step, summary

PIPELINE_TARGET = 3.0


def pipeline_epoch(pipeline, epoch):
    """(seconds, images, seconds to the first batch) of one pass over the training split."""
    start = time.perf_counter()
    images, first = 0, None
    for x, _ in pipeline.train_epoch(epoch):
        images += int(x.shape[0])
        first = first or time.perf_counter() - start
    return time.perf_counter() - start, images, first


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


def measure(pipeline, masked_step, batches):
    """The pipeline alone against blocks of 8 masked steps on the distributed `batches`."""
    def train_block(steps=8):
        step = cycling_step(masked_step, batches)
        return statistics.median(step() for _ in range(steps))

    return pipeline_result(pipeline, train_block)
