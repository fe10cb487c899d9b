"""The network a run trains, as its record describes it (config.json "model").

A transfer loads its tickets into the ticket run's architecture (its input, its
source head), then trains that body under a fresh head for the target's classes.
Export rebuilds a finished level's model from the same description.
"""

import os

from lth_keras import models
from lth_keras.errors import UserError
from lth_keras.lottery.directory import ModelRecord, RunDirectory
from lth_keras.settings import Model, Training

# The runs whose levels hold a model.
KINDS = ("transfer", "find_tickets")


def model_config(model_settings, channels, source_classes, seed):
    """The description of a source model: the Model settings, the input's channels, the
    source's classes and θ_0's seed (a transfer records it as config.json "model")."""
    return ModelRecord(model=model_settings.model, image_size=model_settings.image_size,
                       channels=channels, source_classes=source_classes, seed=seed,
                       bn_momentum=model_settings.bn_momentum)


def build_source_model(config):
    """The ticket run's model as `config` (a ModelRecord) describes it: θ_0's
    architecture, input and head. Call under `runtime.scope()`."""
    return models.build_model(config.model, input_shape=(config.image_size,) * 2
                              + (config.channels,), num_classes=config.source_classes,
                              seed=config.seed, bn_momentum=config.bn_momentum)


def build_target_model(config, num_classes, head_seed):
    """(source-shaped model, target model sharing its body with a fresh head).

    Tickets are stored with the source head; they load into the first model, and the
    second is the one trained; its head kernel is drawn from `head_seed`
    (fine_tuning.head_seed). Call under `runtime.scope()`.
    """
    source = build_source_model(config)
    return source, models.replace_head(source, num_classes, head_seed)


def level_model(run_path, level):
    """(masked model with the level's weights, description) of a transfer run (the
    fine-tuned target model) or a find_tickets run (θ_i(L), with the source head).

    Raises UserError (or ArtifactError) before building anything when the directory is
    not a run, the kind is unknown or the level is not finished.
    """
    from lth_keras import weights

    def check(condition, message):
        if not condition:
            raise UserError(message)

    check(run_path, "--run is required: a transfer or find_tickets run directory")
    check(os.path.isdir(run_path), f"--run={run_path}: no such directory")
    run = RunDirectory(run_path)
    record = run.record()
    kind = record.kind
    check(kind in KINDS, f"{run_path} is a {kind!r} run; export reads {' or '.join(KINDS)} runs")
    num_classes = record.dataset.num_classes
    if kind == "transfer":
        check(record.model is not None, f"{run.config_path} lacks the model of a transfer run")
        description = record.model
    else:  # the ticket run itself: its source classes are its own
        description = model_config(record.settings[Model], record.channels, num_classes,
                                   record.settings[Training].seed)
    finished = run.finished_levels()
    listed = ", ".join(map(str, finished)) if finished else "none"
    check(level is not None, f"--level is required; {run_path} has finished levels {listed}")
    check(level in finished, f"level {level} of {run_path} is not finished; finished levels: "
                             f"{listed}")
    if kind == "transfer":
        stored = run.weights(level)
        model = build_target_model(description, num_classes, head_seed=0)[1]
    else:
        stored = run.theta_i(level)
        model = build_source_model(description)
    weights.assign(model, stored)
    return model, {"run": os.path.abspath(run_path), "kind": kind, "level": level,
                   "condition": record.condition, "model": description.as_dict(),
                   "num_classes": num_classes, "dataset": record.dataset.name}
