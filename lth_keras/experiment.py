"""Runs the paper's experiment grid: every find_tickets and transfer run it needs.

  python -m lth_keras.experiment --flagfile=flags/quick_grid.cfg --list
  python -m lth_keras.experiment --flagfile=flags/quick_grid.cfg
  python -m lth_keras.experiment --flagfile=flags/paper_grid.cfg --task_index=3 --num_tasks=16

Each run is a child process of its binary (one engine runtime per
process) with its run directory under --output_dir and its log under logs/.
Finished runs are skipped, so re-running resumes the grid. With --num_tasks,
task i runs every num_tasks-th run (SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT
are the defaults); a transfer whose tickets another task makes waits up to
--wait_for_inputs seconds, then is skipped with a message.
"""

import os
import signal
import subprocess
import sys
import time

from absl import flags

from lth_keras import cli, grid

flags.DEFINE_list("sources", ["fashion_mnist", "cifar10", "cifar100"],
                  "Natural sources to find tickets on.")
flags.DEFINE_list("targets", [], "Targets: paper target names under --data_dir, or folder paths.")
flags.DEFINE_list("seeds", ["0", "1", "2", "3"], "Seeds; each makes its own tickets and transfers.")
flags.DEFINE_list("conditions", list(grid.CONDITIONS), f"Any of {', '.join(grid.CONDITIONS)}.")
flags.DEFINE_list("related", [], "Related-source pairs SOURCE:TARGET, e.g. human_lba:mouse_lba.")
flags.DEFINE_list("train_fractions", ["0.25", "0.5", "0.75"],
                  "Training fractions for the train_fractions condition.")
flags.DEFINE_string("transfer_levels", "all",
                    "Levels every transfer fine-tunes: 'all' or a comma list (e.g. 0,2,4,6).")
flags.DEFINE_string("tickets_flagfile", "flags/paper.cfg", "Preset of every find_tickets run.")
flags.DEFINE_string("transfer_flagfile", "flags/paper_transfer.cfg",
                    "Preset of every transfer run.")
flags.DEFINE_bool("list", False, "List the runs with their state and task, run nothing.")
flags.DEFINE_integer("task_index", None, "This task's index (default $SLURM_ARRAY_TASK_ID).")
flags.DEFINE_integer("num_tasks", None, "How many tasks share the grid "
                                        "(default $SLURM_ARRAY_TASK_COUNT, else 1).")
flags.DEFINE_integer("wait_for_inputs", 0,
                     "Seconds to wait for tickets that another task makes before skipping.")

FLAGS = flags.FLAGS

# Common flags given to the grid (say --data_dir or --max_epochs=2) go to every
# run, after the preset so that they win; these belong to the grid itself.
NOT_FORWARDED = {"seed", "train_fraction", "output_dir", "model", "image_size"}
DEFAULT_ROOT = os.path.join("outputs", "grid")


def _task():
    """(task_index, num_tasks) from the flags or Slurm's job-array variables."""
    env = os.environ
    index = FLAGS.task_index
    if index is None and "SLURM_ARRAY_TASK_ID" in env:
        index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    count = FLAGS.num_tasks
    if count is None:
        count = int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
    index = 0 if index is None else index
    cli.check(count >= 1 and 0 <= index < count,
              f"task index {index} is not in [0, {count}): check --task_index/--num_tasks")
    return index, count


def _runs():
    try:
        seeds = [int(s) for s in FLAGS.seeds]
        fractions = [float(f) for f in FLAGS.train_fractions]
    except ValueError as e:
        raise cli.UserError(f"--seeds must be integers and --train_fractions numbers ({e})")
    related = [tuple(pair.split(":")) for pair in FLAGS.related]
    cli.check(all(len(p) == 2 and all(p) for p in related),
              "--related takes SOURCE:TARGET pairs, e.g. human_lba:mouse_lba")
    cli.check(all(0 < f <= 1 for f in fractions), "--train_fractions must be in (0, 1]")
    cli.check(seeds, "--seeds names no seed")
    cli.check(FLAGS.targets or not (set(FLAGS.conditions) - {"related"}),
              "--targets is empty: name the targets (e.g. human_lba or a folder path)")
    try:
        return grid.expand(sources=FLAGS.sources, targets=FLAGS.targets, seeds=seeds,
                           conditions=FLAGS.conditions, related=related,
                           train_fractions=fractions, transfer_levels=FLAGS.transfer_levels)
    except ValueError as e:
        raise cli.UserError(str(e))


def _forwarded_flags():
    common = {f.name for f in FLAGS.get_flags_for_module(cli)}
    return [FLAGS[name].serialize() for name in sorted(common - NOT_FORWARDED)
            if FLAGS[name].present]


def _command(run, root, presets, forwarded):
    return [sys.executable, "-m", f"lth_keras.{run.binary}",
            f"--flagfile={presets[run.binary]}", *forwarded, *run.command_args(root)]


def _die_with_parent():
    # A child of a killed grid would train on unseen; Linux can tie it to us.
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait_for(needs, root, by_name, deadline):
    """The needed runs not done by the deadline (polling while another task works)."""
    while True:
        missing = [n for n in needs if grid.state(by_name[n], root) != grid.DONE]
        if not missing or time.time() >= deadline:
            return missing
        time.sleep(min(30.0, max(0.0, deadline - time.time())))


def _execute(mine, root, by_name, presets, forwarded):
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    failed, waiting = [], []
    for i, run in enumerate(mine, start=1):
        tag = f"[{i}/{len(mine)}] {run.name}"
        if grid.state(run, root) == grid.DONE:
            print(f"{tag}: done, skipped", flush=True)
            continue
        missing = _wait_for(run.needs, root, by_name, time.time() + FLAGS.wait_for_inputs)
        if missing:
            reason = ("failed above" if any(m in failed for m in missing)
                      else "not finished yet (another task makes it); re-run this task later")
            print(f"{tag}: skipped, its tickets {', '.join(missing)} are {reason}", flush=True)
            waiting.append(run.name)
            continue
        log_path = os.path.join(root, "logs", run.name.replace("/", "__") + ".log")
        print(f"{tag}: running {run.binary} (log: {log_path})", flush=True)
        start = time.time()
        with open(log_path, "ab") as log:
            code = subprocess.call(_command(run, root, presets, forwarded), stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        if code == 0:
            print(f"{tag}: finished in {time.time() - start:.0f} s", flush=True)
        else:
            with open(log_path, errors="replace") as log:
                last = ([line for line in log.read().splitlines() if line.strip()] or [""])[-1]
            print(f"{tag}: FAILED (exit {code}): {last}", flush=True)
            failed.append(run.name)
    return failed, waiting


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    runs = _runs()
    index, count = _task()
    root = FLAGS.output_dir or DEFAULT_ROOT
    by_name = {run.name: run for run in runs}
    task_of = {run.name: i % count for i, run in enumerate(runs)}
    mine = grid.shard(runs, index, count)

    if FLAGS.list:
        width = max(len(run.name) for run in runs)
        states = [grid.state(run, root) for run in runs]
        print(f"{'run':<{width}}  {'state':<7}  task  needs")
        for run, state in zip(runs, states):
            print(f"{run.name:<{width}}  {state:<7}  {task_of[run.name]:>4}  "
                  f"{', '.join(run.needs)}")
        print(f"{len(runs)} runs: " + ", ".join(f"{states.count(s)} {s}" for s in
                                                (grid.DONE, grid.PARTIAL, grid.PENDING)))
        return

    presets = {}
    for binary, flag in (("find_tickets", "tickets_flagfile"), ("transfer", "transfer_flagfile")):
        path = FLAGS[flag].value
        cli.check(os.path.isfile(path), f"--{flag}={path}: no such file")
        presets[binary] = os.path.abspath(path)
    print(f"grid: {len(runs)} runs under {root}; task {index} of {count} has {len(mine)}",
          flush=True)
    failed, waiting = _execute(mine, root, by_name, presets, _forwarded_flags())
    if waiting:
        print(f"{len(waiting)} run(s) wait for tickets of other tasks: re-run this task "
              "when they are done (finished runs are skipped)")
    if failed:
        raise cli.UserError(f"{len(failed)} run(s) failed: {', '.join(failed)}; see their logs "
                            f"under {os.path.join(root, 'logs')}")


if __name__ == "__main__":
    cli.run(main)
