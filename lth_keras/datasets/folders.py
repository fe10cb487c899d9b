"""Image-folder datasets: `<root>/{train,val,test}/<class>/*` read into an ImageDataset.

This is how the paper's targets (and any other target) are given. Rules:

* Classes are the sorted folder names of `train/`; `val/` and `test/` must hold
  exactly the same classes, none of them empty.
* Image files are .png .jpg .jpeg .tif .tiff .bmp (any case). Other files
  (.DS_Store, Thumbs.db, notes.csv), hidden files and folders are skipped and
  counted. A file with an image extension that cannot be decoded (corrupt,
  truncated, 0 bytes, text) is an error naming it, or with `skip_bad_images`
  it is skipped and counted.
* Missing splits: without `split`, a missing `val/` is carved from `train/`
  (`val_fraction`, as for the sources) and a missing `test/` is an error. With
  `split=(train, val, test)` the missing splits are carved, seeded and
  stratified, from the pooled images of `train/` (or of class folders right
  under the root); `train/` is shared among train and the missing splits in
  proportion to their fractions. Folders that exist are kept as they are.

Pixels: every image becomes 8-bit RGB.
* grayscale and 1-bit images are replicated to 3 channels (1-bit: 0 or 255);
* alpha is dropped, not composited: the stored RGB values are kept;
* palette images take their palette colours (transparency ignored);
* 16 bits per sample (grayscale "I;16*"/"I" and 16-bit RGB(A) PNG/TIFF) are
  scaled as round(v * 255 / 65535), exactly, in integers. Pillow itself keeps
  only the high byte of 16-bit RGB, so those are decoded a second time for the
  low byte (see `_low_byte_rawmode`). Only 16-bit gray+alpha PNG, which Pillow
  cannot give the low byte of, keeps Pillow's high byte (off by at most 1);
* CMYK JPEGs use Pillow's conversion: it reads CMYK JPEGs with Adobe's inverted
  convention (what Photoshop writes) and maps R = (255-C)(255-K)/255, etc.; no
  ICC profile is applied;
* the EXIF orientation is applied (ImageOps.exif_transpose);
* 32-bit float images are refused (their value range is unknown).

Size: with `storage_size` S every image is resized to S x S (aspect not kept,
like Keras's `load_img(target_size=...)`) with Pillow's BILINEAR filter, which
is antialiased: when shrinking, its triangle kernel widens with the scale, so
it averages like tf.image.resize(antialias=True) and, unlike LANCZOS, never
overshoots (no ringing or clipping at sharp stain or paint edges). The same
filter serves upscaling, so one rule holds for every image. Large JPEGs are
first decoded at a reduced scale by libjpeg (`draft`, as Pillow's thumbnail
does), never below S: several times faster on photographs of paintings.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import sys
import time
from typing import Mapping, Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

from lth_keras.datasets.dataset import (
    SPLITS,
    DataError,
    ImageDataset,
    Split,
    carve_validation,
    check_every_class,
    stratified_split,
    subset_fraction,
)
from lth_keras.datasets import cache
from lth_keras.datasets.sources import _one_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# The formats Pillow may try. The content decides, not the extension (scraped
# ".jpg" files are often PNG, GIF or WebP), but plugins that run external
# programs (EPS calls Ghostscript) are never tried on user files. ("JPEG" also
# opens multi-picture camera JPEGs, as format "MPO".)
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DIB", "GIF", "WEBP")
_EXAMPLES = 10  # skipped paths listed in the summary
# Pillow reduces these 16-bit-per-sample raw modes to their high byte.
_RGB16_RAWMODES = {f"{mode};16{order}" for mode in ("RGB", "RGBA") for order in "BLN"}
_GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclasses.dataclass(frozen=True, eq=False)
class FolderDataset(ImageDataset):
    """An ImageDataset read from an image folder.

    `details` records how: the root, images read per folder, the carving,
    skipped files. It is part of `summary()` but not of the fingerprint, which
    stays a function of the examples alone.
    """

    details: Mapping = dataclasses.field(default_factory=dict)

    def summary(self) -> dict:
        summary = super().summary()
        summary["folder"] = dict(self.details)
        return summary


@dataclasses.dataclass(frozen=True)
class FolderLayout:
    """What an image folder holds, found by listing it (nothing is decoded).

    `files[split]` is the (path, label) list of each split folder present, in
    sorted class then sorted file-name order. With `flat` the class folders lie
    right under the root and their pool is `files["train"]`. `skipped` lists the
    entries that are not image files, relative to the root.
    """

    root: str
    class_names: tuple[str, ...]
    files: Mapping[str, list[tuple[str, int]]]
    flat: bool
    skipped: tuple[str, ...]


def _is_image_name(name: str) -> bool:
    # Hidden files include macOS's "._x.png" resource forks, which are not images.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _sorted_entries(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _scan_classes(split_dir: str, root: str, skipped: list[str]) -> dict[str, list[str]]:
    """{class name: sorted image paths} of the class folders in `split_dir`."""
    classes = {}
    for entry in _sorted_entries(split_dir):
        rel = os.path.relpath(entry.path, root)
        if not entry.is_dir():
            skipped.append(rel)  # a loose file next to the class folders
        elif entry.name.startswith(".") or entry.name == "__MACOSX":
            skipped.append(rel + "/")  # .ipynb_checkpoints, zip leftovers: not classes
        else:
            images = classes[entry.name] = []
            for f in _sorted_entries(entry.path):
                if f.is_file() and _is_image_name(f.name):
                    images.append(f.path)
                else:
                    skipped.append(os.path.relpath(f.path, root))
    return classes


def _quoted(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def scan_image_folder(root) -> FolderLayout:
    """List an image folder and check its class structure; decodes nothing.

    Raises DataError for a missing root, `val/` or `test/` without `train/`, no
    class folders, a class set that differs between splits, or an empty class.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a directory")
    present = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
    if present and "train" not in present:
        raise DataError(f"{root}: has {', '.join(s + '/' for s in present)} but no train/ folder")
    flat = not present
    split_dirs = {s: os.path.join(root, s) for s in present} if present else {"train": root}
    skipped: list[str] = []
    per_split = {s: _scan_classes(d, root, skipped) for s, d in split_dirs.items()}

    class_names = tuple(per_split["train"])  # sorted, as listed
    if not class_names:
        raise DataError(f"{split_dirs['train']}: no class folders; expected {root}/{{train,val,test}}/<class>/* "
                        f"(or {root}/<class>/* with --split)")
    # Empty folders first: an empty train/ class is what a user sees, not its absence
    # from the other splits.
    for s, classes in per_split.items():
        for c, paths in classes.items():
            if not paths:
                raise DataError(f"{os.path.join(split_dirs[s], c)}: empty class folder "
                                f"(class {c!r} has no image files in {'the folder' if flat else s + '/'})")
    for s, classes in per_split.items():
        extra = [c for c in classes if c not in class_names]
        if extra:
            raise DataError(f"{root}: class(es) {_quoted(extra)} in {s}/ are not classes of train/ "
                            f"(train/ has {_quoted(class_names)})")
        missing = [c for c in class_names if c not in classes]
        if missing:
            raise DataError(f"{root}: class(es) {_quoted(missing)} of train/ are missing from {s}/ "
                            f"(every split needs every class)")
    files = {s: [(p, label) for label, c in enumerate(class_names) for p in per_split[s][c]] for s in split_dirs}
    return FolderLayout(root, class_names, files, flat, tuple(skipped))


# ---------------------------------------------------------------------------
# Decoding one file to 8-bit RGB.
# ---------------------------------------------------------------------------

class _BadImage(Exception):
    """The file cannot be used as an image; the message says why."""


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """round(v * 255 / 65535) in exact integer arithmetic (v/257 is never a tie).

    Values outside 0..65535 (Pillow's 32-bit "I" mode) are clipped first.
    """
    v = np.clip(values, 0, 65535).astype(np.uint32)
    return ((v * 510 + 65535) // 131070).astype(np.uint8)


def _tile_rawmode(image: Image.Image) -> str | None:
    """The raw mode of the image's tiles (PNG: a string; TIFF: the first of a tuple)."""
    modes = set()
    for tile in image.tile:
        args = tile[3]
        modes.add(args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else None)
    return modes.pop() if len(modes) == 1 else None


def _low_byte_rawmode(rawmode: str | None) -> str | None:
    """For a 16-bit RGB(A) raw mode, the one that unpacks the low byte of each sample.

    Pillow has no 48-bit mode: "RGB;16B" (big-endian data) keeps the first, high
    byte of each sample. Unpacking the same data as little-endian ("RGB;16L")
    keeps the second byte, i.e. the low one, and the other way round.
    """
    if rawmode not in _RGB16_RAWMODES:
        return None
    order = rawmode[-1]
    if order == "N":
        order = "L" if sys.byteorder == "little" else "B"
    return rawmode[:-1] + ("B" if order == "L" else "L")


def _load(data: bytes, storage_size: int | None, low_bytes: bool = False) -> tuple[Image.Image, str | None]:
    """Decode fully (so that truncation raises here) and apply the EXIF orientation.

    Returns the image and its raw mode. `low_bytes`: unpack the low byte of each
    sample of a 16-bit RGB(A) file instead of Pillow's high byte.
    """
    image = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    rawmode = _tile_rawmode(image)
    if low_bytes:
        low = _low_byte_rawmode(rawmode)
        image.tile = [t._replace(args=low if isinstance(t.args, str) else (low, *t.args[1:])) for t in image.tile]
    if storage_size and image.format in ("JPEG", "MPO"):
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below storage_size.
        image.draft(None, (storage_size, storage_size))
    image.load()  # raises OSError on truncated data (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
    ImageOps.exif_transpose(image, in_place=True)
    return image, rawmode


def _to_rgb8(data: bytes, storage_size: int | None) -> Image.Image:
    image, rawmode = _load(data, storage_size)
    if image.mode in _GRAY16_MODES:
        gray = _scale_16_to_8(np.asarray(image))
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))
    if image.mode == "F":
        raise _BadImage("32-bit float image: its value range is unknown, save it as 8 or 16 bits")
    if _low_byte_rawmode(rawmode) is not None:
        high = np.asarray(image)[..., :3]
        low = np.asarray(_load(data, storage_size, low_bytes=True)[0])[..., :3]
        return Image.fromarray(_scale_16_to_8((high.astype(np.uint32) << 8) | low))
    # Pillow's conversions: alpha dropped, palette looked up, L/1 replicated, CMYK as documented.
    return image.convert("RGB")


def _read_rgb(path: str, storage_size: int | None) -> np.ndarray:
    """The file as a uint8 (H, W, 3) array, resized to storage_size if given."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data:
            raise _BadImage("empty (0-byte) file")
        image = _to_rgb8(data, storage_size)
    except _BadImage:
        raise
    except UnidentifiedImageError:  # its own text names the in-memory buffer, not the file
        raise _BadImage(f"not an image in a readable format ({', '.join(_PIL_FORMATS)})") from None
    except Exception as e:  # Pillow raises many types on bad input: OSError, SyntaxError, ValueError, ...
        raise _BadImage(f"not a readable image ({type(e).__name__}: {_one_line(e)})") from None
    if storage_size and image.size != (storage_size, storage_size):
        image = image.resize((storage_size, storage_size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(image)


def _decode_all(paths: Sequence[str], storage_size: int | None, out=None):
    """Decode `paths` on a thread pool: (images, {index: reason} of the bad files).

    Pillow releases the GIL while decoding and resizing, so threads scale. With
    `storage_size` the images go straight into one preallocated array, or into
    `out` (the cache's memory-mapped file): no second copy of the split;
    otherwise they are a list.
    """
    if out is not None:
        images = out
    elif storage_size:
        images = np.empty((len(paths), storage_size, storage_size, 3), np.uint8)
    else:
        images = [None] * len(paths)
    errors: dict[int, str] = {}
    # Register Pillow's plugins before the threads start rather than lazily in
    # several threads at once.
    Image.init()

    def decode(i):
        try:
            images[i] = _read_rgb(paths[i], storage_size)
        except _BadImage as e:
            errors[i] = str(e)

    workers = min(16, 2 * (os.cpu_count() or 1))  # 2x: file reads overlap with decoding
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(decode, range(len(paths))))  # list(): re-raises any unexpected error
    return images, errors


# ---------------------------------------------------------------------------
# Splits.
# ---------------------------------------------------------------------------

def parse_split(split) -> tuple[float, float, float]:
    """`(train, val, test)` fractions from a sequence or a "0.7,0.1,0.2" string."""
    try:
        parts = split.split(",") if isinstance(split, str) else list(split)
        values = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1) > 1e-6:
        raise DataError(f"split must be three positive fractions train,val,test that sum to 1 "
                        f"(e.g. 0.7,0.1,0.2), got {split!r}")
    return values


def _carve(splits: dict[str, Split], missing: list[str], fractions, seed, class_names, pool: str) -> dict[str, str]:
    """Carve the `missing` splits out of splits["train"] in place; returns what was done.

    train/ is shared among train and the missing splits in proportion to their
    fractions: with only train/, (0.7, 0.1, 0.2) of it; with train/ and val/,
    test takes 0.2 / (0.7 + 0.2) of train/. Test is carved first, then val
    from the rest, each with stratified_split (seeded, every class on both sides).
    """
    share = dict(zip(SPLITS, fractions))
    remaining = share["train"] + sum(share[s] for s in missing)
    carved = {}
    for what in ("test", "val"):
        if what in missing:
            fraction = share[what] / remaining
            rest, taken = stratified_split(splits["train"].labels, fraction, seed, class_names=class_names)
            splits[what] = splits["train"].take(taken)
            splits["train"] = splits["train"].take(rest)
            carved[what] = f"{fraction:.4g} of {pool}"
            remaining -= share[what]
    return carved


def _check_storage_size(storage_size) -> int | None:
    if storage_size is None:
        return None
    if int(storage_size) != storage_size or storage_size < 1:
        raise DataError(f"storage_size must be a positive integer, got {storage_size!r}")
    return int(storage_size)


def _decode_split(layout: FolderLayout, what: str, paths, labels, storage_size, cache_dir, details):
    """(images, errors) of a split: from the on-disk cache, or decoded (into it)."""
    if not (storage_size and cache_dir):
        return _decode_all(paths, storage_size)
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in os.path.basename(layout.root))
    entry = f"{name}-{storage_size}px-{what}-{cache.key(layout.root, paths, labels, storage_size)}"
    shape = (len(paths), storage_size, storage_size, 3)
    found = cache.load(cache_dir, entry, shape)
    details["cache"][what] = os.path.join(cache_dir, entry + ".npy")
    if found is not None:
        logging.info("%s: %s/ read from the cache %s", os.path.basename(layout.root), what,
                     details["cache"][what])
        return found
    return cache.store(cache_dir, entry, shape,
                       lambda out: _decode_all(paths, storage_size, out)[1])


def _read_split(layout: FolderLayout, what: str, storage_size, skip_bad_images, details,
                cache_dir=None) -> Split:
    files = layout.files[what]
    paths = [p for p, _ in files]
    labels = np.array([label for _, label in files], np.int64)
    images, errors = _decode_split(layout, what, paths, labels, storage_size, cache_dir, details)
    if errors:
        bad = sorted(errors)
        if not skip_bad_images:
            more = f"; {len(bad)} bad image files in {what}" if len(bad) > 1 else ""
            raise DataError(f"{paths[bad[0]]}: {errors[bad[0]]}{more}; pass --skip_bad_images to skip them")
        for i in bad:
            logging.warning("skipping %s: %s", paths[i], errors[i])
        details["skipped_bad_images"] += len(bad)
        details["bad_image_examples"].extend(os.path.relpath(paths[i], layout.root) for i in bad)
        del details["bad_image_examples"][_EXAMPLES:]
        keep = np.setdiff1d(np.arange(len(paths)), bad)
        labels = labels[keep]
        images = images[keep] if storage_size else [images[i] for i in keep]
        paths = [paths[i] for i in keep]
        if not len(keep):
            raise DataError(f"{layout.root}: every image file in {what} is bad")
    if not storage_size:
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            first = images[0].shape
            odd = next(i for i, im in enumerate(images) if im.shape != first)
            raise DataError(f"{layout.root}: images differ in size ({paths[0]} is {first[1]}x{first[0]}, "
                            f"{paths[odd]} is {images[odd].shape[1]}x{images[odd].shape[0]}); pass image_size "
                            f"(--image_size) to resize them")
        images = np.stack(images)
    return Split(images, labels)


def load_image_folder(root, *, name: str | None = None, seed=0, storage_size: int | None = None,
                      split=None, val_fraction: float = 0.1, train_fraction: float = 1.0,
                      skip_bad_images: bool = False, cache_dir: str | None = None) -> FolderDataset:
    """Read an image folder into a FolderDataset of uint8 (N, S, S, 3) splits.

    `storage_size` S: the side every image is resized to (the caller passes
    plan.resize_size(image_size)); None keeps the files' size, which must
    then be the same for all. `split`: (train, val, test) fractions to carve
    missing splits with. `train_fraction`: a seeded stratified subset of train.
    `seed` fixes the carving and the train_fraction draw. `cache_dir`: keep the
    decoded splits there, memory-mapped (datasets/cache.py; needs storage_size).
    See the module docstring for the layout and conversion rules.
    """
    start = time.perf_counter()
    layout = scan_image_folder(root)
    name = name or os.path.basename(layout.root)
    fractions = parse_split(split) if split is not None else None
    storage_size = _check_storage_size(storage_size)
    missing = [s for s in ("val", "test") if s not in layout.files]
    if "test" in missing and fractions is None:
        where = "only class folders, no train/val/test/" if layout.flat else "no test/ folder"
        raise DataError(f"{layout.root}: {where}; pass --split=0.7,0.1,0.2 (train,val,test fractions) "
                        f"to carve the missing splits")

    if layout.skipped:
        logging.info("%s: skipped %d non-image file(s) in %s, e.g. %s", name, len(layout.skipped),
                     layout.root, ", ".join(layout.skipped[:3]))
    details = {
        "root": layout.root,
        "layout": "class folders (no split folders)" if layout.flat else "train/val/test folders",
        "images_read": {s: None for s in SPLITS},
        "skipped_non_image_files": len(layout.skipped),
        "non_image_examples": list(layout.skipped[:_EXAMPLES]),
        "skipped_bad_images": 0,
        "bad_image_examples": [],
        "storage_size": storage_size,
        "cache": {},
    }
    splits = {}
    for what in layout.files:
        splits[what] = _read_split(layout, what, storage_size, skip_bad_images, details,
                                   cache_dir)
        details["images_read"][what] = len(splits[what])
    if not storage_size and len({s.image_shape for s in splits.values()}) > 1:
        shapes = ", ".join(f"{w} {s.image_shape[1]}x{s.image_shape[0]}" for w, s in splits.items())
        raise DataError(f"{layout.root}: splits differ in image size ({shapes}); pass image_size (--image_size)")

    class_names = layout.class_names
    if missing and fractions is not None:
        pool = "the class folders" if layout.flat else "train/"
        details["carved"] = _carve(splits, missing, fractions, seed, class_names, pool)
        details["split"] = list(fractions)
    elif missing:  # only val/ is missing: carve it like the sources' validation split
        splits["train"], splits["val"] = carve_validation(splits["train"], val_fraction, seed,
                                                          class_names=class_names)
        details["carved"] = {"val": f"{val_fraction:g} of train/"}
    elif fractions is not None:
        logging.warning("%s: train/, val/ and test/ all exist; split=%s is not used", name, list(fractions))
    details["sizes_before_train_fraction"] = {s: len(splits[s]) for s in SPLITS}
    details["train_fraction"] = float(train_fraction)
    splits["train"] = subset_fraction(splits["train"], train_fraction, seed, class_names=class_names)

    dataset = FolderDataset(name=name, class_names=class_names, train=splits["train"], val=splits["val"],
                            test=splits["test"], details=details)
    for what in SPLITS:
        check_every_class(dataset.split(what), dataset.num_classes, f"{name} {what} split", class_names=class_names)
    logging.info("%s: %d classes, train/val/test %d/%d/%d images of %s from %s in %.1f s", name,
                 dataset.num_classes, len(dataset.train), len(dataset.val), len(dataset.test),
                 "x".join(map(str, dataset.train.image_shape)), layout.root, time.perf_counter() - start)
    return dataset
