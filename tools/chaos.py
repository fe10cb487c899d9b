"""Crash safety: kill find_tickets with SIGKILL at random points, resume, compare.

  python tools/chaos.py --kills=5 -- --source=fashion_mnist --flagfile=flags/quick.cfg \
      --rounds=2 --train_fraction=0.01

1. An uninterrupted --deterministic run gives the reference (and its duration).
2. The same command is started again and again in a second directory and killed
   with SIGKILL: at seeded random times over the reference's training time (so
   across epochs and levels), and right after a pruning boundary (a level's
   mask.npz appears). Between kills, every artifact must be readable.
   Only kills that land count: the loop goes on until --kills have, and fails if
   the run finished first.
3. A last start finishes the run. Every artifact (θ_0, θ_k, each level's mask and
   θ_i) must equal the reference's bit for bit, and its metrics must be equal but
   for wall-clock fields.
Exit status 0 when all holds; the report goes to <workdir>/chaos.json.
"""

import argparse
import glob
import os
import random
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lth_keras import artifacts  # noqa: E402  (numpy only: no TensorFlow here)


def _command(args, output_dir):
    return [sys.executable, "-m", "lth_keras.find_tickets", *args, f"--output_dir={output_dir}",
            "--deterministic"]


def _wait_for(path_pattern, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if glob.glob(path_pattern):
            return True
        time.sleep(0.01)
    return False


def check_readable(run_dir):
    """Every artifact of the run directory loads.

    A writer killed midway leaves its hidden temp file (the artifact itself is
    untouched); the next start removes those, so only the end checks for them.
    """
    problems = []
    for root, _, files in os.walk(run_dir):
        if "tensorboard" in root.split(os.sep):
            continue
        for name in files:
            path = os.path.join(root, name)
            try:
                if name.endswith(".npz"):
                    artifacts.read_arrays(path)
                elif name.endswith(".json"):
                    artifacts.read_json(path)
            except artifacts.ArtifactError as e:
                problems.append(str(e))
    return problems


def _comparable(metrics):
    """Metrics without wall-clock fields."""
    metrics = dict(metrics)
    if "history" not in metrics:  # not a level's metrics
        return metrics
    metrics["history"] = [{k: v for k, v in epoch.items() if k != "seconds"}
                          for epoch in metrics["history"]]
    if "cost" in metrics:
        metrics["cost"] = {k: v for k, v in metrics["cost"].items() if k != "seconds"}
    return metrics


def _artifacts(run_dir):
    """The relative paths of every artifact of a finished run (θ_0, θ_k, and each level's
    mask, trained weights and metrics)."""
    found = []
    for root, _, files in os.walk(run_dir):
        if "tensorboard" in os.path.relpath(root, run_dir).split(os.sep):
            continue
        found += [os.path.relpath(os.path.join(root, f), run_dir) for f in files
                  if f.endswith((".npz", ".json")) and f != "config.json"]
    return sorted(found)


def compare(reference_dir, chaos_dir):
    """Every artifact of the two runs: arrays by digest, metrics without wall-clock fields."""
    names = _artifacts(reference_dir)
    if names != _artifacts(chaos_dir):
        return [f"artifacts differ: {sorted(set(names) ^ set(_artifacts(chaos_dir)))}"]
    differences = []
    for name in names:
        a, b = (os.path.join(d, name) for d in (reference_dir, chaos_dir))
        if name.endswith(".npz"):
            x, y = artifacts.read_arrays(a), artifacts.read_arrays(b)
            same = x.keys() == y.keys() and all(
                artifacts.array_digest(x[k]) == artifacts.array_digest(y[k]) for k in x)
        else:
            same = _comparable(artifacts.read_json(a)) == _comparable(artifacts.read_json(b))
        if not same:
            differences.append(f"{name} differs")
    return differences


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="fixes the kill times")
    parser.add_argument("--workdir", default=os.path.join("outputs", "chaos"))
    parser.add_argument("find_tickets_args", nargs="*", help="after --: find_tickets flags")
    options = parser.parse_args()
    rng = random.Random(options.seed)
    reference_dir = os.path.join(options.workdir, "reference")
    chaos_dir = os.path.join(options.workdir, "chaos")
    for path in (reference_dir, chaos_dir):
        if os.path.exists(path):
            artifacts.remove_tree(path)

    # 1. The reference, timed from its first artifact (TensorFlow's import is not training).
    proc = subprocess.Popen(_command(options.find_tickets_args, reference_dir), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(os.path.join(reference_dir, "theta_0.npz"), proc, 600)
    started = time.time()
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"chaos: the reference run failed: {stderr.strip().splitlines()[-1:]}")
    training_seconds = time.time() - started

    # 2. Kills: one right after the first pruning boundary, the rest at random times within
    # a share of the training time, so that --kills of them land before the run is done.
    # Only kills that land count; a start that finishes before its kill is no kill.
    report = {"kills": [], "training_seconds": training_seconds}
    landed, finished = 0, False
    for attempt in range(4 * options.kills):
        if landed == options.kills:
            break
        proc = subprocess.Popen(_command(options.find_tickets_args, chaos_dir), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not _wait_for(os.path.join(chaos_dir, "theta_0.npz"), proc, 600):
            break  # finished (or failed) before training started: nothing left to kill
        if attempt == 0:
            point = "after the pruning of level 1"
            _wait_for(os.path.join(chaos_dir, "levels", "level_01", "mask.npz"), proc, 600)
        else:
            delay = rng.uniform(0, training_seconds / options.kills)
            point = f"{delay:.2f} s into training"
            time.sleep(delay)
        if proc.poll() is not None:
            report["kills"].append({"point": point, "killed": False})
            if proc.returncode == 0:
                finished = True
                break  # the run is done: no kill can land any more
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        landed += 1
        levels = sorted(glob.glob(os.path.join(chaos_dir, "levels", "level_*", "metrics.json")))
        problems = check_readable(chaos_dir)
        report["kills"].append({"point": point, "killed": True,
                                "finished_levels": len(levels), "unreadable": problems})
        print(f"kill {landed}: {point}, {len(levels)} level(s) finished, "
              f"{len(problems)} unreadable artifact(s)", flush=True)
    report["kills_landed"] = landed

    # 3. Finish (unless a start already did) and compare.
    if not finished:
        done = subprocess.run(_command(options.find_tickets_args, chaos_dir), cwd=REPO,
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"chaos: the resumed run failed: {done.stderr.strip().splitlines()[-1:]}")
    report["unreadable_at_end"] = check_readable(chaos_dir) + [
        f"{path}: a temp file outlived its writer"
        for path in glob.glob(os.path.join(chaos_dir, "**", ".*.tmp"), recursive=True)]
    report["differences"] = compare(reference_dir, chaos_dir)
    report["identical"] = not report["differences"]
    ok = report["identical"] and not report["unreadable_at_end"] and not any(
        k.get("unreadable") for k in report["kills"]) and landed == options.kills
    artifacts.write_json(os.path.join(options.workdir, "chaos.json"), report)
    print(f"{landed} of {options.kills} kills landed; every artifact "
          f"{'identical to' if report['identical'] else 'DIFFERENT from'} the "
          f"uninterrupted run's; report: {os.path.join(options.workdir, 'chaos.json')}")
    if landed < options.kills:
        print(f"chaos: only {landed} of {options.kills} kills landed before the run finished: "
              "give it a longer run (more rounds or epochs) or fewer --kills", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
