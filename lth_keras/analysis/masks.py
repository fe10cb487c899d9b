"""Mask overlap: how many surviving weights two ticket runs share at the same level.

The Jaccard index |A ∩ B| / |A ∪ B| of the sets of surviving prunable weights.
Two independent random masks of density d would score d / (2 - d), which the
tables show beside it. Only runs whose masks name the same kernels with the
same shapes (same model and input size) are compared, at the pruned levels
both have finished. Masks are read one level at a time and kept as packed
bits, so memory stays near one level's masks of all runs.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os

import numpy as np

from lth_keras import artifacts
from lth_keras.lottery.directory import MASK, RunDirectory

OVERLAP_CSV = ("run_a", "run_b", "dataset_a", "seed_a", "dataset_b", "seed_b", "model",
               "image_size", "level", "fraction_pruned", "alive_a", "alive_b", "shared",
               "jaccard", "jaccard_random")


def signature(mask):
    """The kernel names and shapes of a mask: masks compare only when these agree."""
    return tuple((name, tuple(np.shape(value))) for name, value in mask.items())


def pack(mask):
    """A mask {name: 0/1 array} as one packed bit vector (names in order)."""
    bits = np.concatenate([np.asarray(value).ravel() != 0 for value in mask.values()])
    return np.packbits(bits)


def jaccard(a, b):
    """Jaccard index of two masks ({name: 0/1 array}, same names and shapes); NaN if both empty."""
    if signature(a) != signature(b):
        raise ValueError("masks with different kernels or shapes cannot be compared")
    shared, union = _counts(pack(a), pack(b))
    return shared / union if union else math.nan


def _counts(a, b):
    shared = int(np.bitwise_count(a & b).sum())
    union = int(np.bitwise_count(a | b).sum())
    return shared, union


def mask_overlap(runs, levels=None):
    """Rows of OVERLAP_CSV for every comparable pair of find_tickets runs and shared level.

    `levels`: the levels to compare (None: every pruned level). Masks of
    unfinished levels are not read.
    """
    tickets = [r for r in runs if r.kind == "find_tickets"]
    groups = {}
    for run in tickets:
        groups.setdefault((run.model, run.image_size), []).append(run)
    rows = []
    for (model, size), members in sorted(groups.items()):
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda r: (r.dataset, r.seed, r.path))
        shared_levels = sorted({lv for r in members for lv in r.levels if lv >= 1})
        for level in shared_levels:
            if levels is not None and level not in levels:
                continue
            present = [r for r in members if level in r.levels]
            if len(present) < 2:
                continue
            packed = {}
            for run in present:
                mask = artifacts.read_arrays(RunDirectory(run.path).level_file(level, MASK))
                bits = pack(mask)
                packed[run.path] = (signature(mask), bits, int(np.bitwise_count(bits).sum()))
            for a, b in itertools.combinations(present, 2):
                sig_a, bits_a, alive_a = packed[a.path]
                sig_b, bits_b, alive_b = packed[b.path]
                if sig_a != sig_b:
                    continue
                shared, union = _counts(bits_a, bits_b)
                density = np.mean([a.levels[level].density, b.levels[level].density])
                rows.append({
                    "run_a": a.path, "run_b": b.path, "dataset_a": a.dataset, "seed_a": a.seed,
                    "dataset_b": b.dataset, "seed_b": b.seed, "model": model, "image_size": size,
                    "level": level, "fraction_pruned": a.levels[level].fraction_pruned,
                    "alive_a": alive_a, "alive_b": alive_b, "shared": shared,
                    "jaccard": shared / union if union else math.nan,
                    "jaccard_random": density / (2 - density)})
    return rows


def overlap_csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=OVERLAP_CSV, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else v)
                      for k, v in row.items()} for row in rows)
    return out.getvalue()


def overlap_markdown(rows):
    """Pairs × levels of Jaccard indices, with the random-mask expectation as the last row."""
    head = ["# Mask overlap between ticket runs (Jaccard index of surviving weights)", "",
            "Same model and input size, same level. Random: two independent random masks of "
            "that density, d / (2 - d).", ""]
    if not rows:
        return "\n".join(head + ["No two ticket runs with comparable masks share a pruned "
                                 "level.", ""])
    levels = sorted({row["level"] for row in rows})
    pairs = {}
    random = {}
    for row in rows:
        pair = (f"{_short_name(row['run_a'])} ({row['dataset_a']}, seed {row['seed_a']}) vs "
                f"{_short_name(row['run_b'])} ({row['dataset_b']}, seed {row['seed_b']})")
        pairs.setdefault(pair, {})[row["level"]] = row["jaccard"]
        random.setdefault(row["level"], row["jaccard_random"])
    fraction = {row["level"]: row["fraction_pruned"] for row in rows}
    lines = ["| pair | " + " | ".join(f"L{lv} ({fraction[lv]:.3g})" for lv in levels) + " |",
             "|---|" + "---:|" * len(levels)]
    for pair, values in pairs.items():
        lines.append(f"| {pair} | " + " | ".join(_number(values.get(lv)) for lv in levels) + " |")
    lines.append("| random masks (expected) | " +
                 " | ".join(_number(random.get(lv)) for lv in levels) + " |")
    return "\n".join(head + ["Columns: level (fraction of prunable weights pruned).", ""] +
                     lines) + "\n"


def _number(value):
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


def _short_name(path):
    return os.path.basename(os.path.normpath(path))
