"""Transfer: fine-tuning tickets on a target dataset (PROTOCOL.md "Transfer").

Every condition loads (m, θ) into the ticket's architecture, replaces the head
by a fresh dense Glorot layer for the target's classes, and trains with the
mask fixed:
  rewind   m_L ⊙ θ_k      (the ticket)
  final    m_L ⊙ θ_i(L)   (paper 4.3.1)
  reinit   m_L ⊙ θ'_0     (θ'_0: a fresh draw from the initialiser, another seed)
  scratch  θ_0, dense     (the baseline; one level, numbered 0)

A transfer run directory holds:
  config.json               flags, hparams (+ their hash), the ticket run it read,
                            versions, target data fingerprint
  levels/level_LL/          weights.npz (the fine-tuned model) and metrics.json;
                            checkpoint.npz only while the level is in progress
  summary.csv, summary.md   one row per finished level
  tensorboard/level_LL/     curves
"""

import zlib

import numpy as np
from absl import logging

from lth_keras import artifacts, costs, models, pruning, runs, weights

CONDITIONS = ("rewind", "final", "reinit", "scratch")
SUMMARY_COLUMNS = ("level", "condition", "density", "fraction_pruned", "val_accuracy",
                   "val_loss", "test_accuracy", "test_loss", "best_epoch", "epochs",
                   *runs.COST_COLUMNS)


class TransferRun(runs.RunDirectory):
    """A transfer run directory."""

    def weights(self, level):
        return artifacts.read_arrays(self.level_file(level, "weights.npz"))

    def write_summary(self):
        return super().write_summary(SUMMARY_COLUMNS, self._summary_row, runs.format_summary)

    def _summary_row(self, level):
        m = self.metrics(level)
        return {"level": level, "condition": m["condition"], "density": m["density"]["density"],
                "fraction_pruned": m["density"]["fraction_pruned"],
                "val_accuracy": m["val"]["accuracy"], "val_loss": m["val"]["loss"],
                "test_accuracy": m["test"]["accuracy"], "test_loss": m["test"]["loss"],
                "best_epoch": m["best_epoch"], "epochs": m["epochs"], **runs.cost_columns(m)}


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


def build_source_model(model_config):
    """The ticket run's model as `model_config` (a transfer's record) describes it: θ_0's
    architecture, input and head. Call under `runtime.scope()`."""
    return models.build_model(model_config["model"],
                              input_shape=(model_config["image_size"],) * 2
                              + (model_config.get("channels", 3),),  # 3 before it was recorded
                              num_classes=model_config["source_classes"],
                              seed=model_config["seed"],
                              bn_momentum=model_config["bn_momentum"])


def build_target_model(model_config, num_classes, head_seed):
    """(source-shaped model, target model sharing its body with a fresh head).

    Tickets are stored with the source head; they load into the first model,
    and the second is the one trained; its head kernel is drawn from `head_seed`
    (see `head_seed`). Call under `runtime.scope()`.
    """
    source = build_source_model(model_config)
    return source, models.replace_head(source, num_classes, head_seed)


def starting_point(condition, level, ticket_run=None, theta_0=None, fresh_init=None):
    """(θ, mask) a level starts from; mask None means dense."""
    if condition == "scratch":
        return theta_0, None
    mask = ticket_run.mask(level)
    if condition == "rewind":
        return ticket_run.theta("k"), mask
    if condition == "final":
        return ticket_run.theta_i(level), mask
    if condition == "reinit":
        return fresh_init, mask
    raise ValueError(f"unknown condition {condition!r}")


def load_start(source_model, theta, mask):
    """Loads m ⊙ θ into the source-shaped model (mask None: dense); returns the mask."""
    if mask is None:
        mask = weights.dense_masks(source_model)
    weights.load_ticket(source_model, theta, mask)
    return mask


def fine_tune(run, source_model, target_model, plan, runtime, training_config, *,
              condition, levels, start_for_level, mask_for_level, verbose=True):
    """Fine-tunes every level of `levels` not finished yet into `run`.

    `mask_for_level(level)` is the ticket's mask of a level (None: dense), which a
    finished level is checked against; `start_for_level(level)` gives (θ, mask) for a
    level to train; θ fits `source_model`
    (whose head the target head replaces). Every level starts from the same
    fresh head. Returns the summary rows.
    """
    head = models.head_layer(target_model)
    head_init = {v.path: np.array(v.numpy()) for v in head.variables}
    total_params = weights.count_parameters(target_model)
    runtime.check_workers_agree(sum(map(run.is_finished, levels)), "the finished levels")
    run.remove_stale_checkpoints([level for level in levels if run.is_finished(level)])
    for level in levels:
        if run.is_finished(level):
            ticket_mask = mask_for_level(level)
            try:
                recorded = run.checked_metrics(level).get("mask_digest")
                if (recorded is not None and ticket_mask is not None  # scratch: dense
                        and recorded != weights.digest(ticket_mask)):
                    raise artifacts.ArtifactError(
                        f"{run.level_file(level, 'metrics.json')} was fine-tuned with another "
                        "mask than the ticket run now holds (its level was recomputed)")
                logging.info("level %d: already fine-tuned, skipping", level)
                continue
            except artifacts.ArtifactError as e:  # damaged or stale: recomputed, never used
                logging.warning("%s; fine-tuning level %d again", e, level)
                artifacts.remove_tree(run.level_dir(level))
        mask = load_start(source_model, *start_for_level(level))
        weights.assign(target_model, head_init,
                       skip={v.path for v in target_model.variables} - set(head_init))
        start_digest = weights.digest(weights.snapshot(target_model))
        density = pruning.density_report(mask, total_params)
        logging.info("level %d (%s): fine-tuning with %.2f%% of the prunable weights", level,
                     condition, 100 * density["density"])

        result = run.train_level(level, target_model, plan, training_config, runtime,
                                 density, verbose=verbose,
                                 metrics_tag=f"level {level} ({condition}): ")
        weights.check_mask_held(target_model, mask)
        run.finish_level(level, "weights.npz", weights.snapshot(target_model), {
            "level": level, "condition": condition, "density": density,
            "start_digest": start_digest, "mask_digest": weights.digest(mask),
            **result.as_dict(), "cost": costs.level_cost(target_model, mask, result.history)})
        logging.info("level %d done: val acc %.4f, test acc %.4f", level,
                     result.val["accuracy"], result.test["accuracy"])
    return run.write_summary()
