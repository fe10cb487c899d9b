"""Iterative magnitude pruning with late resetting
(docs/protocol.md "Iterative magnitude pruning (`find_tickets`)").

Level 0 trains the dense θ_0 and keeps θ_k, its weights after epoch k; level L
prunes the smallest surviving weights of θ_i(L-1) into m_L and trains m_L ⊙ θ_k.
This module supplies those starting points to the one level loop (levels.py),
and checks a resumed run's artifacts before it trusts them. The layout of a
ticket run directory is in directory.py.
"""

import os

import numpy as np
from absl import logging

from lth_keras import artifacts, pruning, settings, weights
from lth_keras.lottery import directory, levels
from lth_keras.lottery.directory import MASK, THETA_0, THETA_K, TicketRun


def find_tickets(chosen, verbose=True):
    """Finds (or resumes) tickets as `chosen` ({settings group: object}) say; returns the
    TicketRun."""
    from lth_keras.lottery import inputs

    settings.check(chosen)  # before the heavy imports: a bad setting is reported at once
    model_settings, training = chosen[settings.Model], chosen[settings.Training]
    spec, run_settings = chosen[settings.Pruning], chosen[settings.Run]
    dataset = inputs.load_dataset(spec.source, chosen)
    plan = inputs.input_plan(dataset, chosen)
    rt = inputs.engine(chosen)
    from lth_keras import models

    output_dir = run_settings.output_dir or directory.tickets_dir(
        dataset.name, model_settings.model, model_settings.image_size, training.seed)
    run = TicketRun(directory.process_directory(output_dir, rt))
    with rt.scope():
        model = models.build_model(model_settings.model,
                                   input_shape=(plan.image_size,) * 2 + (plan.channels,),
                                   num_classes=dataset.num_classes, seed=training.seed,
                                   bn_momentum=model_settings.bn_momentum)
    with inputs.recorded(run, "find_tickets", chosen, dataset, plan, rt):
        # A --save_steps step at a whole epoch is that epoch's snapshot.
        spe = plan.steps_per_epoch
        search(run, model, plan, rt, training, rounds=spec.rounds, prune_rate=spec.prune_rate,
               pruning_mode=spec.pruning, rewind_epoch=spec.rewind_epoch,
               save_epochs=(*spec.save_epochs, *(s // spe for s in spec.save_steps
                                                 if s % spe == 0)),
               save_steps=[s for s in spec.save_steps if s % spe],
               checkpoint_every=run_settings.checkpoint_every, verbose=verbose)
    return run


def search(run, model, plan, runtime, training, *, rounds, prune_rate, pruning_mode="global",
           rewind_epoch=2, save_epochs=(), save_steps=(), checkpoint_every=600.0,
           verbose=True):
    """Runs (or resumes) levels 0..rounds of IMP with late resetting into `run`.

    `model` is built with θ_0 under `runtime.scope()`; `plan` is the data's InputPlan,
    `training` the recipe (settings.Training); level 0 keeps its weights after each epoch
    of `save_epochs` and each global step of `save_steps` besides θ_k. Finished levels are
    skipped (after their artifacts are checked); an interrupted level resumes from its
    last epoch checkpoint.
    """
    theta_0 = weights.snapshot(model)
    _check_or_write_theta_0(run, theta_0)
    _discard_damaged_levels(run)
    _warn_of_missing_snapshots(run, plan.steps_per_epoch, save_epochs, save_steps)
    protocol = TicketSearch(run, model, theta_0, prune_rate=prune_rate,
                            pruning_mode=pruning_mode, rewind_epoch=rewind_epoch,
                            save_epochs=save_epochs, save_steps=save_steps)
    return levels.train_levels(run, protocol, range(rounds + 1), plan, runtime, training,
                               checkpoint_every=checkpoint_every, verbose=verbose)


class TicketSearch(levels.Protocol):
    """IMP's starting points: θ_0 dense at level 0; m_L ⊙ θ_k after, m_L pruned from the
    last level's trained weights."""

    arrays = directory.THETA_I

    def __init__(self, run, model, theta_0, *, prune_rate, pruning_mode, rewind_epoch,
                 save_epochs=(), save_steps=()):
        self.run, self.model, self.theta_0 = run, model, theta_0
        self.prune_rate, self.pruning_mode, self.rewind_epoch = (prune_rate, pruning_mode,
                                                                 rewind_epoch)
        self.save_epochs = set(save_epochs) - {0, rewind_epoch}  # θ_0 and θ_k are kept anyway
        self.save_steps = sorted(set(save_steps))
        # θ_k and the last θ_i, as written, are kept between levels: on ResNet-50 each is
        # 190 MB that would be read back from disk every level.
        self.theta_k = self.previous = None

    def load_start(self, level):
        run, model = self.run, self.model
        if level == 0:
            masks, start = weights.dense_masks(model), self.theta_0
        else:
            if self.previous is None:
                self.previous = run.theta_i(level - 1)
            kernels = {k: self.previous[k] for k in weights.get_masks(model)}
            masks = pruning.prune(kernels, run.mask(level - 1), self.prune_rate,
                                  self.pruning_mode)
            if self.theta_k is None:
                self.theta_k = run.theta("k")  # written in level 0, checked on start
            start = self.theta_k
        artifacts.write_arrays(run.level_file(level, MASK),
                               {k: np.asarray(m, bool) for k, m in masks.items()})
        weights.load_ticket(model, start, masks)
        if level == 0 and self.rewind_epoch == 0:
            artifacts.write_arrays(run.file(THETA_K), self.theta_0)
        return masks

    def fit_options(self, level):
        if level > 0:
            return {}

        def save_snapshots(epoch):
            if epoch == self.rewind_epoch or epoch in self.save_epochs:
                artifacts.write_arrays(self.run.epoch_file(epoch), weights.snapshot(self.model))

        def save_step(step):
            artifacts.write_arrays(self.run.file(directory.theta_step_name(step)),
                                   weights.snapshot(self.model))

        # Early stopping may not stop level 0 before θ_k exists. (It may stop before a
        # later --save_epochs epoch: that snapshot is then absent, and the run's result
        # the same as without it.)
        return {"min_epochs": self.rewind_epoch, "on_epoch_end": save_snapshots,
                "snapshot_steps": self.save_steps, "on_step": save_step}

    def finished(self, level, trained):
        self.previous = trained


def _check_or_write_theta_0(run, theta_0):
    """θ_0 is a function of the seed: a stored one must match the model just built."""
    path = run.file(THETA_0)
    stored = None
    if os.path.exists(path):
        try:
            stored = run.theta("0")
        except artifacts.ArtifactError as e:
            logging.warning("%s; rewriting it from the seed", e)
    if stored is not None:
        same = stored.keys() == theta_0.keys() and all(
            np.array_equal(stored[k], theta_0[k]) for k in theta_0)
        if not same:
            raise artifacts.ArtifactError(
                f"{path} differs from the θ_0 that this model and seed give: the run "
                "directory belongs to another configuration")
    else:
        artifacts.write_arrays(path, theta_0)


def expected_start_digest(start, masks):
    """The start_digest of a level that starts from θ = `start` with `masks`: what
    weights.load_ticket makes of them (kernels m ⊙ θ, mask variables m), as a digest."""
    weights_at_start = dict(start)
    for path, mask in masks.items():
        mask = np.asarray(mask, np.float32)
        weights_at_start[path] = start[path] * mask
        weights_at_start[path.rsplit("/", 1)[0] + "/mask"] = mask
    return weights.digest(weights_at_start)


def _warn_of_missing_snapshots(run, steps_per_epoch, save_epochs, save_steps):
    """One line when level 0 is finished without snapshots now asked for: they are taken
    while level 0 trains, and a resumed run does not train it again."""
    if not run.is_finished(0):
        return
    held = set(run.saved_steps())
    wanted = {e * steps_per_epoch for e in save_epochs} | set(save_steps)
    missing = sorted(wanted - held)
    if missing:
        logging.warning("level 0 of %s is finished without its weights at steps %s "
                        "(--save_epochs/--save_steps): they are kept only while level 0 "
                        "trains; find tickets into another --output_dir to have them",
                        run.path, ", ".join(map(str, missing)))


def _discard_damaged_levels(run):
    """Removes the first finished level with a damaged artifact, and every later level.

    Damage is a file that does not read (npz members are CRC-checked, JSON must
    parse), a metrics.json without what a finished level records, or a mask or θ
    that does not give the start the level recorded (a mask copied from another
    level, a θ_k from another run). It is reported and recomputed, never used.
    Later levels go too, finished or in progress: they were pruned from the damaged
    one. Every artifact is read once (seconds even for 31 ResNet-50 levels, against
    hours of training).
    """
    finished = run.finished_levels()
    if not finished:
        return
    damaged = []

    def check(level, read):
        try:
            return read()
        except artifacts.ArtifactError as e:
            logging.warning("%s", e)
            damaged.append(level)

    theta_0, theta_k = check(0, lambda: run.theta("0")), check(0, lambda: run.theta("k"))
    starts = {}  # level: whether its mask and θ give the start it recorded
    for level in finished:
        metrics = check(level, lambda level=level: run.checked_metrics(level))
        mask = check(level, lambda level=level: run.mask(level))
        check(level, lambda level=level: run.theta_i(level))
        start = theta_0 if level == 0 else theta_k
        if metrics is not None and mask is not None and start is not None:
            try:
                starts[level] = expected_start_digest(start, mask) == metrics["start_digest"]
            except KeyError:  # a mask for a kernel that θ does not hold
                starts[level] = False
    # θ_k is every pruned level's start: one pruned level that starts right vouches for
    # it, and then a level that does not has a wrong mask; if none does, θ_k is wrong.
    theta_k_right = any(ok for level, ok in starts.items() if level > 0)
    for level, ok in starts.items():
        if ok:
            continue
        mask_wrong = level == 0 or theta_k_right
        logging.warning("%s does not give the start that level %d recorded (start_digest): "
                        "it comes from elsewhere", run.level_file(level, MASK)
                        if mask_wrong else run.file(THETA_K), level)
        damaged.append(level if mask_wrong else 0)
    if damaged:
        first = min(damaged)
        logging.warning("recomputing levels %d..%d of %s", first, finished[-1], run.path)
        for level, path in sorted(run.level_dirs().items()):
            if level >= first:  # in-progress levels too
                artifacts.remove_tree(path)
