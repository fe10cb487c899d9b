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

from lth_keras import artifacts
from lth_keras.datasets.sources import SOURCES
from lth_keras.runs import RunDirectory

CONDITIONS = ("target_tickets", "rewind", "final", "reinit", "scratch", "related",
              "train_fractions")
DONE, PARTIAL, PENDING = "done", "partial", "pending"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str                 # unique, also the run directory below the grid root
    binary: str               # "find_tickets" or "transfer"
    args: tuple               # flags of the binary, but --tickets and --output_dir
    tickets: str = None       # name of the find_tickets run a transfer reads

    @property
    def needs(self):
        return (self.tickets,) if self.tickets else ()

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
        runs.setdefault(name, Run(name, "transfer", tuple(args), tickets=ticket_run))

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


def state(run, root):
    """DONE, PARTIAL or PENDING, from what the run directory holds.

    A find_tickets run is done when its levels 0..rounds are finished (rounds as
    its config recorded); a transfer run when every level it chose is.
    """
    path = run.directory(root)
    if not os.path.exists(os.path.join(path, "config.json")):
        return PARTIAL if os.path.isdir(path) and os.listdir(path) else PENDING
    directory = RunDirectory(path)
    try:
        config = directory.config()
        wanted = (range(config["flags"]["rounds"] + 1) if run.binary == "find_tickets"
                  else config["levels"])
    except (artifacts.ArtifactError, KeyError) as e:
        raise artifacts.ArtifactError(f"{path}: unreadable run record ({e})")
    finished = set(directory.finished_levels())
    return DONE if set(wanted) <= finished else PARTIAL
