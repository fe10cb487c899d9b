"""The Python API: what the binaries do, as functions for notebooks and scripts.

  import lth_keras
  tickets = lth_keras.find_tickets(source="fashion_mnist", preset="quick")
  tickets.summary()                      # one row per level
  lth_keras.transfer(tickets=tickets, target="../shared/data/histology_nuclei",
                     preset="quick_transfer", levels=[0, 2])
  report = lth_keras.analyze(["outputs/"])
  report.figures["fig3"]                 # a matplotlib Figure

Each function takes settings objects (lth_keras.settings.Data, Training, ...), a
preset (a flagfile path, or the name of one in flags/) and options by field
name; options win over objects, objects over the preset. Run directories are
those of the binaries, which are thin shells over these functions: a run
started here resumes from the command line and the other way round. Calling
them again in the same process reuses its engine runtime (devices are set up
once per process).
"""

import contextlib
import dataclasses
import importlib
import os

from lth_keras import settings
from lth_keras.settings import (Data, Model, Pruning, Run, SettingsError, Training,
                                Transfer)

FLAGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flags")


def preset_path(preset):
    """A flagfile path, or the name of a preset in the project's flags/ ("quick")."""
    if os.path.isfile(preset):
        return preset
    named = os.path.join(FLAGS_DIR, f"{preset}.cfg")
    if os.sep not in preset and os.path.isfile(named):
        return named
    raise SettingsError(f"preset {preset!r} is neither a flagfile nor one of "
                        f"{', '.join(sorted(n[:-4] for n in os.listdir(FLAGS_DIR)))}"
                        if os.path.isdir(FLAGS_DIR) else f"no such flagfile: {preset}")


def resolve(groups, objects=(), preset=None, options=None):
    """{group: settings object}: defaults, then the preset, then `objects`, then `options`."""
    resolved = settings.parse(groups, [f"--flagfile={preset_path(preset)}"] if preset else [])
    for obj in objects:
        if type(obj) not in resolved:
            raise SettingsError(f"{type(obj).__name__} settings do not apply here (it takes "
                                f"{', '.join(g.__name__ for g in groups)})")
        resolved[type(obj)] = obj
    return settings.with_options(resolved, options or {})


def check(groups):
    """Every setting's own check, before anything is loaded or written."""
    for group, obj in groups.items():
        if group is Pruning:
            obj.check(groups[Training])
        elif hasattr(obj, "check"):
            obj.check()


def load_dataset(name, groups):
    """The dataset `name` (a source, a paper target or an image folder) as `groups` say."""
    from lth_keras import datasets

    data, training = groups[Data], groups[Training]
    return datasets.load_dataset(
        name, data_dir=data.data_dir, seed=training.seed, val_fraction=data.val_fraction,
        train_fraction=data.train_fraction, image_size=groups[Model].image_size, crop=data.crop,
        split=data.split and [str(f) for f in data.split],
        skip_bad_images=data.skip_bad_images,
        cache_dir=datasets.cache.default_dir() if data.cache_dir is None else data.cache_dir)


def input_plan(dataset, groups, channels=None):
    """The InputPlan of `dataset` as `groups` say; `channels` (a count) overrides the
    channels setting (a transfer feeds its ticket's count)."""
    from lth_keras.datasets import InputPlan

    data, training = groups[Data], groups[Training]
    if channels is None:
        channels = 3 if data.channels == "3" else None
    return InputPlan(dataset, image_size=groups[Model].image_size,
                     batch_size=training.batch_size, seed=training.seed, crop=data.crop,
                     channels=channels)


def start_framework():
    """Imports Keras and its backend (TensorFlow or JAX), their start-up noise filtered."""
    from lth_keras import quiet

    with quiet.framework_startup():
        importlib.import_module("keras")


def runtime(groups):
    """This process's engine Runtime for `groups` (made once, then reused)."""
    from lth_keras import engines, quiet

    run, training = groups[Run], groups[Training]
    # Several hosts: their watchdog must write to the real stderr, so nothing is filtered.
    startup = (quiet.framework_startup() if run.strategy != "multi_worker"
               else contextlib.nullcontext())
    with startup:
        return engines.runtime(seed=training.seed, deterministic=run.deterministic,
                               mixed_precision=training.mixed_precision, strategy=run.strategy,
                               cpu_devices=run.cpu_devices, worker_timeout=run.worker_timeout,
                               jit_compile=run.jit_compile,
                               steps_per_execution=run.steps_per_execution,
                               compilation_cache=run.compilation_cache)


# --- find_tickets ----------------------------------------------------------------------

def find_tickets(*objects, preset=None, verbose=True, **options):
    """Finds (or resumes) tickets by iterative magnitude pruning; returns the TicketRun.

    Example: find_tickets(source="fashion_mnist", preset="quick", seed=1, rounds=3).
    The TicketRun reads what the run holds: summary() (a row per level), mask(level),
    theta("0"), theta("k"), theta_i(level), metrics(level).
    """
    return run_find_tickets(resolve(settings.FIND_TICKETS, objects, preset, options),
                            verbose=verbose)


def run_find_tickets(groups, verbose=True):
    check(groups)  # before the heavy imports: a bad setting is reported at once
    start_framework()
    from absl import logging

    from lth_keras import lottery, models, runs

    model_settings, training, pruning = groups[Model], groups[Training], groups[Pruning]
    recipe = training.recipe(groups[Run])
    dataset = load_dataset(pruning.source, groups)
    plan = input_plan(dataset, groups)
    rt = runtime(groups)
    output_dir = groups[Run].output_dir or runs.default_dir(
        "tickets", f"{dataset.name}-{model_settings.model}-{model_settings.image_size}px"
                   f"-seed{training.seed}")
    run = lottery.TicketRun(runs.process_directory(output_dir, rt))
    with runs.locked(run.path):
        runs.start(run.config_path, kind="find_tickets", groups=groups, dataset=dataset,
                   plan=plan, runtime=rt, legacy=runs.legacy_hparams("find_tickets", groups))
        logging.info("run directory: %s (engine: %s)", output_dir, rt.name)
        with rt.scope():
            model = models.build_model(model_settings.model,
                                       input_shape=(plan.image_size,) * 2 + (plan.channels,),
                                       num_classes=dataset.num_classes, seed=training.seed,
                                       bn_momentum=model_settings.bn_momentum)
        lottery.find_tickets(run, model, plan, rt, recipe, rounds=pruning.rounds,
                             prune_rate=pruning.prune_rate, pruning_mode=pruning.pruning,
                             rewind_epoch=pruning.rewind_epoch, verbose=verbose)
    return run


# --- transfer ------------------------------------------------------------------------

def transfer(*objects, preset=None, verbose=True, **options):
    """Fine-tunes tickets on a target, or trains a control; returns the TransferRun.

    Example: transfer(tickets=run, target="human_lba", preset="quick_transfer",
    levels=[0, 2], reinit=True). `tickets` is a run directory or a TicketRun;
    `levels` "all", a list or a comma string. The model, input size and pipeline are
    the ticket's, and so is the recipe (seed included) but for what the preset, the
    options or a settings object name: an object passed (Training(...)) counts as
    naming every field it has.
    """
    from lth_keras import runs

    if isinstance(options.get("tickets"), runs.RunDirectory):
        options["tickets"] = options["tickets"].path
    if isinstance(options.get("levels"), (list, tuple)):
        options["levels"] = ",".join(str(level) for level in options["levels"])
    given = (settings.given(settings.TRANSFER, [f"--flagfile={preset_path(preset)}"])
             if preset else set())
    given |= {f.name for obj in objects for f in dataclasses.fields(obj)} | set(options)
    return run_transfer(resolve(settings.TRANSFER, objects, preset, options), verbose=verbose,
                        given=given)


def _parse_levels(text, available, where):
    if text.strip() == "all":
        return list(available)
    try:
        levels = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SettingsError(f"--levels must be 'all' or a comma list of integers, got {text!r}")
    outside = [level for level in levels if level not in available]
    if not levels:
        raise SettingsError("--levels names no level")
    if outside:
        raise SettingsError(f"--levels {','.join(map(str, outside))} not in {where}, which has "
                            f"finished levels {available[0]}..{available[-1]}")
    return levels


def _from_tickets(groups, hparams, given, where):
    """(groups with the ticket run's architecture and input, and its recipe where `given`
    names no other, {recipe field: {"tickets": value, "transfer": value}} for those given
    otherwise). An architecture setting given otherwise is refused."""
    values = settings.typed_values(hparams)
    owners = {f.name: (group, f) for group in groups for f in dataclasses.fields(group)}
    updates, overrides = {}, {}
    for name in settings.ARCHITECTURE + settings.RECIPE:
        group, field = owners[name]
        current = getattr(groups[group], name)
        # Runs from before a setting existed had its default.
        ticket = values.get(name, field.default)
        ticket = tuple(ticket) if isinstance(ticket, list) else ticket
        if name not in given:
            updates.setdefault(group, {})[name] = ticket
        elif current != ticket and name in settings.ARCHITECTURE:
            raise SettingsError(f"--{name}={current} but the tickets in {where} are for {name} "
                                f"{ticket}; leave --{name} out to use the ticket's")
        elif current != ticket:
            overrides[name] = {"tickets": settings.json_value(ticket),
                               "transfer": settings.json_value(current)}
    groups = {group: dataclasses.replace(obj, **updates.get(group, {}))
              for group, obj in groups.items()}
    return groups, overrides


def _ticket_run(groups, given):
    """(ticket run directory or None, levels, groups with the ticket's model, input and
    recipe, recipe overrides) for the transfer; read before anything heavy is imported,
    so that a bad one is reported at once."""
    from lth_keras import runs

    spec = groups[Transfer]
    if not spec.tickets:  # scratch without tickets: the settings name the model
        return None, [0], groups, {}
    if not os.path.isdir(spec.tickets):
        raise SettingsError(f"--tickets={spec.tickets}: no such directory")
    ticket_run = runs.RunDirectory(spec.tickets)
    config = ticket_run.config()
    if config.get("kind") != "find_tickets":
        raise SettingsError(f"{spec.tickets} is a {config.get('kind')} run, not a find_tickets "
                            "run")
    groups, overrides = _from_tickets(groups, config["hparams"], given, spec.tickets)
    available = ticket_run.finished_levels()
    if spec.condition == "scratch":  # θ_0 alone: it exists from the ticket run's start
        levels = [0]
    elif not available:
        raise SettingsError(f"{spec.tickets} has no finished levels; run find_tickets first")
    else:
        levels = _parse_levels(spec.levels, available, spec.tickets)
    needed = ["theta_0.npz"] + (["theta_k.npz"] if spec.condition == "rewind" else [])
    if spec.condition != "scratch":
        needed += [os.path.join("levels", f"level_{level:02d}", name) for level in levels
                   for name in ("mask.npz",) + (("theta_i.npz",) if spec.init == "final"
                                                else ())]
    missing = [name for name in needed if not os.path.exists(ticket_run.file(name))]
    if missing:
        raise SettingsError(f"{spec.tickets} lacks {', '.join(missing)}: its find_tickets run "
                            "is incomplete or damaged; run its command again to repair it")
    return ticket_run, levels, groups, overrides


def transfer_dir(ticket_run, ticket_config, groups, dataset_name):
    """The default run directory of a transfer: outputs/transfer/<ticket run>-<its id>/
    <target>-<condition>[-frac]-seed<seed>. The ticket run's id keeps two ticket runs
    of the same name apart; a directory of the earlier layout (no id), made from the
    same tickets, is resumed where it is."""
    from lth_keras import artifacts, runs

    training, data = groups[Training], groups[Data]
    name = f"{dataset_name}-{groups[Transfer].condition}"
    if data.train_fraction < 1:
        name += f"-frac{data.train_fraction:g}"
    name += f"-seed{training.seed}"
    if ticket_run is None:
        return runs.default_dir("transfer", os.path.join(
            f"scratch-{groups[Model].model}-{groups[Model].image_size}px", name))
    base = os.path.basename(os.path.normpath(ticket_run.path))
    earlier = runs.default_dir("transfer", os.path.join(base, name))
    try:
        made_from = runs.RunDirectory(earlier).config()["tickets"]["hparams_hash"]
    except (artifacts.ArtifactError, KeyError, TypeError):  # none there, or no transfer's
        made_from = None
    if made_from in (ticket_config["hparams_hash"], ticket_config.get("legacy_hash")):
        return earlier
    return runs.default_dir("transfer", os.path.join(f"{base}-{runs.run_id(ticket_config)[:8]}",
                                                     name))


def run_transfer(groups, verbose=True, given=None):
    """`given`: the settings named explicitly (the rest of the recipe is the ticket run's);
    None counts every setting that differs from its default as given."""
    check(groups)  # before the heavy imports: a bad setting is reported at once
    spec = groups[Transfer]
    condition = spec.condition
    if given is None:
        given = set(settings.changed(groups))
    ticket_directory, levels, groups, overrides = _ticket_run(groups, given)
    start_framework()
    from absl import logging

    from lth_keras import fine_tuning, lottery, runs, weights

    ticket_run = ticket_directory and lottery.TicketRun(ticket_directory.path)
    model_settings, training = groups[Model], groups[Training]
    recipe = training.recipe(groups[Run])
    ticket_config = ticket_run.config() if ticket_run else None
    dataset = load_dataset(spec.target, groups)
    # The target feeds the ticket's channel count (a grayscale target is replicated to 3;
    # a ticket of 1-channel images cannot take a colour target: one line, nothing written).
    plan = input_plan(dataset, groups,
                      channels=ticket_config["input"].get("channels", 3) if ticket_run else None)
    if overrides:
        logging.warning("the fine-tuning recipe differs from the ticket run's: %s", ", ".join(
            f"{name} {v['transfer']} (tickets: {v['tickets']})" for name, v in overrides.items()))
    rt = runtime(groups)
    model_config = {"model": model_settings.model, "image_size": model_settings.image_size,
                    "channels": plan.channels,
                    "source_classes": (ticket_config["dataset"]["num_classes"] if ticket_run
                                       else dataset.num_classes),
                    "seed": ticket_config["hparams"]["seed"] if ticket_run else training.seed,
                    "bn_momentum": model_settings.bn_momentum}

    with rt.scope():
        source_model, target_model = fine_tuning.build_target_model(
            model_config, dataset.num_classes, fine_tuning.head_seed(training.seed, dataset.name))
        fresh_init = None
        if condition == "reinit":
            fresh_config = dict(model_config, seed=fine_tuning.reinit_seed(model_config["seed"],
                                                                           training.seed))
            fresh_init = weights.snapshot(fine_tuning.build_target_model(
                fresh_config, dataset.num_classes, head_seed=0)[0])  # the body only
    theta_0 = ticket_run.theta("0") if ticket_run else weights.snapshot(source_model)

    def start_for_level(level):
        return fine_tuning.starting_point(condition, level, ticket_run, theta_0, fresh_init)

    # A ticket that does not fit this architecture fails here, before anything is written.
    fine_tuning.load_start(source_model, *start_for_level(levels[0]))

    output_dir = groups[Run].output_dir or transfer_dir(ticket_run, ticket_config, groups,
                                                        dataset.name)
    run = fine_tuning.TransferRun(runs.process_directory(output_dir, rt))
    tickets = None
    if ticket_run:
        tickets = {"path": os.path.abspath(ticket_run.path),
                   "hparams_hash": runs.run_id(ticket_config),
                   "source": ticket_config["dataset"]["name"],
                   "source_fingerprint": ticket_config["dataset"]["fingerprint"]}
    identity_extra = {"condition": condition, "tickets_hash": tickets and tickets["hparams_hash"],
                      "head": fine_tuning.HEAD_RULE}
    with runs.locked(run.path):
        runs.start(run.config_path, kind="transfer", groups=groups, dataset=dataset, plan=plan,
                   runtime=rt, extra={"condition": condition, "tickets": tickets,
                                      "model": model_config, "levels": levels,
                                      "recipe_overrides": overrides},
                   identity_extra=identity_extra,
                   legacy=runs.legacy_hparams("transfer", groups, identity_extra))
        logging.info("run directory: %s (engine: %s)", output_dir, rt.name)
        fine_tuning.fine_tune(run, source_model, target_model, plan, rt, recipe,
                              condition=condition, levels=levels,
                              start_for_level=start_for_level,
                              mask_for_level=lambda level: (None if condition == "scratch"
                                                            else ticket_run.mask(level)),
                              verbose=verbose)
    return run


# --- experiment and analyze -------------------------------------------------------------

def experiment(preset=None, *, list_only=False, **options):
    """Runs the grid, or with list_only=True only lists it; returns a row per run
    ({"run", "binary", "state", "task", "needs"}) as it stands at the end.

    Example: experiment("quick_grid", seeds=[0], list_only=True). Options are the grid's
    (sources, targets, seeds, conditions, ...) and any common setting to give every run
    (data_dir, max_epochs, ...). Each run is a child process of its binary, as with
    `python -m lth_keras.experiment`.
    """
    from lth_keras import grid

    groups = resolve(settings.EXPERIMENT, (), preset, options)
    forwarded = [f"--{name}={_flag_text(value)}" for name, value in sorted(options.items())
                 if name in grid.forwarded_fields()]
    # The grid presets name their run presets relative to the project ("flags/quick.cfg"):
    # found from any working directory, as a notebook's may be elsewhere.
    spec, project = groups[settings.Grid], os.path.dirname(FLAGS_DIR)
    found = {name: os.path.join(project, getattr(spec, name))
             for name in ("tickets_flagfile", "transfer_flagfile")
             if not os.path.isfile(getattr(spec, name))
             and os.path.isfile(os.path.join(project, getattr(spec, name)))}
    return grid.run_grid(dataclasses.replace(spec, **found), groups[Run], forwarded,
                         list_only=list_only)


def _flag_text(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def analyze(runs, *, natural_sources=None, density_run=None, mask_overlap=True,
            overlap_levels=None, output_dir=None, primary_level=None):
    """Tables and figures of the run directories under `runs` (a path or a list).

    `primary_level`: the level of the primary result (default: the one the grids under
    `runs` named). Returns a Report: tables {"table2", "table3", "levels", "primary",
    "mask_overlap": list of row dicts},
    figures {"fig3", "fig4", "density_<run>": matplotlib Figure}, notes, and files
    {name: bytes}, which are written to `output_dir` when it is given.
    """
    from lth_keras import artifacts
    from lth_keras.analysis import report
    from lth_keras.analysis.targets import NATURAL_SOURCES

    roots = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    result = report.analyze(roots, natural=natural_sources or NATURAL_SOURCES,
                            density_runs=[density_run] if density_run else None,
                            overlap=mask_overlap, overlap_levels=overlap_levels,
                            primary_level=primary_level)
    if output_dir:
        for name, data in result.files.items():
            artifacts.write_bytes(os.path.join(output_dir, name), data)
    return result
