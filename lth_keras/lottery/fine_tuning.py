"""Transfer: fine-tuning tickets on a target dataset (docs/protocol.md "Transfer (`transfer`)").

Every condition loads (m, θ) into the ticket's architecture, replaces the head
by a fresh dense Glorot layer for the target's classes, and trains with the
mask fixed:
  rewind   m_L ⊙ θ_k      (the ticket)
  final    m_L ⊙ θ_i(L)   (paper 4.3.1)
  reinit   m_L ⊙ θ'_0     (θ'_0: a fresh draw from the initialiser, another seed)
  random         r_L ⊙ θ_k   (random pruning: r_L a random mask with m_L's count of
                              alive weights in every layer; only the mask differs from
                              the ticket)
  random_reinit  r_L ⊙ θ'_0  (random pruning with fresh weights)
  scratch  θ_0, dense     (the baseline; one level, numbered 0)

A transfer takes from its ticket run the architecture and input (always) and the
recipe (unless given otherwise); it supplies each level's start to the one level
loop (levels.py). The layout of a transfer run directory is in directory.py.
"""

import dataclasses
import os
import zlib

import numpy as np

from lth_keras import pruning, settings, weights
from lth_keras.lottery import directory, levels
from lth_keras.lottery.directory import MASK, THETA_0, THETA_I, THETA_K, TransferRun
from lth_keras.settings import Data, Model, Training, Transfer

CONDITIONS = ("rewind", "final", "reinit", "random", "random_reinit", "scratch")
RANDOM_MASK = ("random", "random_reinit")  # the conditions that draw their masks
FRESH_WEIGHTS = ("reinit", "random_reinit")  # the conditions that start from θ'_0


def transfer(chosen, given, verbose=True):
    """Fine-tunes tickets on a target, or trains a control, as `chosen` say; returns the
    TransferRun. `given`: the names of the settings given explicitly (a preset's, the
    command line's, the options'); the rest of the recipe is the ticket run's."""
    from lth_keras.lottery import inputs

    settings.check(chosen)  # before the heavy imports: a bad setting is reported at once
    spec, run_settings = chosen[Transfer], chosen[settings.Run]
    condition = spec.condition
    ticket_run, levels_to_train, chosen, overrides = _ticket_run(chosen, given)
    model_settings, training = chosen[Model], chosen[Training]
    tickets_record = ticket_run.record() if ticket_run else None
    # The data need no framework: missing files or bad images are reported before it starts.
    dataset = inputs.load_dataset(spec.target, chosen)
    # The target feeds the ticket's channel count (a grayscale target is replicated to 3;
    # a ticket of 1-channel images cannot take a colour target: one line, nothing written).
    plan = inputs.input_plan(dataset, chosen,
                             channels=tickets_record.channels if ticket_run else None)
    rt = inputs.engine(chosen)
    from lth_keras.lottery import architecture

    model_config = architecture.model_config(
        model_settings, plan.channels,
        source_classes=(tickets_record.dataset.num_classes if ticket_run
                        else dataset.num_classes),
        seed=tickets_record.settings[Training].seed if ticket_run else training.seed)

    with rt.scope():
        source_model, target_model = architecture.build_target_model(
            model_config, dataset.num_classes, head_seed(training.seed, dataset.name))
        fresh_init = None
        if condition in FRESH_WEIGHTS:
            fresh_config = dataclasses.replace(model_config, seed=reinit_seed(
                model_config.seed, training.seed))
            fresh_init = weights.snapshot(architecture.build_target_model(
                fresh_config, dataset.num_classes, head_seed=0)[0])  # the body only
    theta_0 = ticket_run.theta("0") if ticket_run else weights.snapshot(source_model)

    masks = {}  # level: the condition's mask (a random one is drawn once)

    def mask_for_level(level):
        if level not in masks:
            masks[level] = condition_mask(condition, level, ticket_run, training.seed)
        return masks[level]

    def start_for_level(level):
        return starting_point(condition, level, ticket_run, theta_0, fresh_init,
                              mask_for_level(level))

    # A ticket that does not fit this architecture fails here, before anything is written.
    load_start(source_model, *start_for_level(levels_to_train[0]))

    output_dir = run_settings.output_dir or directory.transfer_dir(
        f"{os.path.basename(os.path.normpath(ticket_run.path))}-"
        f"{tickets_record.hparams_hash[:8]}" if ticket_run else
        f"scratch-{model_settings.model}-{model_settings.image_size}px",
        dataset.name, condition, chosen[Data].train_fraction, training.seed)
    run = TransferRun(directory.process_directory(output_dir, rt))
    tickets = None
    if ticket_run:
        tickets = {"path": os.path.abspath(ticket_run.path),
                   "hparams_hash": tickets_record.hparams_hash,
                   "source": tickets_record.dataset.name,
                   "source_fingerprint": tickets_record.dataset.fingerprint}
    identity_extra = {"condition": condition, "tickets_hash": tickets and tickets["hparams_hash"],
                      "head": HEAD_RULE}
    if condition in RANDOM_MASK:
        identity_extra["random_mask"] = RANDOM_MASK_RULE
    with inputs.recorded(run, "transfer", chosen, dataset, plan, rt,
                         extra={"condition": condition, "tickets": tickets,
                                "model": model_config.as_dict(), "levels": levels_to_train,
                                "recipe_overrides": overrides},
                         identity_extra=identity_extra):
        protocol = FineTuning(run, source_model, target_model, condition, start_for_level,
                              mask_for_level, ticket_mask=ticket_run and ticket_run.mask)
        levels.train_levels(run, protocol, levels_to_train, plan, rt, training,
                            checkpoint_every=run_settings.checkpoint_every, verbose=verbose)
    return run


class FineTuning(levels.Protocol):
    """A transfer's starting points: (m, θ) of the condition loaded into the ticket's
    architecture, under the same fresh head at every level.

    `mask_for_level(level)` is the condition's mask of a level (None: dense), which a
    finished level is checked against; `start_for_level(level)` gives (θ, mask) for a
    level to train, θ fitting `source_model` (whose head the target's replaces);
    `ticket_mask(level)`, the ticket's own mask, is recorded beside a random one.
    """

    arrays = directory.WEIGHTS

    def __init__(self, run, source_model, target_model, condition, start_for_level,
                 mask_for_level, ticket_mask=None):
        self.run, self.source_model, self.model = run, source_model, target_model
        self.condition, self.ticket_mask = condition, ticket_mask
        self.start_for_level, self.mask_for_level = start_for_level, mask_for_level
        from lth_keras import models

        head = models.head_layer(target_model)
        self.head_init = {v.path: np.array(v.numpy()) for v in head.variables}

    def tag(self, level):
        return f"level {level} ({self.condition})"

    def keeps(self, level):
        return levels.keep_or_remove_level(self.run, level, self.mask_for_level(level),
                                   f"fine-tuning level {level} again")

    def load_start(self, level):
        mask = load_start(self.source_model, *self.start_for_level(level))
        weights.assign(self.model, self.head_init,
                       skip={v.path for v in self.model.variables} - set(self.head_init))
        return mask

    def record(self, level, masks):
        record = {"condition": self.condition, "mask_digest": weights.digest(masks)}
        if self.condition in RANDOM_MASK:
            record["ticket_mask_digest"] = weights.digest(self.ticket_mask(level))
        return record


def reinit_seed(ticket_seed, seed):
    """The seed of θ'_0: never the ticket's own θ_0 seed, and fixed by both seeds."""
    derived = zlib.crc32(f"reinit/{ticket_seed}/{seed}".encode()) & 0x7FFFFFFF
    return derived if derived != ticket_seed else derived + 1


def head_seed(seed, target):
    """The seed of a transfer's fresh head: a stream of its own, (transfer seed, target,
    "head"). θ_0's head was drawn from (model seed, "head"); drawing the transfer head
    from that rule made it θ_0's head again whenever the class counts matched (the grid
    gives a transfer its ticket's seed), so a rewind would have rewound the head too."""
    return zlib.crc32(f"transfer/{seed}/{target}/head".encode()) & 0x7FFFFFFF


# The rule a transfer's head is drawn with, in every transfer's identity: heads drawn by
# another rule (lth_keras <= 0.3 used θ_0's) are other runs, never resumed as these.
HEAD_RULE = "transfer seed/target/head"


def random_mask_seed(ticket_seed, seed, level):
    """The seed of a level's random masks: a stream of its own, fixed by the ticket's
    seed, the transfer's seed and the level (each level draws anew)."""
    return zlib.crc32(f"random_mask/{ticket_seed}/{seed}/{level}".encode()) & 0x7FFFFFFF


# The rule random masks are drawn with, in every random-mask transfer's identity.
RANDOM_MASK_RULE = "per layer, uniform, the ticket's alive count; ticket seed/seed/level"


def condition_mask(condition, level, ticket_run, seed):
    """The mask a condition fine-tunes a level with (None: dense): the ticket's, or for
    random pruning one drawn with the ticket's alive count in every layer."""
    if condition == "scratch":
        return None
    mask = ticket_run.mask(level)
    if condition in RANDOM_MASK:
        ticket_seed = ticket_run.record().settings[Training].seed
        return pruning.random_masks(mask, random_mask_seed(ticket_seed, seed, level))
    return mask


def starting_point(condition, level, ticket_run=None, theta_0=None, fresh_init=None,
                   mask=None):
    """(θ, mask) a level starts from, `mask` the condition's (condition_mask; None:
    dense)."""
    if condition == "scratch":
        return theta_0, None
    if condition in ("rewind", "random"):
        return ticket_run.theta("k"), mask
    if condition == "final":
        return ticket_run.theta_i(level), mask
    if condition in FRESH_WEIGHTS:
        return fresh_init, mask
    raise ValueError(f"unknown condition {condition!r}")


def load_start(source_model, theta, mask):
    """Loads m ⊙ θ into the source-shaped model (mask None: dense); returns the mask."""
    if mask is None:
        mask = weights.dense_masks(source_model)
    weights.load_ticket(source_model, theta, mask)
    return mask


def _ticket_run(chosen, given):
    """(ticket run directory or None, levels, `chosen` with the ticket's model, input and
    recipe, recipe overrides) for the transfer; read before anything heavy is imported,
    so that a bad one is reported at once."""
    from lth_keras.lottery import inputs

    spec = chosen[Transfer]
    if not spec.tickets:  # scratch without tickets: the settings name the model
        return None, [0], chosen, {}
    ticket_run, chosen, overrides = inputs.open_tickets(chosen, given, spec.tickets,
                                                        "fine-tuning recipe")
    run_files = (THETA_0,) + ((THETA_K,) if spec.condition in ("rewind", "random") else ())
    if spec.condition == "scratch":  # θ_0 alone: it exists from the ticket run's start
        inputs.check_holds(ticket_run, spec.tickets, run_files)
        return ticket_run, [0], chosen, overrides
    levels_to_train = inputs.chosen_levels(
        ticket_run, spec.levels, spec.tickets, run_files=run_files,
        files=(MASK,) + ((THETA_I,) if spec.init == "final" else ()))
    return ticket_run, levels_to_train, chosen, overrides
