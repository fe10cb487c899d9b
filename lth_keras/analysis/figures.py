"""Fig. 3, Fig. 4 and per-layer density plots, rendered to PNG / PDF bytes.

The x axis of the accuracy plots is the fraction of prunable weights pruned,
as in the paper, drawn on a log scale of the weights *remaining* (density),
reversed: level 0 (nothing pruned, density 1) sits at the left and every level
of pruning is one equal step to the right, which a log axis of the fraction
pruned cannot do (it has no place for 0). Ticks are labelled with the
fraction pruned. Lines are means over seeds, bands ±1 sample std (only where
a level has two or more seeds), and the dense scratch model is a dashed black
line with a grey ±1 std band.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import zipfile

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import numpy as np  # noqa: E402
from matplotlib import colormaps, ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lth_keras.analysis.tables import dense_level  # noqa: E402

PANEL = (4.6, 3.6)  # inches per subplot
TARGET_COLOUR, REINIT_COLOUR = "C0", "C1"  # the paper's blue and orange lines
RANDOM_COLOUR = "black"  # random pruning, a control the paper has not: none of its colours
NATURAL_COLOURS = {"cifar10": "C2", "cifar100": "C3", "fashion_mnist": "C4"}
OTHER_COLOURS = ("C5", "C6", "C7", "C8", "C9")
X_LABEL = "fraction of prunable weights pruned (log scale of weights remaining)"
Y_LABEL = "test accuracy (%)"


def render(fig, formats=("png", "pdf")):
    """{format: bytes} of a matplotlib Figure."""
    out = {}
    for fmt in formats:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight")
        out[fmt] = buffer.getvalue()
    return out


class _Colours:
    """One colour per ticket source, the same in every subplot."""

    def __init__(self, views):
        others = sorted({line.cell.source for v in views
                         for line in v.sources + v.reinit + v.random + v.final
                         if line.cell.source not in NATURAL_COLOURS})
        self.by_source = dict(NATURAL_COLOURS)
        for i, source in enumerate(others):
            self.by_source[source] = OTHER_COLOURS[i % len(OTHER_COLOURS)]

    def __call__(self, source):
        return self.by_source.get(source, "C7")


def _seed_count(cell):
    counts = sorted({cell.n_at(level) for level in cell.levels()})
    return f"n={counts[0]}" if len(counts) == 1 else f"n={counts[0]}-{counts[-1]}"


def draw_line(ax, cell, label, colour, style="-", marker="o"):
    """Mean test accuracy per level with a ±1 std band; returns the densities drawn."""
    levels = cell.levels()
    density = np.array([np.mean(cell.values(level, "density")) for level in levels])
    stats = [cell.stat(level, "test_accuracy") for level in levels]
    mean = 100 * np.array([s.mean for s in stats])
    std = 100 * np.array([s.std for s in stats])  # NaN where n < 2: no band there
    ax.plot(density, mean, linestyle=style, marker=marker, markersize=3, linewidth=1.5,
            color=colour, label=f"{label} ({_seed_count(cell)})")
    ax.fill_between(density, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    return density


def draw_scratch(ax, line):
    """The dense baseline: dashed black line at its mean, grey band for ±1 std."""
    level0 = dense_level(line.cell)
    if level0 is None:
        return
    s = level0.test
    ax.axhline(100 * s.mean, color="black", linestyle="--", linewidth=1.2,
               label=f"{line.label} (n={s.n})")
    if s.n >= 2:
        ax.axhspan(100 * (s.mean - s.std), 100 * (s.mean + s.std), color="grey", alpha=0.25,
                   linewidth=0)


def format_axes(ax, densities, title):
    """Log density axis, reversed, with ticks labelled by the fraction pruned."""
    ax.set_title(title)
    ax.set_ylabel(Y_LABEL)
    ax.set_xlabel(X_LABEL, fontsize=8)
    ax.grid(alpha=0.3)
    values = sorted({float(d) for d in densities if d > 0}, reverse=True)
    if values:
        ax.set_xscale("log")
        if len(values) == 1:
            ax.set_xlim(values[0] * 1.5, values[0] / 1.5)
        else:
            ax.set_xlim(values[0] * 1.15, values[-1] / 1.15)  # reversed: high density left
        picks = sorted({int(round(i)) for i in np.linspace(0, len(values) - 1,
                                                           min(7, len(values)))})
        ticks = [values[i] for i in picks]
        ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.xaxis.set_major_formatter(ticker.FixedFormatter([f"{1 - d:.3g}" for d in ticks]))
        ax.tick_params(axis="x", labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def _grid(rows, ncols):
    fig = Figure(figsize=(PANEL[0] * ncols, PANEL[1] * rows), layout="constrained")
    axes = fig.subplots(rows, ncols, squeeze=False)
    return fig, axes


REINIT_STYLES = ("-", ":", "-.", "--")


def _line_style(line, view, colours):
    """(colour, linestyle) of a Fig. 3 line, following the paper's colours.

    Target tickets are blue and reinit controls orange, as in the paper, random pruning
    black; several reinit (random) lines, one per ticket source, differ by line style
    and label.
    """
    if line.role == "target_tickets":
        return TARGET_COLOUR, "-"
    if line.role == "reinit":
        return REINIT_COLOUR, REINIT_STYLES[view.reinit.index(line) % len(REINIT_STYLES)]
    if line.role == "random":
        return RANDOM_COLOUR, REINIT_STYLES[view.random.index(line) % len(REINIT_STYLES)]
    return colours(line.cell.source), "-"


def _panel(ax, view, styled_lines, title):
    """Draws [(line, colour, linestyle, marker)] and the view's scratch baseline."""
    densities = []
    for line, colour, linestyle, marker in styled_lines:
        densities.extend(draw_line(ax, line.cell, line.label, colour, linestyle, marker))
    if view.baseline is not None:
        draw_scratch(ax, view.baseline)
    format_axes(ax, densities, title)


def _draw_grid(rows, title):
    """rows: [[(view, styled_lines, panel title)]]; one figure row per list."""
    ncols = max(len(row) for row in rows)
    fig, axes = _grid(len(rows), ncols)
    for r, row in enumerate(rows):
        for c, (view, styled_lines, panel_title) in enumerate(row):
            _panel(axes[r][c], view, styled_lines, panel_title)
        for c in range(len(row), ncols):
            axes[r][c].set_visible(False)
    fig.suptitle(title)
    return fig


def figure3(views):
    """Fig. 3: per target, test accuracy vs fraction pruned; None when nothing to draw."""
    views = [v for v in views if v.fig3_lines() or v.baseline is not None]
    if not views:
        return None
    colours = _Colours(views)
    panels = [(view, [(line, *_line_style(line, view, colours), "o")
                      for line in view.fig3_lines()], view.title) for view in views]
    ncols = min(3, len(panels))
    rows = [panels[i:i + ncols] for i in range(0, len(panels), ncols)]
    return _draw_grid(rows, "Tickets transferred to each target vs scratch (Fig. 3)")


def figure4(views):
    """Fig. 4: θ_k vs θ_i; related vs natural source; train fractions (rows with data only)."""
    colours = _Colours(views)

    def renamed(line, label):
        return dataclasses.replace(line, label=label)

    final_row = []
    for view in views:
        styled = []
        for final in view.final:
            colour = colours(final.cell.source)
            styled += [(renamed(r, f"{r.cell.source} θ_k (ticket)"), colour, "-", "o")
                       for r in view.sources if _same_but_condition(r.cell, final.cell)]
            styled.append((final, colour, "--", "s"))
        if styled:
            final_row.append((view, styled, f"θ_k vs θ_i: {view.title}"))

    related_row = []
    for view in views:
        related = view.related_sources()
        if not related:
            continue
        styled = [(renamed(line, line.label + " (related)") if line in related else line,
                   colours(line.cell.source), "-", "o") for line in view.sources]
        styled += [(line, TARGET_COLOUR, "-", "o") for line in view.target_tickets]
        related_row.append((view, styled, f"related vs natural source: {view.title}"))

    fraction_row = []
    blues = colormaps["Blues"]  # light to dark blue as the training set grows
    for view in views:
        lines = view.train_fractions
        if lines:
            styled = [(line, blues(0.4 + 0.6 * i / max(len(lines) - 1, 1)), "-", "o")
                      for i, line in enumerate(lines)]
            fraction_row.append((view, styled, f"training-set fraction: {view.title}"))

    rows = [row for row in (final_row, related_row, fraction_row) if row]
    if not rows:
        return None
    return _draw_grid(rows, "Additional studies (Fig. 4)")


def _same_but_condition(a, b):
    """Whether two transfer cells differ only in their condition (rewind vs final): their
    settings leave out what makes the condition (collect.CONDITION_SETTINGS: a final
    transfer records init=final, a rewind init=rewind)."""
    return a.setting == b.setting


def density_figure(run, max_levels=4):
    """Bars of each prunable layer's density at up to `max_levels` levels of a run.

    The levels are spread over the run's finished pruned levels, the last one
    always included. A layer pruned away entirely is marked with an x on the
    axis floor (a log axis has no 0). None when the run has no pruned level or
    no per-layer densities.
    """
    pruned = sorted(level for level in run.levels if level >= 1)
    if not pruned or not run.levels[pruned[-1]].layer_density:
        return None
    chosen = [pruned[i] for i in sorted({int(round(i)) for i in np.linspace(
        0, len(pruned) - 1, min(max_levels, len(pruned)))})]
    layers = _layer_order(run, pruned[-1])
    width = 0.8 / len(chosen)
    positive = [d for level in chosen for d in run.levels[level].layer_density.values() if d > 0]
    floor = min(min(positive) / 2, 0.05) if positive else 1e-4
    fig = Figure(figsize=(max(6.0, 0.28 * len(layers) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(layers))
    cmap = colormaps["viridis"]
    for i, level in enumerate(chosen):
        info = run.levels[level]
        colour = cmap(0.85 * i / max(len(chosen) - 1, 1))
        values = np.array([info.layer_density.get(name, np.nan) for name in layers])
        offset = x - 0.4 + width * (i + 0.5)
        ax.bar(offset, np.where(values > 0, values, np.nan), width, color=colour,
               label=f"level {level}: {info.fraction_pruned:.3g} pruned overall")
        ax.axhline(info.density, color=colour, linestyle=":", linewidth=1)
        zero = values == 0
        if zero.any():
            ax.plot(offset[zero], np.full(zero.sum(), floor), "x", color=colour)
    ax.set_yscale("log")
    ax.set_ylim(floor / 1.5, 1.5)
    ax.set_xticks(x, [name.removesuffix("/kernel") for name in layers], rotation=90,
                  fontsize=6 if len(layers) > 20 else 8)
    ax.set_xlabel("prunable layer")
    ax.set_ylabel("density (fraction of weights alive)")
    ax.set_title(f"Per-layer density: {run.name} ({run.dataset}, {run.model}, seed {run.seed}); "
                 "dotted: overall", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _layer_order(run, level):
    """The prunable layers in network order.

    metrics.json stores them sorted by name (conv10 before conv2); mask.npz keeps
    the model's order, and listing its members reads no array. Without a mask,
    names are sorted with their numbers compared as numbers.
    """
    names = list(run.levels[level].layer_density)
    path = os.path.join(run.path, "levels", f"level_{level:02d}", "mask.npz")
    try:
        with np.load(path, allow_pickle=False) as data:
            order = [n for n in data.files if n in names]
        if sorted(order) == sorted(names):
            return order
    except (OSError, ValueError, zipfile.BadZipFile):
        pass  # a transfer run has no mask.npz; a damaged one is not needed for names
    return sorted(names, key=lambda n: [int(p) if p.isdigit() else p
                                        for p in re.split(r"(\d+)", n)])
