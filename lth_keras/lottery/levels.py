"""The one level loop of every protocol, and the summaries of its levels.

A protocol (IMP in tickets.py, fine-tuning in fine_tuning.py) is a small branch over
this loop, the way open_lth writes its control experiments: it supplies each
level's starting point (weights and mask, loaded into its model) and what it adds
to a level's record; the loop does the rest, alike for every protocol: the
workers agree on what is finished, finished levels are skipped, then the start's
digest, the density, training to early stopping with the mask held, and the
level's artifacts, metrics.json last.
"""

import csv
import os
import io

from absl import logging

from lth_keras import artifacts, costs, pruning, weights
from lth_keras.lottery.directory import (CHECKPOINT, METRICS, SUMMARY_COLUMNS, SUMMARY_CSV,
                                         SUMMARY_MD, format_summary)


class Protocol:
    """What a protocol supplies to `train_levels`; the defaults suit every protocol.

    `model` is the network the levels train; `arrays` the file a finished level
    stores its trained weights in.
    """

    model = None
    arrays = None

    def keeps(self, level):
        """Whether finished `level` stands (False: it was removed, to be trained again)."""
        return True

    def load_start(self, level):
        """Loads the level's start into `model`; returns its masks {kernel path: m}."""
        raise NotImplementedError

    def tag(self, level):
        """How the level is named in the log."""
        return f"level {level}"

    def fit_options(self, level):
        """Keyword arguments of training.Trainer.fit for the level (hooks, minimum epochs)."""
        return {}

    def record(self, level, masks):
        """What the protocol adds to the level's metrics.json."""
        return {}

    def finished(self, level, trained):
        """Called with the level's trained weights once it is written."""


def keep_or_remove_level(run, level, mask, redo):
    """Whether finished `level` of `run` stands: its metrics.json reads and records the
    digest of `mask` (None: dense, not compared). Damaged, or trained with another mask
    (the ticket run's level was recomputed since), it is removed, never used, and
    `redo` ("fine-tuning level 3 again") is said."""
    from lth_keras.errors import ArtifactError

    try:
        recorded = run.checked_metrics(level).get("mask_digest")
        if recorded is not None and mask is not None and recorded != weights.digest(mask):
            raise ArtifactError(f"{run.level_file(level, METRICS)} was trained with another "
                                "mask than the ticket run now gives (its level was recomputed)")
        return True
    except ArtifactError as e:
        logging.warning("%s; %s", e, redo)
        artifacts.remove_tree(run.level_dir(level))
        return False


def train_levels(run, protocol, levels, plan, runtime, training, *, checkpoint_every,
                 verbose=True):
    """Trains every level of `levels` that `run` has not finished; returns the summary rows.

    `training` is the recipe (settings.Training), `checkpoint_every` the seconds between
    epoch checkpoints (settings.Run). An interrupted level resumes from its checkpoint.
    """
    model = protocol.model
    finished = [level for level in levels if run.is_finished(level)]
    runtime.check_workers_agree(len(finished), "the finished levels")
    run.remove_stale_checkpoints(finished)
    total_params = weights.count_parameters(model)
    for level in levels:
        tag = protocol.tag(level)
        if run.is_finished(level) and protocol.keeps(level):
            logging.info("%s: finished already, skipping", tag)
            continue
        masks = protocol.load_start(level)
        # Recorded so that anyone can check which weights a level started from.
        start_digest = weights.digest(weights.snapshot(model))
        density = pruning.density_report(masks, total_params)
        logging.info("%s: %d of %d prunable weights alive (%.2f%% pruned)", tag,
                     density["prunable_alive"], density["prunable_size"],
                     100 * density["fraction_pruned"])
        result = _train(run, level, model, plan, training, runtime, density,
                        checkpoint_every=checkpoint_every, verbose=verbose,
                        metrics_tag=f"{tag}: ", **protocol.fit_options(level))
        weights.check_mask_held(model, masks)
        trained = weights.snapshot(model)
        metrics = {"level": level, **protocol.record(level, masks), "density": density,
                   "start_digest": start_digest, **result.as_dict(),
                   "cost": costs.level_cost(model, masks, result.history)}
        _finish_level(run, level, protocol.arrays, trained, metrics)
        protocol.finished(level, trained)
        logging.info("%s done: val acc %.4f, test acc %.4f", tag, result.val["accuracy"],
                     result.test["accuracy"])
    return write_summary(run)


def _train(run, level, model, plan, training, runtime, density, *, checkpoint_every,
           verbose, **fit_args):
    """Trains a level (fresh optimizer) with its curves and epoch checkpoint."""
    from lth_keras.training import Trainer

    trainer = Trainer(model, plan, training, runtime, checkpoint_every=checkpoint_every,
                      verbose=verbose, tensorboard_dir=run.tensorboard_dir(level),
                      hparams=run.tensorboard_hparams(level, density),
                      density=density["density"])
    return trainer.fit(checkpoint_path=run.level_file(level, CHECKPOINT), **fit_args)


def _finish_level(run, level, arrays_name, arrays, metrics):
    """Writes the level's arrays, then metrics.json (which marks it finished); drops its
    checkpoint and rewrites the summary."""
    artifacts.write_arrays(run.level_file(level, arrays_name), arrays)
    artifacts.write_json(run.level_file(level, METRICS), metrics)
    checkpoint = run.level_file(level, CHECKPOINT)
    if os.path.exists(checkpoint):
        os.remove(checkpoint)
    for warning in (chance_warning(level, metrics, run.record().dataset.num_classes),
                    noisy_stop_warning(level, metrics)):
        if warning:
            logging.warning("%s", warning)
    write_summary(run)


def write_summary(run):
    """summary.csv and summary.md, a row per finished level; returns the rows."""
    rows = run.summary()
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS[run.kind],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    artifacts.write_bytes(run.file(SUMMARY_CSV), text.getvalue().encode())
    artifacts.write_bytes(run.file(SUMMARY_MD), format_summary(rows).encode())
    return rows


def chance_warning(level, metrics, num_classes):
    """A warning when a level ends within a point of chance accuracy (a learning rate
    that diverged into a constant prediction, labels that do not match the images), or
    None: such a run exits 0 and its numbers look like results."""
    chance = 1.0 / num_classes
    accuracy = max(metrics["val"]["accuracy"], metrics["test"]["accuracy"])
    if accuracy > chance + 0.01:
        return None
    return (f"level {level} ended at chance accuracy (val {metrics['val']['accuracy']:.4f}, "
            f"test {metrics['test']['accuracy']:.4f}; chance is {chance:.4f} with "
            f"{num_classes} classes): check the learning rate and the data")


def noisy_stop_warning(level, metrics):
    """A warning when early stopping fired on noise (training.noisy_stop; metrics.json
    "noisy_stop"), or None: the kept weights are then those of an early epoch, and the
    level's numbers say more about its validation split than about its network."""
    if not metrics.get("noisy_stop"):
        return None
    history, best = metrics["history"], metrics["best_epoch"]
    return (f"level {level} stopped early on a noisy validation loss: its best epoch was "
            f"{best} of {metrics['epochs']} while training accuracy rose from "
            f"{history[best - 1]['train_accuracy']:.4f} to {history[-1]['train_accuracy']:.4f} "
            "(validation loss by epoch: "
            + ", ".join(f"{r['val_loss']:.3g}" for r in history)
            + "); BatchNorm statistics that lag the weights do this on small data: "
              "--precise_bn re-estimates them before each validation")
