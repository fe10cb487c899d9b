"""The paper's non-natural targets (docs/protocol.md "Data"), read from image folders.

They are not public downloads: the pathology sets come from Cytomine, the art
sets from WikiArt. A user places each one as `<data_dir>/<name>/{train,val,test}/<class>/*`
and the loader checks it against the paper: a different class count is an
error (the model's head and every comparison would differ), different split
sizes only a warning (a re-export or cleanup may drop a few images).
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging

from lth_keras.datasets.dataset import SPLITS, DataError, MissingDataError
from lth_keras.datasets.folders import FolderDataset, load_image_folder, scan_image_folder


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """One row of Table 1: split sizes and class count as the paper reports them."""

    name: str
    num_classes: int
    train: int
    val: int
    test: int
    domain: str  # "pathology" or "art"
    description: str

    @property
    def total(self) -> int:
        return self.train + self.val + self.test

    def sizes(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}


TARGETS: dict[str, TargetSpec] = {spec.name: spec for spec in (
    TargetSpec("human_lba", 9, 4051, 346, 1023, "pathology", "Cytomine: human lung cytology (LBA), cell types"),
    TargetSpec("lung_tissues", 10, 4881, 562, 888, "pathology", "Cytomine: human lung tissue types"),
    TargetSpec("mouse_lba", 8, 1722, 716, 1846, "pathology", "Cytomine: mouse lung cytology (LBA), cell types"),
    TargetSpec("bone_marrow", 8, 522, 130, 639, "pathology", "Cytomine: human bone marrow cell types"),
    TargetSpec("artist1", 20, 3103, 389, 389, "art", "WikiArt: paintings, classify the artist (first set of artists)"),
    TargetSpec("type", 20, 2868, 360, 360, "art", "WikiArt: artworks, classify the type of art"),
    TargetSpec("artist2", 19, 2827, 353, 353, "art", "WikiArt: paintings, classify the artist (second set of artists)"),
)}


def target_dir(name: str, data_dir) -> str:
    """Where target `name` is expected: `<data_dir>/<name>`."""
    return os.path.join(os.path.abspath(os.path.expanduser(os.fspath(data_dir))), name)


def load_target(name: str, *, data_dir, **kwargs) -> FolderDataset:
    """Load a Table-1 target from `<data_dir>/<name>/`.

    `kwargs` go to `load_image_folder` (seed, storage_size, split, val_fraction,
    train_fraction, skip_bad_images). Raises MissingDataError if the folder is
    absent, DataError if its class count differs from Table 1; logs a warning if
    its split sizes do.
    """
    if name not in TARGETS:
        raise DataError(f"unknown target {name!r}; the paper's targets are {', '.join(TARGETS)}")
    spec = TARGETS[name]
    source = "Cytomine" if spec.domain == "pathology" else "WikiArt"
    layout = f"{{train,val,test}}/<class>/* image files, {spec.num_classes} classes"
    if data_dir is None:
        raise MissingDataError(f"{name}: pass --data_dir=DIR with the dataset in DIR/{name}/ as {layout}; "
                               f"it is not a public download (it comes from {source})")
    root = target_dir(name, data_dir)
    if not os.path.isdir(root):
        raise MissingDataError(f"{name}: {root} not found; place the dataset there as {root}/{layout}. "
                               f"It is not a public download (it comes from {source}), so it cannot be fetched")

    # Check the classes before decoding thousands of images.
    found = scan_image_folder(root).class_names
    if len(found) != spec.num_classes:
        raise DataError(f"{name}: {root} has {len(found)} class folders but the paper's {name} has "
                        f"{spec.num_classes} (Table 1); found {', '.join(found)}")
    dataset = load_image_folder(root, name=name, **kwargs)

    # Compare before train_fraction, which shrinks train on purpose.
    sizes = dataset.details["sizes_before_train_fraction"]
    if sizes != spec.sizes():
        expected = "/".join(str(spec.sizes()[s]) for s in SPLITS)
        got = "/".join(str(sizes[s]) for s in SPLITS)
        logging.warning("%s: split sizes differ from Table 1 of the paper: expected train/val/test %s, found %s "
                        "(in %s)", name, expected, got, root)
    return dataset
