"""What a run is made of, from its settings: the ticket run it reads, the dataset, its input
plan, the engine, and the start of its run directory.

Every protocol (tickets.py, fine_tuning.py, instability.py) starts alike:

  1. its settings checked, and a ticket run it reads opened and checked (`open_tickets`:
     the architecture, input and recipe it takes from the tickets, the levels it chose,
     the files they must hold), before anything heavy is imported;
  2. the data loaded and its input plan made (no framework needed: a missing file or a
     bad image is reported at once);
  3. the framework and this process's engine runtime (`engine`);
  4. its model built, then its run directory locked and its record written or checked
     (`recorded`).

Each step is here once; a protocol supplies only what differs.
"""

import contextlib
import dataclasses
import importlib
import os

from absl import logging

from lth_keras import settings
from lth_keras.errors import SettingsError
from lth_keras.lottery import directory
from lth_keras.lottery.directory import MASK
from lth_keras.settings import Data, Model, Run, Training


# --- what a run takes from its ticket run ------------------------------------------------

def open_tickets(chosen, given, where, recipe_of):
    """(TicketRun, `chosen` with the ticket run's architecture and input, and its recipe
    where `given` names no other, {recipe field: {"tickets": value, "transfer": value}}
    for those given otherwise) of the find_tickets run at `where`. An architecture
    setting given otherwise is refused; a recipe given otherwise is announced in one line
    ("the `recipe_of` differs from the ticket run's: ...")."""
    ticket_run = directory.open_ticket_run(where)
    record = ticket_run.record()
    owners = {f.name: (group, f) for group in chosen for f in dataclasses.fields(group)}
    updates, overrides = {}, {}
    for name in settings.ARCHITECTURE + settings.RECIPE:
        group, _ = owners[name]
        current = getattr(chosen[group], name)
        ticket = getattr(record.settings[group], name)
        if name not in given:
            updates.setdefault(group, {})[name] = ticket
        elif current != ticket and name in settings.ARCHITECTURE:
            raise SettingsError(f"--{name}={current} but the tickets in {where} are for {name} "
                                f"{ticket}; leave --{name} out to use the ticket's")
        elif current != ticket:
            overrides[name] = {"tickets": settings.json_value(ticket),
                               "transfer": settings.json_value(current)}
    chosen = {group: dataclasses.replace(obj, **updates.get(group, {}))
              for group, obj in chosen.items()}
    if overrides:
        logging.warning("the %s differs from the ticket run's: %s", recipe_of, ", ".join(
            f"{name} {v['transfer']} (tickets: {v['tickets']})" for name, v in overrides.items()))
    return ticket_run, chosen, overrides


def chosen_levels(ticket_run, levels, tickets, *, run_files=(), files=(MASK,)):
    """The finished levels of `ticket_run` that `levels` (--levels) names, once the run is
    checked to hold `run_files` and, at each chosen level, `files`; one line naming what
    is missing otherwise. `tickets`: the run as the user named it."""
    available = ticket_run.finished_levels()
    if not available:
        raise SettingsError(f"{tickets} has no finished levels; run find_tickets first")
    chosen = settings.parse_levels(levels, "--levels")
    chosen = list(available) if chosen is None else chosen
    outside = [level for level in chosen if level not in available]
    if outside:
        raise SettingsError(f"--levels {','.join(map(str, outside))} not in {tickets}, which "
                            f"has finished levels {available[0]}..{available[-1]}")
    check_holds(ticket_run, tickets, run_files, {level: files for level in chosen})
    return chosen


def check_holds(ticket_run, tickets, run_files, level_files=None):
    """One line naming what `ticket_run` lacks of `run_files` and {level: files}."""
    needed = [ticket_run.file(name) for name in run_files] + [
        ticket_run.level_file(level, name)
        for level, names in (level_files or {}).items() for name in names]
    missing = [os.path.relpath(path, ticket_run.path) for path in needed
               if not os.path.exists(path)]
    if missing:
        raise SettingsError(f"{tickets} lacks {', '.join(missing)}: its find_tickets run "
                            "is incomplete or damaged; run its command again to repair it")


# --- data, engine, run directory ---------------------------------------------------------

def load_dataset(name, chosen):
    """The dataset `name` (a source, a paper target or an image folder) as `chosen` say."""
    from lth_keras import datasets

    data, training = chosen[Data], chosen[Training]
    return datasets.load_dataset(
        name, data_dir=data.data_dir, seed=training.seed, val_fraction=data.val_fraction,
        train_fraction=data.train_fraction, image_size=chosen[Model].image_size, crop=data.crop,
        split=data.split and [str(f) for f in data.split],
        skip_bad_images=data.skip_bad_images,
        cache_dir=datasets.cache.default_dir() if data.cache_dir is None else data.cache_dir)


def input_plan(dataset, chosen, channels=None):
    """The InputPlan of `dataset` as `chosen` say; `channels` (a count) overrides the
    channels setting (a transfer feeds its ticket's count)."""
    from lth_keras.datasets import InputPlan

    data, training = chosen[Data], chosen[Training]
    if channels is None:
        channels = 3 if data.channels == "3" else None
    return InputPlan(dataset, image_size=chosen[Model].image_size,
                     batch_size=training.batch_size, seed=training.seed, crop=data.crop,
                     channels=channels)


def start_framework():
    """Imports Keras and its backend (TensorFlow or JAX), their start-up noise filtered."""
    from lth_keras import quiet

    with quiet.framework_startup():
        importlib.import_module("keras")


def engine(chosen):
    """The framework started, and this process's engine Runtime for `chosen` (made once,
    then reused)."""
    from lth_keras import quiet

    start_framework()
    from lth_keras import engines  # Keras's import, quiet, came first

    # Several hosts: their watchdog must write to the real stderr, so nothing is filtered.
    startup = (quiet.framework_startup() if chosen[Run].strategy != "multi_worker"
               else contextlib.nullcontext())
    with startup:
        return engines.runtime(chosen[Run], chosen[Training])


@contextlib.contextmanager
def recorded(run, kind, chosen, dataset, plan, runtime, **start):
    """`run`'s directory locked for this process, its record written (or a re-run's
    checked: directory.start, which `start` goes to), while the block trains into it."""
    with directory.locked(run.path):
        directory.start(run.config_path, kind=kind, chosen=chosen, dataset=dataset, plan=plan,
                        runtime=runtime, **start)
        logging.info("run directory: %s (engine: %s)", run.path, runtime.name)
        yield run
