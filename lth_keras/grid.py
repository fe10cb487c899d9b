"""The paper's experiment grid: sources × targets × seeds × conditions, as runs.

A run is one invocation of find_tickets, transfer or stability with its own run
directory.
Runs that need tickets depend on the find_tickets run that makes them; every
transfer from the same (source, seed) shares that run. With --transfer_seeds each
ticket run is fine-tuned with several seeds, and the runs of one (seed, transfer
seed) are a pair: the same tickets, θ_0, head and target batches. Expansion is
pure, so --list, sharding and resuming all see the same runs in the same order.

Conditions (docs/protocol.md "Transfer (`transfer`)"):
  target_tickets   find_tickets on each target (blue lines)
  rewind           natural-source tickets fine-tuned on each target, m_L ⊙ θ_k
  final            the same from m_L ⊙ θ_i(L) (Fig. 4, first row)
  reinit           target tickets with fresh weights (orange lines)
  source_reinit    natural-source tickets' masks with fresh weights on each target
                   (is it the mask or its weights that transfers?)
  random           target tickets' masks drawn at random, per layer with the ticket's
                   alive count, from θ_k (random pruning: the mask or its sparsity?)
  source_random    the same for the natural-source tickets on each target
  target_transfer  target tickets fine-tuned on their own target like the natural ones
                   (m_L ⊙ θ_k, a fresh head): the paper's blue line, scored alike
  stability        the instability analysis of every ticket run (natural sources' and,
                   with target_tickets, the targets'), at the reinit levels
  scratch          the dense model trained on each target (dashed line)
  related          tickets of a related non-natural source (--related=A:B pairs)
  train_fractions  target tickets found on a fraction of the training split
"""

import dataclasses
import datetime
import os
import signal
import subprocess
import sys
import time

from lth_keras import artifacts, settings
from lth_keras.errors import GridError, UserError
from lth_keras.lottery.directory import (GRID_RECORD, OUTPUT_ROOT, THETA_0, RunDirectory,
                                         StabilityRun)

CONDITIONS = settings.GRID_CONDITIONS
DONE, PARTIAL, PENDING = "done", "partial", "pending"
DEFAULT_ROOT = os.path.join(OUTPUT_ROOT, "grid")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a grid's runs live: every run under `root` by name, but the find_tickets runs
    under `tickets_dir` when it is given (tickets shared with another grid)."""
    root: str
    tickets_dir: str = None

    def directory(self, name):
        if self.tickets_dir and name.startswith("tickets/"):
            return os.path.join(self.tickets_dir, name[len("tickets/"):])
        return os.path.join(self.root, name)


@dataclasses.dataclass(frozen=True)
class GridRun:
    """One run of the grid: its binary, its own settings and the ticket run it reads."""

    name: str                 # unique, also the run directory below the grid root
    binary: str               # "find_tickets", "transfer" or "stability"
    values: dict              # {field: value} of its settings, but tickets and output_dir
    tickets: str = None       # name of the find_tickets run a transfer reads
    only_theta_0: bool = False  # it reads only θ_0 of those tickets (scratch)
    mask_runs: tuple = ()     # stability: (epoch K, name of the tickets rewound to K)

    @property
    def needs(self):
        return ((self.tickets,) if self.tickets else ()) + tuple(n for _, n in self.mask_runs)

    def can_start(self, layout, state_of):
        """Whether what this run reads exists: θ_0 for scratch (written when its ticket run
        starts), every level of the ticket run otherwise."""
        if self.only_theta_0:
            layout = _layout(layout)
            return all(os.path.exists(RunDirectory(layout.directory(name)).file(THETA_0))
                       for name in self.needs)
        return all(state_of(name) == DONE for name in self.needs)

    def directory(self, layout):
        return _layout(layout).directory(self.name)

    def settings_values(self, layout):
        """{field: value} of the run's settings, with the run directories placed by
        `layout`."""
        layout = _layout(layout)
        values = {"output_dir": self.directory(layout), **self.values}
        if self.tickets:
            values["tickets"] = layout.directory(self.tickets)
        if self.mask_runs:
            values["mask_runs"] = tuple(f"{epoch}:{layout.directory(name)}"
                                        for epoch, name in self.mask_runs)
        return values


def _layout(layout):
    """A Layout, also from a plain root path."""
    return layout if isinstance(layout, Layout) else Layout(layout)


def dataset_label(name):
    """A short label for a dataset name or an image-folder path."""
    return os.path.basename(os.path.normpath(name)) if os.sep in name else name


def expand(*, sources, targets, seeds, conditions, related=(), train_fractions=(),
           transfer_levels="all", transfer_seeds=(), reinit_levels=None,
           control_transfer_seeds=None, mask_rewind_epochs=(), tickets_first=True):
    """The grid's runs, each listed after the runs it needs.

    Natural sources (--sources: names or folders) keep the preset's --train_fraction;
    targets and related sources are used whole, except by train_fractions. With `tickets_first` every
    find_tickets run comes first (a sharded grid's tasks then start with tickets);
    otherwise seed by seed, and within a seed transfer seed by transfer seed with
    scratch first, so that a grid cut short leaves complete pairs. The controls are
    fine-tuned with `control_transfer_seeds` only (default: every transfer seed). With
    `mask_rewind_epochs`, every stability run also gets, for each epoch K, a ticket run of
    its own settings rewound to K, whose masks its copies use at k = K.
    """
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise ValueError(f"unknown conditions {unknown}; known: {', '.join(CONDITIONS)}")
    if "reinit" in conditions and "target_tickets" not in conditions:
        raise ValueError("reinit fine-tunes the target tickets: add target_tickets")
    if "random" in conditions and "target_tickets" not in conditions:
        raise ValueError("random prunes like the target tickets: add target_tickets")
    if "target_transfer" in conditions and "target_tickets" not in conditions:
        raise ValueError("target_transfer fine-tunes the target tickets: add target_tickets")
    for control in ("source_reinit", "source_random"):
        if control in conditions and not sources:
            raise ValueError(f"{control} fine-tunes the natural sources' tickets: add sources")
    if "scratch" in conditions and not sources and "target_tickets" not in conditions:
        raise ValueError("scratch takes θ_0 from a ticket run: add sources or target_tickets")
    runs = {}

    def tickets(dataset, seed, fraction=None, natural=False, rewind_epoch=None):
        label = dataset_label(dataset)
        name = (f"tickets/{label}-seed{seed}" + (f"-frac{fraction:g}" if fraction else "")
                + (f"-k{rewind_epoch}" if rewind_epoch is not None else ""))
        values = {"source": dataset, "seed": seed}
        if not natural or fraction:  # natural sources (named or folders) keep the preset's
            values["train_fraction"] = fraction or 1.0
        if rewind_epoch is not None:
            values["rewind_epoch"] = rewind_epoch
        runs.setdefault(name, GridRun(name, "find_tickets", values))
        return name

    def transfer(ticket_run, source_label, target, seed, transfer_seed, condition):
        name = f"transfer/{dataset_label(target)}/{source_label}-{condition}-seed{seed}"
        if transfer_seeds:
            name += f"-t{transfer_seed}"
        values = {"target": target, "seed": transfer_seed, "train_fraction": 1.0,
                  **{"final": {"init": "final"}, "reinit": {"reinit": True},
                     "random": {"random_mask": True},
                     "scratch": {"scratch": True}}.get(condition, {})}
        control = condition in ("reinit", "random") or source_label == dataset_label(target)
        levels = reinit_levels if control and reinit_levels else transfer_levels
        if condition != "scratch" and levels != "all":
            values["levels"] = levels
        runs.setdefault(name, GridRun(name, "transfer", values, tickets=ticket_run,
                                      only_theta_0=condition == "scratch"))

    def stability(ticket_run, dataset, seed, natural=False):
        levels = reinit_levels or transfer_levels
        values = {"levels": levels} if levels != "all" else {}
        name = f"stability/{dataset_label(dataset)}-seed{seed}"
        masks = tuple((k, tickets(dataset, seed, natural=natural, rewind_epoch=k))
                      for k in mask_rewind_epochs)
        runs.setdefault(name, GridRun(name, "stability", values, tickets=ticket_run,
                                      mask_runs=masks))

    for seed in seeds:
        natural = ({source: tickets(source, seed, natural=True) for source in sources}
                   if {"rewind", "final", "scratch", "source_reinit", "source_random",
                       "stability"} & set(conditions) else {})
        if "stability" in conditions:
            for source, ticket_run in natural.items():
                stability(ticket_run, source, seed, natural=True)
        for target in targets:
            own = tickets(target, seed) if "target_tickets" in conditions else None
            if own and "stability" in conditions:
                stability(own, target, seed)
            for t in transfer_seeds or (seed,):
                is_control_seed = control_transfer_seeds is None or t in control_transfer_seeds
                if "scratch" in conditions:
                    # θ_0 depends on the model and seed only (the head is replaced).
                    transfer(next(iter(natural.values()), own), "dense", target, seed, t,
                             "scratch")
                for source, ticket_run in natural.items():
                    for condition in ("rewind", "final"):
                        if condition in conditions:
                            transfer(ticket_run, dataset_label(source), target, seed, t,
                                     condition)
                    for control in ("reinit", "random"):
                        if f"source_{control}" in conditions and is_control_seed:
                            transfer(ticket_run, dataset_label(source), target, seed, t,
                                     control)
                if "target_transfer" in conditions and is_control_seed:
                    transfer(own, dataset_label(target), target, seed, t, "rewind")
                for control in ("reinit", "random"):
                    if control in conditions and is_control_seed:
                        transfer(own, dataset_label(target), target, seed, t, control)
            if "train_fractions" in conditions:
                for fraction in train_fractions:
                    tickets(target, seed, fraction)
        if "related" in conditions:
            for source, target in related:
                for t in transfer_seeds or (seed,):
                    transfer(tickets(source, seed), dataset_label(source), target, seed, t,
                             "rewind")
    if not tickets_first:
        return list(runs.values())
    return sorted(runs.values(), key=lambda run: run.binary != "find_tickets")


def shard(runs, task_index, num_tasks):
    """Runs of this task: every num_tasks-th run, so each stage spreads over the tasks."""
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task index {task_index} is not in [0, {num_tasks})")
    return [run for i, run in enumerate(runs) if i % num_tasks == task_index]


def state(run, layout, rounds=None):
    """DONE, PARTIAL or PENDING, from what the run directory holds.

    A find_tickets run is done when its levels 0..rounds are finished, with rounds the
    larger of what its record says (a resumed run records its latest) and `rounds` (the
    grid's preset: raising it there extends every ticket run); a transfer run is done
    when every level it chose is, and a transfer of every level (no --levels) also wants
    the levels its ticket run is to reach, so that it grows with its tickets.
    """
    path = run.directory(layout)
    if not os.path.exists(RunDirectory(path).config_path):
        return PARTIAL if os.path.isdir(path) and os.listdir(path) else PENDING
    if not finished_as_recorded(path):
        return PARTIAL
    if run.binary == "stability":
        return DONE
    directory = RunDirectory(path)
    wanted = set()  # what the grid wants beyond the run's own record
    if run.binary == "find_tickets":
        wanted = set(_ticket_levels(directory, rounds))
    elif not run.only_theta_0 and "levels" not in run.values:
        tickets = RunDirectory(_layout(layout).directory(run.tickets))
        if os.path.exists(tickets.config_path):
            wanted = set(_ticket_levels(tickets, rounds))
    return DONE if wanted <= set(directory.finished_levels()) else PARTIAL


def finished_as_recorded(path):
    """Whether a run directory holds everything its own record chose: every level of a
    find_tickets run (0..its recorded rounds) or of a transfer run, every (level, k, pair)
    path of a stability run. False without a record."""
    directory = RunDirectory(path)
    if not os.path.exists(directory.config_path):
        return False
    record = _record(directory)
    if record.kind == "stability":
        chosen = record.stability
        wanted = {(level, k, pair) for level in chosen.levels for k in chosen.rewind_points
                  for pair in range(chosen.pairs)}
        return wanted <= set(StabilityRun(path).paths())
    wanted = (_ticket_levels(directory, None) if record.kind == "find_tickets"
              else record.levels)
    return set(wanted) <= set(directory.finished_levels())


def _record(directory):
    """The Record of a run directory, or ArtifactError naming it."""
    try:
        return directory.record()
    except artifacts.ArtifactError as e:
        raise artifacts.ArtifactError(f"{directory.path}: unreadable run record ({e})")


def _ticket_levels(directory, rounds):
    """The levels a ticket run is to reach: 0..the larger of its recorded rounds and the
    grid's."""
    recorded = _record(directory).settings[settings.Pruning].rounds
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


def runs_of(grid, tickets_first=True):
    grid.check()
    try:
        return expand(sources=grid.sources, targets=grid.targets, seeds=grid.seeds,
                      conditions=grid.conditions,
                      related=[tuple(pair.split(":")) for pair in grid.related],
                      train_fractions=grid.train_fractions,
                      transfer_levels=grid.transfer_levels, transfer_seeds=grid.transfer_seeds,
                      reinit_levels=grid.reinit_levels,
                      control_transfer_seeds=grid.control_transfer_seeds,
                      mask_rewind_epochs=grid.mask_rewind_epochs,
                      tickets_first=tickets_first)
    except ValueError as e:
        raise settings.SettingsError(str(e))


def _device_values(tickets_preset):
    """{field: value} of the device and bookkeeping settings (settings.Run) that the tickets
    preset names: a stability run, which has no preset, takes its recipe from its ticket
    run and runs on the devices its tickets were found on (one process, in_process, has
    one set of devices)."""
    chosen, given = settings.from_arguments(settings.FIND_TICKETS,
                                            [f"--flagfile={tickets_preset}"])
    return {f.name: getattr(chosen[settings.Run], f.name) for f in dataclasses.fields(settings.Run)
            if f.name in given and f.name != "output_dir"}


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


def _in_child(run, preset, values, log_path):
    """(exit status, last line of its log) of the run as a child process of its binary:
    its preset, then `values` as flags (what crosses to another process is text)."""
    arguments = [*preset, *(settings.flag_text(name, value) for name, value in values.items()
                            if value is not None)]  # None: the setting's default
    with open(log_path, "ab") as log:
        code = subprocess.call([sys.executable, "-m", f"lth_keras.{run.binary}", *arguments],
                               stdout=log, stderr=subprocess.STDOUT,
                               preexec_fn=_die_with_parent)
    if code == 0:
        return 0, ""
    with open(log_path, errors="replace") as log:
        return code, ([line for line in log.read().splitlines() if line.strip()] or [""])[-1]


def _in_this_process(run, preset, values, log_path):
    """(exit status, error line) of the run in this process (the engine runtime, and on JAX
    its compiled steps, carry over from run to run), its preset parsed and `values` applied
    as typed settings, its log lines also written to `log_path`. A stop request
    (SIGINT/SIGTERM) ends the grid."""
    import logging as std_logging
    import traceback

    from absl import logging

    from lth_keras import runner

    handler = std_logging.FileHandler(log_path)
    handler.setFormatter(std_logging.Formatter("%(levelname).1s%(asctime)s %(message)s"))
    logger = logging.get_absl_logger()
    logger.addHandler(handler)
    try:
        chosen, given = settings.from_arguments(runner.GROUPS[run.binary], preset)
        # What the grid names is what a transfer does not take from its tickets.
        runner.run(run.binary, settings.replaced(chosen, values), given | set(values))
        return 0, ""
    except Exception as e:  # noqa: BLE001 - one run's failure is reported; the grid goes on
        message = f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e)
        with open(log_path, "a") as log:
            log.write(traceback.format_exc() if not isinstance(e, UserError) else f"error: {e}\n")
        return 1, message.splitlines()[0] if message else type(e).__name__
    finally:
        logger.removeHandler(handler)
        handler.close()


def _execute(mine, layout, states, presets, forwarded, wait_for_inputs, in_process,
             timings):
    root = layout.root
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    failed, waiting = [], []
    for i, run in enumerate(mine, start=1):
        tag = f"[{i}/{len(mine)}] {run.name}"
        if states(run.name) == DONE:
            print(f"{tag}: done, skipped", flush=True)
            continue
        missing = _wait_for(run, lambda: run.can_start(layout, states),
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
        execute = _in_this_process if in_process else _in_child
        values = presets.run_values(run, forwarded, layout)
        code, last = execute(run, presets.arguments_of(run.binary), values, log_path)
        seconds = time.time() - start
        timings.record(run.name, seconds, code)
        if code == 0:
            print(f"{tag}: finished in {seconds:.0f} s", flush=True)
        else:
            print(f"{tag}: FAILED (exit {code}): {last}", flush=True)
            failed.append(run.name)
    return failed, waiting


class Timings:
    """Each run's wall time in this task, in <root>/logs/timings[-task<i>].json, rewritten
    after every run (what a grid cut short by a time limit had done, and at what cost). A
    resumed grid adds to what its earlier invocations recorded: a study that runs over
    several sessions keeps the wall time of every run. A run that ran again (it had failed,
    or the grid extended it) keeps its latest entry. Whether a run is finished is read from
    its directory (finished_as_recorded), not from here."""

    def __init__(self, root, index, count):
        name = "timings.json" if count == 1 else f"timings-task{index}.json"
        self.path = os.path.join(root, "logs", name)
        self.runs = (artifacts.read_json(self.path)["runs"] if os.path.exists(self.path)
                     else {})

    def record(self, name, seconds, code):
        finished = datetime.datetime.now(datetime.timezone.utc)
        self.runs[name] = {"seconds": round(seconds, 3), "exit": code,
                           "finished_at": finished.isoformat(timespec="seconds")}
        artifacts.write_json(self.path, {"runs": self.runs})


def write_record(root, grid, run_settings):
    """<root>/grid.json: the grid's settings and lth_keras's version, with what `analyze`
    reads from it: the primary level and the domain contrast, named before anything ran,
    and the natural sources (by dataset label)."""
    from lth_keras.version import __version__

    artifacts.write_json(os.path.join(root, GRID_RECORD), {
        "kind": "grid", "lth_keras": __version__,
        "settings": settings.record({settings.Grid: grid, settings.Run: run_settings}),
        "primary_level": grid.primary_level,
        "natural_sources": [dataset_label(s) for s in grid.sources],
        "domain_contrast": (grid.domain_contrast.split(":") if grid.domain_contrast
                            else None)})


@dataclasses.dataclass(frozen=True)
class Presets:
    """What every run of a binary starts from: its preset (a flagfile), and for stability
    runs, which have none, the tickets preset's device settings."""
    flagfiles: dict   # {binary: [--flagfile=...] or []}
    stability_values: dict

    def arguments_of(self, binary):
        return self.flagfiles.get(binary, [])

    def values_of(self, binary):
        return self.stability_values if binary == "stability" else {}

    def run_values(self, run, forwarded, layout):
        """{field: value} of a run's settings: its preset's, then the grid's common ones
        (`forwarded`, given on the grid's command line), then its own."""
        return {**self.values_of(run.binary), **forwarded, **run.settings_values(layout)}


def _presets(grid):
    """The grid's Presets: its run presets found from any working directory."""
    flagfiles = {"stability": []}
    for binary, flag in (("find_tickets", "tickets_flagfile"),
                         ("transfer", "transfer_flagfile")):
        path = getattr(grid, flag)
        if binary == "transfer" and not path:  # no preset: the ticket runs' recipe
            flagfiles[binary] = []
            continue
        # The grid presets name their run presets relative to the project
        # ("flags/quick.cfg"): found from any working directory (a notebook's, a job's).
        in_project = os.path.join(os.path.dirname(settings.FLAGS_DIR), path)
        if not os.path.isfile(path) and os.path.isfile(in_project):
            path = in_project
        if not os.path.isfile(path):
            raise settings.SettingsError(f"--{flag}={path}: no such file")
        flagfiles[binary] = [f"--flagfile={os.path.abspath(path)}"]
    tickets_preset = flagfiles["find_tickets"][0].split("=", 1)[1]
    return Presets(flagfiles, _device_values(tickets_preset))


def experiment(grid, run_settings, forwarded=None):
    """Runs this task's share of the grid (or with grid.list only lists it, printing a
    table); returns one row per run of the whole grid: {"run", "binary", "state", "task",
    "needs"}.

    `forwarded` ({field: value}) are settings for every run (see forwarded_fields).
    """
    forwarded = dict(forwarded or {})
    list_only = grid.list
    index, count = task(grid)
    # One task runs seed by seed (a grid cut short keeps complete pairs); several start
    # with the tickets that the others' transfers wait for.
    runs = runs_of(grid, tickets_first=count > 1)
    root = run_settings.output_dir or DEFAULT_ROOT
    layout = Layout(root, grid.tickets_dir)
    by_name = {run.name: run for run in runs}
    task_of = {run.name: i % count for i, run in enumerate(runs)}
    mine = shard(runs, index, count)
    presets = _presets(grid)
    # The rounds every ticket run is to reach: the tickets preset's, as the runs get it.
    rounds = settings.from_arguments(settings.FIND_TICKETS, presets.arguments_of(
        "find_tickets"))[0][settings.Pruning].rounds
    if grid.primary_level is not None and grid.primary_level > rounds:
        raise settings.SettingsError(f"--primary_level={grid.primary_level} is beyond the "
                                     f"tickets preset's {rounds} rounds")

    def states(name):
        return state(by_name[name], layout, rounds)

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

    print(f"grid: {len(runs)} runs under {root}; task {index} of {count} has {len(mine)}"
          + (" (in this process)" if grid.in_process else ""), flush=True)
    write_record(root, grid, run_settings)
    failed, waiting = _execute(mine, layout, states, presets, forwarded,
                               grid.wait_for_inputs, grid.in_process,
                               Timings(root, index, count))
    if waiting:
        print(f"{len(waiting)} run(s) wait for tickets of other tasks: re-run this task "
              "when they are done (finished runs are skipped)")
    if failed:
        raise GridError(f"{len(failed)} run(s) failed: {', '.join(failed)}; see their logs "
                        f"under {os.path.join(root, 'logs')}")
    return rows()

