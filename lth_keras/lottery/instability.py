"""Instability analysis (Frankle, Dziugaite, Roy & Carbin 2020, "Linear mode
connectivity and the lottery ticket hypothesis"): is training a ticket from θ_k
stable to SGD noise?

For a level L and a rewind point k (a step of level 0's training: "2ep", "40it"; 0 is
θ_0), `pairs` independent pairs of copies of m_L ⊙ θ_k are trained, each copy on a data
order of its own (its input plan's seed: batch order and crops), through the one level
loop, for a fixed budget: from step k to step T (T: the steps level 0 of the ticket run
trained, or --budget), the learning-rate schedule continued from step k, a fresh
momentum, no early stopping, the final weights kept ("trained to completion"). Copies
that stop early at different epochs differ whatever the path between them looks like.

Each pair's straight path is evaluated at `points` evenly spaced points, ends included,
alike at every point: every weight is (1 - α)·θ_A + α·θ_B, but the masks, which both
copies share, and the variables that are not floating point; with --bn=reestimate (the
default) BatchNormalization's moving statistics at EVERY point, the ends too, become the
average of the statistics of `bn_batches` training batches at that point's weights, as
precise BN computes them (training.batch_statistics): the first batches of the last epoch
the pair's first copy trained, so that its end is exactly that copy as a precise-BN
recipe evaluates it after its last epoch. Interpolated statistics (--bn=interpolate) are not the
statistics of the interpolated network's activations, whose variance shrinks between two
unaligned networks. Three numbers per pair and split, errors as fractions:

  barrier        the highest error on the path minus the mean error of its ends:
                 Frankle et al.'s instability, which their 2% threshold judges;
  inside         max over α of E(α) - ((1 - α)·E(0) + α·E(1)): the rise above the line
                 between the ends, which the ends' own gap cannot make;
  end gap        |E(1) - E(0)|.

A barrier that is half the end gap comes from the ends, not the path. The masks at k
are the ticket run's (one mask for every k: its own rewind point's) unless --mask_runs
names, per k, a run rewound to k (Frankle et al. §5 prune with rewinding to each k); the
report says which. The directory layout is in directory.py; the report, the interval
over pairs and the stable k are in analysis/stability_report.py.
"""

import dataclasses
import os

import numpy as np
from absl import logging

from lth_keras import artifacts, settings, steps, weights
from lth_keras.errors import SettingsError
from lth_keras.lottery import directory, levels
from lth_keras.lottery.directory import WEIGHTS, StabilityRun
from lth_keras.settings import Data, Model, Stability, Training

# The Data settings that fix the ticket run's splits: a stability run takes them as
# they were, so that its copies see the ticket's training, validation and test images.
SPLIT_SETTINGS = ("train_fraction", "val_fraction", "split")


def stability(chosen, given, verbose=True):
    """Runs (or resumes) the instability analysis that `chosen` say; returns the
    StabilityRun. `given`: the settings named explicitly; the rest of the recipe is
    the ticket run's."""
    from lth_keras.lottery import inputs

    settings.check(chosen)  # before the heavy imports: a bad setting is reported at once
    spec, run_settings = chosen[Stability], chosen[settings.Run]
    ticket_run, levels_chosen, chosen = _ticket_run(chosen, given)
    record = ticket_run.record()
    per_epoch = record.steps_per_epoch
    budget = _budget(spec, ticket_run, per_epoch)
    mask_runs = _mask_runs(spec, record, per_epoch, levels_chosen)
    rewind_points = _rewind_points(spec, ticket_run, per_epoch, budget, mask_runs)
    model_settings, training = chosen[Model], chosen[Training]
    # The data need no framework: missing or other data are reported before it starts.
    dataset = inputs.load_dataset(record.settings[settings.Pruning].source, chosen)
    if dataset.fingerprint() != record.dataset.fingerprint:
        raise SettingsError(f"the data under --data_dir differ from those {spec.tickets} was "
                            "found on (dataset fingerprint)")
    orders = data_orders(spec, training.seed)
    plans = [inputs.input_plan(dataset, {**chosen, Training: dataclasses.replace(
        training, seed=order)}, channels=record.channels) for order in orders]
    if plans[0].steps_per_epoch != per_epoch:
        raise SettingsError(f"an epoch has {plans[0].steps_per_epoch} steps here and "
                            f"{per_epoch} in {spec.tickets}: the batch size or the data "
                            "differ from the ticket run's")
    rt = inputs.engine(chosen)
    from lth_keras import models
    from lth_keras.training import Trainer

    output_dir = run_settings.output_dir or directory.stability_dir(ticket_run.path)
    run = StabilityRun(directory.process_directory(output_dir, rt))
    with rt.scope():
        model = models.build_model(model_settings.model,
                                   input_shape=(plans[0].image_size,) * 2 + (record.channels,),
                                   num_classes=dataset.num_classes, seed=training.seed,
                                   bn_momentum=model_settings.bn_momentum)
    tickets = {"path": os.path.abspath(ticket_run.path), "hparams_hash": record.hparams_hash,
               "source": record.dataset.name}
    annealed = [b for b in training.lr_boundaries if b * per_epoch < budget]
    masks = ({steps.label(k, per_epoch): os.path.abspath(r.path) for k, r in mask_runs.items()}
             or f"the ticket run's, rewound to epoch {ticket_run.rewind_epoch()}, at every k")
    with inputs.recorded(
            run, "stability", chosen, dataset, plans[0], rt,
            extra={"tickets": tickets, "levels": levels_chosen,
                   "rewind_points": [steps.label(k, per_epoch) for k in rewind_points],
                   "rewind_steps": rewind_points, "pairs": spec.pairs,
                   "copy_data_orders": list(orders), "budget_steps": budget,
                   "steps_per_epoch": per_epoch, "annealed_at_epochs": annealed,
                   "masks": masks},
            identity_extra={"tickets_hash": record.hparams_hash,
                            "data_orders": list(spec.data_orders)
                            or "the ticket run's seed + copy index",
                            "copies": "fixed budget", "budget_steps": budget,
                            "mask_runs": {str(k): r.record().hparams_hash
                                          for k, r in mask_runs.items()}},
            holds_results=run.holds_results):
        logging.info("copies train to step %d (%s)%s", budget, steps.text(budget, per_epoch),
                     "" if annealed else ": the learning rate is never annealed within it, "
                     "the copies end unconverged")
        # Each pair's first copy's trainer evaluates its paths (on its data order's batches).
        evaluators = {}
        for k in rewind_points:
            label = steps.label(k, per_epoch)
            source = mask_runs.get(k, ticket_run)
            theta = source.theta("k") if k in mask_runs else ticket_run.theta_at_step(k)
            for copy, (order, plan) in enumerate(zip(orders, plans)):
                copy_run = run.copy(label, copy)
                protocol = CopyTraining(copy_run, model, source, theta, order,
                                        first_step=k, last_step=budget)
                levels.train_levels(copy_run, protocol, levels_chosen, plan, rt, training,
                                    checkpoint_every=run_settings.checkpoint_every,
                                    verbose=verbose)
            for level in levels_chosen:
                for pair in range(spec.pairs):
                    if path_is_current(run, level, label, pair):
                        logging.info("level %d, k=%s, pair %d: path evaluated already, "
                                     "skipping", level, label, pair)
                        continue
                    if pair not in evaluators:
                        evaluators[pair] = Trainer(model, plans[2 * pair], training, rt,
                                                   verbose=False)
                    path = evaluate_path(run, level, label, pair, model, evaluators[pair],
                                         spec, last_epoch=(budget - 1) // per_epoch)
                    path.update(k_steps=k, budget_steps=budget,
                                mask_run=os.path.abspath(source.path))
                    artifacts.write_json(run.path_file(level, label, pair), path)
                    logging.info("level %d, k=%s, pair %d: error barrier %.2f%% on "
                                 "validation (inside the path %.2f%%, end gap %.2f%%), %.2f%% "
                                 "on test", level, label, pair,
                                 100 * path["barrier"]["val"], 100 * path["inside"]["val"],
                                 100 * path["end_gap"]["val"], 100 * path["barrier"]["test"])
    return run


def data_orders(spec, seed):
    """The copies' data-order seeds, two per pair: --data_orders, or the ticket run's seed
    + 0, 1, ..., 2·pairs - 1."""
    return tuple(spec.data_orders) or tuple(seed + i for i in range(2 * spec.pairs))


class CopyTraining(levels.Protocol):
    """A copy's starting points: m_L ⊙ θ_k, the mask of each level and one θ_k, trained
    from step k to the budget's step T."""

    arrays = WEIGHTS

    def __init__(self, run, model, ticket_run, theta, data_order, *, first_step, last_step):
        self.run, self.model, self.ticket_run = run, model, ticket_run
        self.theta, self.data_order = theta, data_order
        self.first_step, self.last_step = first_step, last_step

    def tag(self, level):
        return f"level {level}, k={self.run.k}, copy {self.run.copy}"

    def keeps(self, level):
        return levels.keep_or_remove_level(self.run, level, self.ticket_run.mask(level),
                                   f"training {self.tag(level)} again")

    def load_start(self, level):
        masks = self.ticket_run.mask(level)
        weights.load_ticket(self.model, self.theta, masks)
        return masks

    def fit_options(self, level):
        return {"first_step": self.first_step, "last_step": self.last_step}

    def record(self, level, masks):
        return {"k": self.run.k, "k_steps": self.first_step, "data_order": self.data_order,
                "mask_digest": weights.digest(masks)}


def interpolate(a, b, alpha, keep):
    """(1 - α)·a + α·b for every floating-point array but those in `keep` (a's)."""
    out = {}
    for path, value in a.items():
        if path in keep or not np.issubdtype(value.dtype, np.floating):
            out[path] = value
        else:
            out[path] = ((1 - alpha) * value + alpha * b[path]).astype(value.dtype)
    return out


def evaluate_path(run, level, k, pair, model, evaluator, spec, last_epoch):
    """The record of the path between pair `pair`'s two copies of level `level` at rewind
    point k (a label): validation and test loss and accuracy at each point, every point
    evaluated alike (statistics re-estimated on the first batches of `last_epoch` of
    `evaluator`'s plan, the pair's first copy's), the copies' own metrics, and per split
    the barrier, the barrier inside the path and the gap between the ends."""
    from lth_keras.training import batchnorm_layers

    copies = [run.copy(k, 2 * pair + i) for i in (0, 1)]
    ends = [c.weights(level) for c in copies]
    masks = weights.mask_paths(model)
    if any(not np.array_equal(ends[0][p], ends[1][p]) for p in masks):
        raise SettingsError(f"the copies of level {level} at k={k}, pair {pair} hold "
                            "different masks")
    reestimate = spec.bn == "reestimate" and bool(batchnorm_layers(model))
    alphas = np.linspace(0.0, 1.0, spec.points)
    points = []
    for i, alpha in enumerate(alphas):
        end = {0: ends[0], len(alphas) - 1: ends[1]}.get(i)
        weights.assign(model, end if end is not None
                       else interpolate(ends[0], ends[1], alpha, set(masks)))
        if reestimate:  # every point alike, the ends too
            evaluator.loop.recompute_batchnorm(last_epoch, spec.bn_batches)
        points.append({"alpha": float(alpha), "val": evaluator.evaluate("val"),
                       "test": evaluator.evaluate("test")})
    metrics = [c.metrics(level) for c in copies]
    return {"level": level, "k": k, "pair": pair,
            "density": metrics[0]["density"]["density"],
            "bn": spec.bn if batchnorm_layers(model) else "none (no BatchNormalization)",
            "bn_batches": spec.bn_batches, "bn_epoch": last_epoch, "points": points,
            "copies": [{"copy": c.copy, "data_order": m["data_order"], "val": m["val"],
                        "test": m["test"], "epochs": m["epochs"], "budget": m.get("budget"),
                        "digest": weights.digest(end)}
                       for c, m, end in zip(copies, metrics, ends)],
            **path_summary(alphas, points)}


def path_summary(alphas, points):
    """{"barrier", "inside", "end_gap"}: each {split: value} of a path's points."""
    out = {"barrier": {}, "inside": {}, "end_gap": {}}
    for split in ("val", "test"):
        accuracies = [p[split]["accuracy"] for p in points]
        out["barrier"][split] = error_barrier(accuracies)
        out["inside"][split] = inside_barrier(alphas, accuracies)
        out["end_gap"][split] = abs(accuracies[0] - accuracies[-1])
    return out


def error_barrier(accuracies):
    """Frankle et al.'s: the highest error along a path minus the mean error of its two
    ends (a fraction)."""
    errors = [1.0 - a for a in accuracies]
    return max(errors) - (errors[0] + errors[-1]) / 2


def inside_barrier(alphas, accuracies):
    """The highest rise of the error above the straight line between the ends' errors:
    max over α of E(α) - ((1 - α)·E(0) + α·E(1)); 0 at the ends, so never negative."""
    errors = [1.0 - a for a in accuracies]
    return max(e - ((1 - a) * errors[0] + a * errors[-1]) for a, e in zip(alphas, errors))


def path_is_current(run, level, k, pair):
    """Whether the path of (level, k, pair) was evaluated between the copies that are there
    now (a copy trained again since, after its ticket level was recomputed, is not)."""
    if not os.path.exists(run.path_file(level, k, pair)):
        return False
    try:
        path = artifacts.read_json(run.path_file(level, k, pair))
        return [c["digest"] for c in path["copies"]] == [
            weights.digest(run.copy(k, 2 * pair + i).weights(level)) for i in (0, 1)]
    except (artifacts.ArtifactError, KeyError, TypeError):
        return False


def _ticket_run(chosen, given):
    """(ticket run, levels, `chosen` with the ticket run's architecture, splits and
    recipe), read before anything heavy is imported."""
    from lth_keras.lottery import inputs

    spec = chosen[Stability]
    ticket_run, chosen, overrides = inputs.open_tickets(chosen, given, spec.tickets,
                                                        "copies' recipe")
    if "seed" in overrides:
        raise SettingsError("--seed is the ticket run's (it fixes the validation split); the "
                            "copies' data orders are --data_orders")
    recorded = ticket_run.record().settings[Data]
    chosen[Data] = dataclasses.replace(chosen[Data], **{
        name: getattr(recorded, name) for name in SPLIT_SETTINGS})
    return ticket_run, inputs.chosen_levels(ticket_run, spec.levels, spec.tickets), chosen


def _budget(spec, ticket_run, per_epoch):
    """T in steps: --budget, or the steps level 0 of the ticket run trained."""
    if spec.budget:
        return steps.parse(spec.budget, per_epoch)
    if not ticket_run.is_finished(0):
        raise SettingsError(f"{spec.tickets} has not finished level 0, whose steps are the "
                            "copies' budget: finish it, or give --budget")
    return ticket_run.metrics(0)["epochs"] * per_epoch  # a finished level records its epochs


def _rewind_points(spec, ticket_run, per_epoch, budget, mask_runs):
    """The rewind points to try, in steps: --rewind_points, each held by the ticket run (or
    a mask run rewound there) and before the budget's end, or every one they hold."""
    held = sorted(set(ticket_run.saved_steps()) | set(mask_runs))
    wanted = ([steps.parse(k, per_epoch) for k in spec.rewind_points] if spec.rewind_points
              else held)
    unused = [k for k in mask_runs if k not in wanted]
    if unused:  # a mask run given and silently left out would mislead
        raise SettingsError(f"--mask_runs: rewind points "
                            f"{', '.join(steps.text(k, per_epoch) for k in unused)} are not "
                            "among --rewind_points: add them, or leave those runs out")
    absent = [k for k in wanted if k not in held]
    if absent:
        names = ", ".join(steps.text(k, per_epoch) for k in absent)
        raise SettingsError(
            f"{ticket_run.path} holds level 0's weights at "
            f"{', '.join(steps.text(k, per_epoch) for k in held)} only, not {names}: find "
            "tickets with --save_epochs (epochs) or --save_steps (steps) (a finished level 0 "
            f"must be trained again: move {directory.level_name(0)} and the later levels away)")
    late = [k for k in wanted if k >= budget]
    if late:
        raise SettingsError(f"rewind points {', '.join(steps.text(k, per_epoch) for k in late)} "
                            f"are not before the budget's end, step {budget}")
    return sorted(set(wanted))


def _mask_runs(spec, record, per_epoch, chosen):
    """{k in steps: the TicketRun rewound to k} of --mask_runs, each checked to be the ticket
    run's search but for its rewind epoch, and finished at every level the analysis uses."""
    out = {}
    for item in spec.mask_runs:
        epoch, path = item.split(":", 1)
        run = directory.open_ticket_run(path)
        other = run.record()
        if run.rewind_epoch() != int(epoch):
            raise SettingsError(f"--mask_runs: {path} is rewound to epoch "
                                f"{run.rewind_epoch()}, not {epoch}")
        differ = sorted(name for name in set(record.hparams) | set(other.hparams)
                        if name != "rewind_epoch"
                        and record.hparams.get(name) != other.hparams.get(name))
        if differ or other.dataset.fingerprint != record.dataset.fingerprint:
            raise SettingsError(f"--mask_runs: {path} differs from {spec.tickets} in more than "
                                f"its rewind epoch ({', '.join(differ) or 'its data'})")
        missing = [level for level in chosen if not run.is_finished(level)]
        if missing:
            raise SettingsError(f"--mask_runs: {path} has not finished levels "
                                f"{','.join(map(str, missing))}")
        out[int(epoch) * per_epoch] = run
    return out
