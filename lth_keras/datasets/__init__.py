"""Datasets: in-memory splits, the natural-image sources, the epoch plan, the tf.data pipeline.

  dataset     ImageDataset and Split: uint8 images and labels per split; carving, subsets
  sources     the natural-image sources (Fashion-MNIST, CIFAR-10/100) from their files
  folders     image folders <root>/{train,val,test}/<class>/*, checked and decoded
  cache       decoded image folders kept on disk, memory-mapped
  targets     the paper's targets (Table 1) and their counts
  epoch_plan  InputPlan: which images, crops and normalisation each epoch feeds
  pipeline    the TensorFlow engine's tf.data input (TensorFlow only)

Everything here but the tf.data pipeline works without TensorFlow. The pipeline
is imported lazily: importing TensorFlow takes seconds, loading or validating
data (e.g. failing fast on missing files) does not need it, and the JAX engine
never does.
"""

import os

from lth_keras.datasets.dataset import (
    SPLITS,
    DataError,
    ImageDataset,
    MissingDataError,
    Split,
    carve_validation,
    check_every_class,
    stratified_split,
    subset_fraction,
)
from lth_keras.datasets.sources import SOURCES, load_source, network_available
from lth_keras.datasets.folders import (
    IMAGE_EXTENSIONS,
    FolderDataset,
    FolderLayout,
    load_image_folder,
    parse_split,
    scan_image_folder,
)
from lth_keras.datasets.epoch_plan import InputPlan, channel_stats, resize_size
from lth_keras.datasets.targets import TARGETS, TargetSpec, load_target

_PIPELINE_NAMES = ("InputPipeline",)

__all__ = [
    "SPLITS", "DataError", "ImageDataset", "MissingDataError", "Split",
    "carve_validation", "check_every_class", "stratified_split", "subset_fraction",
    "SOURCES", "load_source", "network_available", "InputPlan", "channel_stats", "resize_size",
    *_PIPELINE_NAMES,
    "IMAGE_EXTENSIONS", "FolderDataset", "FolderLayout", "load_image_folder", "parse_split",
    "scan_image_folder", "TARGETS", "TargetSpec", "load_target", "load_dataset",
]


def __getattr__(name):
    if name in _PIPELINE_NAMES:
        from lth_keras.datasets import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_dataset(name_or_path, *, data_dir=None, seed=0, val_fraction=0.1, train_fraction=1.0,
                 image_size=None, split=None, skip_bad_images=False,
                 cache_dir=None, crop="random") -> ImageDataset:
    """Load a source, a Table-1 target or an image folder by name or path.

    - a source name (fashion_mnist, cifar10, cifar100): `load_source`;
    - a target name (human_lba, ...): `load_target` from `<data_dir>/<name>/`;
    - an existing directory: `load_image_folder`.
    Folder images are stored at `resize_size(image_size)` so that the pipeline's
    crops fit (at `image_size` itself with crop "none", which feeds them uncropped), and
    kept decoded in `cache_dir` (memory-mapped, shared across runs); sources keep their
    native size (the pipeline resizes them).
    """
    name = os.fspath(name_or_path)
    if name in SOURCES:
        if split is not None:
            raise DataError(f"{name}: --split applies to image folders; a source has a fixed test split")
        return load_source(name, data_dir=data_dir, seed=seed, val_fraction=val_fraction,
                           train_fraction=train_fraction)
    storage_size = (None if image_size is None
                    else resize_size(image_size) if crop == "random" else image_size)
    kwargs = dict(seed=seed, storage_size=storage_size, split=split, val_fraction=val_fraction,
                  train_fraction=train_fraction, skip_bad_images=skip_bad_images,
                  cache_dir=cache_dir)
    if name in TARGETS:
        return load_target(name, data_dir=data_dir, **kwargs)
    if os.path.isdir(os.path.expanduser(name)):
        return load_image_folder(name, **kwargs)
    raise DataError(f"unknown dataset {name!r}: not a source ({', '.join(SOURCES)}), not a target of the paper "
                    f"({', '.join(TARGETS)}), and not an existing directory; an image folder "
                    f"<path>/{{train,val,test}}/<class>/* can be given by its path")
