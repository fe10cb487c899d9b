"""What a run and a level cost beyond training: start-up, compilation, pruning, artifacts.

  python tools/overhead.py [--before=/path/to/an/older/checkout] [--output=outputs/overhead]

On a small target the time goes elsewhere than into training steps, so both
measurements run the binaries as a user runs them (python -m, KERAS_BACKEND=jax,
the accelerators' engine) on a small synthetic image folder, where training is
short and everything else shows:

Every level trains two epochs; its training is counted as twice its second epoch
(metrics.json history: the epoch's steps and its validation), so that the first
epoch's compilation counts as overhead, not as training.

1. Per level: `find_tickets` with --model (ResNet-50) at --image_size, --rounds
   pruned levels. A level's wall time is the time between its metrics.json and the
   previous level's; its overhead is that minus its training: pruning, masks, θ_i,
   digests, the test evaluation, the summaries.
2. Per run: a grid of --runs seeds (a ticket run, its reinit and scratch each:
   three runs a seed; ResNet-20 at 16 px), run as child processes with an empty
   compilation cache, as child processes again with the cache warm, and in one
   process (--in_process). Per run: the grid's wall time less the runs' training,
   over the number of runs: start-up (Python, Keras, JAX), loading the data,
   compilation, the levels' own overhead.
3. A pruned level's own steps, timed one by one in this process on --model (this
   checkout only): pruning, writing the mask, loading the ticket, the two snapshots,
   the digest, the mask check and writing θ_i.

With --before, 1 and 2 are also run with that checkout's lth_keras (it comes first on
PYTHONPATH), and the tables give the ratios. An older checkout has no in-process
grid and no compilation cache: its children compile every time. Every figure comes
from this one invocation (the machines are noisy: compare ratios, not seconds
across runs).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

flags.DEFINE_string("before", None, "An older lth_keras checkout to measure beside this one.")
flags.DEFINE_string("output", "outputs/overhead", "Directory for overhead.json and .md.")
flags.DEFINE_string("model", "resnet50", "Model of the per-level measurement.")
flags.DEFINE_integer("image_size", 32, "Crop size of the per-level measurement.")
flags.DEFINE_integer("rounds", 3, "Pruned levels of the per-level measurement.")
flags.DEFINE_integer("runs", 2, "Seeds of the per-run grid (three runs each).")
flags.DEFINE_integer("images", 16, "Training images per class of the synthetic folder.")
flags.DEFINE_bool("only_level_steps", False, "Measure only 3, a level's own steps.")
flags.DEFINE_integer("timeout", 1800, "Seconds each binary may take.")
FLAGS = flags.FLAGS


def synthetic_folder(root, per_class, size=40):
    """Four colour classes in the paper's folder layout (as the tests' target)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    for split, n in (("train", per_class), ("val", max(4, per_class // 4)),
                     ("test", max(4, per_class // 4))):
        for c, colour in enumerate(colours):
            os.makedirs(os.path.join(root, split, f"c{c}"))
            for i in range(n):
                pixels = np.clip(rng.normal(colour, 50, size=(size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(
                    os.path.join(root, split, f"c{c}", f"{i}.png"))
    return root


def _environment(checkout, cache):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS",
                                                                               ""),
               LTH_KERAS_COMPILATION_CACHE=cache, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([checkout, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _binary(checkout, cache, module, *args):
    """Wall seconds of `python -m module args` with `checkout`'s lth_keras."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=checkout,
                          env=_environment(checkout, cache), capture_output=True, text=True,
                          timeout=FLAGS.timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{module} ({checkout}) failed: {proc.stderr.strip()[-1500:]}")
    return seconds


def _levels(run_dir):
    """[(level, metrics.json mtime, training seconds)] of a run directory; training is
    its epochs at the speed of the last one (the first compiles)."""
    out = []
    root = os.path.join(run_dir, "levels")
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                metrics = json.load(f)
            history = metrics["history"]
            out.append((metrics["level"], os.stat(path).st_mtime,
                        len(history) * history[-1]["seconds"]))
    return out


def per_level(checkout, folder, work):
    """Median over the pruned levels of (wall, training, overhead) seconds."""
    out = os.path.join(work, "tickets")
    wall = _binary(checkout, os.path.join(work, "cache"), "lth_keras.find_tickets",
                   f"--source={folder}", f"--model={FLAGS.model}",
                   f"--image_size={FLAGS.image_size}", f"--rounds={FLAGS.rounds}",
                   "--max_epochs=2", "--rewind_epoch=0", "--batch_size=16",
                   "--learning_rate=0.01", f"--output_dir={out}", "--cache_dir=")
    levels = _levels(out)
    walls = [b[1] - a[1] for a, b in zip(levels, levels[1:])]
    training = [level[2] for level in levels[1:]]
    overheads = [w - t for w, t in zip(walls, training)]
    return {"process_s": wall, "level_wall_s": statistics.median(walls),
            "level_training_s": statistics.median(training),
            "level_overhead_s": statistics.median(overheads)}


def per_run(checkout, folder, work, cache, in_process):
    """(grid wall seconds, runs, training seconds) of the small grid."""
    tickets = os.path.join(work, "tickets.cfg")
    with open(tickets, "w") as f:
        f.write("--model=resnet20\n--image_size=16\n--rounds=1\n--max_epochs=2\n"
                "--rewind_epoch=0\n--batch_size=16\n--learning_rate=0.01\n--cache_dir=\n")
    root = os.path.join(work, "grid")
    args = [f"--targets={folder}", "--sources=", "--conditions=target_tickets,reinit,scratch",
            f"--seeds={','.join(str(s) for s in range(FLAGS.runs))}",
            f"--tickets_flagfile={tickets}", "--transfer_flagfile=", f"--output_dir={root}"]
    wall = _binary(checkout, cache, "lth_keras.experiment", *args,
                   *(["--in_process"] if in_process else []))
    runs = [os.path.join(d, name) for d in (os.path.join(root, "tickets"),) for name in
            os.listdir(d)]
    for target in os.listdir(os.path.join(root, "transfer")):
        base = os.path.join(root, "transfer", target)
        runs += [os.path.join(base, name) for name in os.listdir(base)]
    training = sum(level[2] for run in runs for level in _levels(run))
    return {"grid_s": wall, "runs": len(runs), "training_s": training,
            "overhead_per_run_s": (wall - training) / len(runs)}


def level_steps():
    """Seconds of each step a pruned level takes outside training, on --model at
    --image_size with 10 classes, as lottery.tickets does them; θ_i's size."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    from lth_keras import artifacts, models, pruning, weights

    size = FLAGS.image_size
    model = models.build_model(FLAGS.model, input_shape=(size, size, 3), num_classes=10,
                               seed=0)
    seconds = {}

    def timed(name, step):
        start = time.perf_counter()
        out = step()
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        return out

    with tempfile.TemporaryDirectory(prefix="lth_overhead_steps_") as work:
        theta = weights.snapshot(model)  # θ_i(L-1) and θ_k, kept in memory between levels
        masks = weights.get_masks(model)
        masks = timed("prune", lambda: pruning.prune({k: theta[k] for k in masks}, masks,
                                                     0.2, "global"))
        timed("write the mask", lambda: artifacts.write_arrays(
            os.path.join(work, "mask.npz"), {k: m.astype(bool) for k, m in masks.items()}))
        timed("load the ticket", lambda: weights.load_ticket(model, theta, masks))
        start = timed("snapshots (2)", lambda: weights.snapshot(model))
        timed("digest of the start", lambda: weights.digest(start))
        timed("check the masks held", lambda: weights.check_mask_held(model, masks))
        theta = timed("snapshots (2)", lambda: weights.snapshot(model))
        path = os.path.join(work, "theta_i.npz")
        timed("write θ_i", lambda: artifacts.write_arrays(path, theta))
        total = sum(seconds.values())
        # Not in the total: a resumed run reads θ_i(L-1) and θ_k once, at its first level.
        timed("read θ_i (a resumed run, once)", lambda: artifacts.read_arrays(path))
        theta_bytes = os.path.getsize(path)
    return {"seconds": seconds, "total_s": total, "theta_i_bytes": theta_bytes}


def _ratio(before, after):
    return before / after if after else float("nan")


def report(results):
    lines = ["# Overhead beyond training (tools/overhead.py)", "",
             f"{results['machine']}; per level: {FLAGS.model} at {FLAGS.image_size} px, "
             f"{FLAGS.rounds} pruned levels; per run: a grid of {3 * FLAGS.runs} runs of "
             "ResNet-20 at 16 px; two epochs a level; JAX engine. Training: each level's "
             "epochs at its second epoch's speed; overhead: the rest of the wall time.",
             "", "| measurement | version | wall | training | overhead | before / after |",
             "|---|---|---:|---:|---:|---:|"]
    if not results["per_level"] and not results["per_run"]:
        lines = ["# Overhead beyond training (tools/overhead.py)"]
    level = results["per_level"]
    for version in ("before", "after"):
        if version in level:
            r = level[version]
            ratio = (f"{_ratio(level['before']['level_overhead_s'], r['level_overhead_s']):.2f}"
                     if version == "after" and "before" in level else "")
            lines.append(f"| per level (median of levels 1-{FLAGS.rounds}) | {version} | "
                         f"{r['level_wall_s']:.2f} s | {r['level_training_s']:.2f} s | "
                         f"{r['level_overhead_s']:.2f} s | {ratio} |")
    grid = results["per_run"]
    base = grid.get("before children")
    steps = results.get("level_steps")
    for mode, r in grid.items():
        ratio = (f"{_ratio(base['overhead_per_run_s'], r['overhead_per_run_s']):.2f}"
                 if base and mode != "before children" else "")
        lines.append(f"| per run ({r['runs']} runs) | {mode} | {r['grid_s'] / r['runs']:.1f} s | "
                     f"{r['training_s'] / r['runs']:.1f} s | {r['overhead_per_run_s']:.1f} s | "
                     f"{ratio} |")
    if steps:
        lines += ["", f"A level's own steps on {FLAGS.model} ({FLAGS.image_size} px; θ_i is "
                  f"{steps['theta_i_bytes'] / 1e6:.0f} MB), this checkout:", "",
                  "| step | seconds |", "|---|---:|"]
        lines += [f"| {name} | {s:.3f} |" for name, s in steps["seconds"].items()]
        lines.append(f"| **a level (without the read)** | **{steps['total_s']:.3f}** |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from lth_keras import artifacts

    versions = {"after": REPO}
    if FLAGS.before:
        versions = {"before": os.path.abspath(FLAGS.before), "after": REPO}
    cpu = artifacts.cpu_description()
    results = {"machine": f"{cpu['cpu']}, {os.cpu_count()} cores", "per_level": {},
               "per_run": {}}
    results["level_steps"] = level_steps()
    print(f"[overhead] a level's own steps: {results['level_steps']}", file=sys.stderr,
          flush=True)
    if FLAGS.only_level_steps:
        versions = {}
    with tempfile.TemporaryDirectory(prefix="lth_overhead_") as work:
        folder = synthetic_folder(os.path.join(work, "folder"), FLAGS.images)
        for version, checkout in versions.items():
            results["per_level"][version] = per_level(checkout, folder,
                                                      tempfile.mkdtemp(dir=work))
            print(f"[overhead] per level, {version}: {results['per_level'][version]}",
                  file=sys.stderr, flush=True)
        modes = [("before children", "before", False, "fresh"),
                 ("after children, cache empty", "after", False, "fresh"),
                 ("after children, cache warm", "after", False, "shared"),
                 ("after in one process, cache empty", "after", True, "fresh")]
        shared = os.path.join(work, "shared_cache")
        for mode, version, in_process, cache in modes:
            if version not in versions:
                continue
            cache_dir = shared if cache == "shared" else tempfile.mkdtemp(dir=work)
            if cache == "shared" and not os.path.isdir(shared):  # fill it first
                per_run(versions[version], folder, tempfile.mkdtemp(dir=work), shared, False)
            results["per_run"][mode] = per_run(versions[version], folder,
                                               tempfile.mkdtemp(dir=work), cache_dir, in_process)
            print(f"[overhead] per run, {mode}: {results['per_run'][mode]}", file=sys.stderr,
                  flush=True)
    table = report(results)
    artifacts.write_json(os.path.join(FLAGS.output, "overhead.json"), results)
    artifacts.write_bytes(os.path.join(FLAGS.output, "overhead.md"), table.encode())
    print(table, end="")


if __name__ == "__main__":
    app.run(main)
