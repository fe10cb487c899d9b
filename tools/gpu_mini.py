"""The one-GPU mini-paper (flags/gpu_mini_grid.cfg) on a GPU machine without
TensorFlow, and back.

  python tools/gpu_mini.py prepare [--tiny]   # here: the data that travel
  python tools/gpu_mini.py run [--tiny]       # there (tools/gpu_mini.sh run): the grid, packed
  python tools/gpu_mini.py analyze DIR        # here: unpack what came back, analyze it

prepare writes, into ignored folders of the checkout:
  .gpu_mini/cifar10_jpeg/        the natural colour source, its JPEG files as they are
                                 (25 MB; never to be reported as CIFAR-10)
  .gpu_mini/histology_nuclei/    the target, decoded and resized once to the storage size
                                 of the preset's crops (73 px for 64) with the loader's
                                 own resize, saved as PNG: the loader reads them without
                                 resizing again, so the stored pixels, and the dataset
                                 fingerprint, are those of a run on the original folder
                                 (prepare checks it)
  .gpu_mini/manifest.json        both datasets' fingerprints at that size
and checks that what travels (the working tree, these folders and .whl/: keras, namex
and optree for the machine's Python 3.12, which tools/gpu_mini.sh prepare downloads
first) fits 64 MiB.

run starts the grid with KERAS_BACKEND=jax, its console tee'd to a log, stops it with
SIGTERM when --budget seconds have passed since the script started (a stopped
grid keeps its complete pairs: it runs pair by pair), and packs what comes back into
$OUT (the device returns at most 8 files of 16 MiB): gpu_mini_runs.tar.gz (every
config.json, metrics.json, summary, grid.json, log and TensorBoard file; no .npz:
no weights, masks or checkpoints), gpu_mini_log.txt and gpu_mini_report.json (the
machine, the exit status, the wall time of each stage and each run).

analyze unpacks gpu_mini_runs.tar.gz into outputs/gpu_mini/ and runs lth_keras's
analysis on it (no mask overlap: the masks stay on the device), into --output_dir
(outputs/reference/gpu_mini/ by default), with stages.md from the report.

--tiny is the same path at CPU size (ResNet-8 at 16 px, 20 source images a class, two
ticket searches with two transfer seeds each, one round, two epochs a ticket level and
one a transfer): tests/test_gpu_mini.py runs it.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DATA = ".gpu_mini"
WHEELS = ".whl"
PRESET = os.path.join("flags", "gpu_mini_grid.cfg")
TICKETS_PRESET = os.path.join("flags", "gpu_mini_tickets.cfg")
TRANSFER_PRESET = os.path.join("flags", "gpu_mini_transfer.cfg")
TRAVEL_LIMIT = 64 * 2**20
RETURN_FILES, RETURN_FILE_LIMIT = 8, 16 * 2**20
SHARED = os.path.join(REPO, os.pardir, "shared", "data")
SOURCE = "cifar10_jpeg"
TINY_PER_CLASS = 20  # source images a class and split that --tiny carries
# The CPU-size stand-ins of --tiny: appended to the presets (later flags win).
TINY_TICKETS = ["--model=resnet8", "--image_size=16", "--rounds=1", "--max_epochs=2",
                "--rewind_epoch=1", "--train_fraction=1", "--val_fraction=0.1",
                "--mixed_precision=off", "--precise_bn=4"]
TINY_TRANSFER = ["--mixed_precision=off", "--precise_bn=4", "--max_epochs=1"]
TINY_GRID = ["--seeds=0,1", "--transfer_seeds=0,1", "--control_transfer_seeds=0",
             "--transfer_levels=0,1", "--reinit_levels=1", "--primary_level=1"]


class ToolError(Exception):
    """A problem the user can fix: one line, exit status 1."""


def _preset_image_size(tiny):
    from lth_keras import settings

    args = [f"--flagfile={os.path.join(REPO, TICKETS_PRESET)}"] + (TINY_TICKETS if tiny else [])
    groups, _ = settings.from_arguments(settings.FIND_TICKETS, args)
    return groups[settings.Model].image_size


def _copy_source(folder, out, tiny):
    """The source's image files copied as they are (--tiny: the first TINY_PER_CLASS of each
    class and split); returns how many."""
    if not os.path.isdir(os.path.join(folder, "train")):
        raise ToolError(f"{folder}: not the {SOURCE} folder (no train/); give --source")
    copied = 0
    for split in sorted(os.listdir(folder)):
        if not os.path.isdir(os.path.join(folder, split)):
            continue
        for name in sorted(os.listdir(os.path.join(folder, split))):
            files = sorted(os.listdir(os.path.join(folder, split, name)))
            os.makedirs(os.path.join(out, split, name))
            for f in files[:TINY_PER_CLASS] if tiny else files:
                shutil.copyfile(os.path.join(folder, split, name, f),
                                os.path.join(out, split, name, f))
                copied += 1
    return copied


def _travel_size(extra):
    """Bytes the device tool sends: tracked and untracked-not-ignored files, and `extra`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    total = sum(os.path.getsize(os.path.join(REPO, f)) for f in listed
                if f and os.path.isfile(os.path.join(REPO, f)))
    for folder in extra:
        for root, _, files in os.walk(folder):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def prepare(args):
    from PIL import Image

    from lth_keras import artifacts
    from lth_keras.datasets import load_image_folder, resize_size

    out = os.path.abspath(args.out)
    storage = resize_size(_preset_image_size(args.tiny))
    if not os.path.isdir(args.histology):
        raise ToolError(f"{args.histology}: no such folder (--histology)")
    shutil.rmtree(out, ignore_errors=True)
    source = os.path.abspath(args.source)
    copied = _copy_source(source, os.path.join(out, SOURCE), args.tiny)

    original = load_image_folder(args.histology, storage_size=storage, cache_dir="")
    target = os.path.join(out, os.path.basename(os.path.normpath(args.histology)))
    for split in ("train", "val", "test"):
        data = original.split(split)
        for i, (image, label) in enumerate(zip(data.images, data.labels)):
            folder = os.path.join(target, split, original.class_names[label])
            os.makedirs(folder, exist_ok=True)
            # Zero-padded in the original order (class, then file name): the same examples
            # in the same order give the same fingerprint.
            Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.png"), optimize=True)
    copy = load_image_folder(target, storage_size=storage, cache_dir="")
    if copy.fingerprint() != original.fingerprint():
        raise ToolError(f"{target}: the resized copy does not hold the original's pixels")
    artifacts.write_json(os.path.join(out, "manifest.json"), {
        "storage_size": storage, "histology": {"from": os.path.abspath(args.histology),
                                               "fingerprint": original.fingerprint()},
        SOURCE: {"from": source, "images": copied, "tiny": args.tiny}})

    wheels = os.path.join(REPO, WHEELS)  # downloaded by tools/gpu_mini.sh prepare
    carried = [out] + ([wheels] if os.path.isdir(wheels) else [])
    size = _travel_size(carried) if os.path.isdir(os.path.join(REPO, ".git")) else None
    report = {"data": out, "storage_size": storage, "histology_fingerprint":
              original.fingerprint(), "travel_bytes": size}
    print(json.dumps(report, indent=2))
    if size is not None and size > TRAVEL_LIMIT:
        raise ToolError(f"what would travel is {size / 2**20:.1f} MiB, over the device's "
                        f"{TRAVEL_LIMIT / 2**20:.0f} MiB")
    return 0


def _machine():
    info = {"python": sys.version.split()[0]}
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["nvidia_smi"] = None
    from lth_keras import artifacts

    info.update(artifacts.cpu_description(), cpu_count=os.cpu_count())
    return info


def _flagfile(path, base, extra):
    with open(path, "w") as f:
        f.write("\n".join([f"--flagfile={os.path.join(REPO, base)}", *extra]) + "\n")
    return path


def run(args):
    start = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    data = os.path.abspath(args.data)
    if not os.path.isdir(data):
        raise ToolError(f"{data}: no prepared data (run `prepare` here and carry {DATA})")
    work = tempfile.mkdtemp(prefix="gpu_mini_")
    root = os.path.join(work, "gpu_mini")
    target = os.path.join(data, "histology_nuclei")
    command = [sys.executable, "-m", "lth_keras.experiment",
               f"--flagfile={os.path.join(REPO, PRESET)}", f"--data_dir={data}",
               f"--sources={os.path.join(data, SOURCE)}", f"--targets={target}",
               f"--output_dir={root}", "--cache_dir="]
    if args.tiny:
        tickets = _flagfile(os.path.join(work, "tickets.cfg"), TICKETS_PRESET, TINY_TICKETS)
        transfer = _flagfile(os.path.join(work, "transfer.cfg"), TRANSFER_PRESET, TINY_TRANSFER)
        command += [f"--tickets_flagfile={tickets}", f"--transfer_flagfile={transfer}",
                    *TINY_GRID]
    else:
        command += [f"--tickets_flagfile={os.path.join(REPO, TICKETS_PRESET)}",
                    f"--transfer_flagfile={os.path.join(REPO, TRANSFER_PRESET)}"]
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONUNBUFFERED="1",
               LTH_KERAS_COMPILATION_CACHE=os.path.join(work, "jax_cache"))
    report = {"machine": _machine(), "command": command, "budget_s": args.budget,
              "tiny": args.tiny, "stages": {}}
    log_path = os.path.join(out, "gpu_mini_log.txt")
    grid_start = time.time()
    report["stages"]["set-up (before the grid)"] = grid_start - start
    stopped = False
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        copier = threading.Thread(target=_copy_lines, args=(proc.stdout, log), daemon=True)
        copier.start()
        try:
            proc.wait(timeout=max(1.0, start + args.budget - time.time()))
        except subprocess.TimeoutExpired:
            stopped = True
            proc.send_signal(signal.SIGTERM)  # the grid checkpoints and exits 143
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        copier.join(timeout=10)
    report["exit"] = proc.returncode
    report["stopped_at_budget"] = stopped
    report["stages"]["grid"] = time.time() - grid_start
    timings = os.path.join(root, "logs", "timings.json")
    if os.path.exists(timings):
        with open(timings) as f:
            report["runs"] = json.load(f)["runs"]
    pack_start = time.time()
    archive = os.path.join(out, "gpu_mini_runs.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="gpu_mini", filter=_without_arrays)
    report["stages"]["packing"] = time.time() - pack_start
    report["stages"]["total"] = time.time() - start
    # Not artifacts.write_json: it sorts keys, and the stages are in the order they ran.
    with open(os.path.join(out, "gpu_mini_report.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    shutil.rmtree(work, ignore_errors=True)
    files = sorted(os.listdir(out))
    too_big = [f for f in files if os.path.getsize(os.path.join(out, f)) > RETURN_FILE_LIMIT]
    if len(files) > RETURN_FILES or too_big:
        raise ToolError(f"{out} holds {len(files)} files ({', '.join(too_big) or 'none'} over "
                        f"16 MiB): the device returns at most {RETURN_FILES} of 16 MiB")
    print(f"[gpu_mini] grid exit {proc.returncode}"
          + (" (stopped at the budget)" if stopped else "")
          + f"; {report['stages']['total']:.0f} s in all; {', '.join(files)} in {out}",
          flush=True)
    return 0 if proc.returncode == 0 or stopped else proc.returncode


def _copy_lines(stream, log):
    """What the grid prints, to the log and to stdout (the device's output tail)."""
    for line in stream:
        log.write(line)
        log.flush()
        sys.stdout.write(line)
        sys.stdout.flush()


def _without_arrays(member):
    """Leaves out weights, masks and checkpoints (.npz), locks and temporary files."""
    name = os.path.basename(member.name)
    if name.endswith(".npz") or name == ".lock" or name.endswith(".tmp"):
        return None
    return member


def analyze(args):
    from lth_keras import api, artifacts

    archive = os.path.join(args.returned, "gpu_mini_runs.tar.gz")
    if not os.path.isfile(archive):
        raise ToolError(f"{archive}: not there (the directory of what `run` returned)")
    runs = os.path.abspath(args.runs)
    shutil.rmtree(runs, ignore_errors=True)
    os.makedirs(runs)
    with tarfile.open(archive) as tar:
        tar.extractall(runs, filter="data")
    result = api.analyze([runs], mask_overlap=False, output_dir=args.output_dir)
    with open(os.path.join(args.returned, "gpu_mini_report.json")) as f:
        report = json.load(f)
    stages = stages_markdown(report)
    artifacts.write_bytes(os.path.join(args.output_dir, "stages.md"), stages.encode())
    shutil.copyfile(os.path.join(args.returned, "gpu_mini_report.json"),
                    os.path.join(args.output_dir, "gpu_mini_report.json"))
    print(result.table2_markdown)
    print(stages)
    return 0


def stages_markdown(report):
    machine = report["machine"]
    lines = [f"# Wall time per stage ({machine.get('nvidia_smi') or machine['cpu']})", "",
             f"Budget {report['budget_s']} s; grid exit status {report['exit']}"
             + (" (stopped at the budget)" if report["stopped_at_budget"] else "") + ".", "",
             "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in report["stages"].items()]
    runs = report.get("runs", {})
    if runs:
        lines += ["", "| run | seconds | exit |", "|---|---:|---:|"]
        # In the order they ended: finished_at (UTC) since 0.7, finished_after before.
        ended = {name: (r.get("finished_at", ""), r.get("finished_after", 0))
                 for name, r in runs.items()}
        for name, r in sorted(runs.items(), key=lambda item: ended[item[0]]):
            lines.append(f"| {name} | {r['seconds']:.1f} | {r['exit']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default=os.path.join(REPO, DATA))
    p.add_argument("--histology", default=os.path.join(SHARED, "histology_nuclei"))
    p.add_argument("--source", default=os.path.join(SHARED, SOURCE))
    r = commands.add_parser("run")
    r.add_argument("--tiny", action="store_true")
    r.add_argument("--data", default=os.path.join(REPO, DATA))
    r.add_argument("--out", default=os.environ.get("OUT", os.path.join(REPO, "outputs",
                                                                       "gpu_mini_device")))
    r.add_argument("--budget", type=float, default=450.0,
                   help="seconds from the start after which the grid is stopped")
    a = commands.add_parser("analyze")
    a.add_argument("returned", help="the directory of the files `run` wrote")
    a.add_argument("--runs", default=os.path.join(REPO, "outputs", "gpu_mini"))
    a.add_argument("--output_dir", default=os.path.join(REPO, "outputs", "reference",
                                                        "gpu_mini"))
    args = parser.parse_args(argv)
    try:
        return {"prepare": prepare, "run": run, "analyze": analyze}[args.command](args)
    except ToolError as e:
        print(f"gpu_mini: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
