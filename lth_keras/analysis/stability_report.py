"""The report of a stability run (lottery/instability.py): per level and rewind point k, the
error barrier over pairs of copies with its interval, the barrier inside the path and the
gap between the ends, as tables (stability.md, stability.csv with a row per pair) and a
figure (stability.png), and the k from which each level trains stably.

Stability is judged on the validation barrier, never on test (the project's rule for
every choice); the test barrier is shown beside it, as Frankle et al. report theirs. A
cell's barrier is the mean over its pairs, with a 95% t-interval over pairs (df = pairs -
1). A barrier is a maximum, never negative, and noise in the errors along the path raises
it: its mean over pairs is biased upward, most where the true barrier is near 0.

The rule is monotone: a level is stable from k when the mean validation barrier is under
the threshold at k and at every larger k tried. A cell whose interval straddles the
threshold, or that has fewer pairs than the run asked for, is "uncertain"; a level whose
stable k rests on one is said to be so, and a level with a rewind point not evaluated yet
gets no verdict.
"""

import csv
import math
import os

import numpy as np
from scipy import stats

from lth_keras import artifacts
from lth_keras.settings import Stability
from lth_keras.analysis import figures
from lth_keras.analysis.tables import csv_text
from lth_keras.lottery.directory import (STABILITY_CSV, STABILITY_MD, STABILITY_PAIRS_CSV,
                                         STABILITY_PNG)

# copy_*_test_accuracy are the copies as they trained (their own BatchNorm statistics);
# the path's ends, which the barriers and end gaps use, are evaluated like every point.
PAIR_COLUMNS = ("level", "density", "k", "k_steps", "pair", "val_barrier", "val_inside",
                "val_end_gap", "test_barrier", "test_inside", "test_end_gap",
                "copy_a_test_accuracy", "copy_b_test_accuracy", "bn", "masks")
CELL_COLUMNS = ("level", "density", "k", "k_steps", "pairs", "val_barrier", "val_barrier_low",
                "val_barrier_high", "val_inside", "val_end_gap", "test_barrier",
                "test_barrier_low", "test_barrier_high", "test_inside", "test_end_gap",
                "uncertain", "bn", "masks")
# A barrier is a difference of error counts over a split: a tie with the threshold must
# not be decided by float rounding (0.14 - 0.12 is 0.020000000000000018).
TOLERANCE = 1e-9
TICKET_MASKS = "the ticket run's"
# report()'s keys and the files they go to in the run directory.
REPORT_FILES = {"csv": STABILITY_CSV, "pairs.csv": STABILITY_PAIRS_CSV, "md": STABILITY_MD,
                "png": STABILITY_PNG}


def under(barrier, threshold):
    """Whether a barrier is under the threshold ("stable"), a tie counting as not under."""
    return barrier < threshold - TOLERANCE


def pair_rows(run):
    """One row per evaluated (level, k, pair) of a StabilityRun that its record chose (paths
    of an earlier run into the same directory with more levels or pairs are left out),
    errors as fractions, in the order of level, rewind step, pair."""
    chosen = run.record().stability
    out = []
    for (level, k, pair), path in run.paths().items():
        if (level not in chosen.levels or k not in chosen.rewind_points
                or pair >= chosen.pairs):
            continue
        row = {"level": level, "density": path["density"], "k": k,
               "k_steps": path.get("k_steps"), "pair": pair,
               "copy_a_test_accuracy": path["copies"][0]["test"]["accuracy"],
               "copy_b_test_accuracy": path["copies"][1]["test"]["accuracy"], "bn": path["bn"],
               "masks": mask_source(chosen.masks, k)}
        for split in ("val", "test"):
            row[f"{split}_barrier"] = path["barrier"][split]
            row[f"{split}_inside"] = path["inside"][split]
            row[f"{split}_end_gap"] = path["end_gap"][split]
        out.append(row)
    return sorted(out, key=lambda r: (r["level"], r["k_steps"], r["pair"]))


def read_pairs(path):
    """The rows of a stability.pairs.csv, with the columns cells() reads typed (errors as
    fractions): the cells recompute from it without the path files."""
    floats = {f"{split}_{what}" for split in ("val", "test")
              for what in ("barrier", "inside", "end_gap")} | {"density"}
    with open(path, newline="") as f:
        return [{**r, **{c: float(r[c]) for c in floats},
                 **{c: int(r[c]) for c in ("level", "k_steps", "pair")}}
                for r in csv.DictReader(f)]


def mean_interval(values):
    """(mean, low, high) of a 95% t-interval; NaN bounds with fewer than 2 values."""
    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def mask_source(masks, k):
    """Whose masks the cells of rewind point k use (a StabilityRecord's `masks`)."""
    if isinstance(masks, dict) and k in masks:
        return "a run rewound to k"
    return TICKET_MASKS + (" (one mask for every k)" if not isinstance(masks, dict) else "")


def cells(pairs, threshold, expected_pairs=None):
    """One row per (level, k): the means over pairs, the barriers' intervals, and whether
    the cell is uncertain: one pair, fewer than `expected_pairs`, or a validation interval
    that straddles `threshold`."""
    out = []
    keys = sorted({(r["level"], r["k_steps"], r["k"]) for r in pairs})
    for level, k_steps, k in keys:
        mine = [r for r in pairs if r["level"] == level and r["k_steps"] == k_steps]
        row = {"level": level, "density": mine[0]["density"], "k": k, "k_steps": k_steps,
               "pairs": len(mine), "bn": mine[0].get("bn"), "masks": mine[0].get("masks")}
        for split in ("val", "test"):
            mean, low, high = mean_interval([r[f"{split}_barrier"] for r in mine])
            row.update({f"{split}_barrier": mean, f"{split}_barrier_low": low,
                        f"{split}_barrier_high": high,
                        f"{split}_inside": float(np.mean([r[f"{split}_inside"] for r in mine])),
                        f"{split}_end_gap": float(np.mean([r[f"{split}_end_gap"]
                                                           for r in mine]))})
        # One pair has no interval: it cannot settle k either; nor can a cell still short of
        # its pairs.
        row["uncertain"] = bool(
            len(mine) < 2 or (expected_pairs is not None and len(mine) < expected_pairs)
            or (under(row["val_barrier_low"], threshold)
                and not under(row["val_barrier_high"], threshold)))
        out.append(row)
    return out


def stable_from(table, threshold, record=None):
    """{level: (the k label from which the mean validation barrier is under `threshold` at
    k and at every larger k tried, or None; whether a cell from there on is uncertain; the
    k labels the run's `record` (a StabilityRecord) asked for and the table lacks)}. A level
    that lacks a k has no verdict (None, True, missing): a missing k could break the rule."""
    out = {}
    levels = sorted({r["level"] for r in table} | set(record.levels if record else ()))
    for level in levels:
        mine = sorted((r for r in table if r["level"] == level), key=lambda r: r["k_steps"])
        have = {r["k"] for r in mine}
        missing = tuple(k for k in (record.rewind_points if record else ()) if k not in have)
        if missing:
            out[level] = (None, True, missing)
            continue
        found = None
        for i, row in enumerate(mine):
            if all(under(r["val_barrier"], threshold) for r in mine[i:]):
                found = i
                break
        if found is None:
            out[level] = (None, any(r["uncertain"] for r in mine), ())
        else:
            out[level] = (mine[found]["k"],
                          any(r["uncertain"] for r in mine[max(0, found - 1):]), ())
    return out


def verdict_text(k, uncertain, missing, tried):
    """A level's line of stable_from, in words."""
    if missing:
        return (f"no verdict yet: k = {', '.join(missing)} not evaluated (a stable k must hold "
                "at every larger k)")
    text = f"stable from k = {k}" if k is not None else f"not stable from any k tried ({tried})"
    return text + (" (uncertain: a cell near it straddles the threshold or lacks pairs)"
                   if uncertain else "")


def interval_text(row, split):
    """A cell's mean barrier of a split in points, with its interval when it has one."""
    low, high = row[f"{split}_barrier_low"], row[f"{split}_barrier_high"]
    mean = f"{100 * row[f'{split}_barrier']:.2f}"
    return mean if math.isnan(low) else f"{mean} [{100 * low:.2f}, {100 * high:.2f}]"


def markdown(table, threshold, title, record):
    """stability.md; `record` is the run's StabilityRecord."""
    lines = [f"{title}\n",
             f"Copies trained to step {record.budget_steps} from each k (a fixed budget, the "
             "schedule continued from k, no early stopping, final weights); "
             + (f"the learning rate is annealed at epochs "
                f"{', '.join(map(str, record.annealed_at_epochs))} within it."
                if record.annealed_at_epochs else
                "**the learning rate is never annealed within it: the copies end "
                "unconverged.**"),
             f"Masks: {_masks_text(record.masks, record.rewind_points)}.", "",
             "| level | weights left | k | pairs | val barrier [95% CI] | inside | end gap | "
             "test barrier [95% CI] | inside | end gap | |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in table:
        lines.append(f"| {r['level']} | {100 * r['density']:.1f}% | {r['k']} | {r['pairs']} | "
                     f"{interval_text(r, 'val')} | {100 * r['val_inside']:.2f} | "
                     f"{100 * r['val_end_gap']:.2f} | {interval_text(r, 'test')} | "
                     f"{100 * r['test_inside']:.2f} | {100 * r['test_end_gap']:.2f} | "
                     f"{'uncertain' if r['uncertain'] else ''} |")
    lines += ["", "Errors in points (%), means over the pairs. Barrier: the highest error on "
                  "the path minus the mean error of its ends (Frankle et al.'s, which the "
                  "threshold judges). Inside: the highest rise above the straight line between "
                  "the ends' errors. End gap: the difference between the ends' errors. A "
                  "barrier of about half the end gap comes from the ends, not the path. A "
                  "barrier is never negative, so its mean is biased upward. k: epochs (02) or "
                  "steps (040it) of level 0.", "",
              f"Stable from k: the mean validation barrier is under {100 * threshold:g}% at "
              f"k and at every larger k tried; uncertain: its 95% interval straddles "
              f"{100 * threshold:g}%, or it has one pair (no interval) or fewer than the run's "
              f"{record.pairs}."]
    for level, (k, uncertain, missing) in stable_from(table, threshold, record).items():
        tried = ", ".join(r["k"] for r in table if r["level"] == level)
        lines.append(f"- level {level}: {verdict_text(k, uncertain, missing, tried)}")
    bn = sorted({r["bn"] for r in table if r.get("bn")})
    lines += ["", f"BatchNorm statistics at every point: {', '.join(bn) or 'as recorded'}. "
                  "float32 results differ between machines; bit-identical reruns need the "
                  "same machine, software and --deterministic."]
    return "\n".join(lines) + "\n"


def _masks_text(masks, rewind_points):
    if isinstance(masks, dict):
        # Each run by its name: config.json keeps its path, which means nothing on another
        # machine or in git.
        named = {k: os.path.basename(os.path.normpath(path)) for k, path in masks.items()}
        return "per k, from runs rewound to it where given (" + ", ".join(
            f"k={k}: {named.get(k, TICKET_MASKS)}" for k in rewind_points) + ")"
    return str(masks or TICKET_MASKS)


def figure(table, threshold):
    """Validation and test error barriers (%) against k with their intervals, a line per
    level, side by side; None when nothing to draw. The threshold is drawn on validation
    only: k is chosen there."""
    if not table:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2 * figures.PANEL[0], figures.PANEL[1]), layout="constrained")
    positions = {k: i for i, k in enumerate(sorted({r["k_steps"] for r in table}))}
    labels = {r["k_steps"]: r["k"] for r in table}
    for ax, (split, name) in zip(fig.subplots(1, 2, sharey=True),
                                 (("val", "validation"), ("test", "test"))):
        for level in sorted({r["level"] for r in table}):
            mine = sorted((r for r in table if r["level"] == level), key=lambda r: r["k_steps"])
            x = [positions[r["k_steps"]] for r in mine]
            y = np.array([100 * r[f"{split}_barrier"] for r in mine])
            low = np.array([100 * r[f"{split}_barrier_low"] for r in mine])
            high = np.array([100 * r[f"{split}_barrier_high"] for r in mine])
            line = ax.plot(x, y, marker="o", markersize=3,
                           label=f"level {level} ({100 * mine[0]['density']:.1f}% left)")[0]
            if not np.all(np.isnan(low)):
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
        if split == "val":
            ax.axhline(100 * threshold, color="black", linestyle="--", linewidth=1,
                       label=f"threshold {100 * threshold:g}% (chooses k)")
        ax.set_title(f"{name} (chooses k)" if split == "val" else name, fontsize=9)
        ax.set_xlabel("rewind point k (ep: epochs, it: steps of level 0)")
        ax.set_ylabel(f"{name} error barrier (%), mean and 95% CI over pairs")
        ax.set_xticks(list(positions.values()))
        ax.set_xticklabels([_tick(labels[k]) for k in positions])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return fig


def _tick(label):
    return label if label.endswith("it") else f"{int(label)}ep"


def report(run, threshold):
    """(cell rows, {"csv" / "md" / "png" / "pairs.csv": bytes}, the figure or None) of a
    StabilityRun."""
    record = run.record().stability
    pairs = pair_rows(run)
    table = cells(pairs, threshold, record.pairs)
    out = {"csv": csv_text(CELL_COLUMNS, table).encode(),
           "pairs.csv": csv_text(PAIR_COLUMNS, pairs).encode(),
           "md": markdown(table, threshold, run.title(), record).encode()}
    fig = figure(table, threshold)
    if fig is not None:
        out["png"] = figures.render(fig, ("png",))["png"]
    return table, out, fig


def threshold_of(run):
    """The threshold the run was made with (--threshold, recorded in config.json)."""
    return run.record().settings[Stability].threshold


def write_report(run, threshold):
    """Writes the report into the run directory; returns its Markdown."""
    _, out, _ = report(run, threshold)
    for suffix, name in REPORT_FILES.items():
        if suffix in out:
            artifacts.write_bytes(run.file(name), out[suffix])
    return out["md"].decode()
