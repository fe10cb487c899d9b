"""In-memory image datasets, seeded stratified splits and a content fingerprint.

Every dataset, source or target, ends up as an `ImageDataset`: three `Split`s of
uint8 images and int64 labels plus the class names. Everything downstream (the
input pipeline, training, reports) only ever sees this form.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Sequence

import numpy as np

from lth_keras.errors import DataError

SPLITS = ("train", "val", "test")


class MissingDataError(DataError):
    """The data is not available offline. The message says which files to provide and where."""


def _class_label(c: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= c < len(class_names):
        return f"{c} ({class_names[c]!r})"
    return str(c)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: comparing arrays elementwise is ambiguous
class Split:
    """One split: `images` uint8 (N, H, W, C) with C in {1, 3}, `labels` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        images, labels = self.images, np.asarray(self.labels)
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise DataError(f"images must be a uint8 numpy array, got {getattr(images, 'dtype', type(images))}")
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise DataError(f"images must have shape (N, H, W, 1 or 3), got {images.shape}")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        if len(labels) != len(images):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        # Loaders produce uint8 labels straight from the files; normalise once here.
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])

    def take(self, indices: np.ndarray) -> "Split":
        """The examples at `indices`, in that order."""
        return Split(self.images[indices], self.labels[indices])


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """A classification dataset with fixed train/val/test splits."""

    name: str
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split

    def __post_init__(self):
        names = tuple(str(n) for n in self.class_names)
        if not names:
            raise DataError(f"{self.name}: no class names")
        if len(set(names)) != len(names):
            raise DataError(f"{self.name}: duplicate class names {sorted(n for n in set(names) if names.count(n) > 1)}")
        object.__setattr__(self, "class_names", names)
        for what in SPLITS:
            labels = getattr(self, what).labels
            if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
                raise DataError(
                    f"{self.name} {what}: labels span [{labels.min()}, {labels.max()}] "
                    f"but there are {len(names)} classes"
                )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, what: str) -> Split:
        if what not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {what!r}")
        return getattr(self, what)

    def fingerprint(self) -> str:
        """sha256 over the class names and every split's shapes and bytes.

        Two datasets with the same fingerprint hold the same examples in the same
        order, so results that record it can be traced to their exact data.
        Computed once (hashing CIFAR takes ~0.3 s) and cached on the instance.
        """
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            h = hashlib.sha256()
            h.update(json.dumps(list(self.class_names)).encode())
            for what in SPLITS:
                s = getattr(self, what)
                # A header with shapes and dtypes makes the byte stream unambiguous.
                header = {"split": what, "images": [list(s.images.shape), str(s.images.dtype)],
                          "labels": [list(s.labels.shape), str(s.labels.dtype)]}
                h.update(json.dumps(header, sort_keys=True).encode())
                h.update(np.ascontiguousarray(s.images).data)
                h.update(np.ascontiguousarray(s.labels).data)
            cached = h.hexdigest()
            object.__setattr__(self, "_fingerprint", cached)
        return cached

    def summary(self) -> dict:
        """A JSON-serialisable description for logs and run records."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "sizes": {what: len(getattr(self, what)) for what in SPLITS},
            "image_shape": list(self.train.image_shape),
            "fingerprint": self.fingerprint(),
        }


def _check_fraction(fraction: float, what: str) -> float:
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"{what} must be in (0, 1], got {fraction}")
    return fraction


def _per_class_take(labels, fraction, seed, *, class_names, require_rest):
    """Stratified draw: from each class take round-half-up(n_c * fraction) examples.

    Each class gets its own permutation from one seeded generator, visiting the
    classes in sorted order, so the draw depends only on (labels, seed). For a
    fixed seed the taken sets are nested across fractions (0.25 within 0.5 ...),
    which keeps train-fraction experiments comparable.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise DataError("cannot split an empty label array")
    rng = np.random.default_rng(seed)
    taken = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = len(members)
        # Half-up rounding (not numpy's round-half-to-even): 5 examples at 10% give 1.
        # The small epsilon absorbs float error such as 5 * 0.1 = 0.5000000000000001.
        k = int(np.floor(n * fraction + 0.5 + 1e-9))
        if k == 0 or (require_rest and k == n):
            side = "the taken" if k == 0 else "the remaining"
            raise DataError(
                f"class {_class_label(int(c), class_names)} has {n} example(s): a stratified "
                f"{fraction:g} split would leave {side} part with none of it"
            )
        taken.append(rng.permutation(members)[:k])
    taken = np.sort(np.concatenate(taken))
    rest = np.setdiff1d(np.arange(len(labels)), taken, assume_unique=True)
    return rest, taken


def stratified_split(labels, fraction: float, seed, *, class_names: Sequence[str] | None = None):
    """Seeded stratified split of `labels` into (idx_rest, idx_taken), both sorted.

    Each class contributes round(n_c * fraction) examples to the taken side.
    Raises DataError if any class would end up with no example on either side.
    """
    fraction = _check_fraction(fraction, "fraction")
    return _per_class_take(labels, fraction, seed, class_names=class_names, require_rest=True)


def carve_validation(train: Split, fraction: float = 0.1, seed=0, *,
                     class_names: Sequence[str] | None = None) -> tuple[Split, Split]:
    """Carve a seeded stratified validation split out of `train`: (train, val)."""
    rest, taken = stratified_split(train.labels, fraction, seed, class_names=class_names)
    return train.take(rest), train.take(taken)


def subset_fraction(split: Split, fraction: float, seed, *,
                    class_names: Sequence[str] | None = None) -> Split:
    """A seeded stratified `fraction` of `split` that keeps every class (train_fraction)."""
    fraction = _check_fraction(fraction, "train_fraction")
    if fraction == 1.0:
        return split
    _, taken = _per_class_take(split.labels, fraction, seed, class_names=class_names, require_rest=False)
    return split.take(taken)


def check_every_class(split: Split, num_classes: int, what: str, *,
                      class_names: Sequence[str] | None = None) -> None:
    """Raise DataError if `split` lacks any of the `num_classes` classes.

    A split without some class makes early stopping and accuracy meaningless
    (docs/protocol.md "Data").
    """
    labels = split.labels
    if len(labels) == 0:
        raise DataError(f"{what} is empty")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{what}: labels span [{labels.min()}, {labels.max()}] but there are {num_classes} classes")
    counts = np.bincount(labels, minlength=num_classes)
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        shown = ", ".join(_class_label(int(c), class_names) for c in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(f"{what} has no examples of class(es) {shown}{more}")
