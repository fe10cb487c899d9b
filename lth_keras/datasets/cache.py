"""Decoded image folders, cached on disk once per folder and storage size.

An image folder is decoded (and resized to the storage size) into one uint8 `.npy`
file per split folder, written once and memory-mapped by every later run: a grid's
runs on the same target share it, no run holds the images in its own memory, and a
dataset larger than memory streams from the page cache. The key covers every file's
relative path, size and modification time, its label, the storage size and the
decoder's version, so a changed folder gets a new entry; entries are written
atomically (a temp file, then a rename), so concurrent runs of a grid at worst
decode the same folder twice.

The cache lives in --cache_dir (default $LTH_KERAS_CACHE, else
~/.cache/lth_keras/images); an empty --cache_dir turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from lth_keras import artifacts

# Bump when decoding changes what a file becomes (conversion rules, resize filter).
DECODER_VERSION = 1


def default_dir() -> str:
    return os.environ.get("LTH_KERAS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "lth_keras", "images")


def key(root: str, paths, labels, storage_size: int) -> str:
    """A digest of what a split's decoded array depends on."""
    h = hashlib.sha256(json.dumps([DECODER_VERSION, storage_size]).encode())
    for path, label in zip(paths, labels):
        stat = os.stat(path)
        h.update(f"{os.path.relpath(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\0"
                 f"{int(label)}\n".encode())
    return h.hexdigest()[:20]


def load(cache_dir: str, entry: str, shape):
    """(memory-mapped images, {index: reason} of bad files) of a cached split of `shape`,
    or None (absent, or damaged: then it is decoded again and rewritten)."""
    images_path = os.path.join(cache_dir, entry + ".npy")
    errors_path = os.path.join(cache_dir, entry + ".json")
    if not (os.path.exists(images_path) and os.path.exists(errors_path)):
        return None
    try:
        with open(errors_path) as f:
            errors = {int(i): reason for i, reason in json.load(f).items()}
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError, AttributeError):
        return None
    if images.dtype != np.uint8 or images.shape != tuple(shape):
        return None
    return images, errors


def store(cache_dir: str, entry: str, shape, decode):
    """Decodes a split straight into a new cache entry; returns what `load` returns.

    `decode(out)` fills the uint8 array `out` of `shape` and returns its errors.
    """
    os.makedirs(cache_dir, exist_ok=True)
    with artifacts.atomic_path(os.path.join(cache_dir, entry + ".npy")) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(shape))
        errors = decode(out)
        out.flush()
        del out
    artifacts.write_json(os.path.join(cache_dir, entry + ".json"),
                         {str(i): reason for i, reason in errors.items()})
    return load(cache_dir, entry, shape)
