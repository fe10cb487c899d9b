"""Iterative magnitude pruning with late resetting (PROTOCOL.md "find_tickets").

A ticket run directory holds:
  config.json               flags, hparams (+ their hash), versions, data fingerprint
  theta_0.npz, theta_k.npz  weights at initialisation and after epoch k of level 0
  levels/level_LL/          mask.npz (m_L, bool), theta_i.npz (θ_i(L)), metrics.json;
                            checkpoint.npz only while the level is in progress
  summary.csv, summary.md   one row per finished level
  tensorboard/level_LL/     curves
A level is finished when its metrics.json exists (written last, atomically).
"""

import os
import re

import numpy as np
from absl import logging

from lth_keras import artifacts, costs, pruning, runs, weights

SUMMARY_COLUMNS = ("level", "density", "fraction_pruned", "fraction_pruned_all_params",
                   "val_accuracy", "val_loss", "test_accuracy", "test_loss", "best_epoch",
                   "epochs", *runs.COST_COLUMNS)


class TicketRun(runs.RunDirectory):
    """A find_tickets run directory."""

    def mask(self, level):
        """m_L as float32 0/1 arrays (stored as bool since lth_keras 0.5, a quarter of
        the bytes; earlier runs stored float32, which reads the same)."""
        return {k: np.asarray(v, np.float32)
                for k, v in artifacts.read_arrays(self.level_file(level, "mask.npz")).items()}

    def theta_i(self, level):
        return artifacts.read_arrays(self.level_file(level, "theta_i.npz"))

    def theta(self, which):
        """θ_0 or θ_k ("0" or "k")."""
        return artifacts.read_arrays(self.file(f"theta_{which}.npz"))

    def write_summary(self):
        return super().write_summary(SUMMARY_COLUMNS, self._summary_row, runs.format_summary)

    def _summary_row(self, level):
        m = self.metrics(level)
        return {"level": level, "density": m["density"]["density"],
                "fraction_pruned": m["density"]["fraction_pruned"],
                "fraction_pruned_all_params": m["density"]["fraction_pruned_all_params"],
                "val_accuracy": m["val"]["accuracy"], "val_loss": m["val"]["loss"],
                "test_accuracy": m["test"]["accuracy"], "test_loss": m["test"]["loss"],
                "best_epoch": m["best_epoch"], "epochs": m["epochs"], **runs.cost_columns(m)}


def find_tickets(run, model, plan, runtime, training_config, *, rounds, prune_rate,
                 pruning_mode="global", rewind_epoch=2, verbose=True):
    """Runs (or resumes) levels 0..rounds of IMP with late resetting into `run`.

    `model` is built with θ_0 under `runtime.scope()`; `plan` is the data's
    InputPlan. Finished levels are skipped; an interrupted level resumes from
    its last epoch checkpoint.
    """
    theta_0 = weights.snapshot(model)
    _check_or_write_theta_0(run, theta_0)
    _discard_damaged_levels(run)
    runtime.check_workers_agree(len(run.finished_levels()), "the finished levels")
    total_params = weights.count_parameters(model)
    # θ_k and the last θ_i, as written, are kept between levels: on ResNet-50 each is
    # 190 MB that would be read back from disk every level.
    theta_k = previous = None

    for level in range(rounds + 1):
        if run.is_finished(level):
            continue
        if level == 0:
            masks = weights.dense_masks(model)
            start = theta_0
        else:
            if previous is None:
                previous = run.theta_i(level - 1)
            kernels = {k: previous[k] for k in weights.get_masks(model)}
            masks = pruning.prune(kernels, run.mask(level - 1), prune_rate, pruning_mode)
            if theta_k is None:
                theta_k = run.theta("k")  # written in level 0, checked on start
            start = theta_k
        artifacts.write_arrays(run.level_file(level, "mask.npz"),
                               {k: np.asarray(m, bool) for k, m in masks.items()})
        weights.load_ticket(model, start, masks)
        # Recorded so that anyone can check which weights a level started from.
        start_digest = weights.digest(weights.snapshot(model))
        density = pruning.density_report(masks, total_params)
        logging.info("level %d: %d of %d prunable weights alive (%.2f%% pruned)", level,
                     density["prunable_alive"], density["prunable_size"],
                     100 * density["fraction_pruned"])

        def save_theta_k(epoch, level=level):
            if level == 0 and epoch == rewind_epoch:
                artifacts.write_arrays(run.file("theta_k.npz"), weights.snapshot(model))

        if level == 0 and rewind_epoch == 0:
            artifacts.write_arrays(run.file("theta_k.npz"), theta_0)
        result = run.train_level(level, model, plan, training_config, runtime, density,
                                 verbose=verbose, min_epochs=rewind_epoch if level == 0 else 0,
                                 on_epoch_end=save_theta_k, metrics_tag=f"level {level}: ")
        weights.check_mask_held(model, masks)
        previous = weights.snapshot(model)
        rows = run.finish_level(level, "theta_i.npz", previous,
                                {"level": level, "density": density,
                                 "start_digest": start_digest, **result.as_dict(),
                                 "cost": costs.level_cost(model, masks, result.history)})
        logging.info("level %d done: val acc %.4f, test acc %.4f", level,
                     rows[-1]["val_accuracy"], rows[-1]["test_accuracy"])
    return run.write_summary()


def _check_or_write_theta_0(run, theta_0):
    """θ_0 is a function of the seed: a stored one must match the model just built."""
    path = run.file("theta_0.npz")
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
    run.remove_stale_checkpoints(finished)
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
                        "it comes from elsewhere", run.level_file(level, "mask.npz")
                        if mask_wrong else run.file("theta_k.npz"), level)
        damaged.append(level if mask_wrong else 0)
    if damaged:
        first = min(damaged)
        logging.warning("recomputing levels %d..%d of %s", first, finished[-1], run.path)
        root = run.file("levels")
        for name in sorted(os.listdir(root)):
            match = re.fullmatch(r"level_(\d+)", name)
            if match and int(match.group(1)) >= first:  # in-progress levels too
                artifacts.remove_tree(os.path.join(root, name))
