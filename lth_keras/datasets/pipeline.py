"""The tf.data input pipeline: resize, crop, 3 channels, train-split normalisation.

Conceptually every image is resized to `resize_size` (so that a crop of
`image_size` fits, as 224 fits in 256), then cropped to `image_size`: at random
for training, in the centre for evaluation. No other augmentation.

Instead of materialising resized copies, each batch is gathered at its original
resolution and `tf.image.crop_and_resize` samples the crop straight from it.
With crop_and_resize's corner-aligned coordinates (0 and 1 are the centres of
the first and last pixel), a box from k/(R-1) to (k+S-1)/(R-1) samples exactly
the pixels k..k+S-1 of the image resized (align-corners bilinear) to R x R. So
crop offsets are whole pixels of the conceptual R x R image, and if the images
are already R x R this is a plain crop.

Determinism: an epoch's order and crop offsets come only from (seed, epoch)
through numpy, so `train_epoch(e)` is the same in any process and after any
history, which is what resuming from an epoch checkpoint needs.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from lth_keras.datasets.base import SPLITS, DataError, ImageDataset

# crop_and_resize drops a whole row/column to the extrapolation value when float
# error puts its sample a hair past the last pixel (seen for e.g. 37 px images
# cropped to 224 of 256). Pulling the far box edge in by this much (in relative
# coordinates: 1e-6 of the image size in pixels) avoids it and changes no value
# by more than ~0.1/255.
_EDGE_EPS = 1e-6
_STATS_CHUNK = 1 << 20  # pixels per bincount chunk: bounds the int64 temporaries


def resize_size(image_size: int) -> int:
    """The side images are resized to so that a random `image_size` crop fits (224 -> 256)."""
    return int(round(image_size * 256 / 224))


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std on the [0, 1] scale, as float32 arrays of length 3.

    Uses a 256-bin histogram per channel: exact, and no float copy of the
    dataset. Grayscale statistics are replicated to the 3 output channels.
    """
    n, h, w, c = images.shape
    counts = np.zeros((c, 256), np.int64)
    step = max(1, _STATS_CHUNK // (h * w * c))
    for start in range(0, n, step):
        block = images[start:start + step]
        for ch in range(c):
            counts[ch] += np.bincount(block[..., ch].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    total = counts.sum(axis=1)
    mean = counts @ values / total
    var = counts @ values**2 / total - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    # A constant channel would divide by zero; its centred values are all 0 anyway.
    std = np.maximum(std, 1e-6)
    if c == 1:
        mean, std = np.repeat(mean, 3), np.repeat(std, 3)
    return mean.astype(np.float32), std.astype(np.float32)


class InputPipeline:
    """Batches of (float32 images (B, S, S, 3) normalised, int64 labels (B,)) for a dataset."""

    def __init__(self, dataset: ImageDataset, *, image_size: int, batch_size: int, seed: int):
        if int(image_size) < 2:
            raise ValueError(f"image_size must be at least 2, got {image_size}")
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        n = len(dataset.train)
        if not 1 <= int(batch_size) <= n:
            raise DataError(f"{dataset.name}: batch_size {batch_size} does not fit the {n} training examples")
        self.dataset = dataset
        self.image_size = int(image_size)
        self.resize_size = resize_size(self.image_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.steps_per_epoch = n // self.batch_size  # training drops the last partial batch
        self.mean, self.std = channel_stats(dataset.train.images)
        self._tensors = {}   # split -> (images, labels) tensors, created once per split
        self._evaluation = {}
        self._options = tf.data.Options()
        self._options.deterministic = True

    # -- crop geometry ------------------------------------------------------

    def _boxes(self, offsets: np.ndarray) -> np.ndarray:
        """[y1, x1, y2, x2] boxes for integer (y, x) pixel offsets in the R x R image."""
        r, s = self.resize_size, self.image_size
        start = offsets.astype(np.float64) / (r - 1)
        end = (offsets + s - 1).astype(np.float64) / (r - 1) - _EDGE_EPS
        return np.concatenate([start, end], axis=-1).astype(np.float32)

    def _centre_box(self) -> np.ndarray:
        k = (self.resize_size - self.image_size) // 2
        return self._boxes(np.array([k, k]))

    # -- the batch function -------------------------------------------------

    def _split_tensors(self, split: str):
        # The arrays become tensors once per split and are captured by every
        # epoch's map function, rather than embedded in each epoch's graph.
        if split not in self._tensors:
            data = self.dataset.split(split)
            if len(data) == 0:
                raise DataError(f"{self.dataset.name} {split} split is empty")
            with tf.device("/CPU:0"):  # tf.data runs on the host; keep the data there
                self._tensors[split] = (tf.constant(data.images), tf.constant(data.labels))
        return self._tensors[split]

    def _batch_fn(self, split: str):
        images_t, labels_t = self._split_tensors(split)
        size = [self.image_size, self.image_size]
        grayscale = images_t.shape[-1] == 1
        mean = tf.constant(self.mean.reshape(1, 1, 1, 3))
        std = tf.constant(self.std.reshape(1, 1, 1, 3))

        def make_batch(indices, boxes):
            # float32 before cropping: grappler's cost model has no uint8 CropAndResize
            # and logs a warning for every epoch otherwise.
            images = tf.cast(tf.gather(images_t, indices), tf.float32)
            crops = tf.image.crop_and_resize(
                images, boxes, tf.range(tf.shape(indices)[0]), size, method="bilinear"
            )  # float32 on the 0..255 scale
            if grayscale:
                crops = tf.repeat(crops, 3, axis=-1)
            return (crops / 255.0 - mean) / std, tf.gather(labels_t, indices)

        return make_batch

    # -- public -------------------------------------------------------------

    def train_epoch(self, epoch: int) -> tf.data.Dataset:
        """The shuffled, randomly cropped batches of training epoch `epoch`.

        A pure function of (seed, epoch): calling it again, in this or another
        process, yields exactly the same batches.
        """
        if int(epoch) < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        rng = np.random.default_rng([self.seed, int(epoch)])
        steps, b = self.steps_per_epoch, self.batch_size
        order = rng.permutation(len(self.dataset.train))[: steps * b].reshape(steps, b)
        offsets = rng.integers(0, self.resize_size - self.image_size + 1, size=(steps, b, 2))
        ds = tf.data.Dataset.from_tensor_slices((order, self._boxes(offsets)))
        ds = ds.map(self._batch_fn("train"), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE).with_options(self._options)

    def evaluation(self, split: str) -> tf.data.Dataset:
        """Centre-cropped batches of `split` in order, including the last partial batch."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._evaluation:
            make_batch = self._batch_fn(split)
            box = tf.constant(self._centre_box()[None])

            def centred(indices):
                return make_batch(indices, tf.tile(box, [tf.shape(indices)[0], 1]))

            ds = tf.data.Dataset.range(len(self.dataset.split(split))).batch(self.batch_size)
            ds = ds.map(centred, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            # The same every time, so build it once and hand out the same dataset.
            self._evaluation[split] = ds.prefetch(tf.data.AUTOTUNE).with_options(self._options)
        return self._evaluation[split]

    def describe(self) -> dict:
        """A JSON-serialisable record of the input settings."""
        return {
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "batch_size": self.batch_size,
            "steps_per_epoch": self.steps_per_epoch,
        }
