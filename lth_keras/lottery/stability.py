"""Instability analysis (Frankle, Dziugaite, Roy & Carbin 2020, "Linear mode
connectivity and the lottery ticket hypothesis"): is training a ticket from θ_k
stable to SGD noise?

For a level L and a rewind point k (an epoch of level 0; 0 is θ_0), two copies of
m_L ⊙ θ_k are trained with the ticket run's recipe, each on a data order of its own
(its input plan's seed: batch order and crops), through the one level loop. The
network is then evaluated at `points` evenly spaced points of the straight line
between the two trained copies, on validation and test. The error barrier is the
highest error on that path minus the mean error of its two ends: near 0 when the
copies ended in one linearly connected basin, so that the outcome of training was
fixed by k already. The smallest k whose barrier is below a threshold is the
earliest rewind point from which the ticket trains stably (analysis/stability.py).

What each point holds: every weight is (1 - α)·θ_A + α·θ_B, but the masks, which
both copies share, and the variables that are not floating point. The ends are the
two copies as they were trained. BatchNormalization's moving statistics at the
inner points are re-estimated by default: after the interpolated weights are
loaded, they become the average of the statistics of the first `bn_batches`
training batches (copy A's first epoch) at those weights, as precise BN computes
them (training.batch_statistics). Interpolated statistics (--bn=interpolate) are
not the statistics of the interpolated network's activations, whose variance
shrinks between two unaligned networks; a barrier measured with them partly
measures that mismatch. The directory layout is in directory.py.
"""

import dataclasses
import os

import numpy as np
from absl import logging

from lth_keras import artifacts, settings, weights
from lth_keras.errors import SettingsError
from lth_keras.lottery import directory, levels, transfer
from lth_keras.lottery.directory import WEIGHTS, StabilityRun
from lth_keras.settings import Data, Model, Stability, Training

# The Data settings that fix the ticket run's splits: a stability run takes them as
# they were, so that its copies see the ticket's training, validation and test images.
SPLIT_SETTINGS = ("train_fraction", "val_fraction", "split")


def stability(groups, given, verbose=True):
    """Runs (or resumes) the instability analysis that `groups` say; returns the
    StabilityRun. `given`: the settings named explicitly; the rest of the recipe is
    the ticket run's."""
    from lth_keras.lottery import inputs

    settings.check(groups)  # before the heavy imports: a bad setting is reported at once
    spec, run_settings = groups[Stability], groups[settings.Run]
    ticket_run, chosen, groups = _ticket_run(groups, given)
    rewind_points = _rewind_points(spec, ticket_run)
    config = ticket_run.config()
    model_settings, training = groups[Model], groups[Training]
    # The data need no framework: missing or other data are reported before it starts.
    dataset = inputs.load_dataset(config["settings"]["pruning"]["source"], groups)
    if dataset.fingerprint() != config["dataset"]["fingerprint"]:
        raise SettingsError(f"the data under --data_dir differ from those {spec.tickets} was "
                            "found on (dataset fingerprint)")
    orders = data_orders(spec, training.seed)
    channels = config["input"].get("channels", 3)
    plans = [inputs.input_plan(dataset, {**groups, Training: dataclasses.replace(
        training, seed=order)}, channels=channels) for order in orders]
    inputs.start_framework()
    from lth_keras import models
    from lth_keras.training import Trainer

    rt = inputs.runtime(groups)
    output_dir = run_settings.output_dir or directory.default_dir(
        "stability", os.path.basename(os.path.normpath(ticket_run.path)))
    run = StabilityRun(directory.process_directory(output_dir, rt))
    with rt.scope():
        model = models.build_model(model_settings.model,
                                   input_shape=(plans[0].image_size,) * 2 + (channels,),
                                   num_classes=dataset.num_classes, seed=training.seed,
                                   bn_momentum=model_settings.bn_momentum)
    tickets = {"path": os.path.abspath(ticket_run.path), "hparams_hash": config["hparams_hash"],
               "source": config["dataset"]["name"]}
    with directory.locked(run.path):
        directory.start(run.config_path, kind="stability", groups=groups, dataset=dataset,
                        plan=plans[0], runtime=rt,
                        extra={"tickets": tickets, "levels": chosen,
                               "rewind_points": rewind_points},
                        identity_extra={"tickets_hash": directory.run_id(config),
                                        "data_orders": list(orders)},
                        holds_results=run.holds_results)
        logging.info("run directory: %s (engine: %s)", output_dir, rt.name)
        # Copy A's trainer evaluates the paths: its compiled steps exist by then.
        evaluator = None
        for k in rewind_points:
            theta = ticket_run.theta_at(k)
            for copy, (order, plan) in enumerate(zip(orders, plans)):
                copy_run = run.copy(k, copy)
                protocol = CopyTraining(copy_run, model, ticket_run, theta, order)
                levels.train_levels(copy_run, protocol, chosen, plan, rt, training,
                                    checkpoint_every=run_settings.checkpoint_every,
                                    verbose=verbose)
            for level in chosen:
                if path_is_current(run, level, k):
                    logging.info("level %d, k=%d: path evaluated already, skipping", level, k)
                    continue
                evaluator = evaluator or Trainer(model, plans[0], training, rt, verbose=False)
                path = evaluate_path(run, level, k, model, evaluator, spec)
                artifacts.write_json(run.path_file(level, k), path)
                logging.info("level %d, k=%d: error barrier %.2f%% on validation, %.2f%% on "
                             "test", level, k, 100 * path["barrier"]["val"],
                             100 * path["barrier"]["test"])
    return run


def data_orders(spec, seed):
    """The copies' data-order seeds: --data_orders, or the ticket run's seed (copy A at
    the run's own k is then that level of the run) and the next."""
    return tuple(spec.data_orders) or (seed, seed + 1)


class CopyTraining(levels.Protocol):
    """A copy's starting points: m_L ⊙ θ_k, the mask of each level and one θ_k."""

    arrays = WEIGHTS

    def __init__(self, run, model, ticket_run, theta, data_order):
        self.run, self.model, self.ticket_run = run, model, ticket_run
        self.theta, self.data_order = theta, data_order

    def tag(self, level):
        return f"level {level}, k={self.run.k}, copy {'AB'[self.run.copy]}"

    def keeps(self, level):
        return levels.trained_with(self.run, level, self.ticket_run.mask(level),
                                   f"training {self.tag(level)} again")

    def load_start(self, level):
        masks = self.ticket_run.mask(level)
        weights.load_ticket(self.model, self.theta, masks)
        return masks

    def record(self, level, masks):
        return {"k": self.run.k, "data_order": self.data_order,
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


def evaluate_path(run, level, k, model, evaluator, spec):
    """The record of the path between level `level`'s two copies at rewind point k:
    validation and test loss and accuracy at each point, the ends' own metrics, and
    the error barriers."""
    from lth_keras.training import batchnorm_layers

    copies = [run.copy(k, copy) for copy in (0, 1)]
    ends = [c.weights(level) for c in copies]
    masks = weights.mask_paths(model)
    if any(not np.array_equal(ends[0][p], ends[1][p]) for p in masks):
        raise SettingsError(f"the copies of level {level} at k={k} hold different masks")
    statistics = {v.path for layer in batchnorm_layers(model)
                  for v in (layer.moving_mean, layer.moving_variance)}
    # Re-estimated statistics are overwritten after loading: interpolating them is moot.
    alphas = np.linspace(0.0, 1.0, spec.points)
    points = []
    for i, alpha in enumerate(alphas):
        inner = 0 < i < len(alphas) - 1
        end = ends[0] if i == 0 else ends[1]
        weights.assign(model, interpolate(ends[0], ends[1], alpha, set(masks)) if inner
                       else end)
        if inner and spec.bn == "reestimate" and statistics:
            evaluator.loop.recompute_batchnorm(0, spec.bn_batches)
        points.append({"alpha": float(alpha), "val": evaluator.evaluate("val"),
                       "test": evaluator.evaluate("test")})
    metrics = [c.metrics(level) for c in copies]
    return {"level": level, "k": k, "density": metrics[0]["density"]["density"],
            "bn": spec.bn if statistics else "none (no BatchNormalization)",
            "bn_batches": spec.bn_batches, "points": points,
            "copies": [{"data_order": m["data_order"], "val": m["val"], "test": m["test"],
                        "epochs": m["epochs"], "best_epoch": m["best_epoch"],
                        "digest": weights.digest(end)} for m, end in zip(metrics, ends)],
            "barrier": {split: error_barrier([p[split]["accuracy"] for p in points])
                        for split in ("val", "test")}}


def error_barrier(accuracies):
    """The highest error along a path minus the mean error of its two ends (a fraction)."""
    errors = [1.0 - a for a in accuracies]
    return max(errors) - (errors[0] + errors[-1]) / 2


def path_is_current(run, level, k):
    """Whether the path of (level, k) was evaluated between the copies that are there now
    (a copy trained again since, after its ticket level was recomputed, is not)."""
    if not os.path.exists(run.path_file(level, k)):
        return False
    try:
        path = artifacts.read_json(run.path_file(level, k))
        return [c["digest"] for c in path["copies"]] == [
            weights.digest(run.copy(k, copy).weights(level)) for copy in (0, 1)]
    except (artifacts.ArtifactError, KeyError, TypeError):
        return False


def _ticket_run(groups, given):
    """(ticket run, levels, groups with the ticket run's architecture, splits and recipe),
    read before anything heavy is imported."""
    spec = groups[Stability]
    ticket_run, config = directory.open_ticket_run(spec.tickets)
    groups, overrides = transfer.from_tickets(groups, config["hparams"], given, spec.tickets)
    if "seed" in overrides:
        raise SettingsError("--seed is the ticket run's (it fixes the validation split); the "
                            "copies' data orders are --data_orders")
    if overrides:
        logging.warning("the copies' recipe differs from the ticket run's: %s", ", ".join(
            f"{name} {v['transfer']} (tickets: {v['tickets']})" for name, v in overrides.items()))
    recorded = config.get("settings", {}).get("data", {})
    groups[Data] = dataclasses.replace(groups[Data], **{
        name: tuple(recorded[name]) if isinstance(recorded[name], list) else recorded[name]
        for name in SPLIT_SETTINGS if name in recorded})
    chosen = transfer.chosen_levels(ticket_run, spec.levels, spec.tickets)
    return ticket_run, chosen, groups


def _rewind_points(spec, ticket_run):
    """The rewind points to try: --rewind_points, each held by the ticket run, or all."""
    held = ticket_run.saved_epochs()
    if not spec.rewind_points:
        return held
    absent = [k for k in spec.rewind_points if k not in held]
    if absent:
        raise SettingsError(
            f"{ticket_run.path} holds level 0's weights after epochs {','.join(map(str, held))} "
            f"only, not {','.join(map(str, absent))}: find tickets with --save_epochs="
            f"{','.join(map(str, absent))} (a finished level 0 must be trained again: move "
            f"{directory.level_name(0)} and the later levels away)")
    return sorted(set(spec.rewind_points))
