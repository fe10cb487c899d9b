"""What a path of fewer points would miss: the barrier of each evenly spaced subset of a
stability run's paths, against the barrier of all their points.

  python tools/path_points.py /tmp/points31            # a run of --points=31
  python tools/path_points.py /tmp/points31 --markdown  # the table for the docs

The evidence behind `stability --points`: a path evaluated at N points (N - 1 divisible by
the step) gives, for each step s, the subset of points 0, s, 2s, ..., N - 1 (both ends kept)
and its barrier, inside barrier and what it misses of the full path's barrier (never
negative: the subset's maximum is over fewer points). Errors in points; per path and split.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lth_keras.lottery.instability import error_barrier, inside_barrier  # noqa: E402


def subsets(points):
    """{number of points: the indices of the evenly spaced subset} of a path of `points`
    points, for each step that divides the intervals."""
    intervals = points - 1
    return {intervals // step + 1: list(range(0, points, step))
            for step in range(1, intervals + 1) if intervals % step == 0}


def rows(path):
    """One row per (split, subset size) of a path record (paths/*.json)."""
    alphas = np.array([p["alpha"] for p in path["points"]])
    out = []
    for split in ("val", "test"):
        accuracies = np.array([p[split]["accuracy"] for p in path["points"]])
        full = error_barrier(list(accuracies))
        for size, index in sorted(subsets(len(alphas)).items(), reverse=True):
            barrier = error_barrier(list(accuracies[index]))
            out.append({"level": path["level"], "k": path["k"], "pair": path["pair"],
                        "split": split, "points": size, "barrier": barrier,
                        "inside": inside_barrier(list(alphas[index]), list(accuracies[index])),
                        "missed": full - barrier,
                        "argmax_alpha": float(alphas[int(np.argmax(1 - accuracies))])})
    return out


def read_paths(run):
    found = sorted(glob.glob(os.path.join(run, "**", "paths", "*.json"), recursive=True))
    if not found:
        sys.exit(f"path_points: error: {run}: no paths/*.json under it")
    out = []
    for name in found:
        with open(name) as f:
            out.append(json.load(f))
    return out


def markdown(table):
    lines = ["| level | k | pair | split | points | barrier | inside | missed of the full path |",
             "|---:|---|---:|---|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['level']} | {r['k']} | {r['pair']} | {r['split']} | {r['points']} | "
                     f"{100 * r['barrier']:.2f} | {100 * r['inside']:.2f} | "
                     f"{100 * r['missed']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a stability run directory")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    options = parser.parse_args(argv)
    table = [r for path in read_paths(options.run) for r in rows(path)]
    if options.markdown:
        print(markdown(table))
        return
    for r in table:
        print(f"level {r['level']} k={r['k']} pair {r['pair']} {r['split']:>4}: "
              f"{r['points']:>3} points: barrier {100 * r['barrier']:.2f}, inside "
              f"{100 * r['inside']:.2f}, missed {100 * r['missed']:.2f} (the full path's "
              f"highest error at α = {r['argmax_alpha']:.3f})")


if __name__ == "__main__":
    main()
