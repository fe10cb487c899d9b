"""The paper's experiment grid: sources × targets × seeds × conditions, as runs.

A run is one invocation of find_tickets or transfer with its own run directory.
Runs that need tickets depend on the find_tickets run that makes them; every
transfer from the same (source, seed) shares that run. Expansion is pure, so
--list, sharding and resuming all see the same runs in the same order.

Conditions (PROTOCOL.md "Transfer"):
  target_tickets   find_tickets on each target (blue lines)
  rewind           natural-source tickets fine-tuned on each target, m_L ⊙ θ_k
  final            the same from m_L ⊙ θ_i(L) (Fig. 4, first row)
  reinit           target tickets with fresh weights (orange lines)
  scratch          the dense model trained on each target (dashed line)
  related          tickets of a related non-natural source (--related=A:B pairs)
  train_fractions  target tickets found on a fraction of the training split
"""

import dataclasses
import os
import signal
import subprocess
import sys
import time

from lth_keras import artifacts, settings
from lth_keras.datasets.sources import SOURCES
from lth_keras.runs import RunDirectory

CONDITIONS = settings.GRID_CONDITIONS
DONE, PARTIAL, PENDING = "done", "partial", "pending"
DEFAULT_ROOT = os.path.join("outputs", "grid")


@dataclasses.dataclass(frozen=True)
class Run:
    name: str                 # unique, also the run directory below the grid root
    binary: str               # "find_tickets" or "transfer"
    args: tuple               # flags of the binary, but --tickets and --output_dir
    tickets: str = None       # name of the find_tickets run a transfer reads
    only_theta_0: bool = False  # it reads only θ_0 of those tickets (scratch)

    @property
    def needs(self):
        return (self.tickets,) if self.tickets else ()

    def can_start(self, root, state_of):
        """Whether what this run reads exists: θ_0 for scratch (written when its ticket run
        starts), every level of the ticket run otherwise."""
        if self.only_theta_0:
            return all(os.path.exists(os.path.join(root, name, "theta_0.npz"))
                       for name in self.needs)
        return all(state_of(name) == DONE for name in self.needs)

    def directory(self, root):
        return os.path.join(root, self.name)

    def command_args(self, root):
        """The binary's flags, with the run directories placed under `root`."""
        args = [f"--output_dir={self.directory(root)}", *self.args]
        if self.tickets:
            args.append(f"--tickets={os.path.join(root, self.tickets)}")
        return args


def dataset_label(name):
    """A short label for a dataset name or an image-folder path."""
    return os.path.basename(os.path.normpath(name)) if os.sep in name else name


def expand(*, sources, targets, seeds, conditions, related=(), train_fractions=(),
           transfer_levels="all"):
    """The grid's runs, each listed after the runs it needs.

    Natural sources keep the preset's --train_fraction; targets and related
    sources are used whole, except by train_fractions.
    """
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise ValueError(f"unknown conditions {unknown}; known: {', '.join(CONDITIONS)}")
    if "reinit" in conditions and "target_tickets" not in conditions:
        raise ValueError("reinit fine-tunes the target tickets: add target_tickets")
    if "scratch" in conditions and not sources and "target_tickets" not in conditions:
        raise ValueError("scratch takes θ_0 from a ticket run: add sources or target_tickets")
    runs = {}

    def tickets(dataset, seed, fraction=None):
        label = dataset_label(dataset)
        name = f"tickets/{label}-seed{seed}" + (f"-frac{fraction:g}" if fraction else "")
        args = [f"--source={dataset}", f"--seed={seed}"]
        if dataset not in SOURCES or fraction:  # natural sources keep the preset's subset
            args.append(f"--train_fraction={fraction or 1}")
        runs.setdefault(name, Run(name, "find_tickets", tuple(args)))
        return name

    def transfer(ticket_run, source_label, target, seed, condition):
        name = f"transfer/{dataset_label(target)}/{source_label}-{condition}-seed{seed}"
        args = [f"--target={target}", f"--seed={seed}", "--train_fraction=1"]
        args += {"final": ["--init=final"], "reinit": ["--reinit"],
                 "scratch": ["--scratch"]}.get(condition, [])
        if condition != "scratch" and transfer_levels != "all":
            args.append(f"--levels={transfer_levels}")
        runs.setdefault(name, Run(name, "transfer", tuple(args), tickets=ticket_run,
                                  only_theta_0=condition == "scratch"))

    for seed in seeds:
        natural = ({source: tickets(source, seed) for source in sources}
                   if {"rewind", "final", "scratch"} & set(conditions) else {})
        for target in targets:
            own = tickets(target, seed) if "target_tickets" in conditions else None
            for source, ticket_run in natural.items():
                for condition in ("rewind", "final"):
                    if condition in conditions:
                        transfer(ticket_run, dataset_label(source), target, seed, condition)
            if "reinit" in conditions:
                transfer(own, dataset_label(target), target, seed, "reinit")
            if "scratch" in conditions:
                # θ_0 depends on the model and seed only (the head is replaced).
                transfer(next(iter(natural.values()), own), "dense", target, seed, "scratch")
            if "train_fractions" in conditions:
                for fraction in train_fractions:
                    tickets(target, seed, fraction)
        if "related" in conditions:
            for source, target in related:
                transfer(tickets(source, seed), dataset_label(source), target, seed, "rewind")
    # Every find_tickets run first: a task of a sharded grid then starts with tickets,
    # and transfers come once most inputs exist.
    return sorted(runs.values(), key=lambda run: run.binary != "find_tickets")


def shard(runs, task_index, num_tasks):
    """Runs of this task: every num_tasks-th run, so each stage spreads over the tasks."""
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task index {task_index} is not in [0, {num_tasks})")
    return [run for i, run in enumerate(runs) if i % num_tasks == task_index]


def state(run, root, rounds=None):
    """DONE, PARTIAL or PENDING, from what the run directory holds.

    A find_tickets run is done when its levels 0..rounds are finished, with rounds the
    larger of what its record says (a resumed run records its latest) and `rounds` (the
    grid's preset: raising it there extends every ticket run); a transfer run is done
    when every level it chose is, and a transfer of every level (no --levels) also wants
    the levels its ticket run is to reach, so that it grows with its tickets.
    """
    path = run.directory(root)
    if not os.path.exists(os.path.join(path, "config.json")):
        return PARTIAL if os.path.isdir(path) and os.listdir(path) else PENDING
    directory = RunDirectory(path)
    if run.binary == "find_tickets":
        wanted = set(_ticket_levels(directory, rounds))
    else:
        wanted = set(_record(directory, lambda config: config["levels"]))
        if not run.only_theta_0 and not any(a.startswith("--levels=") for a in run.args):
            tickets = RunDirectory(os.path.join(root, run.tickets))
            if os.path.exists(tickets.config_path):
                wanted |= set(_ticket_levels(tickets, rounds))
    finished = set(directory.finished_levels())
    return DONE if wanted <= finished else PARTIAL


def _record(directory, read):
    """read(config) of a run directory, or ArtifactError naming it."""
    try:
        return read(directory.config())
    except (artifacts.ArtifactError, KeyError, TypeError) as e:
        raise artifacts.ArtifactError(f"{directory.path}: unreadable run record ({e})")


def _ticket_levels(directory, rounds):
    """The levels a ticket run is to reach: 0..the larger of its recorded rounds and the
    grid's."""
    recorded = _record(directory, lambda config: (
        config["settings"]["pruning"]["rounds"] if "settings" in config
        else config["flags"]["rounds"]))  # records before identity version 2
    return range(max(recorded, rounds or 0) + 1)


# --- running the grid -----------------------------------------------------------------

def forwarded_fields():
    """Settings given to the grid that it passes on to every run: the common groups'
    fields but those it sets per run (seed, train_fraction, output_dir, model, size)."""
    return {f.name for group in settings.COMMON for f in dataclasses.fields(group)
            if not f.metadata["per_run"]}


def task(grid):
    """(task_index, num_tasks) from the settings or Slurm's job-array variables."""
    env = os.environ
    index = grid.task_index
    if index is None and "SLURM_ARRAY_TASK_ID" in env:
        index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    count = grid.num_tasks
    if count is None:
        count = int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
    index = 0 if index is None else index
    if not (count >= 1 and 0 <= index < count):
        raise settings.SettingsError(f"task index {index} is not in [0, {count}): check "
                                     "--task_index/--num_tasks")
    return index, count


def runs_of(grid):
    grid.check()
    try:
        return expand(sources=grid.sources, targets=grid.targets, seeds=grid.seeds,
                      conditions=grid.conditions,
                      related=[tuple(pair.split(":")) for pair in grid.related],
                      train_fractions=grid.train_fractions,
                      transfer_levels=grid.transfer_levels)
    except ValueError as e:
        raise settings.SettingsError(str(e))


def _command(run, root, presets, forwarded):
    preset = [f"--flagfile={presets[run.binary]}"] if presets[run.binary] else []
    return [sys.executable, "-m", f"lth_keras.{run.binary}", *preset, *forwarded,
            *run.command_args(root)]


def _die_with_parent():
    # A child of a killed grid would train on unseen; Linux can tie it to us.
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait_for(run, can_start, deadline):
    """The runs `run` needs, if it cannot start by the deadline (polling while another
    task works), else []."""
    while True:
        if can_start():
            return []
        if time.time() >= deadline:
            return list(run.needs)
        time.sleep(min(30.0, max(0.0, deadline - time.time())))


def _execute(mine, root, states, presets, forwarded, wait_for_inputs):
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    failed, waiting = [], []
    for i, run in enumerate(mine, start=1):
        tag = f"[{i}/{len(mine)}] {run.name}"
        if states(run.name) == DONE:
            print(f"{tag}: done, skipped", flush=True)
            continue
        missing = _wait_for(run, lambda: run.can_start(root, states),
                            time.time() + wait_for_inputs)
        if missing:
            reason = ("failed above" if any(m in failed for m in missing)
                      else f"not {'started' if run.only_theta_0 else 'finished'} yet (another "
                           "task makes it); re-run this task later")
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


def run_grid(grid, run_settings, forwarded=(), *, list_only=False):
    """Runs this task's share of the grid (or only lists it, printing a table); returns
    one row per run of the whole grid: {"run", "binary", "state", "task", "needs"}.

    `forwarded` are command-line settings for every run (see forwarded_fields).
    """
    runs = runs_of(grid)
    index, count = task(grid)
    root = run_settings.output_dir or DEFAULT_ROOT
    by_name = {run.name: run for run in runs}
    task_of = {run.name: i % count for i, run in enumerate(runs)}
    mine = shard(runs, index, count)
    presets = {}
    for binary, flag in (("find_tickets", "tickets_flagfile"),
                         ("transfer", "transfer_flagfile")):
        path = getattr(grid, flag)
        if binary == "transfer" and not path:  # no preset: the ticket runs' recipe
            presets[binary] = None
            continue
        if not os.path.isfile(path):
            raise settings.SettingsError(f"--{flag}={path}: no such file")
        presets[binary] = os.path.abspath(path)
    # The rounds every ticket run is to reach: the tickets preset's, as the runs get it.
    rounds = settings.parse(settings.FIND_TICKETS, [f"--flagfile={presets['find_tickets']}",
                                                    *forwarded])[settings.Pruning].rounds

    def states(name):
        return state(by_name[name], root, rounds)

    def rows():
        return [{"run": run.name, "binary": run.binary, "state": states(run.name),
                 "task": task_of[run.name], "needs": list(run.needs)} for run in runs]

    if list_only:
        table = rows()
        width = max(len(run.name) for run in runs)
        print(f"{'run':<{width}}  {'state':<7}  task  needs")
        for row in table:
            print(f"{row['run']:<{width}}  {row['state']:<7}  {row['task']:>4}  "
                  f"{', '.join(row['needs'])}")
        states_list = [row["state"] for row in table]
        print(f"{len(runs)} runs: " + ", ".join(f"{states_list.count(s)} {s}" for s in
                                                (DONE, PARTIAL, PENDING)))
        return table

    print(f"grid: {len(runs)} runs under {root}; task {index} of {count} has {len(mine)}",
          flush=True)
    failed, waiting = _execute(mine, root, states, presets, list(forwarded),
                               grid.wait_for_inputs)
    if waiting:
        print(f"{len(waiting)} run(s) wait for tickets of other tasks: re-run this task "
              "when they are done (finished runs are skipped)")
    if failed:
        raise GridError(f"{len(failed)} run(s) failed: {', '.join(failed)}; see their logs "
                        f"under {os.path.join(root, 'logs')}")
    return rows()


class GridError(RuntimeError):
    """Runs of the grid failed (each has its log); one line for the user."""
