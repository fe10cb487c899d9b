"""Cells: runs that differ only by their seeds, summarised with the ticket search as the unit.

A run's replicate is (tickets seed, transfer seed) (collect.RunRecord.replicate): with one
transfer per ticket run the two are equal; a grid with --transfer_seeds fine-tunes each
ticket run with several. Transfer seeds of one search are not independent replicates
(analysis/statistics.py), so a level's statistic first averages each search's replicates,
then summarises the searches: mean, sample standard deviation (ddof=1; NaN with one
search, and tables print "n=1" instead of a spread), and n in searches. Each level is
summarised over the replicates that have finished it.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from lth_keras.analysis.collect import AnalysisError
from lth_keras.analysis.statistics import search_means


@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean and sample std (ddof=1; NaN when n < 2) over searches of each search's mean."""

    mean: float
    std: float
    n: int            # searches
    values: tuple     # the per-search means, by search
    replicates: int = 0  # runs behind them (searches × transfer seeds)


def summarize(by_replicate):
    """The Stat of {replicate: value} (a plain sequence: one search per value)."""
    if not isinstance(by_replicate, dict):
        by_replicate = dict(enumerate(by_replicate))
    values = tuple(search_means(by_replicate).values())
    n = len(values)
    mean = float(np.mean(values)) if n else float("nan")
    std = float(np.std(values, ddof=1)) if n >= 2 else float("nan")
    return Stat(mean, std, n, values, len(by_replicate))


class Cell:
    """Runs with one setting and distinct seeds (see collect.RunRecord.setting)."""

    def __init__(self, runs):
        self.runs = sorted(runs, key=lambda r: r.replicate)
        first = self.runs[0]
        self.kind, self.condition, self.dataset = first.kind, first.condition, first.dataset
        self.source, self.model, self.image_size = first.source, first.model, first.image_size
        self.train_fraction, self.setting = first.train_fraction, first.setting

    def __repr__(self):
        return (f"Cell({self.kind}, {self.condition}, {self.dataset}, source={self.source}, "
                f"seeds={self.seeds})")

    @property
    def seeds(self):
        """Replicate labels, "<tickets seed>/<transfer seed>"."""
        return [replicate_label(r.replicate) for r in self.runs]

    def levels(self):
        """Every level that at least one seed has finished, sorted."""
        return sorted({level for r in self.runs for level in r.levels})

    def n_at(self, level):
        return sum(level in r.levels for r in self.runs)

    def values(self, level, attribute):
        """Per-replicate values of a Level attribute (e.g. "density"), replicates that have
        it."""
        return np.array([getattr(r.levels[level], attribute) for r in self.runs
                         if level in r.levels])

    def by_seed(self, level, attribute):
        """{replicate: value} of a Level attribute, for the replicates that have finished
        `level` (the keys pair runs of other cells: collect.RunRecord.replicate)."""
        return {r.replicate: float(getattr(r.levels[level], attribute)) for r in self.runs
                if level in r.levels}

    def noisy_stops(self, level):
        """(flagged, recorded): the replicates whose `level` stopped early on noise, and
        those whose metrics say either way (runs before lth_keras 0.5 do not)."""
        flags = [r.levels[level].noisy_stop for r in self.runs if level in r.levels]
        return sum(f is True for f in flags), sum(f is not None for f in flags)

    def stat(self, level, attribute):
        """The Stat over searches of a Level attribute at `level`."""
        return summarize(self.by_seed(level, attribute))


def group_cells(runs):
    """Groups runs into Cells by (kind, condition, setting); refuses a seed given twice."""
    groups = {}
    for run in runs:
        key = (run.kind, run.condition, json.dumps(run.setting, sort_keys=True, default=str))
        groups.setdefault(key, []).append(run)
    for members in groups.values():
        by_seed = {}
        for run in members:
            if run.replicate in by_seed:
                raise AnalysisError(
                    f"{run.path} and {by_seed[run.replicate].path} hold the same experiment "
                    f"with the same seed {replicate_label(run.replicate)}: pass only one of "
                    "them (it would count twice)")
            by_seed[run.replicate] = run
    return [Cell(members) for _, members in sorted(groups.items(), key=lambda kv: kv[0])]


def replicate_label(replicate):
    """"<tickets seed>/<transfer seed>": "0/2" for tickets seed 0 fine-tuned with seed 2."""
    tickets_seed, seed = replicate
    return f"{tickets_seed}" if seed is None else f"{tickets_seed}/{seed}"


def distinct_labels(cells, base_labels):
    """Labels for `cells`: the base label, plus what differs where base labels collide.

    Two cells called "cifar10" whose settings differ in learning_rate become
    "cifar10 (learning_rate=0.1)" and "cifar10 (learning_rate=0.01)".
    """
    labels = list(base_labels)
    for base in set(base_labels):
        same = [i for i, b in enumerate(base_labels) if b == base]
        if len(same) < 2:
            continue
        flat = [_flatten(cells[i].setting) for i in same]
        keys = sorted({k for f in flat for k in f})
        differing = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flat}) > 1]
        for i, f in zip(same, flat):
            shown = ", ".join(f"{k}={_short(f.get(k))}" for k in differing[:3])
            more = ", ..." if len(differing) > 3 else ""
            labels[i] = f"{base} ({shown}{more})"
    return labels


def _flatten(setting, prefix=""):
    flat = {}
    for key, value in setting.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
