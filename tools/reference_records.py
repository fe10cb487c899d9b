"""Copy the records behind a grid's numbers into a folder that git tracks.

  python tools/reference_records.py outputs/quick_cifar outputs/reference/quick_cifar/runs

Every finished run directory under the grid (find_tickets, transfer, stability) keeps its
tree, with only what the analysis reads: config.json, summary.csv/.md, each level's
metrics.json, a stability run's paths/*.json and report; the grid's grid.json, its
timings and each run's log (wall times, epoch by epoch). No weights, masks, checkpoints or
TensorBoard files: a few kilobytes a run. A run counts as finished when the grid's timings
record it with exit 0 (a grid without timings, not made by `experiment`, is copied
whole): a run still going when the copy is taken is left out, so that a committed copy
never holds half a run. `python -m lth_keras.analyze --runs=<copy> --mask_overlap=false`
then recomputes every table from the copy (masks are what it cannot read there). Files
that are already there and equal are left alone; the copy is atomic per file. Re-run it as
runs land.
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lth_keras import artifacts  # noqa: E402

KEPT = {"config.json", "summary.csv", "summary.md", "metrics.json", "grid.json",
        "stability.md", "stability.csv", "stability.pairs.csv", "stability.png"}
SKIPPED_DIRS = {"tensorboard", "__pycache__"}


def kept(relative):
    """Whether a file (its path relative to the grid) is a record to keep."""
    parts = relative.split(os.sep)
    name = parts[-1]
    if any(p in SKIPPED_DIRS or p.startswith(".") for p in parts):
        return False
    if parts[0] == "logs":
        return (name.startswith("timings") and name.endswith(".json")) or name.endswith(".log")
    if "paths" in parts[:-1] and name.endswith(".json"):
        return True
    return name in KEPT


def finished_runs(grid):
    """The runs the grid's timings record as finished (exit 0), or None without timings."""
    logs = os.path.join(grid, "logs")
    names = [n for n in (os.listdir(logs) if os.path.isdir(logs) else [])
             if n.startswith("timings") and n.endswith(".json")]
    if not names:
        return None
    return {run for n in names
            for run, timing in artifacts.read_json(os.path.join(logs, n))["runs"].items()
            if timing["exit"] == 0}


def copy_records(grid, destination):
    """Copies the records of `grid`'s finished runs into `destination`; returns how many
    files changed. A run is a directory that holds a config.json; its name is its path under
    the grid (tickets/<name>, transfer/<target>/<name>, stability/<name>)."""
    changed, finished = 0, finished_runs(grid)
    run_of = {}  # directory -> the run it lies in (None: outside every run)
    for directory, subdirs, files in os.walk(grid):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS and not d.startswith("."))
        relative_dir = os.path.relpath(directory, grid)
        run = run_of.get(os.path.dirname(directory))
        if run is None and "config.json" in files:
            run = relative_dir.replace(os.sep, "/")
        run_of[directory] = run
        for name in sorted(files):
            source = os.path.join(directory, name)
            relative = os.path.relpath(source, grid)
            if not kept(relative):
                continue
            if finished is not None:
                of = run or (name[:-len(".log")].replace("__", "/")
                             if relative_dir == "logs" and name.endswith(".log") else None)
                if of is not None and of not in finished:
                    continue  # going, failed, or never run by this grid
            target = os.path.join(destination, relative)
            with open(source, "rb") as f:
                data = f.read()
            if os.path.exists(target):
                with open(target, "rb") as f:
                    if f.read() == data:
                        continue
            artifacts.write_bytes(target, data)
            changed += 1
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="a grid's --output_dir")
    parser.add_argument("destination", help="where the records go (tracked by git)")
    options = parser.parse_args(argv)
    if not os.path.isdir(options.grid):
        sys.exit(f"reference_records: error: {options.grid}: no such directory")
    changed = copy_records(options.grid, options.destination)
    print(f"{changed} file(s) written under {options.destination}")


if __name__ == "__main__":
    main()
