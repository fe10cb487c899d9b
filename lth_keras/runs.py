"""Run records: what a run directory was made with, and refusing to mix runs.

config.json holds every setting, the run's identity (the result-defining settings
that differ from their defaults, and the data fingerprint) and its hash, package
versions, the dataset summary and the input normalisation. A re-run into the same
directory must have the same identity, or it is refused.
"""

import contextlib
import csv
import dataclasses
import io
import os
import re

from absl import logging

from lth_keras import artifacts, settings

OUTPUT_ROOT = "outputs"


class RunDirectory:
    """Paths and readers shared by find_tickets and transfer run directories.

    Levels live in levels/level_LL/; a level is finished when its metrics.json
    exists (written last, atomically).
    """

    def __init__(self, path):
        self.path = path

    def file(self, *parts):
        return os.path.join(self.path, *parts)

    def level_dir(self, level):
        return self.file("levels", f"level_{level:02d}")

    def level_file(self, level, name):
        return os.path.join(self.level_dir(level), name)

    @property
    def config_path(self):
        return self.file("config.json")

    def config(self):
        if not os.path.exists(self.config_path):
            raise artifacts.ArtifactError(f"{self.path} is not a run directory (no config.json)")
        return artifacts.read_json(self.config_path)

    def is_finished(self, level):
        return os.path.exists(self.level_file(level, "metrics.json"))

    def finished_levels(self):
        """Sorted levels whose metrics.json exists."""
        root = self.file("levels")
        if not os.path.isdir(root):
            return []
        found = (re.fullmatch(r"level_(\d+)", name) for name in os.listdir(root))
        return sorted(int(m.group(1)) for m in found if m and self.is_finished(int(m.group(1))))

    def metrics(self, level):
        return artifacts.read_json(self.level_file(level, "metrics.json"))

    def checked_metrics(self, level):
        """metrics.json of a finished level, or ArtifactError when it parses but lacks what
        every finished level records (such a file is damage too, not a KeyError later)."""
        path = self.level_file(level, "metrics.json")
        m = self.metrics(level)
        if not isinstance(m, dict):
            raise artifacts.ArtifactError(f"{path} is not a level's metrics")
        missing = [k for k in METRICS_KEYS if k not in m]
        missing += [f"{split}.{k}" for split in ("val", "test") if isinstance(m.get(split), dict)
                    for k in ("accuracy", "loss") if k not in m[split]]
        if missing:
            raise artifacts.ArtifactError(f"{path} lacks {', '.join(missing)}")
        if m["level"] != level:
            raise artifacts.ArtifactError(f"{path} holds level {m['level']}'s metrics")
        return m

    def remove_stale_checkpoints(self, levels):
        """Epoch checkpoints left in finished `levels` (a crash between the level's last
        write and the checkpoint's removal)."""
        for level in levels:
            path = self.level_file(level, "checkpoint.npz")
            if os.path.exists(path):
                os.remove(path)

    def tensorboard_hparams(self, level, density):
        """What TensorBoard's HParams tab shows for a level: its run, its sparsity, its hparams."""
        config = self.config()
        return {"run": os.path.basename(os.path.normpath(self.path)), "kind": config["kind"],
                "condition": config.get("condition", "find_tickets"),
                "dataset": config["dataset"]["name"], "level": level,
                "density": density["density"], **config["hparams"]}

    def train_level(self, level, model, plan, training_config, runtime, density, *,
                    verbose=True, **fit_args):
        """Trains a level (fresh optimizer) with its curves and epoch checkpoint."""
        from lth_keras.training import Trainer

        trainer = Trainer(model, plan, training_config, runtime, verbose=verbose,
                          tensorboard_dir=self.file("tensorboard", f"level_{level:02d}"),
                          hparams=self.tensorboard_hparams(level, density),
                          density=density["density"])
        return trainer.fit(checkpoint_path=self.level_file(level, "checkpoint.npz"), **fit_args)

    def finish_level(self, level, arrays_name, arrays, metrics):
        """Writes the level's arrays, then metrics.json (which marks it finished); drops
        its checkpoint and rewrites the summary, which it returns."""
        artifacts.write_arrays(self.level_file(level, arrays_name), arrays)
        artifacts.write_json(self.level_file(level, "metrics.json"), metrics)
        checkpoint = self.level_file(level, "checkpoint.npz")
        if os.path.exists(checkpoint):
            os.remove(checkpoint)
        for warning in (chance_warning(level, metrics, self.config()["dataset"]["num_classes"]),
                        noisy_stop_warning(level, metrics)):
            if warning:
                logging.warning("%s", warning)
        return self.write_summary()

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

    def summary(self):
        """One row per finished level (the columns of summary.csv)."""
        return [self._summary_row(level) for level in self.finished_levels()]

    def write_summary(self, columns, row, format_rows):
        """summary.csv and summary.md with one row(level) per finished level."""
        rows = [row(level) for level in self.finished_levels()]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        artifacts.write_bytes(self.file("summary.csv"), text.getvalue().encode())
        artifacts.write_bytes(self.file("summary.md"), format_rows(rows).encode())
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


# What every finished level's metrics.json records.
METRICS_KEYS = ("level", "density", "start_digest", "history", "best_epoch", "epochs", "val",
                "test")

# What a level cost (metrics.json "cost"), in the summaries; empty for levels trained
# before it was recorded.
COST_COLUMNS = ("images", "seconds", "training_flops", "training_flops_masked")


def cost_columns(metrics):
    cost = metrics.get("cost")
    if not cost:
        return dict.fromkeys(COST_COLUMNS, "")
    return {"images": cost["images"], "seconds": round(cost["seconds"], 3),
            "training_flops": cost["training_flops"]["dense"],
            "training_flops_masked": cost["training_flops"]["masked"]}


def format_summary(rows, title=None):
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


def hparams_hash(values):
    """The hash of a run before identity version 2: every result flag as spelled, hashed
    as identities are."""
    return settings.identity_hash(values)


# Before identity version 2 (lth_keras 0.2), a run was named by the hash of these flags'
# values as spelled on the command line; such runs are recognised and their records
# brought up to date when they resume (`start`).
LEGACY_RESULT_FLAGS = {
    "find_tickets": ("source", "model", "image_size", "train_fraction", "val_fraction", "split",
                     "bn_momentum", "seed", "batch_size", "learning_rate", "momentum",
                     "weight_decay", "lr_decay", "lr_boundaries", "max_epochs", "patience",
                     "prune_rate", "rewind_epoch", "pruning", "mixed_precision"),
    "transfer": ("target", "model", "image_size", "train_fraction", "val_fraction", "split",
                 "bn_momentum", "seed", "batch_size", "learning_rate", "momentum",
                 "weight_decay", "lr_decay", "lr_boundaries", "max_epochs", "patience",
                 "mixed_precision"),
}


def legacy_hparams(kind, groups, extra=None):
    """What a run of these settings recorded as its hparams before identity version 2."""
    values = {}
    for obj in groups.values():
        for name, value in dataclasses.asdict(obj).items():
            values[name] = [str(v) for v in value] if isinstance(value, tuple) else value
    return {**{name: values[name] for name in LEGACY_RESULT_FLAGS[kind]}, **(extra or {})}


def run_id(config):
    """A run's lasting identifier: its first hash (records migrated from before identity
    version 2 keep their old one as legacy_hash), by which transfers name their tickets."""
    return config.get("legacy_hash") or config["hparams_hash"]


def _resumed_record(stored, record, where, identity_extra, legacy, extra):
    """The record of a re-run into `where`, or UserError if it is another run."""
    from lth_keras.cli import UserError

    if stored["dataset"]["fingerprint"] != record["dataset"]["fingerprint"]:
        raise UserError(f"{where} was made from other data (dataset fingerprint differs); "
                        "choose another --output_dir")
    if "identity" in stored:
        old, new = stored["identity"], record["identity"]
        if stored["hparams_hash"] != record["hparams_hash"]:
            changed = sorted(k for k in {**old["changed"], **new["changed"]}
                             if old["changed"].get(k) != new["changed"].get(k))
            changed += sorted(k for k in identity_extra if old.get(k) != new.get(k))
            if "head" in changed:
                raise UserError(f"{where} was fine-tuned with a head drawn by an earlier rule "
                                "(lth_keras <= 0.3 drew it from θ_0's own seed stream), so its "
                                "numbers are not this run's: move it away or choose another "
                                "--output_dir")
            raise UserError(f"{where} holds a run with other settings (differs in: "
                            f"{', '.join(changed) or 'identity version'}); choose another "
                            "--output_dir")
        return {**stored, "settings": record["settings"], **(extra or {})}
    legacy = legacy or {}
    if stored.get("hparams_hash") != hparams_hash(legacy):
        changed = sorted(k for k in {**stored["hparams"], **legacy}
                         if stored["hparams"].get(k) != legacy.get(k))
        raise UserError(f"{where} holds a run with other settings (differs in: "
                        f"{', '.join(changed) or 'flag set'}); choose another --output_dir")
    # A run from before identity version 2: the same settings, so it continues under an
    # up-to-date record that keeps its old hash.
    logging.info("%s: run record brought to identity version %d (hash %s, was %s)",
                 where, settings.IDENTITY_VERSION, record["hparams_hash"],
                 stored["hparams_hash"])
    return {**record, "legacy_hash": stored["hparams_hash"],
            "environment": stored.get("environment", record["environment"])}


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


LOCK_FILE = ".lock"


@contextlib.contextmanager
def locked(directory):
    """An exclusive lock on a run directory while the block runs.

    A second process on the same directory is refused with one line naming the
    holder's PID. The lock is an advisory fcntl lock on `<directory>/.lock`, so it
    dies with its process: a killed run leaves nothing that blocks the next one.
    """
    import fcntl

    from lth_keras.cli import UserError

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


def start(config_path, *, kind, groups, dataset, plan, runtime, extra=None,
          identity_extra=None, legacy=None):
    """Writes config.json for a new run, or checks that a re-run matches it.

    `groups` is {settings group: object}; the run's identity is the result-defining
    settings that differ from their defaults, the data fingerprint and `identity_extra`
    (a transfer's condition and ticket run). A re-run may change what does not define
    the result (rounds, devices, output): the record is updated to say so. `legacy` is
    the run's hparams as a record from before identity version 2 had them.
    """
    from lth_keras.cli import UserError

    identity_extra = identity_extra or {}
    ident = settings.identity(groups, dataset.fingerprint(), **identity_extra)
    record = {
        "kind": kind,
        "hparams": {**settings.result_values(groups), **identity_extra},
        "hparams_hash": settings.identity_hash(ident),
        "identity": ident,
        "settings": settings.record(groups),
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
        updated = _resumed_record(stored, record, where, identity_extra, legacy, extra)
    except UserError:
        if RunDirectory(where).finished_levels():
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
