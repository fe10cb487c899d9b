"""The TensorFlow engine's tf.data input pipeline for an InputPlan (see plan.py).

Instead of materialising resized copies, each batch is gathered at its original
resolution and `tf.image.crop_and_resize` samples the plan's crop boxes straight
from it (corner-aligned bilinear), on the host.

A split of up to STREAM_BYTES becomes one tensor that the pipeline's graph
captures. A larger one (typically a memory-mapped image-folder cache) is never
copied whole: each batch is gathered from the numpy array, so only the pages it
touches are read, graphs stay far from their 2 GB limit, and a strategy that
distributes the dataset copies no images.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from lth_keras.datasets.epoch_plan import InputPlan, channel_stats, resize_size  # noqa: F401

__all__ = ["InputPipeline", "channel_stats", "resize_size"]

STREAM_BYTES = 256 << 20
# Batches made in parallel, and made ahead of the step: enough to keep a step fed on a
# host that also trains (the batch is a gather and a crop, a small fraction of a step).
MAP_CALLS = 2
PREFETCH = 4


class InputPipeline(InputPlan):
    """tf.data batches of (float32 images (B, S, S, C) normalised, int64 labels (B,))."""

    def __init__(self, dataset, *, image_size, batch_size, seed, stats=None, crop="random",
                 channels=3):
        super().__init__(dataset, image_size=image_size, batch_size=batch_size, seed=seed,
                         stats=stats, crop=crop, channels=channels)
        self._tensors = {}   # split -> (gather, labels, channels), made once per split
        self._evaluation = {}
        self._options = tf.data.Options()
        self._options.deterministic = True
        # tf.data's autotuning thread sleeps between optimisations, up to 60 s as a run
        # goes on, and deleting an iterator waits for it: every epoch's iterators (training,
        # precise BN, evaluation) stalled the process for seconds to a minute with no CPU
        # in use (measured: tools/benchmark/iterator_deletion.py). Fixed parallelism instead.
        self._options.autotune.enabled = False

    @classmethod
    def of(cls, plan: InputPlan) -> "InputPipeline":
        """The pipeline of a plan (its statistics reused, not recomputed)."""
        if isinstance(plan, cls):
            return plan
        return cls(plan.dataset, image_size=plan.image_size, batch_size=plan.batch_size,
                   seed=plan.seed, stats=(plan.mean, plan.std), crop=plan.crop,
                   channels=plan.channels)

    # -- the batch function -------------------------------------------------

    def _split_gather(self, split: str):
        """(images of a batch's indices, labels tensor) for a split, made once per split."""
        if split not in self._tensors:
            data = self.split(split)
            with tf.device("/CPU:0"):  # tf.data runs on the host; keep the data there
                labels = tf.constant(data.labels)
                if data.images.nbytes <= STREAM_BYTES:
                    # One tensor, captured by every epoch's map function rather than
                    # embedded in each epoch's graph.
                    images_t = tf.constant(data.images)

                    def gather(indices):
                        return tf.gather(images_t, indices)
                else:
                    array = data.images
                    shape = [None, *array.shape[1:]]

                    def take(indices):
                        return np.ascontiguousarray(array[indices])

                    def gather(indices):
                        batch = tf.numpy_function(take, [indices], tf.uint8, stateful=False)
                        batch.set_shape(shape)
                        return batch
            self._tensors[split] = (gather, labels, data.images.shape[-1])
        return self._tensors[split]

    def _batch_fn(self, split: str):
        gather, labels_t, channels = self._split_gather(split)
        size = [self.image_size, self.image_size]
        replicate = channels == 1 and self.channels == 3
        mean = tf.constant(self.mean.reshape(1, 1, 1, self.channels))
        std = tf.constant(self.std.reshape(1, 1, 1, self.channels))

        def make_batch(indices, boxes):
            # float32 before cropping: grappler's cost model has no uint8 CropAndResize
            # and logs a warning for every epoch otherwise.
            images = tf.cast(gather(indices), tf.float32)
            crops = tf.image.crop_and_resize(
                images, boxes, tf.range(tf.shape(indices)[0]), size, method="bilinear"
            )  # float32 on the 0..255 scale
            if replicate:
                crops = tf.repeat(crops, 3, axis=-1)
            return (crops / 255.0 - mean) / std, tf.gather(labels_t, indices)

        return make_batch

    # -- public -------------------------------------------------------------

    def train_epoch(self, epoch: int, start_step: int = 0) -> tf.data.Dataset:
        """The shuffled, randomly cropped batches of training epoch `epoch` (the plan's),
        from batch `start_step` on (a run resumed in the middle of an epoch)."""
        order, boxes = self.train_plan(epoch)
        ds = tf.data.Dataset.from_tensor_slices((order[start_step:], boxes[start_step:]))
        ds = ds.map(self._batch_fn("train"), num_parallel_calls=MAP_CALLS, deterministic=True)
        return ds.prefetch(PREFETCH).with_options(self._options)

    def evaluation(self, split: str) -> tf.data.Dataset:
        """Centre-cropped (images, labels, weights) batches of `split` in order, every
        batch full: the last one is padded with weight-0 examples."""
        if split not in self._evaluation:
            order, weights = self.evaluation_order(split)
            make_batch = self._batch_fn(split)
            box = tf.constant(self.centre_box()[None])

            def centred(indices, weights):
                images, labels = make_batch(indices, tf.tile(box, [tf.shape(indices)[0], 1]))
                return images, labels, weights

            ds = tf.data.Dataset.from_tensor_slices((order, weights))
            ds = ds.map(centred, num_parallel_calls=MAP_CALLS, deterministic=True)
            # The same every time, so build it once and hand out the same dataset.
            self._evaluation[split] = ds.prefetch(PREFETCH).with_options(self._options)
        return self._evaluation[split]

    def evaluation_batches(self, split: str) -> int:
        return len(self.evaluation_order(split)[0])
