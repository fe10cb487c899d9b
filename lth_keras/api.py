"""The Python API: what the binaries do, as functions for notebooks and scripts.

  import lth_keras
  tickets = lth_keras.find_tickets(source="fashion_mnist", preset="quick")
  tickets.summary()                      # one row per level
  lth_keras.transfer(tickets=tickets, target="../shared/data/histology_nuclei",
                     preset="quick_transfer", levels=[0, 2])
  report = lth_keras.analyze(["outputs/"])
  report.figures["fig3"]                 # a matplotlib Figure
  lth_keras.export(run="outputs/transfer/RUN", level=3)

Each function takes settings objects (lth_keras.settings.Data, Training, ...), a
preset (a flagfile path, or the name of one in flags/) and options by field
name; options win over objects, objects over the preset. Run directories are
those of the binaries, which are thin shells over the same code: a run started
here resumes from the command line and the other way round. Calling them again
in the same process reuses its engine runtime (devices are set up once per
process). Each function is one short step from its settings to lth_keras.lottery
(the protocols), grid, analysis or tflite_export.
"""

import dataclasses
import os

from lth_keras import settings


def find_tickets(*objects, preset=None, verbose=True, **options):
    """Finds (or resumes) tickets by iterative magnitude pruning; returns the TicketRun.

    Example: find_tickets(source="fashion_mnist", preset="quick", seed=1, rounds=3).
    The TicketRun reads what the run holds: summary() (a row per level), mask(level),
    theta("0"), theta("k"), theta_i(level), metrics(level).
    """
    from lth_keras import runner

    return runner.run("find_tickets", *settings.resolve(settings.FIND_TICKETS, objects, preset,
                                                        options), verbose=verbose)


def transfer(*objects, preset=None, verbose=True, **options):
    """Fine-tunes tickets on a target, or trains a control; returns the TransferRun.

    Example: transfer(tickets=run, target="human_lba", preset="quick_transfer",
    levels=[0, 2], reinit=True). `tickets` is a run directory or a TicketRun;
    `levels` "all", a list or a comma string. The model, input size and pipeline are
    the ticket's, and so is the recipe (seed included) but for what the preset, the
    options or a settings object name, even at its default: an object passed
    (Training(...)) counts as naming every field it has.
    """
    from lth_keras import runner

    _ticket_options(options)
    return runner.run("transfer", *settings.resolve(settings.TRANSFER, objects, preset, options),
                      verbose=verbose)


def stability(*objects, preset=None, verbose=True, **options):
    """Instability analysis of a ticket run; returns the StabilityRun, its report
    (stability.md, .csv, .png) written into it.

    Example: stability(tickets=run, levels=[0, 3], rewind_points=["0", "40it", "2"]).
    Pairs of copies (pairs=3) of each level's m_L ⊙ θ_k train from step k to the budget's
    step T with the ticket run's recipe (but for what is named, as with transfer), each on
    a data order of its own; `run.paths()` holds each evaluated path,
    lth_keras.analysis.stability_report.cells(pair_rows(run), threshold) the table. The ticket
    run must hold level 0's weights at each k (find_tickets save_epochs=..., save_steps=...).
    """
    from lth_keras import runner

    _ticket_options(options)
    return runner.run("stability", *settings.resolve(settings.STABILITY, objects, preset,
                                                     options), verbose=verbose)


def _ticket_options(options):
    """A TicketRun given as `tickets` becomes its path; a list of `levels` a comma string;
    rewind points may be numbers (epochs)."""
    from lth_keras.lottery import directory

    if isinstance(options.get("tickets"), directory.RunDirectory):
        options["tickets"] = options["tickets"].path
    if isinstance(options.get("levels"), (list, tuple)):
        options["levels"] = ",".join(str(level) for level in options["levels"])
    if isinstance(options.get("rewind_points"), (list, tuple)):
        options["rewind_points"] = tuple(str(k) for k in options["rewind_points"])


def experiment(preset=None, *, list_only=False, **options):
    """Runs the grid, or with list_only=True only lists it; returns a row per run
    ({"run", "binary", "state", "task", "needs"}) as it stands at the end.

    Example: experiment("quick_grid", seeds=[0], list_only=True). Options are the grid's
    (sources, targets, seeds, conditions, ...) and any common setting to give every run
    (data_dir, max_epochs, ...). Each run is a child process of its binary, as with
    `python -m lth_keras.experiment`.
    """
    from lth_keras import grid

    chosen, _ = settings.resolve(settings.EXPERIMENT, (), preset,
                                 dict(options, list=list_only))
    # Typed as the settings type them, then passed on to every run (None: not given).
    common = {name: getattr(obj, name) for obj in chosen.values()
              for name in options if options[name] is not None
              and name in grid.forwarded_fields() and hasattr(obj, name)}
    return grid.experiment(chosen[settings.Grid], chosen[settings.Run], common)


def analyze(runs, *, output_dir=None, **options):
    """Tables and figures of the run directories under `runs` (a path or a list).

    Options are the Analysis settings: natural_sources, density_run, mask_overlap,
    overlap_levels ("all", a comma string or a list), primary_level (default: the level
    the grids under `runs` named). Returns a Report: tables {"table2", "table3",
    "levels", "primary", "mask_overlap": list of row dicts}, figures {"fig3", "fig4",
    "density_<run>": matplotlib Figure}, notes, and files {name: bytes}, which are
    written to `output_dir` when it is given.
    """
    from lth_keras import artifacts
    from lth_keras.analysis import report

    levels = options.get("overlap_levels", "all")
    if levels is None or isinstance(levels, (list, tuple, set)):
        options["overlap_levels"] = ",".join(map(str, sorted(levels))) if levels else "all"
    roots = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs or ())
    chosen, _ = settings.resolve((settings.Analysis,), options=dict(options, runs=roots))
    settings.check(chosen)
    spec = chosen[settings.Analysis]
    result = report.analyze(list(spec.runs), natural=spec.natural_sources,
                            density_runs=[spec.density_run] if spec.density_run else None,
                            overlap=spec.mask_overlap, overlap_levels=spec.levels_to_overlap(),
                            primary_level=spec.primary_level)
    if output_dir:
        for name, data in result.files.items():
            artifacts.write_bytes(os.path.join(output_dir, name), data)
    return result


@dataclasses.dataclass
class PlanResult:
    plan: object      # analysis.planning.Plan
    markdown: str
    rows: list        # plan.csv's rows
    files: dict       # {name: bytes}, written to output_dir when given


def plan(runs, *, output_dir=None, **options):
    """Plans a study from the pilot grid under `runs` (a path or a list).

    Options are the Planning settings: level, effect (points), power, alpha, design
    ("8x2" or (8, 2)), max_searches, max_transfer_seeds, throughput (images/s). Returns a
    PlanResult; plan.md and plan.csv are written to `output_dir` when it is given.
    """
    from lth_keras import artifacts
    from lth_keras.analysis import planning, tables

    if isinstance(options.get("design"), (tuple, list)):
        options["design"] = "x".join(map(str, options["design"]))
    roots = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs or ())
    chosen, _ = settings.resolve((settings.Planning,), options=dict(options, runs=roots))
    settings.check(chosen)
    spec = chosen[settings.Planning]
    found = planning.plan_study(list(spec.runs), level=spec.level, effect=spec.effect / 100,
                                power=spec.power, alpha=spec.alpha, design=spec.design_pair(),
                                max_searches=spec.max_searches,
                                max_transfer_seeds=spec.max_transfer_seeds,
                                throughput=spec.throughput or None)
    text = planning.markdown(found, spec.power, spec.alpha)
    rows = planning.rows(found)
    files = {"plan.md": text.encode(),
             "plan.csv": tables.csv_text(planning.PLAN_CSV, rows).encode()}
    if output_dir:
        for name, data in files.items():
            artifacts.write_bytes(os.path.join(output_dir, name), data)
    return PlanResult(found, text, rows, files)


def export(run, level, *, output_dir=None, **options):
    """Exports a finished level of a run as a plain Keras model and sparse / dense TFLite
    files (lth_keras/tflite_export.py); returns the report (export.json). Options are the
    Export settings: check_batch, tolerance. `output_dir` defaults to
    <run>/export/level_LL/."""
    from lth_keras import tflite_export

    if isinstance(run, os.PathLike) or hasattr(run, "path"):
        run = getattr(run, "path", run)
    chosen, _ = settings.resolve((settings.Export,), options=dict(options, run=os.fspath(run),
                                                                  level=level))
    settings.check(chosen)
    return tflite_export.export_level(chosen[settings.Export], output_dir)
