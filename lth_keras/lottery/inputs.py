"""What a run is made of, from its settings: the dataset, its input plan, the engine.

Shared by both protocols; each reads its settings groups ({group: object}) once here.
"""

import contextlib
import importlib

from lth_keras.settings import Data, Model, Run, Training


def load_dataset(name, groups):
    """The dataset `name` (a source, a paper target or an image folder) as `groups` say."""
    from lth_keras import datasets

    data, training = groups[Data], groups[Training]
    return datasets.load_dataset(
        name, data_dir=data.data_dir, seed=training.seed, val_fraction=data.val_fraction,
        train_fraction=data.train_fraction, image_size=groups[Model].image_size, crop=data.crop,
        split=data.split and [str(f) for f in data.split],
        skip_bad_images=data.skip_bad_images,
        cache_dir=datasets.cache.default_dir() if data.cache_dir is None else data.cache_dir)


def input_plan(dataset, groups, channels=None):
    """The InputPlan of `dataset` as `groups` say; `channels` (a count) overrides the
    channels setting (a transfer feeds its ticket's count)."""
    from lth_keras.datasets import InputPlan

    data, training = groups[Data], groups[Training]
    if channels is None:
        channels = 3 if data.channels == "3" else None
    return InputPlan(dataset, image_size=groups[Model].image_size,
                     batch_size=training.batch_size, seed=training.seed, crop=data.crop,
                     channels=channels)


def start_framework():
    """Imports Keras and its backend (TensorFlow or JAX), their start-up noise filtered."""
    from lth_keras import quiet

    with quiet.framework_startup():
        importlib.import_module("keras")


def runtime(groups):
    """This process's engine Runtime for `groups` (made once, then reused)."""
    from lth_keras import engines, quiet

    # Several hosts: their watchdog must write to the real stderr, so nothing is filtered.
    startup = (quiet.framework_startup() if groups[Run].strategy != "multi_worker"
               else contextlib.nullcontext())
    with startup:
        return engines.runtime(groups[Run], groups[Training])
