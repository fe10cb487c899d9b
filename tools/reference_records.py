"""Copy the records behind a grid's numbers into a folder that git tracks.

  python tools/reference_records.py outputs/quick_cifar outputs/reference/quick_cifar/runs

Every finished run directory under the grid (find_tickets, transfer, stability) keeps its
tree, with only what the analysis reads: config.json, summary.csv/.md, each level's
metrics.json, a stability run's paths/*.json; with it, its log from the grid's
logs/ (wall times, epoch by epoch); and the grid's grid.json and timings. No weights,
masks, checkpoints or TensorBoard files: a few kilobytes a run. A run is finished when it
holds every level (or path) its own record chose and no process holds its lock: a run
still going, or cut short, is left out, so that a copy taken while a grid runs never holds
half a run. `python -m lth_keras.analyze --runs=<copy> --mask_overlap=false` then
recomputes every table from the copy (masks are what it cannot read there). A stability
run's report (stability.md/.csv/.pairs.csv/.png) is not copied but written anew in the copy
from its paths, by this checkout's rules: a grid running in a worktree at an older commit
would otherwise bring back the report its own code wrote. Files that are already there and
equal are left alone; the copy is atomic per file. Re-run it as runs land.
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lth_keras import artifacts  # noqa: E402
from lth_keras.analysis import stability_report  # noqa: E402
from lth_keras.grid import finished_as_recorded  # noqa: E402
from lth_keras.lottery.directory import StabilityRun, in_use  # noqa: E402

KEPT = {"config.json", "summary.csv", "summary.md", "metrics.json", "grid.json"}
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
    """{run name: run directory} of the finished runs under `grid`. A run is a directory that
    holds a config.json; its name is its path under the grid (tickets/<name>,
    transfer/<target>/<name>, stability/<name>), as the grid names its log."""
    out = {}
    for directory, subdirs, files in os.walk(grid):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS and not d.startswith("."))
        if "config.json" in files:
            subdirs[:] = []  # a run's own folders hold no other run
            if finished_as_recorded(directory) and not in_use(directory):
                out[os.path.relpath(directory, grid).replace(os.sep, "/")] = directory
    return out


def copy_records(grid, destination):
    """Copies the records of `grid`'s finished runs into `destination`; returns how many
    files changed."""
    grid = os.path.normpath(grid)
    runs = finished_runs(grid)
    sources = []
    for directory in runs.values():
        for where, subdirs, files in os.walk(directory):
            subdirs[:] = sorted(d for d in subdirs
                                if d not in SKIPPED_DIRS and not d.startswith("."))
            sources += [os.path.join(where, name) for name in sorted(files)]
    logs = {name.replace("/", "__") + ".log": name for name in runs}
    outside = [os.path.join(grid, "grid.json")] + sorted(
        os.path.join(grid, "logs", name) for name in
        (os.listdir(os.path.join(grid, "logs")) if os.path.isdir(os.path.join(grid, "logs"))
         else []) if name in logs or (name.startswith("timings") and name.endswith(".json")))
    changed = 0
    for source in sources + [p for p in outside if os.path.exists(p)]:
        relative = os.path.relpath(source, grid)
        if not kept(relative):
            continue
        target = os.path.join(destination, relative)
        with open(source, "rb") as f:
            data = f.read()
        changed += _write_if_changed(target, data)
    for name, directory in runs.items():
        if StabilityRun(directory).kind == "stability":
            changed += _render_stability_report(os.path.join(destination, name))
    return changed


def _write_if_changed(target, data):
    """Writes `data` to `target` atomically unless it already holds it; 1 if written."""
    if os.path.exists(target):
        with open(target, "rb") as f:
            if f.read() == data:
                return 0
    artifacts.write_bytes(target, data)
    return 1


def _render_stability_report(directory):
    """Writes the report of the stability run copied to `directory` from its paths, with
    the threshold it was made with; returns how many files changed."""
    run = StabilityRun(directory)
    _, out, _ = stability_report.report(run, stability_report.threshold_of(run))
    return sum(_write_if_changed(run.file(name), out[suffix])
               for suffix, name in stability_report.REPORT_FILES.items() if suffix in out)


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
