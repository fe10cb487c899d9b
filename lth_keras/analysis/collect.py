"""Reading run directories into RunRecords, refusing malformed ones.

A run directory is any directory with a config.json (find_tickets or transfer,
laid out as lth_keras/lottery/directory.py says). Only finished levels (metrics.json exists)
are read; a level still in progress is simply not there yet. Anything that
does not parse raises AnalysisError naming the file, before any output is
written.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os

from lth_keras import artifacts
from lth_keras.settings import Data, Model, Training
from lth_keras.lottery.directory import (CONFIG, LEVEL_NAME, LEVELS, METRICS, RunDirectory,
                                         StabilityRun, level_name)
from lth_keras.lottery.fine_tuning import CONDITIONS

KINDS = ("find_tickets", "transfer")
STABILITY = "stability"  # a stability run: read by analysis/stability_report.py
TICKETS = "tickets"  # the condition name given to find_tickets runs
# The transfer settings that make its condition (rewind, final, reinit, random, ...):
# the condition stands for them, so that cells of two conditions compare on the rest.
CONDITION_SETTINGS = ("condition", "init", "reinit", "scratch", "random_mask")


class AnalysisError(artifacts.ArtifactError):
    """A run directory that cannot be analysed; the message names the path."""


@dataclasses.dataclass(frozen=True)
class Level:
    """The metrics of one finished level."""

    level: int
    density: float  # fraction of prunable weights alive
    fraction_pruned: float  # 1 - density, over prunable weights
    fraction_pruned_all_params: float  # over every parameter of the model
    val_accuracy: float
    test_accuracy: float
    layer_density: dict  # {kernel path: density}; empty when not recorded
    best_epoch: int = None
    epochs: int = None
    noisy_stop: bool = None  # early stopping fired on noise (None: not recorded, < 0.5)
    images: int = None      # what training the level cost (None: not recorded)
    flops: float = None     # training FLOPs, dense kernels
    seconds: float = None


@dataclasses.dataclass
class RunRecord:
    """One run directory.

    `dataset` is the dataset trained on: the searched dataset of a find_tickets
    run, the target of a transfer run. `source` is where the tickets come from
    (for find_tickets, the dataset itself; None for scratch without tickets).
    `setting` is everything that defines the result except the seeds (and, for a
    transfer, the settings that make its condition, which `condition` names), so
    runs with equal settings are replicates of one experiment. A replicate is
    (tickets_seed, seed): a transfer's ticket run's seed and its own, which a grid
    with --transfer_seeds varies independently.
    """

    path: str
    kind: str
    condition: str  # TICKETS for find_tickets; else one of lottery.fine_tuning.CONDITIONS
    dataset: str
    source: str | None
    seed: int
    model: str
    image_size: int
    train_fraction: float
    hparams_hash: str
    setting: dict
    levels: dict  # {level: Level}, finished levels only
    tickets_hash: str | None = None  # transfer: hparams_hash of the ticket run
    tickets_path: str | None = None  # transfer: where the ticket run was
    tickets_seed: int | None = None  # the ticket run's seed (find_tickets: its own)

    @property
    def replicate(self):
        """(tickets seed, seed): what pairs this run with the runs of other conditions."""
        return (self.seed if self.tickets_seed is None else self.tickets_seed, self.seed)

    @property
    def ids(self):
        """The hashes a transfer may name this run by."""
        return {self.hparams_hash}

    @property
    def name(self):
        return os.path.basename(os.path.normpath(self.path))


def find_run_dirs(roots):
    """Every directory under `roots` (a list of paths) holding a config.json.

    A run directory is not searched further (its levels/ and tensorboard/ hold
    no runs). Symbolic links are followed, so a folder of links to runs works;
    a directory reached twice (two roots, a link loop) is visited once.
    """
    found, visited = [], set()
    for root in roots:
        if not os.path.isdir(root):
            raise AnalysisError(f"{root}: no such directory")
        for directory, subdirs, files in os.walk(root, followlinks=True):
            real = os.path.realpath(directory)
            if real in visited:
                subdirs[:] = []
                continue
            visited.add(real)
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            if CONFIG in files:
                subdirs[:] = []
                found.append(os.path.normpath(directory))
    return found


def collect_runs(roots, stability=None):
    """Reads every find_tickets and transfer run under `roots`; the ticket settings of
    transfers are resolved. The stability runs found are appended to `stability` (a
    list), as StabilityRun directories (analysis/stability_report.py reads them)."""
    paths = find_run_dirs(roots)
    if not paths:
        raise AnalysisError(f"no run directories (config.json) under {', '.join(roots)}")
    found = [p for p in paths if _kind(p) == STABILITY]
    if stability is not None:
        stability.extend(StabilityRun(p) for p in found)
    runs = [read_run(p) for p in paths if p not in found]
    resolve_ticket_settings(runs)
    return runs


def _kind(path):
    return _record(path).kind


def _record(path):
    """The typed record of the run directory at `path`, or AnalysisError naming it."""
    directory = RunDirectory(path)
    if not os.path.exists(directory.config_path):
        raise AnalysisError(f"{path} is not a run directory (no config.json)")
    try:
        return directory.record()
    except artifacts.ArtifactError as e:
        raise AnalysisError(f"{directory.config_path}: malformed run directory: {e}") from None


def read_run(path):
    """The RunRecord of `path`; AnalysisError if config.json or a level does not parse."""
    config_path = RunDirectory(path).config_path
    record = _record(path)
    kind = record.kind
    if kind not in KINDS:
        raise AnalysisError(f"{config_path}: unknown run kind {kind!r} (expected "
                            f"{' or '.join(KINDS)})")
    seed = record.settings[Training].seed
    data = record.settings[Data]
    # The dataset enters the setting by name: the --source / --target flag may spell
    # the same data as a name or a folder path.
    common = dict(path=path, kind=kind, dataset=record.dataset.name, seed=seed,
                  hparams_hash=record.hparams_hash, train_fraction=data.train_fraction)
    if kind == "find_tickets":
        model = record.settings[Model]
        run = RunRecord(condition=TICKETS, source=record.dataset.name, model=model.model,
                        tickets_seed=seed, image_size=model.image_size,
                        setting={"dataset": record.dataset.name,
                                 **_without(record.hparams, "seed", "source")},
                        levels={}, **common)
    else:
        condition = record.condition
        if condition not in CONDITIONS:
            raise AnalysisError(f"{config_path}: unknown condition {condition!r} (expected one "
                                f"of {', '.join(CONDITIONS)})")
        if record.model is None:
            raise AnalysisError(f"{config_path}: missing key model")
        tickets = record.tickets
        if tickets is None and condition != "scratch":
            raise AnalysisError(f"{config_path}: a {condition} run must name its tickets "
                                "(tickets is null)")
        model = record.model
        # Until the ticket run is resolved (resolve_ticket_settings), the tickets
        # are known by their source and architecture.
        ticket_setting = None if tickets is None else {
            "source": tickets.source, "model": model.model, "image_size": model.image_size}
        # The transfer's θ_0 and tickets come from the ticket run's seed (model.seed).
        run = RunRecord(condition=condition, source=tickets and tickets.source,
                        model=model.model, image_size=model.image_size,
                        tickets_seed=model.seed,
                        setting={"dataset": record.dataset.name,
                                 **_without(record.hparams, "seed", "tickets_hash", "target",
                                            *CONDITION_SETTINGS),
                                 "tickets": ticket_setting},
                        levels={}, tickets_hash=tickets and tickets.hparams_hash,
                        tickets_path=tickets and tickets.path, **common)
    run.levels = _read_levels(run)
    return run


def resolve_ticket_settings(runs):
    """Puts the ticket run's own settings (minus its seed) into each transfer's setting.

    Tickets from runs that differ in more than the seed (another prune rate,
    learning rate, train fraction...) are then different experiments. The
    ticket run is looked up among `runs` by hash, else at the path the transfer
    recorded; if neither is readable the source and architecture stand in.
    """
    by_hash = {h: r for r in runs if r.kind == "find_tickets" for h in r.ids}
    for run in runs:
        if run.kind != "transfer" or run.tickets_hash is None:
            continue
        ticket = by_hash.get(run.tickets_hash)
        if ticket is None:
            ticket = _read_ticket_config(run)
        if ticket is not None:
            run.setting["tickets"] = ticket.setting


def _read_ticket_config(run):
    """The ticket run a transfer recorded, if it is still there and readable."""
    path = run.tickets_path
    if not isinstance(path, str) or not os.path.exists(RunDirectory(path).config_path):
        return None
    try:
        ticket = read_run(path)
    except artifacts.ArtifactError:
        return None  # not one of the runs analysed: its damage is not ours to report
    return ticket if run.tickets_hash in ticket.ids else None


def _read_levels(run):
    root = RunDirectory(run.path).file(LEVELS)
    if not os.path.isdir(root):
        return {}
    levels = {}
    for entry in sorted(os.listdir(root)):
        if entry.startswith("."):
            continue
        where = os.path.join(root, entry)
        match = LEVEL_NAME.fullmatch(entry)
        if not match or entry != level_name(int(match.group(1))) or not os.path.isdir(where):
            raise AnalysisError(f"{where}: not a level directory (expected levels/level_LL/)")
        level = int(match.group(1))
        metrics_path = os.path.join(where, METRICS)
        if os.path.exists(metrics_path):  # otherwise still in progress
            levels[level] = _read_level(metrics_path, level, run)
    return levels


def _read_level(path, level, run):
    metrics = _read_json(path)
    field = _Fields(path, metrics)
    if field.get("level", int) != level:
        raise AnalysisError(f"{path}: says level {metrics['level']} but lies in level_{level:02d}")
    if run.kind == "transfer" and field.get("condition", str) != run.condition:
        raise AnalysisError(f"{path}: condition {metrics['condition']!r} but the run's "
                            f"config.json says {run.condition!r}")
    density = _Fields(path, field.get("density", dict), prefix="density.")
    val = _Fields(path, field.get("val", dict), prefix="val.")
    test = _Fields(path, field.get("test", dict), prefix="test.")
    layers = metrics["density"].get("layers", {})
    if not isinstance(layers, dict):
        raise AnalysisError(f"{path}: density.layers is not a mapping")
    layer_density = {}
    for name, info in layers.items():
        layer_density[name] = _Fields(path, info, prefix=f"density.layers.{name}.").get(
            "density", numbers.Real)
    accuracy = {split: float(fields.get("accuracy", numbers.Real))
                for split, fields in (("val", val), ("test", test))}
    for split, value in accuracy.items():
        if not 0 <= value <= 1:  # NaN included: one such run would blank a whole contrast
            raise AnalysisError(f"{path}: {split}.accuracy is {value}, not in [0, 1]")
    noisy = metrics.get("noisy_stop")
    cost = metrics.get("cost") if isinstance(metrics.get("cost"), dict) else {}
    flops = cost.get("training_flops") if isinstance(cost.get("training_flops"), dict) else {}
    return Level(level=level, density=float(density.get("density", numbers.Real)),
                 fraction_pruned=float(density.get("fraction_pruned", numbers.Real)),
                 fraction_pruned_all_params=float(
                     density.get("fraction_pruned_all_params", numbers.Real)),
                 val_accuracy=accuracy["val"], test_accuracy=accuracy["test"],
                 layer_density=layer_density, best_epoch=metrics.get("best_epoch"),
                 epochs=metrics.get("epochs"),
                 noisy_stop=noisy if isinstance(noisy, bool) else None,
                 images=cost.get("images"), flops=flops.get("dense"),
                 seconds=cost.get("seconds"))


def _read_json(path):
    try:
        return artifacts.read_json(path)
    except artifacts.ArtifactError as e:
        raise AnalysisError(f"{path}: malformed run directory: not readable JSON ({e.__cause__})")


class _Fields:
    """Typed access to a JSON object; a missing or mistyped key is an AnalysisError."""

    def __init__(self, path, obj, prefix=""):
        if not isinstance(obj, dict):
            raise AnalysisError(f"{path}: {prefix.rstrip('.') or 'the file'} is not a JSON "
                                "object")
        self.path, self.obj, self.prefix = path, obj, prefix

    def get(self, key, types):
        if key not in self.obj:
            raise AnalysisError(f"{self.path}: missing key {self.prefix}{key}")
        value = self.obj[key]
        # JSON true/false are Python bools, which are also Integral: not a number here.
        if isinstance(value, bool) or not isinstance(value, types):
            raise AnalysisError(f"{self.path}: {self.prefix}{key} has an unexpected value "
                                f"{json.dumps(value)[:60]}")
        return value


def _without(mapping, *keys):
    return {k: v for k, v in mapping.items() if k not in keys}
