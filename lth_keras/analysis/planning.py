"""Plan a study before paying for it: how many ticket searches n, and transfer seeds per
search m, detect a named effect with the wanted power, and what that costs.

The primary contrast's pair differences split their variance between searches (σ²_b)
and within a search (σ²_w, the transfer seeds' noise) (statistics.variance_components).
A study of n searches with m transfer seeds each estimates the mean difference from n
search means, each with variance σ²_b + σ²_w / m, so

  Var(mean) = (σ²_b + σ²_w / m) / n

and the one-sample t-test over searches (df = n - 1) has the power of a noncentral t
with noncentrality effect / √Var(mean) (statistics.power_of_test). More transfer seeds
only shrink σ²_w / m; more searches shrink both. For every m up to a bound, the planner
finds the smallest n with enough power, then picks the cheapest (n, m) given what a
search and what one transfer seed cost:

  cost(n, m) = n · (search + m · seed)

A search is the ticket run up to the contrast's level; a seed is what the contrast needs
per transfer seed, the ticket's transfer at that level and its scratch pair. Costs are the
pilot's own, per run, as its levels recorded them (lth_keras.costs: images, training FLOPs,
seconds); hours come from those seconds, or from images at a stated throughput.

A pilot must have at least MIN_PILOT_SEARCHES searches with at least
MIN_PILOT_SEEDS transfer seeds each, or σ²_b and σ²_w cannot both be estimated.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lth_keras.analysis.statistics import ALPHA, POWER, power_of_test
from lth_keras.errors import UserError

MIN_PILOT_SEARCHES = 3
MIN_PILOT_SEEDS = 2


class PlanningError(UserError):
    """A pilot that cannot feed the planner; the message says what it lacks."""


@dataclasses.dataclass(frozen=True)
class Cost:
    """What one unit of work costs: images trained on, training FLOPs, seconds."""

    images: float
    flops: float
    seconds: float

    def __add__(self, other):
        return Cost(self.images + other.images, self.flops + other.flops,
                    self.seconds + other.seconds)

    def __mul__(self, k):
        return Cost(self.images * k, self.flops * k, self.seconds * k)

    __rmul__ = __mul__

    def hours(self, throughput=None):
        """Hours: the pilot's seconds, or images at `throughput` images per second."""
        if throughput:
            return self.images / throughput / 3600
        return self.seconds / 3600


@dataclasses.dataclass(frozen=True)
class Design:
    searches: int
    transfer_seeds: int
    power: float
    cost: Cost | None = None


def study_power(effect, between, within, searches, transfer_seeds, alpha=ALPHA):
    """The power of the search-level t-test of a study with `searches` searches of
    `transfer_seeds` seeds each, when the true mean difference is `effect`."""
    if searches < 2:
        return 0.0
    variance = (between + within / transfer_seeds) / searches
    if variance <= 0:
        return 1.0 if effect else 0.0
    return power_of_test(effect, math.sqrt(variance), searches - 1, alpha)


def searches_needed(effect, between, within, transfer_seeds, power=POWER, alpha=ALPHA,
                    max_searches=100):
    """The smallest n (>= 2) whose power reaches `power`, or None up to max_searches. Power
    rises with n, so a bisection finds it."""
    def enough(n):
        return study_power(effect, between, within, n, transfer_seeds, alpha) >= power

    if not enough(max_searches):
        return None
    low, high = 1, max_searches  # enough(high); n = low is not a study (power 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def designs(effect, between, within, search_cost, seed_cost, *, power=POWER, alpha=ALPHA,
            max_searches=100, max_transfer_seeds=8):
    """For each m in 1..max_transfer_seeds, the Design with the fewest searches that reaches
    `power` (None where none up to max_searches does)."""
    out = []
    for m in range(1, max_transfer_seeds + 1):
        n = searches_needed(effect, between, within, m, power, alpha, max_searches)
        if n is None:
            out.append(None)
            continue
        out.append(Design(n, m, study_power(effect, between, within, n, m, alpha),
                          n * (search_cost + m * seed_cost)))
    return out


def cheapest(found, by="seconds"):
    """The Design of `found` (designs()) with the lowest cost, fewer searches on a tie."""
    candidates = [d for d in found if d is not None]
    if not candidates:
        return None
    return min(candidates, key=lambda d: (getattr(d.cost, by), d.searches))


def detectable(between, within, searches, transfer_seeds, power=POWER, alpha=ALPHA):
    """The smallest effect a study of this design detects with `power`."""
    from scipy import optimize

    if searches < 2:
        return math.nan
    high = 1e-6
    while study_power(high, between, within, searches, transfer_seeds, alpha) < power:
        high *= 2
        if high > 1e3:
            return math.nan
    return optimize.brentq(lambda e: study_power(e, between, within, searches,
                                                 transfer_seeds, alpha) - power,
                           0.0, high, xtol=1e-10)


def check_pilot(difference, target):
    """PlanningError unless the pilot's contrast has enough searches and seeds."""
    seeds = [sum(k[0] == s for k in difference.pairs) for s in difference.search_means]
    if difference.n < MIN_PILOT_SEARCHES or not seeds or min(seeds) < MIN_PILOT_SEEDS:
        raise PlanningError(
            f"{target}: the pilot has {difference.n} search(es) with "
            f"{min(seeds) if seeds else 0}-{max(seeds) if seeds else 0} transfer seeds each at "
            f"this level; the planner needs at least {MIN_PILOT_SEARCHES} searches with at "
            f"least {MIN_PILOT_SEEDS} transfer seeds each (--transfer_seeds=0,1 in its grid)")


def level_cost(levels):
    """The mean Cost of the given collect.Level objects (None where none recorded one)."""
    costed = [level for level in levels if level.images is not None]
    if not costed:
        return None
    return Cost(float(np.mean([level.images for level in costed])),
                float(np.mean([level.flops for level in costed])),
                float(np.mean([level.seconds for level in costed])))


@dataclasses.dataclass
class TargetPlan:
    target: str
    source: str
    pilot: object        # statistics.SearchDifference of the pilot's primary contrast
    seed_cost: Cost      # a transfer seed on this target: the ticket's transfer and scratch
    designs: list        # designs(): one per m, None where none reaches the power
    best: Design | None  # the cheapest
    given: Design | None = None  # the design named with --design, and its power
    given_detectable: float = math.nan


@dataclasses.dataclass
class Plan:
    level: int
    effect: float
    search_cost: Cost
    seed_cost: Cost      # a transfer seed of one study of every target: all their pairs
    targets: list
    overall: Design | None  # the cheapest design that reaches the power on every target
    throughput: float | None
    notes: list
    # One study of every target tests each primary contrast in a Holm family of them all:
    # its designs reach the power at α / family (Holm's first step, Bonferroni's level;
    # Holm's own power is at least that).
    family_alpha: float = math.nan
    # {(target, natural source): what the named design detects at family_alpha}
    given_detectable: dict = dataclasses.field(default_factory=dict)


def plan_study(roots, *, level=None, effect=0.02, power=POWER, alpha=ALPHA, design=None,
               max_searches=100, max_transfer_seeds=8, throughput=None):
    """The Plan of a study from the pilot grid under `roots`: its primary contrast at
    `level` (default: the level its grid named) on every target. `effect` is a fraction
    of accuracy (0.02: 2 points); `design`, (n, m), is a design to evaluate beside the
    cheapest."""
    from lth_keras.analysis import cells, collect, primary, views

    runs = collect.collect_runs(roots)
    record = primary.grid_plan(roots, level_given=level is not None)
    level = record.primary_level if level is None else level
    if level is None:
        raise PlanningError("no level: the pilot's grid names no primary level; give --level")
    natural = tuple(sorted(set(views.NATURAL_SOURCES) | set(record.natural)))
    found_views = views.build_views(cells.group_cells(runs), natural)
    found = [c for c in primary.contrasts(found_views, level) if c.primary]
    if not found:
        raise PlanningError(f"no ticket - scratch pair at level {level} under "
                            f"{', '.join(roots)}: the pilot must fine-tune natural tickets "
                            "and scratch on its targets")
    for c in found:
        check_pilot(c.difference, c.target)
    tickets = [r for r in runs if r.kind == "find_tickets" and r.source in natural]
    search_cost = _sum_costs([level_cost([run.levels[k]]) for run in tickets
                              for k in range(level + 1) if k in run.levels], len(tickets))
    def transfer_cost(line, at):
        return level_cost([run.levels[at] for run in line.cell.runs if at in run.levels])

    scratch_cost = {c.target: transfer_cost(c.b.line, 0) for c in found}
    ticket_cost = [transfer_cost(c.a.line, level) for c in found]
    plans = []
    for c, ticket in zip(found, ticket_cost):
        comp = c.difference.components
        # A transfer seed on this target costs its own pair: the ticket's transfer and scratch.
        seed_cost = _sum_costs([ticket, scratch_cost[c.target]], 1)
        options = designs(effect, comp.between, comp.within, search_cost, seed_cost,
                          power=power, alpha=alpha, max_searches=max_searches,
                          max_transfer_seeds=max_transfer_seeds)
        plan = TargetPlan(c.target, c.source, c.difference, seed_cost, options,
                          cheapest(options))
        if design:
            n, m = design
            plan.given = Design(n, m, study_power(effect, comp.between, comp.within, n, m,
                                                  alpha), n * (search_cost + m * seed_cost))
            plan.given_detectable = detectable(comp.between, comp.within, n, m, power, alpha)
        plans.append(plan)
    # One study serves every target: per m, the most searches any target needs at the
    # family's level; a transfer seed costs every natural line's transfer and each target's
    # scratch once, and a search runs every natural source's ticket search.
    seed_cost = _sum_costs(ticket_cost + list(scratch_cost.values()), 1)
    study_search_cost = search_cost * len({c.source for c in found})
    family_alpha = alpha / len(plans)
    overall = []
    for m in range(1, max_transfer_seeds + 1):
        needed = [searches_needed(effect, p.pilot.components.between,
                                  p.pilot.components.within, m, power, family_alpha,
                                  max_searches) for p in plans]
        if any(n is None for n in needed):
            overall.append(None)
            continue
        n = max(needed)
        overall.append(Design(n, m, min(p_power(p, n, m, effect, family_alpha) for p in plans),
                              n * (study_search_cost + m * seed_cost)))
    given = {}
    if design:
        given = {(p.target, p.source): detectable(p.pilot.components.between,
                                                  p.pilot.components.within, *design, power,
                                                  family_alpha) for p in plans}
    notes = [f"{len(tickets)} pilot ticket search(es) give the search cost (levels 0-{level})"]
    return Plan(level, effect, search_cost, seed_cost, plans, cheapest(overall), throughput,
                notes, family_alpha, given)


def p_power(plan, n, m, effect, alpha):
    comp = plan.pilot.components
    return study_power(effect, comp.between, comp.within, n, m, alpha)


def _sum_costs(costs, searches):
    """The mean per search of the levels' costs (None where a level recorded none)."""
    costs = [c for c in costs if c is not None]
    if not costs or not searches:
        raise PlanningError("the pilot's ticket runs recorded no cost (runs before lth_keras "
                            "0.5): the planner needs each level's images and seconds")
    total = costs[0]
    for c in costs[1:]:
        total = total + c
    return total * (1 / searches)


def _cost_text(cost, throughput):
    from lth_keras.costs import format_flops

    return (f"{cost.images / 1e6:.2f} M images, {format_flops(cost.flops)}, "
            f"{cost.hours(throughput):.2f} h")


def markdown(plan, power=POWER, alpha=ALPHA):
    """plan.md: the pilot's variance split, the designs per m, the cheapest, and the named
    design's power and detectable effect."""
    at = (f"at {plan.throughput:g} images/s" if plan.throughput
          else "at the pilot's own wall times")
    lines = [
        f"# Study plan: ticket − scratch at level {plan.level}, an effect of "
        f"{100 * plan.effect:.2f} points",
        "",
        f"The pilot is the grid given (`--runs`): the pilot of a study to come, or a finished "
        f"study planning the next. From its pair differences, split by a one-way "
        f"random-effects ANOVA into "
        f"the variance between searches (σ²_b) and within a search (σ²_w). A design of n "
        f"searches with m transfer seeds each has Var(mean) = (σ²_b + σ²_w / m) / n and the "
        f"power of the two-sided t-test over searches (df = n − 1, α = {alpha}) at the "
        f"named effect. Per target, a study of that target alone; the last section, one "
        f"study of them all. Each row is the fewest searches that reach {power:.0%} power "
        f"with that m; the cheapest is marked. Costs per search (the ticket run to level "
        f"{plan.level}): {_cost_text(plan.search_cost, plan.throughput)}; per transfer seed, "
        f"the ticket's transfer and its scratch on a target (under each target), on every "
        f"target for one study of them all: {_cost_text(plan.seed_cost, plan.throughput)}; "
        f"hours {at}. The pilot's variances "
        "are estimates from few searches: the plan is as good as they are.",
        "",
    ]
    for p in plan.targets:
        comp = p.pilot.components
        lines += [f"## {p.target} ({p.source} tickets)", "",
                  f"Pilot: {p.pilot.n} searches, {comp.replicates} pairs; mean difference "
                  f"{100 * p.pilot.mean:+.2f} points; σ_b {100 * math.sqrt(comp.between):.2f}, "
                  f"σ_w {100 * math.sqrt(comp.within):.2f} points; ICC {comp.icc:.2f}. A "
                  f"transfer seed here: {_cost_text(p.seed_cost, plan.throughput)}.", "",
                  "| transfer seeds m | searches n | power | cost |", "|---:|---:|---:|---|"]
        for m, d in enumerate(p.designs, start=1):
            if d is None:
                lines.append(f"| {m} | more than the bound | — | — |")
                continue
            mark = " **(cheapest)**" if d == p.best else ""
            lines.append(f"| {m} | {d.searches}{mark} | {d.power:.3f} | "
                         f"{_cost_text(d.cost, plan.throughput)} |")
        if p.given:
            g = p.given
            lines += ["", f"The design given (`--design`), {g.searches} searches × {g.transfer_seeds} transfer "
                      f"seeds: power {g.power:.3f} at {100 * plan.effect:.2f} points; it detects "
                      f"{100 * p.given_detectable:.2f} points with {power:.0%} power; "
                      f"{_cost_text(g.cost, plan.throughput)}."]
        lines.append("")
    o = plan.overall
    family = len(plan.targets)
    lines += ["## One study for every target", ""]
    if family > 1:
        lines += [f"Its primary contrasts, one per target and natural source, are one Holm "
                  f"family of {family}: each is planned at α = {alpha:g} / {family} = "
                  f"{plan.family_alpha:.4g} (Holm's first step; Holm's power is at least "
                  "this), so with as many transfer seeds it needs at least as many searches "
                  "as any target alone.", ""]
    lines += [(f"The cheapest design that reaches {power:.0%} on every target: {o.searches} "
               f"searches × {o.transfer_seeds} transfer seeds (power at least {o.power:.3f}), "
               f"{_cost_text(o.cost, plan.throughput)}." if o else
               "No design within the bounds reaches the power on every target.")]
    if plan.given_detectable and family > 1:
        (n, m), = {(p.given.searches, p.given.transfer_seeds) for p in plan.targets}
        lines += ["", f"The design given (`--design`), {n} searches × {m} transfer seeds, in one study of "
                      "every target: it detects " + ", ".join(
                          ("an effect it cannot compute (fewer than 2 searches)"
                           if math.isnan(d) else f"{100 * d:.2f} points")
                          + f" on {t} ({s} tickets)"
                          for (t, s), d in plan.given_detectable.items())
                  + f" with {power:.0%} power at α = {plan.family_alpha:.4g}."]
    return "\n".join(lines + [""])


PLAN_CSV = ("target", "tickets", "level", "effect", "transfer_seeds", "searches", "power",
            "images", "flops", "hours", "cheapest", "between_var", "within_var", "icc")


def rows(plan):
    out = []
    for p in plan.targets:
        comp = p.pilot.components
        for m, d in enumerate(p.designs, start=1):
            out.append({"target": p.target, "tickets": p.source, "level": plan.level,
                        "effect": plan.effect, "transfer_seeds": m,
                        "searches": d.searches if d else None, "power": d.power if d else None,
                        "images": d.cost.images if d else None,
                        "flops": d.cost.flops if d else None,
                        "hours": d.cost.hours(plan.throughput) if d else None,
                        "cheapest": d is not None and d == p.best,
                        "between_var": comp.between, "within_var": comp.within,
                        "icc": comp.icc})
    return out
