"""Every analysis artifact as {file name: bytes}, computed before anything is written.

Building all outputs in memory first means a malformed run directory (found
while reading runs or masks) leaves the output directory untouched.
"""

from __future__ import annotations

import dataclasses
import os
import re

from lth_keras.analysis import (collect, figures, masks, primary, sources,
                                stability_report, tables)
from lth_keras.analysis.cells import group_cells
from lth_keras.analysis.views import NATURAL_SOURCES, build_views


@dataclasses.dataclass
class Report:
    files: dict  # {file name: bytes}, in the order they were made
    table2_markdown: str
    notes: list  # what was not drawn, and why
    tables: dict = dataclasses.field(default_factory=dict)   # {"table2": rows, ...}
    figures: dict = dataclasses.field(default_factory=dict)  # {"fig3": Figure, ...}


def analyze(roots, *, natural=None, density_runs=None, overlap=True,
            overlap_levels=None, primary_level=None):
    """Reads the runs under `roots` and renders tables, figures and overlaps.

    Args:
      roots: directories searched for run directories.
      natural: dataset names that count as natural-image sources (None: the sources
        lth_keras knows and those the grids under `roots` name in their grid.json).
      density_runs: run directories for the per-layer density plots (None:
        every find_tickets run found).
      overlap: whether to compute mask overlaps (reads masks, the slow part).
      overlap_levels: levels to compare masks at (None: every pruned level).
      primary_level: the level of the primary result (None: the one the grids under
        `roots` named in their grid.json, if any).
    """
    stability_runs = []
    runs = collect.collect_runs(roots, stability_runs)
    plan = primary.grid_plan(roots, level_given=primary_level is not None)
    if natural is None:
        natural = tuple(sorted(set(NATURAL_SOURCES) | set(plan.natural)))
    views = build_views(group_cells(runs), natural)
    table = tables.build_table(views)
    files, notes, figs = {}, [], {}
    rows = {}
    primary_level, how_named, naming = primary.how_named(plan, primary_level)
    primary_text = None
    if primary_level is not None:
        contrasts = primary.contrasts(views, primary_level, plan.domain_contrast,
                                      named_in_advance=naming != primary.NOT_NAMED)
        primary_text = primary.markdown(contrasts, primary_level, how_named, naming)
        rows["primary"] = primary.rows(contrasts)
        files["primary.md"] = primary_text.encode()
        files["primary.csv"] = tables.csv_text(primary.CSV, rows["primary"]).encode()
    table2 = tables.table2_markdown(table, primary_text)
    files["table2.md"] = table2.encode()
    files["table2.csv"] = tables.table2_csv(table).encode()
    files["table2.tex"] = tables.table2_latex(table).encode()
    files["table3.md"] = tables.table3_markdown(table).encode()
    files["table3.csv"] = tables.table3_csv(table).encode()
    files["table3.tex"] = tables.table3_latex(table).encode()
    files["levels.md"] = tables.levels_markdown(views).encode()
    files["levels.csv"] = tables.levels_csv(views).encode()
    rows["sources"] = sources.rows(runs, natural)
    files["sources.md"] = sources.markdown(rows["sources"]).encode()
    files["sources.csv"] = tables.csv_text(sources.CSV, rows["sources"]).encode()
    if not views:
        notes.append("no target (no transfer run, no ticket run on a non-natural dataset): "
                     "tables are empty")

    for name, make in (("fig3", figures.figure3), ("fig4", figures.figure4)):
        fig = make(views)
        if fig is None:
            notes.append(f"{name}: nothing to draw")
            continue
        figs[name] = fig
        for fmt, data in figures.render(fig).items():
            files[f"{name}.{fmt}"] = data

    targets = ([collect.read_run(p) for p in density_runs] if density_runs is not None
               else [r for r in runs if r.kind == "find_tickets"])
    for run, file_name in zip(targets, _density_names(targets)):
        fig = figures.density_figure(run)
        if fig is None:
            notes.append(f"{file_name}: {run.path} has no finished pruned level with per-layer "
                         "densities")
            continue
        figs[file_name.removesuffix(".png")] = fig
        files[file_name] = figures.render(fig, ("png",))["png"]

    for run, name in zip(stability_runs, _stability_names(stability_runs)):
        # Each stability run's own report, at its own threshold.
        rows[name], out, fig = stability_report.report(run, stability_report.threshold_of(run))
        files.update({f"{name}.{fmt}": data for fmt, data in out.items()})
        if fig is not None:
            figs[name] = fig

    rows.update({"table2": tables.table2_rows(table), "table3": tables.table3_rows(table),
                 "levels": tables.levels_rows(views)})
    if overlap:
        rows["mask_overlap"] = masks.mask_overlap(runs, overlap_levels)
        files["mask_overlap.csv"] = masks.overlap_csv(rows["mask_overlap"]).encode()
        files["mask_overlap.md"] = masks.overlap_markdown(rows["mask_overlap"]).encode()
    return Report(files, table2, notes, tables=rows, figures=figs)


def _file_stem(text):
    """`text` with every character a file name should not hold replaced by _."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def _stability_names(runs):
    """stability_<run directory name>, numbered where two share a name."""
    names = []
    for run in runs:
        stem = "stability_" + _file_stem(os.path.basename(os.path.normpath(run.path)))
        while stem in names:
            stem += "_"
        names.append(stem)
    return names


def _density_names(runs):
    """density_<run name>.png, made unique with the hparams hash where names collide."""
    base = [_file_stem(r.name) for r in runs]
    names = []
    for run, b in zip(runs, base):
        stem = b if base.count(b) == 1 else f"{b}-{_file_stem(run.hparams_hash)}"
        while f"density_{stem}.png" in names:
            stem += "_"
        names.append(f"density_{stem}.png")
    return names
