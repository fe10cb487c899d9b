"""The report of a stability run (lottery/stability.py): the error barrier against the
rewind point k at each level, as a table (stability.md, stability.csv) and a figure
(stability.png), and the smallest k from which each level trains stably.

Stability is judged on the validation barrier, never on test (the project's rule
for every choice); the test barrier is shown beside it, as Frankle et al. report
theirs. Each cell is one pair of copies: a barrier is a single measurement, with no
interval, and a barrier near the threshold does not settle k.
"""

from lth_keras import artifacts
from lth_keras.analysis import figures
from lth_keras.analysis.tables import csv_text
from lth_keras.lottery.directory import STABILITY_CSV, STABILITY_MD, STABILITY_PNG

COLUMNS = ("level", "density", "k", "val_barrier", "test_barrier", "test_error_ends",
           "test_error_max", "copy_a_test_accuracy", "copy_b_test_accuracy", "bn")


def rows(run):
    """One row per evaluated (level, k) of a StabilityRun, errors as fractions."""
    out = []
    for (level, k), path in sorted(run.paths().items()):
        errors = [1 - p["test"]["accuracy"] for p in path["points"]]
        out.append({"level": level, "density": path["density"], "k": k,
                    "val_barrier": path["barrier"]["val"],
                    "test_barrier": path["barrier"]["test"],
                    "test_error_ends": (errors[0] + errors[-1]) / 2,
                    "test_error_max": max(errors),
                    "copy_a_test_accuracy": path["copies"][0]["test"]["accuracy"],
                    "copy_b_test_accuracy": path["copies"][1]["test"]["accuracy"],
                    "bn": path["bn"]})
    return out


def stable_from(table, threshold):
    """{level: the smallest k whose validation barrier is at most `threshold`, or None}."""
    levels = sorted({r["level"] for r in table})
    return {level: min((r["k"] for r in table
                        if r["level"] == level and r["val_barrier"] <= threshold), default=None)
            for level in levels}


def markdown(table, threshold, title):
    lines = [f"{title}\n",
             "| level | weights left | k | val barrier | test barrier | test error, ends "
             "(mean) | test error, highest | copies' test acc |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['level']} | {100 * r['density']:.1f}% | {r['k']} | "
                     f"{100 * r['val_barrier']:.2f} | {100 * r['test_barrier']:.2f} | "
                     f"{100 * r['test_error_ends']:.2f} | {100 * r['test_error_max']:.2f} | "
                     f"{100 * r['copy_a_test_accuracy']:.2f} / "
                     f"{100 * r['copy_b_test_accuracy']:.2f} |")
    lines += ["", f"Barriers in points of error (%). Stable: validation barrier at most "
                  f"{100 * threshold:g}%."]
    for level, k in stable_from(table, threshold).items():
        tried = ", ".join(str(r["k"]) for r in table if r["level"] == level)
        lines.append(f"- level {level}: " + (f"stable from k = {k}" if k is not None
                                             else f"not stable at any k tried ({tried})"))
    bn = sorted({r["bn"] for r in table})
    lines += ["", f"BatchNorm statistics at the inner points: {', '.join(bn) or '—'}. One "
                  "pair of copies per row: a single measurement, no interval. float32 "
                  "results differ between machines; bit-identical reruns need the same "
                  "machine, software and --deterministic."]
    return "\n".join(lines) + "\n"


def figure(table, threshold):
    """Validation and test error barriers (%) against k, a line per level, side by side;
    None when nothing to draw. The threshold is drawn on validation only: k is chosen there."""
    if not table:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2 * figures.PANEL[0], figures.PANEL[1]), layout="constrained")
    for ax, (split, name) in zip(fig.subplots(1, 2, sharey=True),
                                 (("val", "validation"), ("test", "test"))):
        for level in sorted({r["level"] for r in table}):
            mine = [r for r in table if r["level"] == level]
            ax.plot([r["k"] for r in mine], [100 * r[f"{split}_barrier"] for r in mine],
                    marker="o", markersize=3,
                    label=f"level {level} ({100 * mine[0]['density']:.1f}% left)")
        if split == "val":
            ax.axhline(100 * threshold, color="black", linestyle="--", linewidth=1,
                       label=f"threshold {100 * threshold:g}% (chooses k)")
        ax.set_title(f"{name} (chooses k)" if split == "val" else name, fontsize=9)
        ax.set_xlabel("rewind point k (epochs of level 0)")
        ax.set_ylabel(f"{name} error barrier (%)")
        ax.set_xticks(sorted({r["k"] for r in table}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return fig


def report(run, threshold):
    """(rows, {"csv" / "md" / "png": bytes}, the figure or None) of a StabilityRun."""
    table = rows(run)
    out = {"csv": csv_text(COLUMNS, table).encode(),
           "md": markdown(table, threshold, run.title()).encode()}
    fig = figure(table, threshold)
    if fig is not None:
        out["png"] = figures.render(fig, ("png",))["png"]
    return table, out, fig


def threshold_of(run):
    """The threshold the run was made with (--threshold, recorded in config.json)."""
    return run.config()["settings"]["stability"]["threshold"]


def write_report(run, threshold):
    """Writes the report into the run directory; returns its Markdown."""
    _, out, _ = report(run, threshold)
    for name in (STABILITY_CSV, STABILITY_MD, STABILITY_PNG):
        if name.rsplit(".", 1)[1] in out:
            artifacts.write_bytes(run.file(name), out[name.rsplit(".", 1)[1]])
    return out["md"].decode()
