"""The epoch plan shared by both engines: which images, which crops, which normalisation.

With crop "random" (the paper's), every image is conceptually resized to
`resize_size` (so that a crop of `image_size` fits, as 224 fits in 256), then
cropped to `image_size`: at random for training, in the centre for evaluation.
With crop "none" the stored pixels are fed as they are: the images must be
`image_size` square, and the one box covers each image exactly (sampled at whole
pixels, so the values are the stored ones bit for bit). No other augmentation.
With 3 channels grayscale is replicated to RGB; otherwise a dataset keeps its own
channel count. Each channel is normalised with the training split's mean and std.

Crops are given as corner-aligned boxes (0 and 1 are the centres of the first
and last pixel, as tf.image.crop_and_resize reads them): a box from k/(R-1) to
(k+S-1)/(R-1) samples exactly the pixels k..k+S-1 of the image resized
(align-corners bilinear) to R x R. So crop offsets are whole pixels of the
conceptual R x R image, and if the images are already R x R this is a plain
crop. Each engine samples these boxes from the stored pixels with the same
float32 arithmetic (the TF engine with tf.image.crop_and_resize, the JAX engine
in its jitted step).

Determinism: an epoch's order and crop offsets come only from (seed, epoch)
through numpy, so epoch e is the same in any process, after any history and on
either engine, which is what resuming from an epoch checkpoint needs.
"""

from __future__ import annotations

import numpy as np

from lth_keras.datasets.dataset import SPLITS, DataError, ImageDataset
from lth_keras.settings import CROPS

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




def channel_stats(images: np.ndarray, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std on the [0, 1] scale, as float32 arrays of length
    `channels` (the channels fed to the model).

    Uses a 256-bin histogram per channel: exact, and no float copy of the
    dataset. Grayscale statistics are replicated to 3 fed channels.
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
    if c == 1 and channels == 3:
        mean, std = np.repeat(mean, 3), np.repeat(std, 3)
    return mean.astype(np.float32), std.astype(np.float32)


def _fed_channels(dataset: ImageDataset, channels: int | None) -> int:
    """The channel count fed to the model: `channels`, or the dataset's own if None; a
    grayscale dataset feeds 3 by replication, and nothing else is converted."""
    own = dataset.train.images.shape[-1]
    fed = own if channels is None else int(channels)
    if fed != own and not (own == 1 and fed == 3):
        raise DataError(f"{dataset.name} has {own}-channel images but the model takes {fed} "
                        "channels" + (" (tickets found with --channels=own on grayscale data "
                                      "cannot be fed colour images)" if fed == 1 else ""))
    return fed


def _check_stored_size(dataset: ImageDataset, image_size: int) -> None:
    """With no crop the model sees the stored images: they must be image_size square."""
    for split in SPLITS:
        images = dataset.split(split).images
        if len(images) and tuple(images.shape[1:3]) != (image_size, image_size):
            h, w = images.shape[1:3]
            raise DataError(f"{dataset.name} images are {h}x{w} but --crop=none feeds them as "
                            f"they are: set --image_size={h}" if h == w else
                            f"{dataset.name} images are {h}x{w}, not square: --crop=none "
                            "cannot feed them (use --crop=random)")


class InputPlan:
    """What every batch of a dataset holds, independent of the engine that builds it.

    Training batches: `batch_size` images in the order of `train_plan(e)`, each
    cropped by its box; the last partial batch of an epoch is dropped.
    Evaluation batches: every image of a split in order, centre-cropped, the last
    one padded (weight 0) to the batch size.
    Images are float32 (B, S, S, C), normalised, with C = `channels` (3: grayscale is
    replicated; None: the dataset's own); labels are class indices.
    """

    def __init__(self, dataset: ImageDataset, *, image_size: int, batch_size: int, seed: int,
                 stats: tuple[np.ndarray, np.ndarray] | None = None, crop: str = "random",
                 channels: int | None = 3):
        if int(image_size) < 2:
            raise ValueError(f"image_size must be at least 2, got {image_size}")
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        n = len(dataset.train)
        if not 1 <= int(batch_size) <= n:
            raise DataError(f"{dataset.name}: batch_size {batch_size} does not fit the {n} training examples")
        self.dataset = dataset
        self.image_size = int(image_size)
        self.crop = crop
        self.resize_size = resize_size(self.image_size) if crop == "random" else self.image_size
        self.channels = _fed_channels(dataset, channels)
        if crop == "none":
            _check_stored_size(dataset, self.image_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.steps_per_epoch = n // self.batch_size  # training drops the last partial batch
        self.mean, self.std = (stats if stats is not None
                               else channel_stats(dataset.train.images, self.channels))

    # -- crop geometry ------------------------------------------------------

    def boxes(self, offsets: np.ndarray) -> np.ndarray:
        """float32 [y1, x1, y2, x2] boxes for integer (y, x) pixel offsets in the R x R image."""
        r, s = self.resize_size, self.image_size
        start = offsets.astype(np.float64) / (r - 1)
        # Without a crop the box is the whole image, [0, 1] exactly: every sample falls on
        # a whole pixel, with no float error for the edge pull to guard against.
        end = (offsets + s - 1).astype(np.float64) / (r - 1) - (_EDGE_EPS if r != s else 0.0)
        return np.concatenate([start, end], axis=-1).astype(np.float32)

    def centre_box(self) -> np.ndarray:
        """The evaluation crop's box, shape (4,)."""
        k = (self.resize_size - self.image_size) // 2
        return self.boxes(np.array([k, k]))

    def sample_positions(self, boxes: np.ndarray, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """Where crops by `boxes` (..., 4) sample the stored images of `split`: (rows,
        columns), each (..., S) float32 in pixel units, as tf.image.crop_and_resize
        computes them.

        The arithmetic is TensorFlow's CPU kernel's, operation by operation in
        float32: position = y1 * (H - 1) + i * ((y2 - y1) * (H - 1) / (S - 1)).
        Computed here, so that an engine whose compiler fuses multiply-adds
        (XLA does) samples exactly the same points.
        """
        f32 = np.float32
        height, width = self.dataset.split(split).images.shape[1:3]
        i = np.arange(self.image_size, dtype=f32)

        def axis(start, end, extent):
            start, end = start.astype(f32), end.astype(f32)
            scale = (end - start) * f32(extent - 1) / f32(self.image_size - 1)
            return (start * f32(extent - 1))[..., None] + i * scale[..., None]

        return (axis(boxes[..., 0], boxes[..., 2], height),
                axis(boxes[..., 1], boxes[..., 3], width))

    # -- the plan -------------------------------------------------------------

    def train_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(order (steps, B) int64, boxes (steps, B, 4) float32) of training epoch `epoch`.

        A pure function of (seed, epoch).
        """
        if int(epoch) < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        rng = np.random.default_rng([self.seed, int(epoch)])
        steps, b = self.steps_per_epoch, self.batch_size
        order = rng.permutation(len(self.dataset.train))[: steps * b].reshape(steps, b)
        offsets = rng.integers(0, self.resize_size - self.image_size + 1, size=(steps, b, 2))
        return order, self.boxes(offsets)

    def evaluation_order(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(order (batches, B) int64, weights (batches, B) float32): every example of
        `split` once, in order, the last batch padded with weight-0 copies of example 0,
        so that every evaluation batch has one shape (no recompilation)."""
        n, b = len(self.split(split)), self.batch_size
        batches = -(-n // b)
        order = np.zeros(batches * b, np.int64)
        order[:n] = np.arange(n)
        weights = np.zeros(batches * b, np.float32)
        weights[:n] = 1
        return order.reshape(batches, b), weights.reshape(batches, b)

    def split(self, split: str):
        """The stored split (uint8 images, labels); DataError if it is empty."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        data = self.dataset.split(split)
        if len(data) == 0:
            raise DataError(f"{self.dataset.name} {split} split is empty")
        return data

    def describe(self) -> dict:
        """A JSON-serialisable record of the input settings."""
        return {
            "image_size": self.image_size,
            "crop": self.crop,
            "resize_size": self.resize_size,
            "channels": self.channels,
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "batch_size": self.batch_size,
            "steps_per_epoch": self.steps_per_epoch,
        }
