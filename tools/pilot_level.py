"""The primary level a pilot grid names for its study, by a rule written before the pilot ran.

  python tools/pilot_level.py --runs=outputs/quick_cifar_pilot --candidates=3,5,7

Of the candidate levels, the one whose natural-source ticket transfers have the highest
mean VALIDATION accuracy (never test) over every target, ticket search and transfer seed
of the pilot: each target's mean over its searches (each search's transfer seeds averaged
first), then the mean over targets, so that every target weighs the same. Ties go to the
sparser level. Prints a table of the candidates and the level chosen; the pilot's own
seeds must not be the study's (flags/quick_cifar_pilot_grid.cfg uses 100-102).
"""

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lth_keras.analysis import cells, collect, primary, views  # noqa: E402
from lth_keras.errors import UserError  # noqa: E402


def candidate_means(roots, candidates):
    """{level: {target view: mean validation accuracy}} of the natural tickets: per view the
    mean over its natural sources, each the mean over searches."""
    runs = collect.collect_runs(roots)
    plan = primary.grid_plan(roots)
    natural = tuple(sorted(set(views.NATURAL_SOURCES) | set(plan.natural)))
    out = {level: {} for level in candidates}
    for view in views.build_views(cells.group_cells(runs), natural):
        for level in candidates:
            by_source = [line.cell.stat(level, "val_accuracy").mean for line in view.sources
                         if line.cell.source in natural and level in line.cell.levels()]
            if by_source:
                out[level][view.title] = float(np.mean(by_source))
    return out


def choose(means):
    """The level of the highest mean over targets (ties: the sparser, higher level). Only a
    level that every target has competes: a mean over fewer targets is another quantity."""
    targets = {t for by_target in means.values() for t in by_target}
    complete = {level: float(np.mean([by_target[t] for t in sorted(targets)]))
                for level, by_target in means.items() if by_target and set(by_target) == targets}
    if not complete:
        raise UserError("no candidate level has a natural ticket transfer on every target of "
                        "the pilot")
    return max(complete, key=lambda level: (complete[level], level)), complete


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="the pilot grid's directory")
    parser.add_argument("--candidates", required=True, help="comma list of levels")
    options = parser.parse_args(argv)
    candidates = [int(x) for x in options.candidates.split(",")]
    try:
        means = candidate_means([options.runs], candidates)
        level, overall = choose(means)
    except UserError as e:
        sys.exit(f"pilot_level: error: {e}")
    targets = sorted({t for by_target in means.values() for t in by_target})
    print("| level | " + " | ".join(targets) + " | mean over targets |")
    print("|---:|" + "---:|" * (len(targets) + 1))
    for candidate in candidates:
        row = [f"{100 * means[candidate][t]:.2f}" if t in means[candidate] else "—"
               for t in targets]
        mean = f"{100 * overall[candidate]:.2f}" if candidate in overall else "—"
        print(f"| {candidate} | " + " | ".join(row) + f" | {mean} |")
    print(f"\nprimary level: {level} (validation accuracy of the ticket transfers)")


if __name__ == "__main__":
    main()
