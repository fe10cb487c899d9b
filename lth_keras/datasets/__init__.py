"""Datasets: in-memory splits, the natural-image sources, and the tf.data pipeline.

The pipeline names are imported lazily: importing TensorFlow takes seconds, and
loading or validating data (e.g. failing fast on missing files) does not need it.
"""

from lth_keras.datasets.base import (
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

_PIPELINE_NAMES = ("InputPipeline", "channel_stats", "resize_size")

__all__ = [
    "SPLITS", "DataError", "ImageDataset", "MissingDataError", "Split",
    "carve_validation", "check_every_class", "stratified_split", "subset_fraction",
    "SOURCES", "load_source", "network_available", *_PIPELINE_NAMES,
]


def __getattr__(name):
    if name in _PIPELINE_NAMES:
        from lth_keras.datasets import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
