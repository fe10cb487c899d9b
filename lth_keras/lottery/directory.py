"""A run directory: its layout on disk, its record, its identity and its lock.

Every path of a run is spelled here, and everything that reads runs (the level
loop, transfers, the grid, analysis, export) reads through it:

  config.json               every setting, the run's identity and its hash, versions,
                            hardware, the dataset summary and the input normalisation
  theta_0.npz, theta_k.npz  find_tickets: weights at initialisation and after epoch k
  theta_epoch_EE.npz        find_tickets --save_epochs: level 0's weights after epoch E
  theta_step_SSSSSS.npz     find_tickets --save_steps: level 0's weights after step S
  levels/level_LL/          metrics.json (written last: the level is finished), and
                            find_tickets: mask.npz (m_L, bool), theta_i.npz (θ_i(L));
                            transfer: weights.npz (the fine-tuned model);
                            checkpoint.npz only while the level is in progress
  summary.csv, summary.md   one row per finished level
  tensorboard/level_LL/     curves
  .lock                     held while a process writes the directory

A stability run (instability analysis of a ticket run's levels) holds config.json,
its lock and:

  k_K/copy_C/               a copy's run directory per rewind point k and copy C (pair
                            C // 2): levels/level_LL/ (weights.npz, metrics.json),
                            summary, tensorboard, as the level loop writes them; K is
                            the point's label, "02" (epoch 2) or "040it" (step 40)
  paths/level_LL_k_K_pair_P.json   the linear path between pair P's two copies, evaluated
  stability.csv, stability.pairs.csv, stability.md, stability.png
                            its report (analysis/stability_report.py)

A run's identity is its result-defining settings that differ from their defaults
and the data fingerprint; a re-run into the same directory must have the same
identity, or it is refused (`start`). Records of an older format are refused.

config.json is read here and nowhere else: a run's `record()` is a Record, its settings
the settings dataclasses and its parts typed (tests/test_structure.py keeps it so).
"""

import contextlib
import dataclasses
import os
import re

from absl import logging

from lth_keras import artifacts, settings
from lth_keras.errors import ArtifactError, RunMismatchError, SettingsError, UserError

OUTPUT_ROOT = "outputs"

CONFIG = "config.json"
THETA_0, THETA_K = "theta_0.npz", "theta_k.npz"
THETA_EPOCH = re.compile(r"theta_epoch_(\d{2,})\.npz")
THETA_STEP = re.compile(r"theta_step_(\d{6,})\.npz")
LEVELS = "levels"
# A level's directory: level_LL, two digits at least (levels/level_07, level_123).
LEVEL_NAME = re.compile(r"level_(\d{2,})")
MASK, THETA_I, WEIGHTS = "mask.npz", "theta_i.npz", "weights.npz"
METRICS, CHECKPOINT = "metrics.json", "checkpoint.npz"
SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"
PATHS = "paths"
PATH_NAME = re.compile(r"level_(\d{2,})_k_(\d{2,}|\d{3,}it)_pair_(\d+)\.json")
STABILITY_CSV, STABILITY_MD, STABILITY_PNG = "stability.csv", "stability.md", "stability.png"
STABILITY_PAIRS_CSV = "stability.pairs.csv"  # a row per pair of copies
TENSORBOARD = "tensorboard"
LOCK_FILE = ".lock"
# An experiment grid's record, at its root (its primary level, named before it ran).
GRID_RECORD = "grid.json"

# What every finished level's metrics.json records.
METRICS_KEYS = ("level", "density", "start_digest", "history", "best_epoch", "epochs", "val",
                "test")

# What a level cost (metrics.json "cost"), in the summaries; empty for levels trained
# before it was recorded.
COST_COLUMNS = ("images", "seconds", "training_flops", "training_flops_masked")
SUMMARY_COLUMNS = {
    "find_tickets": ("level", "density", "fraction_pruned", "fraction_pruned_all_params",
                     "val_accuracy", "val_loss", "test_accuracy", "test_loss", "best_epoch",
                     "epochs", *COST_COLUMNS),
    "transfer": ("level", "condition", "density", "fraction_pruned", "val_accuracy",
                 "val_loss", "test_accuracy", "test_loss", "best_epoch", "epochs",
                 *COST_COLUMNS),
    "stability": ("level", "density", "fraction_pruned", "val_accuracy", "val_loss",
                  "test_accuracy", "test_loss", "best_epoch", "epochs", *COST_COLUMNS),
}


# Records this version reads: written by lth_keras 0.4 or later.
OLDEST_READABLE = (0, 4)


@dataclasses.dataclass(frozen=True)
class DatasetRecord:
    """The data a run trained on, as its record summarises them."""
    name: str
    num_classes: int
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """The network a transfer loads its tickets into (architecture.model_config): the
    ticket run's model, input, source classes and θ_0's seed."""
    model: str
    image_size: int
    channels: int
    source_classes: int
    seed: int
    bn_momentum: float

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TicketsRecord:
    """The ticket run a transfer or stability run read."""
    path: str
    hparams_hash: str
    source: str


@dataclasses.dataclass(frozen=True)
class StabilityRecord:
    """What a stability run analyses: its levels and rewind points, its copies' budget."""
    levels: tuple
    rewind_points: tuple  # labels ("02", "040it")
    rewind_steps: tuple
    pairs: int
    budget_steps: int
    steps_per_epoch: int
    annealed_at_epochs: tuple
    masks: object  # {k label: mask run path}, or a sentence: one mask for every k


@dataclasses.dataclass(frozen=True)
class Record:
    """A run's config.json, read and typed: what code outside this module may know of it."""
    kind: str
    lth_keras: str
    hparams: dict          # the result-defining values its identity hashes
    hparams_hash: str
    settings: dict         # {settings group: object}: every setting it ran with
    dataset: DatasetRecord
    steps_per_epoch: int
    channels: int          # the input's channels (a transfer feeds its ticket's)
    replicas: int
    engine: str
    condition: str = None            # transfer
    tickets: TicketsRecord = None    # transfer, stability
    model: ModelRecord = None        # transfer
    levels: tuple = None             # transfer: the levels it fine-tunes
    stability: StabilityRecord = None


class _Reader:
    """Typed access to a JSON object of a record; a missing or mistyped key is an
    ArtifactError naming the file and the key."""

    def __init__(self, path, obj, prefix=""):
        if not isinstance(obj, dict):
            raise ArtifactError(f"{path}: {prefix.rstrip('.') or 'the file'} is not a JSON object")
        self.path, self.obj, self.prefix = path, obj, prefix

    def get(self, key, types, default=dataclasses.MISSING):
        if key not in self.obj:
            if default is not dataclasses.MISSING:
                return default
            raise ArtifactError(f"{self.path}: missing key {self.prefix}{key}")
        value = self.obj[key]
        # JSON true/false are Python bools, which are also Integral: not a number here.
        if (isinstance(value, bool) and bool not in _as_tuple(types)) or not isinstance(
                value, types):
            raise ArtifactError(f"{self.path}: {self.prefix}{key} has an unexpected value "
                                f"{str(value)[:60]}")
        return value

    def part(self, key, default=dataclasses.MISSING):
        value = self.get(key, dict, default)
        return value if value is None else _Reader(self.path, value, f"{self.prefix}{key}.")


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _version(text):
    try:
        return tuple(int(x) for x in str(text).split(".")[:2])
    except ValueError:
        return (0, 0)


def _written_by(config):
    environment = config.get("environment")
    return (environment.get("lth_keras", "before 0.2") if isinstance(environment, dict)
            else "before 0.2")


def _too_old(config_path, config):
    """The one line that refuses a record written before OLDEST_READABLE, or None."""
    written_by = _written_by(config)
    if "identity" in config and _version(written_by) >= OLDEST_READABLE:
        return None
    return (f"{os.path.dirname(config_path)} was written by lth_keras {written_by}; this "
            f"version reads runs of {'.'.join(map(str, OLDEST_READABLE))} and later: move it "
            "away or run again into another --output_dir")


def read_record(config_path, config):
    """The Record of a parsed config.json; ArtifactError (one line) when it is malformed,
    or written by a version before OLDEST_READABLE."""
    import numbers

    top = _Reader(config_path, config)
    written_by = _written_by(config)
    refusal = _too_old(config_path, config)
    if refusal:
        raise ArtifactError(refusal)
    kind = top.get("kind", str)
    data = top.part("dataset")
    source = top.part("input", None)
    environment = top.part("environment", {}) or _Reader(config_path, {})
    tickets = top.part("tickets", None)
    model = top.part("model", None)
    record = Record(
        kind=kind, lth_keras=written_by, hparams=top.get("hparams", dict),
        hparams_hash=top.get("hparams_hash", str),
        settings=settings.from_record(top.get("settings", dict)),
        dataset=DatasetRecord(data.get("name", str), data.get("num_classes", int),
                              data.get("fingerprint", str)),
        steps_per_epoch=source.get("steps_per_epoch", int) if source else None,
        channels=source.get("channels", int, 3) if source else 3,
        replicas=top.get("replicas", int, 1), engine=environment.get("engine", str, "unknown"),
        condition=top.get("condition", str, None),
        tickets=tickets and TicketsRecord(tickets.get("path", str),
                                          tickets.get("hparams_hash", str),
                                          tickets.get("source", str)),
        model=model and ModelRecord(model.get("model", str), model.get("image_size", int),
                                    model.get("channels", int, 3),
                                    model.get("source_classes", int), model.get("seed", int),
                                    model.get("bn_momentum", numbers.Real)),
        levels=tuple(top.get("levels", list)) if kind in ("transfer", "stability") else None)
    if kind == "stability":
        record = dataclasses.replace(record, stability=StabilityRecord(
            levels=tuple(top.get("levels", list)),
            rewind_points=tuple(top.get("rewind_points", list)),
            rewind_steps=tuple(top.get("rewind_steps", list)),
            pairs=top.get("pairs", int), budget_steps=top.get("budget_steps", int),
            steps_per_epoch=top.get("steps_per_epoch", int),
            annealed_at_epochs=tuple(top.get("annealed_at_epochs", list)),
            masks=top.get("masks", (dict, str))))
    return record


def level_name(level):
    return f"level_{level:02d}"


def theta_epoch_name(epoch):
    return f"theta_epoch_{epoch:02d}.npz"


def theta_step_name(step):
    return f"theta_step_{step:06d}.npz"


class RunDirectory:
    """A find_tickets or transfer run directory: its paths and what it holds.

    A level is finished when its metrics.json exists (written last, atomically).
    """

    def __init__(self, path):
        self.path = path

    def file(self, *parts):
        return os.path.join(self.path, *parts)

    def level_dir(self, level):
        return self.file(LEVELS, level_name(level))

    def level_file(self, level, name):
        return os.path.join(self.level_dir(level), name)

    def tensorboard_dir(self, level):
        return self.file(TENSORBOARD, level_name(level))

    @property
    def config_path(self):
        return self.file(CONFIG)

    def config(self):
        """config.json as JSON; code outside this module asks record() instead."""
        if not os.path.exists(self.config_path):
            raise ArtifactError(f"{self.path} is not a run directory (no {CONFIG})")
        return artifacts.read_json(self.config_path)

    def record(self):
        """The run's Record (config.json read and typed, checked once per directory)."""
        cached = getattr(self, "_record", None)
        stamp = os.stat(self.config_path).st_mtime_ns if os.path.exists(
            self.config_path) else None
        if cached is None or cached[0] != stamp:
            self._record = (stamp, read_record(self.config_path, self.config()))
        return self._record[1]

    @property
    def kind(self):
        return self.record().kind

    def is_finished(self, level):
        return os.path.exists(self.level_file(level, METRICS))

    def level_dirs(self):
        """{level: its directory} of every levels/level_LL/ there, finished or not."""
        root = self.file(LEVELS)
        if not os.path.isdir(root):
            return {}
        found = ((LEVEL_NAME.fullmatch(name), name) for name in os.listdir(root))
        return {int(m.group(1)): os.path.join(root, name) for m, name in found if m}

    def finished_levels(self):
        """Sorted levels whose metrics.json exists."""
        return sorted(level for level in self.level_dirs() if self.is_finished(level))

    def metrics(self, level):
        return artifacts.read_json(self.level_file(level, METRICS))

    def checked_metrics(self, level):
        """metrics.json of a finished level, or ArtifactError when it parses but lacks what
        every finished level records (such a file is damage too, not a KeyError later)."""
        path = self.level_file(level, METRICS)
        m = self.metrics(level)
        if not isinstance(m, dict):
            raise ArtifactError(f"{path} is not a level's metrics")
        missing = [k for k in METRICS_KEYS if k not in m]
        missing += [f"{split}.{k}" for split in ("val", "test") if isinstance(m.get(split), dict)
                    for k in ("accuracy", "loss") if k not in m[split]]
        if missing:
            raise ArtifactError(f"{path} lacks {', '.join(missing)}")
        if m["level"] != level:
            raise ArtifactError(f"{path} holds level {m['level']}'s metrics")
        return m

    # What a find_tickets run holds.
    def mask(self, level):
        """m_L as float32 0/1 arrays (stored as bool since lth_keras 0.5, a quarter of
        the bytes; earlier runs stored float32, which reads the same)."""
        import numpy as np

        return {k: np.asarray(v, np.float32)
                for k, v in artifacts.read_arrays(self.level_file(level, MASK)).items()}

    def theta_i(self, level):
        return artifacts.read_arrays(self.level_file(level, THETA_I))

    def theta(self, which):
        """θ_0 or θ_k ("0" or "k")."""
        return artifacts.read_arrays(self.file({"0": THETA_0, "k": THETA_K}[which]))

    # What a transfer run holds.
    def weights(self, level):
        return artifacts.read_arrays(self.level_file(level, WEIGHTS))

    def remove_stale_checkpoints(self, levels):
        """Epoch checkpoints left in finished `levels` (a crash between the level's last
        write and the checkpoint's removal)."""
        for level in levels:
            path = self.level_file(level, CHECKPOINT)
            if os.path.exists(path):
                os.remove(path)

    def summary(self):
        """One row per finished level: the columns of summary.csv."""
        return [summary_row(self.metrics(level), SUMMARY_COLUMNS[self.kind])
                for level in self.finished_levels()]

    def report(self):
        """What a run prints when it ends: its title and a row per finished level."""
        return format_summary(self.summary(), title=self.title())

    def title(self):
        """What the run is, in a line: the title of its printed summary."""
        config = self.config()
        hp, dataset = config["hparams"], config["dataset"]["name"]
        if config["kind"] == "find_tickets":
            return (f"tickets on {dataset}: {hp['model']} at {hp['image_size']} px, "
                    f"seed {hp['seed']}")
        tickets = config.get("tickets")
        source = f" of tickets from {tickets['source']}" if tickets else ""
        return (f"transfer to {dataset}: {config['condition']}{source}, {hp['model']} at "
                f"{hp['image_size']} px, seed {hp['seed']}")

    def tensorboard_hparams(self, level, density):
        """What TensorBoard's HParams tab shows for a level: its run, its sparsity, its hparams."""
        config = self.config()
        return {"run": os.path.basename(os.path.normpath(self.path)), "kind": config["kind"],
                "condition": config.get("condition", "find_tickets"),
                "dataset": config["dataset"]["name"], "level": level,
                "density": density["density"], **config["hparams"]}


class TicketRun(RunDirectory):
    """A find_tickets run directory: θ_0, θ_k, and each level's m_L and θ_i(L)."""

    def rewind_epoch(self):
        return self.record().settings[settings.Pruning].rewind_epoch

    def steps_per_epoch(self):
        """The training steps of one epoch of the run (its input plan's)."""
        return self.record().steps_per_epoch

    def saved_epochs(self):
        """The epochs of level 0 whose weights the run holds: 0 (θ_0), its rewind epoch
        (θ_k, once level 0 reached it) and those of --save_epochs."""
        names = os.listdir(self.path) if os.path.isdir(self.path) else []
        epochs = {int(m.group(1)) for m in map(THETA_EPOCH.fullmatch, names) if m}
        epochs |= {0} if THETA_0 in names else set()
        epochs |= {self.rewind_epoch()} if THETA_K in names else set()
        return sorted(epochs)

    def saved_steps(self):
        """The global steps of level 0 whose weights the run holds: its saved epochs (in
        steps) and those of --save_steps."""
        names = os.listdir(self.path) if os.path.isdir(self.path) else []
        spe = self.steps_per_epoch()
        steps = {int(m.group(1)) for m in map(THETA_STEP.fullmatch, names) if m}
        return sorted(steps | {e * spe for e in self.saved_epochs()})

    def epoch_file(self, epoch):
        """Where level 0's weights after `epoch` are: θ_0, θ_k or a --save_epochs file."""
        if epoch == 0:
            return self.file(THETA_0)
        if epoch == self.rewind_epoch():
            return self.file(THETA_K)
        return self.file(theta_epoch_name(epoch))

    def step_file(self, step):
        """Where level 0's weights after global `step` are: an epoch's file at a whole
        epoch, else a --save_steps file."""
        epoch, rest = divmod(step, self.steps_per_epoch())
        return self.epoch_file(epoch) if rest == 0 else self.file(theta_step_name(step))

    def theta_at(self, epoch):
        """Level 0's weights after `epoch` (0: θ_0)."""
        return artifacts.read_arrays(self.epoch_file(epoch))

    def theta_at_step(self, step):
        """Level 0's weights after global `step` (0: θ_0)."""
        return artifacts.read_arrays(self.step_file(step))


def open_ticket_run(path):
    """The TicketRun of the find_tickets run directory named by --tickets; a missing
    directory or another kind of run is a SettingsError."""
    if not os.path.isdir(path):
        raise SettingsError(f"--tickets={path}: no such directory")
    run = TicketRun(path)
    if run.kind != "find_tickets":
        raise SettingsError(f"{path} is a {run.kind} run, not a find_tickets run")
    return run


class TransferRun(RunDirectory):
    """A transfer run directory: each level's fine-tuned weights."""


class StabilityRun(RunDirectory):
    """A stability run directory: the copies per rewind point, the paths between pairs."""

    def report(self):
        """Its report (analysis/stability_report.py wrote it into stability.md)."""
        with open(self.file(STABILITY_MD)) as f:
            return f.read()

    def copy(self, k, copy):
        """Copy `copy` (pair copy // 2) at rewind point k, a label ("02", "040it")."""
        return CopyRun(self.file(f"k_{k}", f"copy_{copy}"), self, k, copy)

    def path_file(self, level, k, pair):
        return self.file(PATHS, f"level_{level:02d}_k_{k}_pair_{pair}.json")

    def paths(self):
        """{(level, k label, pair): the evaluated path} of every path written."""
        root = self.file(PATHS)
        names = sorted(os.listdir(root)) if os.path.isdir(root) else []
        found = {}
        for m in map(PATH_NAME.fullmatch, names):
            if m:
                found[int(m.group(1)), m.group(2), int(m.group(3))] = artifacts.read_json(
                    os.path.join(root, m.group(0)))
        return found

    def holds_results(self):
        """Whether any copy has a finished level, or any path is evaluated."""
        return bool(self.paths()) or any(
            self.copy(k, copy).finished_levels() for k, copy in self._copies())

    def _copies(self):
        """(k label, copy) of every copy directory there."""
        out = []
        for name in sorted(os.listdir(self.path)):
            m = re.fullmatch(r"k_(\d{2,}|\d{3,}it)", name)
            if m and os.path.isdir(self.file(name)):
                out += [(m.group(1), int(c.group(1))) for c in
                        map(re.compile(r"copy_(\d+)").fullmatch, os.listdir(self.file(name)))
                        if c]
        return out

    def title(self):
        config = self.config()
        tickets = config["tickets"]
        return (f"instability analysis of tickets on {tickets['source']} "
                f"({config['hparams']['model']} at {config['hparams']['image_size']} px, "
                f"seed {config['hparams']['seed']})")


class CopyRun(RunDirectory):
    """One copy of a stability run: the level loop's run directory for rewind point k.
    Its record is the stability run's."""

    def __init__(self, path, parent, k, copy):
        super().__init__(path)
        self.parent, self.k, self.copy = parent, k, copy

    def config(self):
        return self.parent.config()

    def record(self):
        return self.parent.record()

    def tensorboard_hparams(self, level, density):
        return {**super().tensorboard_hparams(level, density), "k": self.k, "copy": self.copy,
                "run": os.path.basename(os.path.normpath(self.parent.path))}


def format_summary(rows, title=None):
    """summary.md, and what a run prints when it ends: a row per level (summary_row's) and
    what they cost in all."""
    from lth_keras.costs import format_flops

    lines = [f"{title}\n"] if title else []
    lines += ["| level | fraction pruned | val acc | test acc | best epoch / epochs |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['level']} | {r['fraction_pruned']:.4f} | {r['val_accuracy']:.4f} | "
                     f"{r['test_accuracy']:.4f} | {r['best_epoch']} / {r['epochs']} |")
    costed = [r for r in rows if r.get("images") not in (None, "")]
    if costed:
        total = {k: sum(r[k] for r in costed) for k in COST_COLUMNS}
        lines += ["", f"Total over {len(costed)} level(s): {sum(r['epochs'] for r in costed)} "
                      f"epochs, {total['images']:,} training images, "
                      f"{total['seconds'] / 60:.1f} min of training, "
                      f"{format_flops(total['training_flops'])} of training compute dense, "
                      f"{format_flops(total['training_flops_masked'])} with the masks."]
    return "\n".join(lines) + "\n"


def summary_row(metrics, columns):
    """A level's row of summary.csv, from its metrics.json."""
    m, cost = metrics, metrics.get("cost")
    values = {"level": m["level"], "condition": m.get("condition"),
              "density": m["density"]["density"],
              "fraction_pruned": m["density"]["fraction_pruned"],
              "fraction_pruned_all_params": m["density"].get("fraction_pruned_all_params"),
              "val_accuracy": m["val"]["accuracy"], "val_loss": m["val"]["loss"],
              "test_accuracy": m["test"]["accuracy"], "test_loss": m["test"]["loss"],
              "best_epoch": m["best_epoch"], "epochs": m["epochs"]}
    if cost:
        values.update({"images": cost["images"], "seconds": round(cost["seconds"], 3),
                       "training_flops": cost["training_flops"]["dense"],
                       "training_flops_masked": cost["training_flops"]["masked"]})
    else:
        values.update(dict.fromkeys(COST_COLUMNS, ""))
    return {k: values[k] for k in columns}


def process_directory(output_dir, runtime):
    """Where this process writes: the run directory on the chief, a private copy elsewhere.

    Every worker of a multi-worker run computes the same artifacts and reads
    them back (the next level is pruned from the last); only the chief's are
    kept. The copy starts from the chief's directory, so a resumed run resumes
    everywhere (runtime.check_workers_agree verifies it).
    """
    import atexit
    import shutil
    import tempfile

    if runtime.is_chief:
        return output_dir
    private = tempfile.mkdtemp(prefix="lth_keras_worker_")
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    if os.path.isdir(output_dir):
        shutil.copytree(output_dir, private, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("tensorboard", ".*.tmp", LOCK_FILE))
    return private


def default_dir(kind, name):
    return os.path.join(OUTPUT_ROOT, kind, name)


def tickets_dir(dataset, model, image_size, seed):
    """outputs/tickets/<dataset>-<model>-<size>px-seed<seed>: a find_tickets run's default."""
    return default_dir("tickets", f"{dataset}-{model}-{image_size}px-seed{seed}")


def transfer_dir(tickets, target, condition, train_fraction, seed):
    """outputs/transfer/<ticket run>-<its id>/<target>-<condition>[-frac]-seed<seed>: a
    transfer's default (the id keeps two ticket runs of one name apart); `tickets` is
    None for scratch without tickets, whose tickets part is the architecture's."""
    name = f"{target}-{condition}" + (f"-frac{train_fraction:g}" if train_fraction < 1 else "")
    return default_dir("transfer", os.path.join(tickets, f"{name}-seed{seed}"))


def stability_dir(tickets):
    """outputs/stability/<ticket run>: a stability run's default."""
    return default_dir("stability", os.path.basename(os.path.normpath(tickets)))


def _resumed_record(stored, record, where, identity_extra, extra):
    """The record of a re-run into `where`, or RunMismatchError if it is another run."""
    if stored["dataset"]["fingerprint"] != record["dataset"]["fingerprint"]:
        raise RunMismatchError(f"{where} was made from other data (dataset fingerprint differs); "
                        "choose another --output_dir")
    refusal = _too_old(os.path.join(where, CONFIG), stored)
    if refusal:
        raise RunMismatchError(refusal)
    old, new = stored["identity"], record["identity"]
    if stored["hparams_hash"] != record["hparams_hash"]:
        changed = sorted(k for k in {**old["changed"], **new["changed"]}
                         if old["changed"].get(k) != new["changed"].get(k))
        changed += sorted(k for k in identity_extra if old.get(k) != new.get(k))
        if "head" in changed:
            raise RunMismatchError(f"{where} was fine-tuned with a head drawn by an earlier "
                                   "rule (lth_keras <= 0.3 drew it from θ_0's own seed "
                                   "stream), so its numbers are not this run's: move it away "
                                   "or choose another --output_dir")
        raise RunMismatchError(f"{where} holds a run with other settings (differs in: "
                               f"{', '.join(changed) or 'identity version'}); choose another "
                               "--output_dir")
    return {**stored, "settings": record["settings"], **(extra or {})}


def clear_directory(path):
    """Removes what a run directory holds, but its lock."""
    for name in os.listdir(path):
        if name == LOCK_FILE:
            continue
        full = os.path.join(path, name)
        if os.path.isdir(full):
            artifacts.remove_tree(full)
        else:
            os.remove(full)


def in_use(directory):
    """Whether a process holds the lock of a run directory now (it is being written),
    found without taking it or writing anything."""
    import fcntl

    path = os.path.join(directory, LOCK_FILE)
    if not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases a lock taken here
    return False


@contextlib.contextmanager
def locked(directory):
    """An exclusive lock on a run directory while the block runs.

    A second process on the same directory is refused with one line naming the
    holder's PID. The lock is an advisory fcntl lock on `<directory>/.lock`, so it
    dies with its process: a killed run leaves nothing that blocks the next one.
    """
    import fcntl

    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"{directory} is in use by another process (PID {holder}); wait for "
                        "it to finish or stop it") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def start(config_path, *, kind, chosen, dataset, plan, runtime, extra=None,
          identity_extra=None, holds_results=None):
    """Writes config.json for a new run, or checks that a re-run matches it.

    `chosen` is {settings group: object}; the run's identity is the result-defining
    settings that differ from their defaults, the data fingerprint and `identity_extra`
    (a transfer's condition and ticket run). A re-run may change what does not define
    the result (rounds, devices, output): the record is updated to say so;
    `holds_results()` whether the directory holds finished work (default: a finished level).
    """
    identity_extra = identity_extra or {}
    ident = settings.identity(chosen, dataset.fingerprint(), **identity_extra)
    record = {
        "kind": kind,
        "hparams": {**settings.result_values(chosen), **identity_extra},
        "hparams_hash": settings.identity_hash(ident),
        "identity": ident,
        "settings": settings.record(chosen),
        "dataset": dataset.summary(),
        "input": plan.describe(),
        "replicas": runtime.num_replicas,
        "environment": artifacts.environment_record(runtime),
        **(extra or {}),
    }
    if not os.path.exists(config_path):
        artifacts.write_json(config_path, record)
        return record
    where = os.path.dirname(config_path)
    # Only one process writes a run directory (`locked`): leftovers are from a killed one.
    artifacts.remove_stale_temp_files(where)
    stored = artifacts.read_json(config_path)
    try:
        updated = _resumed_record(stored, record, where, identity_extra, extra)
    except RunMismatchError:
        if (holds_results or RunDirectory(where).finished_levels)():
            raise
        # Nothing finished here (a run that failed before its first level): the corrected
        # command must not be blocked by it.
        logging.warning("%s held no finished level of a run with other settings or data: "
                        "re-initialised for this one", where)
        clear_directory(where)
        artifacts.write_json(config_path, record)
        return record
    if updated != stored:
        artifacts.write_json(config_path, updated)
    return updated
