"""The primary result: the comparison a grid named before it ran (--primary_level).

Table 2 picks each line's best level on the same seeds it then reports, which
favours the pruned lines and leaves the pick's own noise in the p-value. A grid
that names one level in advance (`experiment --primary_level=L`, recorded in its
grid.json) gets, for every natural-source ticket line of every target:

  ticket - scratch        the primary result: level L of the rewind transfer
                          (m_L ⊙ θ_k) minus the dense model from θ_0
and, at the same pairs, secondary contrasts that say where a difference comes from:
  ticket - dense θ_k      level L minus level 0 of the same transfer: sparsity alone,
                          both starting from k epochs of source training
  dense θ_k - scratch     level 0 minus scratch: k epochs of source training alone
  ticket - reinit         level L minus the same mask from fresh weights: the
                          ticket's weights beyond its mask
  ticket - random mask    level L minus a random mask of the same per-layer density
                          from the same θ_k: which weights the ticket kept, beyond
                          its sparsity (random pruning)

each as a statistics.PairedDifference of test accuracy over replicates (tickets
seed, transfer seed), with the count of early stops on noise on either side.
"""

from __future__ import annotations

import dataclasses
import math
import os

from lth_keras import artifacts
from lth_keras.analysis.cells import replicate_label
from lth_keras.analysis.collect import AnalysisError
from lth_keras.analysis.statistics import ALPHA, POWER, PairedDifference, paired_difference
from lth_keras.lottery.directory import GRID_RECORD, LEVELS, TENSORBOARD

PRIMARY = "ticket − scratch"


@dataclasses.dataclass(frozen=True)
class Side:
    line: object  # targets.Line, or None when the view has no such line
    level: int

    def values(self):
        if self.line is None or self.level not in self.line.cell.levels():
            return {}
        return self.line.cell.by_seed(self.level, "test_accuracy")

    def noisy(self, pairs):
        """How many of `pairs` stopped early on noise on this side (None: not recorded)."""
        if self.line is None:
            return None
        flags = [run.levels[self.level].noisy_stop for run in self.line.cell.runs
                 if run.replicate in pairs and self.level in run.levels]
        return None if any(f is None for f in flags) else sum(flags)


@dataclasses.dataclass(frozen=True)
class Contrast:
    target: str
    source: str
    name: str
    level: int  # the primary level
    a: Side
    b: Side
    difference: PairedDifference

    @property
    def primary(self):
        return self.name == PRIMARY


def named_level(roots):
    """The primary level the grids under `roots` named (their grid.json), or None; two
    grids that name different levels are an AnalysisError (say which with
    --primary_level)."""
    found = {}
    for root in roots:
        for directory, subdirs, files in os.walk(root, followlinks=True):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")
                          and d not in (LEVELS, TENSORBOARD)]
            if GRID_RECORD in files:
                path = os.path.join(directory, GRID_RECORD)
                try:
                    level = artifacts.read_json(path).get("primary_level")
                except (artifacts.ArtifactError, AttributeError) as e:
                    raise AnalysisError(f"{path}: not a grid record ({e})")
                if level is not None:
                    found[path] = level
    levels = set(found.values())
    if len(levels) > 1:
        raise AnalysisError("the grids name different primary levels ("
                            + ", ".join(f"{p}: {level}" for p, level in sorted(found.items()))
                            + "): give --primary_level")
    return levels.pop() if levels else None


def _control(controls, line, condition):
    """The `condition` line among `controls` made from `line`'s tickets, or None."""
    return next((r for r in controls if r.cell.source == line.cell.source
                 and r.cell.condition == condition
                 and r.cell.setting.get("tickets") == line.cell.setting.get("tickets")), None)


def contrasts(views, level):
    """Every Contrast at `level`, the primary one first for each ticket line."""
    out = []
    for view in views:
        scratch = Side(view.baseline, 0)
        for line in view.sources:
            ticket, dense = Side(line, level), Side(line, 0)
            reinit = _control(view.reinit, line, "reinit")
            random = _control(view.random, line, "random")
            rows = [(PRIMARY, ticket, scratch), ("ticket − dense θ_k", ticket, dense),
                    ("dense θ_k − scratch", dense, scratch),
                    ("ticket − reinit", ticket, Side(reinit, level))]
            if random is not None:  # a control the paper has not: a row only where it ran
                rows.append(("ticket − random mask", ticket, Side(random, level)))
            for name, a, b in rows:
                out.append(Contrast(view.title, line.label, name, level, a, b,
                                    paired_difference(a.values(), b.values())))
    return out


def _points(x, sign=True):
    if math.isnan(x):
        return "—"
    return f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def _noisy(contrast):
    pairs = set(contrast.difference.pairs)
    a, b = contrast.a.noisy(pairs), contrast.b.noisy(pairs)
    return " / ".join("not recorded" if x is None else str(x) for x in (a, b))


def verdict(difference, name=PRIMARY):
    """One sentence on what a difference's interval says; `name` is "a − b"."""
    d = difference
    first, _, second = name.partition(" − ")
    if d.n == 0:
        return "absent: no pair has both sides"
    if d.n < 2:
        return "one pair: no interval"
    low, high = d.ci
    if low > 0:
        return f"the interval excludes 0: {first} is better"
    if high < 0:
        return f"the interval excludes 0: {second} is better"
    return (f"the interval includes 0: no difference detected; this study could detect "
            f"{100 * d.mde:.1f} points with 80% power")


def markdown(items, level, source_of_level):
    """The primary section of table2.md."""
    density = next((run.levels[level].density for c in items if c.a.line is not None
                    for run in c.a.line.cell.runs if level in run.levels), math.nan)
    lines = [
        f"# Primary result: ticket − scratch at level {level}, named in advance",
        "",
        f"Named before the grid ran ({source_of_level}): the natural-source ticket of level "
        f"{level} (density {density:.4f} of the prunable weights) fine-tuned on the target, "
        "minus the dense network trained from scratch, in points of test accuracy, paired by "
        "replicate (tickets seed/transfer seed: the same θ_0, head and target batches). 95% "
        f"CI from the t distribution; p: two-sided paired t-test; MDE: the smallest true "
        f"difference this n and the observed spread of the differences detect with "
        f"{POWER:.0%} power at α = {ALPHA} (an estimate: the spread is observed). Noisy stops: "
        "runs that stopped early on a noisy validation loss, first side / second side. "
        "Pairs that share a tickets seed share its ticket: n counts fine-tuning replicates "
        "of that many ticket searches. The secondary rows split the difference: sparsity "
        "alone (ticket − dense θ_k), k epochs of source training alone (dense θ_k − "
        "scratch), the ticket's weights beyond its mask (ticket − reinit) and, where random "
        "pruning ran, which weights the ticket kept beyond its sparsity (ticket − random mask).",
        "",
        "| target | tickets | contrast | n | mean | 95% CI | p | MDE (80% power) | "
        "noisy stops | reading |",
        "|---|---|---|---:|---:|---|---:|---:|---|---|",
    ]
    for c in items:
        d = c.difference
        name = f"**{c.name} (primary)**" if c.primary else c.name
        ci = "—" if math.isnan(d.ci[0]) else f"[{_points(d.ci[0])}, {_points(d.ci[1])}]"
        p = "—" if math.isnan(d.p) else f"{d.p:.3g}"
        lines.append(f"| {c.target} | {c.source} | {name} | {d.n} | {_points(d.mean)} | {ci} | "
                     f"{p} | {_points(d.mde, sign=False)} | {_noisy(c)} | {verdict(d, c.name)} |")
    if not items:
        lines.append("| — | — | no target has natural-source tickets | 0 | — | — | — | — | — "
                     "| absent |")
    lines.append("")
    for c in items:
        if c.primary and c.difference.n:
            pairs = ", ".join(f"{k[0]}/{k[1]}: {_points(c.a.values()[k] - c.b.values()[k])}"
                              for k in c.difference.pairs)
            lines.append(f"Per pair (tickets seed/transfer seed) of {c.target}, {c.source} "
                         f"tickets: {pairs}.")
    return "\n".join(lines) + "\n"


CSV = ("target", "tickets", "contrast", "primary", "level", "n", "mean", "sd", "ci_low",
       "ci_high", "t", "p", "mde", "noisy_a", "noisy_b", "pairs")


def rows(items):
    out = []
    for c in items:
        d, pairs = c.difference, set(c.difference.pairs)
        out.append({"target": c.target, "tickets": c.source, "contrast": c.name,
                    "primary": c.primary, "level": c.level, "n": d.n, "mean": d.mean,
                    "sd": d.sd, "ci_low": d.ci[0], "ci_high": d.ci[1], "t": d.t, "p": d.p,
                    "mde": d.mde, "noisy_a": c.a.noisy(pairs), "noisy_b": c.b.noisy(pairs),
                    "pairs": " ".join(replicate_label(k) for k in d.pairs)})
    return out
