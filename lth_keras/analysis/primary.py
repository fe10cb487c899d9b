"""The primary result: the comparison a grid named before it ran (--primary_level), and the
exploratory contrasts beside it, with the ticket search as the unit.

Table 2 picks each line's best level on the same searches it then reports, which
favours the pruned lines and leaves the pick's own noise in the p-value. A grid
that names one level in advance (`experiment --primary_level=L`, recorded in its
grid.json) gets, for every natural-source ticket line of every target:

  ticket − scratch          THE PRIMARY CONTRAST: level L of the rewind transfer
                            (m_L ⊙ θ_k, a fresh head) minus the dense model from θ_0
and, at the same level, exploratory contrasts that say where a difference comes from:
  ticket − dense θ_k        level L minus level 0 of the same transfer: sparsity alone,
                            both starting from k epochs of source training
  dense θ_k − scratch       level 0 minus scratch: k epochs of source training alone
  ticket − reinit           level L minus the same mask from fresh weights: the
                            ticket's weights beyond its mask
  ticket − random mask      level L minus a random mask of the same per-layer density
                            from the same θ_k: which weights it kept, beyond its sparsity
  ticket − target ticket    level L minus the target's own tickets of level L, fine-tuned
                            on the target the same way (grid condition target_transfer)
and, when the grid names a domain contrast A:B (--domain_contrast), one across targets:
  (ticket − target ticket) on A − the same on B, per search: the paper's second finding
                            (natural tickets lose to target tickets on pathology, win on art)

Every side is compared like with like: the views (analysis/views.py) never mix
recipes, and every side of a contrast starts with a fresh head. Each contrast is a
statistics.SearchDifference of test accuracy (the search as the unit, its transfer seeds
averaged first). The primary contrasts are one family and get verdicts at p_holm < 0.05
(Holm over the family; one target's primary has p_holm = p). Every other contrast is one
exploratory family, reported with its Holm-adjusted p and no verdict. A primary
contrast's detectable effect is at α / k (Holm's first step over k primary contrasts),
the level its verdict needs; an exploratory one's at α.
"""

from __future__ import annotations

import dataclasses
import math
import os

from lth_keras import artifacts
from lth_keras.analysis.cells import replicate_label
from lth_keras.analysis.collect import AnalysisError
from lth_keras.analysis.statistics import (ALPHA, MIN_SEARCHES_FOR_MDE, POWER, SearchDifference,
                                           detectable_text, holm,
                                           minimum_detectable_effect, search_difference,
                                           search_means)
from lth_keras.lottery.directory import GRID_RECORD, LEVELS, TENSORBOARD

PRIMARY = "ticket − scratch"
TARGET_TICKET = "ticket − target ticket"
PRIMARY_FAMILY, EXPLORATORY = "primary", "exploratory"


@dataclasses.dataclass(frozen=True)
class Side:
    line: object  # views.Line, or None when the view has no such line
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


@dataclasses.dataclass
class Contrast:
    target: str
    source: str
    name: str
    level: int  # the primary level
    a: Side | None  # None for a contrast across targets
    b: Side | None
    difference: SearchDifference
    family: str = EXPLORATORY
    p_holm: float = math.nan
    mde_alpha: float = ALPHA  # the level difference.mde is at: its verdict's, for a primary

    @property
    def primary(self):
        return self.family == PRIMARY_FAMILY


@dataclasses.dataclass(frozen=True)
class GridPlan:
    """What the grids under the analysed roots named before they ran (their grid.json)."""

    primary_level: int | None = None
    natural: tuple = ()            # the grids' natural sources, by dataset label
    domain_contrast: tuple = None  # (A, B): the targets of the named cross-target contrast
    where: str = ""                # the grid.json files that say so
    named_levels: tuple = ()       # every primary level the grids name (several: disagreeing)


def grid_plan(roots, level_given=False):
    """The GridPlan of every grid.json under `roots`; grids that name different primary
    levels (unless the caller names the level: `level_given`) or domain contrasts are an
    AnalysisError."""
    records = {}
    for root in roots:
        for directory, subdirs, files in os.walk(root, followlinks=True):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")
                          and d not in (LEVELS, TENSORBOARD)]
            if GRID_RECORD in files:
                path = os.path.join(directory, GRID_RECORD)
                try:
                    record = artifacts.read_json(path)
                    record.get("primary_level")
                except (artifacts.ArtifactError, AttributeError) as e:
                    raise AnalysisError(f"{path}: not a grid record ({e})")
                records[path] = record
    levels = {p: r["primary_level"] for p, r in records.items()
              if r.get("primary_level") is not None}
    if len(set(levels.values())) > 1 and not level_given:
        raise AnalysisError("the grids name different primary levels ("
                            + ", ".join(f"{p}: {level}" for p, level in sorted(levels.items()))
                            + "): give --primary_level")
    contrasts = {p: tuple(r["domain_contrast"]) for p, r in records.items()
                 if r.get("domain_contrast")}
    if len(set(contrasts.values())) > 1:
        raise AnalysisError("the grids name different domain contrasts ("
                            + ", ".join(f"{p}: {':'.join(c)}" for p, c in sorted(contrasts.items()))
                            + ")")
    natural = sorted({os.path.basename(os.path.normpath(s)) for r in records.values()
                      for s in r.get("natural_sources", ())})
    return GridPlan(next(iter(levels.values()), None), tuple(natural),
                    next(iter(contrasts.values()), None),
                    ", ".join(sorted(levels)) or ", ".join(sorted(records)),
                    tuple(sorted(set(levels.values()))))


# How the level of the primary result was named (how_named): recorded in the grids before
# they ran; given at analysis where no grid names one (verdicts on the caller's word); or
# given against the grids' (no primary contrast: exploratory).
IN_ADVANCE, AT_ANALYSIS, NOT_NAMED = "named in advance", "named at analysis", "not named"


def how_named(plan, given=None):
    """(level, a sentence saying where it comes from, IN_ADVANCE / AT_ANALYSIS /
    NOT_NAMED) of the primary result. `given` is analyze's --primary_level (None: the level
    the grids' records name)."""
    where = plan.where
    if given is None:
        if plan.primary_level is None:
            return None, "", NOT_NAMED
        return plan.primary_level, f"Named before the grid ran (grid.json: {where}).", IN_ADVANCE
    if not plan.named_levels:
        return given, (f"Given at analysis (--primary_level={given}): no grid record under "
                       "these runs names a primary level, so nothing here shows that it was "
                       "chosen before their results were seen; the verdicts below hold only "
                       "if it was."), AT_ANALYSIS
    if plan.named_levels == (given,):
        return given, (f"Named before the grid ran (grid.json: {where}), and given again at "
                       f"analysis (--primary_level={given})."), IN_ADVANCE
    named = ", ".join(map(str, plan.named_levels))
    return given, (f"The grids under these runs named level {named} before they ran ({where}); "
                   f"level {given} was given at analysis (--primary_level={given}), so its "
                   "ticket − scratch is exploratory, with no verdict, like every other row."), \
        NOT_NAMED


def _control(controls, line, condition):
    """The `condition` line among `controls` made from `line`'s tickets, or None."""
    return next((r for r in controls if r.cell.source == line.cell.source
                 and r.cell.condition == condition
                 and r.cell.setting.get("tickets") == line.cell.setting.get("tickets")), None)


def _target_ticket_line(view):
    """The target's own tickets fine-tuned on it like the natural ones (rewind), or None."""
    return next((line for line in view.sources if line.cell.source == view.target), None)


def contrasts(views, level, domain_contrast=None, named_in_advance=True):
    """Every Contrast at `level`: for each natural ticket line the primary first, then the
    exploratory ones, then the domain contrast; p_holm filled in per family. A level not
    named in advance (`named_in_advance` False) has no primary contrast: its ticket −
    scratch rows are exploratory like the rest."""
    out = []
    # {(model, size, recipe, source): {target: (line, target ticket line)}}: the domain
    # contrast compares two targets only within one architecture and recipe.
    natural_lines = {}
    for view in views:
        target_ticket = _target_ticket_line(view)
        for line in view.sources:
            if line.cell.source not in view.natural:
                continue
            ticket, dense = Side(line, level), Side(line, 0)
            scratch = Side(view.baseline, 0)
            rows = [(PRIMARY, ticket, scratch), ("ticket − dense θ_k", ticket, dense),
                    ("dense θ_k − scratch", dense, scratch),
                    ("ticket − reinit", ticket, Side(_control(view.reinit, line, "reinit"),
                                                     level))]
            random = _control(view.random, line, "random")
            if random is not None:  # controls the paper has not: a row only where they ran
                rows.append(("ticket − random mask", ticket, Side(random, level)))
            if target_ticket is not None:
                rows.append((TARGET_TICKET, ticket, Side(target_ticket, level)))
                key = (view.model, view.image_size, view.recipe, line.cell.source)
                natural_lines.setdefault(key, {})[view.target] = (line, target_ticket)
            for name, a, b in rows:
                out.append(Contrast(view.title, line.label, name, level, a, b,
                                    search_difference(a.values(), b.values()),
                                    PRIMARY_FAMILY if name == PRIMARY and named_in_advance
                                    else EXPLORATORY))
    if domain_contrast:  # one per natural source, architecture and recipe both targets have
        first, second = domain_contrast
        both = [key for key, lines in natural_lines.items()
                if first in lines and second in lines]
        for key in sorted(both, key=lambda k: (k[3], k[0], k[1], k[2])):
            out.append(_domain(natural_lines[key], level, first, second))
        if not both:  # said plainly rather than left out
            out.append(Contrast(f"{first} vs {second}", "—", _domain_name(first, second),
                                level, None, None, search_difference({}, {})))
    for family in (PRIMARY_FAMILY, EXPLORATORY):
        # A contrast with no search at all (a control that never ran) is absent, not a
        # member; one that ran but cannot be tested (one search, no spread) still counts.
        members = [c for c in out if c.family == family and c.difference.n >= 1]
        for c, p in zip(members, holm([c.difference.p for c in members])):
            c.p_holm = p
        if family == PRIMARY_FAMILY and len(members) > 1:
            # A verdict among k needs p < α/k at Holm's first step: what a primary contrast
            # can detect is at that level (the planner's), not at α.
            for c in members:
                c.mde_alpha = ALPHA / len(members)
                d = c.difference
                if d.mde_estimable and not math.isnan(d.mde):
                    c.difference = dataclasses.replace(d, mde=minimum_detectable_effect(
                        d.sd, d.n, c.mde_alpha, POWER))
    return out


def _domain_name(first, second):
    return f"({TARGET_TICKET}) on {first} − on {second}"


def _domain(lines, level, first, second):
    """(ticket − target ticket) on `first` minus the same on `second`, per search, for one
    natural source's tickets ({target: (line, target ticket line)})."""
    # Per search, each target's (ticket − target ticket) averaged over its own replicates:
    # a transfer seed on one target has nothing to do with the same seed on the other, and
    # the targets may have different seeds.
    gaps = []
    for target in (first, second):
        line, target_ticket = lines[target]
        a, b = Side(line, level).values(), Side(target_ticket, level).values()
        gaps.append(search_means({k: a[k] - b[k] for k in set(a) & set(b)}))
    return Contrast(f"{first} vs {second}", lines[first][0].label, _domain_name(first, second),
                    level, None, None, search_difference(*gaps))


def _points(x, sign=True):
    if x is None or math.isnan(x):
        return "—"
    return f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def _noisy(contrast):
    if contrast.a is None:
        return "—"
    pairs = set(contrast.difference.pairs)
    a, b = contrast.a.noisy(pairs), contrast.b.noisy(pairs)
    return " / ".join("not recorded" if x is None else str(x) for x in (a, b))


def verdict(contrast):
    """The reading of a contrast: a verdict for a primary one (at p_holm < ALPHA), the word
    "exploratory" for the others."""
    d = contrast.difference
    if d.n == 0:
        return "absent: no search has both sides"
    if contrast.family != PRIMARY_FAMILY:
        return "exploratory"
    first, _, second = contrast.name.partition(" − ")
    if d.n < 2:
        return "one search: no interval, no verdict"
    if math.isnan(d.p):
        return "every search gives the same difference: no spread to test, no verdict"
    if contrast.p_holm < ALPHA:
        better = first if d.mean > 0 else second
        return f"detected (p_holm < {ALPHA}): {better} is better"
    if d.mde_estimable and not math.isnan(d.mde):
        return (f"no difference detected; this study could detect {100 * d.mde:.1f} points "
                f"with {POWER:.0%} power at α = {contrast.mde_alpha:g}")
    return f"no difference detected; what it could detect is not estimable (n = {d.n})"


def _icc(d):
    c = d.components
    if math.isnan(c.icc):
        return "—"
    return f"{c.icc:.2f} ({c.design_effect:.2f})"


def markdown(items, level, how_named, naming=IN_ADVANCE):
    """primary.md (and the head of table2.md). `how_named` says, in a sentence, where the
    level comes from; the title says how it was named (`naming`, from how_named)."""
    density = next((run.levels[level].density for c in items if c.a is not None
                    and c.a.line is not None for run in c.a.line.cell.runs
                    if level in run.levels), math.nan)
    title = (f"# Primary result: ticket − scratch at level {level}, {naming}"
             if naming != NOT_NAMED else
             f"# Ticket − scratch at level {level}: not the level named in advance, "
             "exploratory")
    lines = [
        title,
        "",
        f"{how_named} The contrast: the natural-source ticket of level "
        f"{level} (density {density:.4f} of the prunable weights) fine-tuned on the target "
        "with a fresh head, minus the dense network trained from scratch, in points of test "
        "accuracy. **The unit is the ticket search**: a search's transfer seeds share its "
        "θ_0, masks and θ_k, so each search's differences are averaged over its transfer "
        "seeds first, and the interval, test and power are over searches (df = searches − 1). "
        "95% CI from the t distribution; p: two-sided one-sample t-test of the search means; "
        "p_holm: Holm-adjusted within its family. Detectable: the smallest true difference "
        f"this many searches detect with {POWER:.0%} power, given the observed spread, at the "
        f"level a verdict needs: for a primary contrast α = {ALPHA} / k, Holm's first step "
        f"over the k primary contrasts (the planner's level), for an exploratory one "
        f"α = {ALPHA}, unadjusted (it gets no verdict); below {MIN_SEARCHES_FOR_MDE} "
        "searches it is not estimable. ICC: the share "
        "of the pair differences' variance that lies between searches (one-way random "
        "effects, truncated at 0), with the design effect 1 + (m₀ − 1)·ICC in brackets; "
        "where the ICC is high more searches narrow the interval, where it is low more "
        "transfer seeds also do. Noisy stops: runs that stopped early on a noisy "
        "validation loss, first side / second side.",
        "",
        "Only the primary contrasts get a verdict (at p_holm < 0.05, Holm over the primary "
        "contrasts, one per target and natural source). Every other row is exploratory: one "
        "family over every target, its p Holm-adjusted, no verdict. The rows split the "
        "difference: sparsity alone "
        "(ticket − dense θ_k), k epochs of source training alone (dense θ_k − scratch), the "
        "ticket's weights beyond its mask (ticket − reinit), which weights it kept beyond its "
        "sparsity (ticket − random mask), and the natural ticket against the target's own "
        "tickets (ticket − target ticket).",
        "",
        "| target | tickets | contrast | searches × seeds | mean | 95% CI | p | p_holm | "
        "detectable (80%) | ICC (design effect) | noisy stops | reading |",
        "|---|---|---|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for c in items:
        d = c.difference
        name = f"**{c.name} (primary)**" if c.primary else c.name
        ci = "—" if math.isnan(d.ci[0]) else f"[{_points(d.ci[0])}, {_points(d.ci[1])}]"
        p = "—" if math.isnan(d.p) else f"{d.p:.3g}"
        p_holm = "—" if math.isnan(c.p_holm) else f"{c.p_holm:.3g}"
        size = f"{d.n} × {d.transfer_seeds}" if d.n else "0"
        lines.append(f"| {c.target} | {c.source} | {name} | {size} | {_points(d.mean)} | {ci} "
                     f"| {p} | {p_holm} | {detectable_text(d)} | {_icc(d)} | {_noisy(c)} | "
                     f"{verdict(c)} |")
    if not items:
        lines.append("| — | — | no target has natural-source tickets | 0 | — | — | — | — | — "
                     "| — | — | absent |")
    lines.append("")
    for c in items:
        if c.primary and c.difference.n:
            d, comp = c.difference, c.difference.components
            means = ", ".join(f"{s}: {_points(m)}" for s, m in d.search_means.items())
            lines.append(f"Per search (tickets seed: mean over its transfer seeds) of "
                         f"{c.target}, {c.source} tickets: {means}.")
            if not math.isnan(comp.within):
                between = ("—" if math.isnan(comp.between)
                           else f"{100 * math.sqrt(comp.between):.2f}")
                lines.append(f"Variance of its {comp.replicates} pair differences: between "
                             f"searches sd {between} points, within searches sd "
                             f"{100 * math.sqrt(comp.within):.2f} points, m₀ "
                             f"{comp.m0:.2f}." if not math.isnan(comp.m0) else
                             f"Within searches sd {100 * math.sqrt(comp.within):.2f} points.")
            lines.append("")
    return "\n".join(lines) + "\n"


CSV = ("target", "tickets", "contrast", "primary", "level", "n", "mean", "sd", "ci_low",
       "ci_high", "t", "p", "mde", "noisy_a", "noisy_b", "pairs", "unit", "searches",
       "transfer_seeds", "icc", "design_effect", "between_var", "within_var", "family",
       "p_holm", "mde_alpha")


def rows(items):
    """primary.csv: one dict per contrast. n counts pairs (replicates); searches the units."""
    out = []
    for c in items:
        d, pairs = c.difference, set(c.difference.pairs)
        comp = d.components
        out.append({"target": c.target, "tickets": c.source, "contrast": c.name,
                    "primary": c.primary, "level": c.level, "n": len(d.pairs),
                    "mean": d.mean, "sd": d.sd, "ci_low": d.ci[0], "ci_high": d.ci[1],
                    "t": d.t, "p": d.p, "mde": d.mde,
                    "noisy_a": c.a.noisy(pairs) if c.a else None,
                    "noisy_b": c.b.noisy(pairs) if c.b else None,
                    "pairs": " ".join(replicate_label(k) for k in d.pairs),
                    "unit": "search", "searches": d.n, "transfer_seeds": d.transfer_seeds,
                    "icc": comp.icc, "design_effect": comp.design_effect,
                    "between_var": comp.between, "within_var": comp.within,
                    "family": c.family, "p_holm": c.p_holm, "mde_alpha": c.mde_alpha})
    return out
