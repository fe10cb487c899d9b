"""Crash safety: kill find_tickets with SIGKILL at random points, resume, compare.

  python tools/chaos.py --kills=5 -- --source=fashion_mnist --flagfile=flags/quick.cfg \
      --rounds=2 --train_fraction=0.01

1. An uninterrupted --deterministic run gives the reference (and its duration).
2. The same command is started again and again in a second directory and killed
   with SIGKILL: at seeded random times over the reference's training time (so
   across epochs and levels), and right after a pruning boundary (a level's
   mask.npz appears). Between kills, every artifact must be readable.
3. A last start finishes the run. Its masks must equal the reference's bit for
   bit, and its metrics must be equal but for wall-clock fields.
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
    metrics["history"] = [{k: v for k, v in epoch.items() if k != "seconds"}
                          for epoch in metrics["history"]]
    if "cost" in metrics:
        metrics["cost"] = {k: v for k, v in metrics["cost"].items() if k != "seconds"}
    return metrics


def compare(reference_dir, chaos_dir):
    differences = []
    levels = sorted(os.listdir(os.path.join(reference_dir, "levels")))
    if levels != sorted(os.listdir(os.path.join(chaos_dir, "levels"))):
        return [f"levels differ: {levels}"]
    for level in levels:
        a = artifacts.read_arrays(os.path.join(reference_dir, "levels", level, "mask.npz"))
        b = artifacts.read_arrays(os.path.join(chaos_dir, "levels", level, "mask.npz"))
        if a.keys() != b.keys() or any((a[k] != b[k]).any() for k in a):
            differences.append(f"{level}: masks differ")
        ma = artifacts.read_json(os.path.join(reference_dir, "levels", level, "metrics.json"))
        mb = artifacts.read_json(os.path.join(chaos_dir, "levels", level, "metrics.json"))
        if _comparable(ma) != _comparable(mb):
            differences.append(f"{level}: metrics differ")
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

    # 2. Kills: one right after the first pruning boundary, the rest at random times.
    report = {"kills": [], "training_seconds": training_seconds}
    for i in range(options.kills):
        proc = subprocess.Popen(_command(options.find_tickets_args, chaos_dir), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not _wait_for(os.path.join(chaos_dir, "theta_0.npz"), proc, 600):
            break  # finished (or failed) before training started: nothing left to kill
        if i == 0:
            point = "after the pruning of level 1"
            _wait_for(os.path.join(chaos_dir, "levels", "level_01", "mask.npz"), proc, 600)
        else:
            delay = rng.uniform(0, training_seconds)
            point = f"{delay:.2f} s into training"
            time.sleep(delay)
        if proc.poll() is not None:
            report["kills"].append({"point": point, "killed": False})
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        levels = sorted(glob.glob(os.path.join(chaos_dir, "levels", "level_*", "metrics.json")))
        problems = check_readable(chaos_dir)
        report["kills"].append({"point": point, "killed": True,
                                "finished_levels": len(levels), "unreadable": problems})
        print(f"kill {i + 1}: {point}, {len(levels)} level(s) finished, "
              f"{len(problems)} unreadable artifact(s)", flush=True)

    # 3. Finish and compare.
    done = subprocess.run(_command(options.find_tickets_args, chaos_dir), cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"chaos: the resumed run failed: {done.stderr.strip().splitlines()[-1:]}")
    report["unreadable_at_end"] = check_readable(chaos_dir) + [
        f"{path}: a temp file outlived its writer"
        for path in glob.glob(os.path.join(chaos_dir, "**", ".*.tmp"), recursive=True)]
    report["differences"] = compare(reference_dir, chaos_dir)
    ok = not report["differences"] and not report["unreadable_at_end"] and not any(
        k.get("unreadable") for k in report["kills"])
    report["identical"] = ok
    artifacts.write_json(os.path.join(options.workdir, "chaos.json"), report)
    print(f"{sum(k['killed'] for k in report['kills'])} kills; final masks and metrics "
          f"{'identical to' if not report['differences'] else 'DIFFERENT from'} the "
          f"uninterrupted run; report: {os.path.join(options.workdir, 'chaos.json')}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
