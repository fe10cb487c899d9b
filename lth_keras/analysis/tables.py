"""Table 2 (the best pruned model per target and source, vs scratch) and Table 3 (its sparsity).

The selection rule (docs/protocol.md "Reporting (`analyze`)"), for one cell (the seeds of one
experiment):
  1. Candidates are the pruned levels L >= 1 finished by the most seeds of
     the cell (a seed still running does not make a level with fewer seeds
     look better or worse), and among them those that every pruned line of the
     target has: a line with more candidates would otherwise win more often by
     chance alone (the quick grid's target tickets had levels 1-6, its transfers
     2, 4 and 6).
     When the lines share no level, no level is picked (and the table says so).
  2. Pick the candidate with the highest MEAN over ticket searches of the VALIDATION
     accuracy (each search's transfer seeds averaged first); on a tie, the lower level.
  3. Report that level's TEST accuracy, mean ± std over the searches (std with
     ddof=1; n=1 has no std).
The "picked by test (optimistic)" variant replaces validation by test accuracy
in step 2; it uses the test set for a decision and is shown only because the
paper does not say how it picked. Scratch is the dense level 0.

Each pruned cell is compared with the target's scratch baseline by Welch's
t-test (two-sided, unequal variances) on the per-search test accuracies; NaN
when either side has fewer than two searches. Beside it, a paired t-test with
the search as the unit (statistics.search_difference): every run of a tickets
seed starts from the same θ_0 (drawn from the seed alone, whatever the dataset),
and a transfer seed fixes the head and the target's batches, so the two samples
are paired, not independent; a side with no transfer seeds of its own (the
target's tickets) is paired by search means. Neither test accounts for the level having been
picked on the same searches' validation accuracy. Best and second best are ranked
per target row by the reported test mean, scratch included; equal means share
a rank. Markdown marks them **bold** and _italic_, LaTeX with
\\cellcolor{green!25} and \\cellcolor{yellow!25} (the paper's green and yellow
cells; needs \\usepackage[table]{xcolor}), CSV in a `rank` column.

CSV holds accuracies as fractions in [0, 1] (as metrics.json does) and leaves
missing values empty; Markdown and LaTeX show percentages and "—".
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import warnings

import numpy as np
from scipy import stats

from lth_keras.analysis.cells import Stat
from lth_keras.analysis.statistics import holm, search_difference, search_means

MISSING = "—"
BEST, SECOND = "best", "second"


@dataclasses.dataclass(frozen=True)
class Pick:
    """One level of a cell, summarised over the searches that finished it."""

    level: int
    val: Stat
    test: Stat
    density: float  # the seeds share the level's sparsity; these are means
    fraction_pruned: float
    fraction_pruned_all_params: float
    test_by_seed: dict = dataclasses.field(default_factory=dict)  # {replicate: test accuracy}


def summarize_level(cell, level):
    return Pick(level=level, val=cell.stat(level, "val_accuracy"),
                test=cell.stat(level, "test_accuracy"),
                density=float(np.mean(cell.values(level, "density"))),
                fraction_pruned=float(np.mean(cell.values(level, "fraction_pruned"))),
                fraction_pruned_all_params=float(
                    np.mean(cell.values(level, "fraction_pruned_all_params"))),
                test_by_seed=cell.by_seed(level, "test_accuracy"))


def candidate_levels(cell):
    """The pruned levels (L >= 1) finished by the most seeds of `cell`."""
    pruned = [level for level in cell.levels() if level >= 1]
    if not pruned:
        return []
    most = max(cell.n_at(level) for level in pruned)
    return [level for level in pruned if cell.n_at(level) == most]


def common_candidates(cells):
    """The candidate levels that every one of `cells` has (empty when they share none)."""
    sets = [set(candidate_levels(cell)) for cell in cells]
    return sorted(set.intersection(*sets)) if sets else []


def pick_level(cell, by="val_accuracy", candidates=None):
    """The best pruned level of `cell` by mean `by` over searches (see the module
    docstring), or None. `candidates`: the levels allowed (None: the cell's own
    candidates; an empty list allows none)."""
    levels = candidate_levels(cell)
    if candidates is not None:
        levels = [level for level in levels if level in candidates]
    if not levels:
        return None
    best, best_mean = None, -math.inf
    for level in levels:  # ascending: a tie keeps the lower level
        mean = cell.stat(level, by).mean
        if mean > best_mean:
            best, best_mean = level, mean
    return summarize_level(cell, best)


def dense_level(cell):
    """Level 0 (the dense model) of a scratch cell, or None while it is not finished."""
    return summarize_level(cell, 0) if cell.n_at(0) else None


def welch(a, b):
    """(t, p) of Welch's two-sided t-test, or (NaN, NaN) when a side has < 2 values."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():  # zero variance on both sides: scipy warns, gives NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def paired(a_by_replicate, b_by_replicate):
    """(t, p, n searches) of the two-sided paired t-test of a - b with the ticket search as
    the unit, over the replicates both have ({replicate: value} each), or (NaN, NaN, n) when
    n < 2 or the search means are constant. Where that would leave out a search both sides
    ran (a ticket run's own seed is no transfer seed of the transfers it is compared with:
    the target's tickets against scratch), each side's search means are paired instead."""
    def searches(by_replicate):
        return set(search_means(by_replicate))

    shared = {k: a_by_replicate[k] for k in set(a_by_replicate) & set(b_by_replicate)}
    if searches(shared) != searches(a_by_replicate) & searches(b_by_replicate):
        a_by_replicate, b_by_replicate = (search_means(a_by_replicate),
                                          search_means(b_by_replicate))
    difference = search_difference(a_by_replicate, b_by_replicate)
    return difference.t, difference.p, difference.n


@dataclasses.dataclass
class Entry:
    """One cell of Table 2 / Table 3: a line of a target view, with its picks."""

    row: str
    column: str
    line: object  # views.Line
    pick: Pick | None  # by validation accuracy (scratch: level 0)
    optimistic: Pick | None  # by test accuracy (scratch: level 0)
    scratch: Pick | None  # the view's baseline
    welch: tuple = (math.nan, math.nan)
    optimistic_welch: tuple = (math.nan, math.nan)
    paired: tuple = (math.nan, math.nan, 0)  # (t, p, n searches)
    # Holm-adjusted over every test of its kind in the table (exploratory: no verdicts).
    welch_holm: float = math.nan
    paired_holm: float = math.nan
    rank: str = ""
    optimistic_rank: str = ""
    candidates: tuple = ()  # the levels the pick chose among

    @property
    def noisy_stops(self):
        """(flagged, recorded) early stops on noise at the picked level."""
        return self.line.cell.noisy_stops(self.pick.level) if self.pick else (0, 0)


@dataclasses.dataclass
class Table:
    columns: list
    rows: list  # [(row label, {column: Entry})]

    def entries(self):
        for _, cells in self.rows:
            yield from (cells[c] for c in self.columns if c in cells)


def build_table(views):
    """Table 2's entries for every target view (Table 3 reads the same picks)."""
    rows, order, tested = [], {}, []
    for view in views:
        baseline = view.baseline
        scratch = dense_level(baseline.cell) if baseline else None
        cells = {}
        for line in view.scratch:
            level0 = dense_level(line.cell)
            cells[line.label] = Entry(view.title, line.label, line, level0, level0, scratch)
        pruned = view.sources + view.target_tickets
        candidates = common_candidates([line.cell for line in pruned])
        # Random pruning is a column of its own, a control: it picks among the paper
        # lines' levels where it has them, and takes no part in the ranks.
        for line in pruned + view.random:
            entry = Entry(view.title, line.label, line, pick_level(line.cell,
                                                                   candidates=candidates),
                          pick_level(line.cell, "test_accuracy", candidates), scratch,
                          candidates=tuple(level for level in candidate_levels(line.cell)
                                           if level in candidates))
            if scratch:
                for pick, attr in ((entry.pick, "welch"), (entry.optimistic, "optimistic_welch")):
                    if pick:
                        setattr(entry, attr, welch(pick.test.values, scratch.test.values))
                if entry.pick:
                    entry.paired = paired(entry.pick.test_by_seed, scratch.test_by_seed)
                    tested.append(entry)
            cells[line.label] = entry
        for entry in cells.values():
            order.setdefault(entry.column, _column_key(entry, view))
        ranked = [e for e in cells.values() if e.line.role != "random"]
        _rank(ranked, "pick", "rank")
        _rank(ranked, "optimistic", "optimistic_rank")
        rows.append((view.title, cells))
    # Each kind of test is one exploratory family over the whole table: every entry tested
    # against scratch counts, an untestable one (fewer than 2 searches) included.
    for attr, p_of in (("welch_holm", lambda e: e.welch[1]),
                       ("paired_holm", lambda e: e.paired[1])):
        for e, adjusted in zip(tested, holm([p_of(e) for e in tested])):
            setattr(e, attr, adjusted)
    return Table(sorted(order, key=order.get), rows)


def _column_key(entry, view):
    role, source = entry.line.role, entry.line.cell.source or ""
    if role == "scratch":
        group = 0
    elif role == "source":
        group = 1 if source in view.natural else 2
    elif role == "random":
        group = 4
    else:
        group = 3
    return (group, source if role == "source" else "", entry.column)


def _rank(entries, pick_attr, rank_attr):
    means = sorted({getattr(e, pick_attr).test.mean for e in entries
                    if getattr(e, pick_attr) is not None}, reverse=True)
    for e in entries:
        pick = getattr(e, pick_attr)
        if pick is not None and means:
            if pick.test.mean == means[0]:
                setattr(e, rank_attr, BEST)
            elif len(means) > 1 and pick.test.mean == means[1]:
                setattr(e, rank_attr, SECOND)


# --- formatting ---------------------------------------------------------------

def _accuracy(stat):
    """'81.72 ± 0.39 (n=4)' in percent (n: ticket searches), or '81.72 (n=1)'."""
    if stat.n == 0:
        return MISSING
    if stat.n == 1:
        return f"{100 * stat.mean:.2f} (n=1)"
    return f"{100 * stat.mean:.2f} ± {100 * stat.std:.2f} (n={stat.n})"


def _p_value(p):
    return MISSING if math.isnan(p) else f"{p:.3g}"


def _fraction(x):
    return f"{x:.3f}"


def _markdown_table(table, cell_text, columns=None):
    columns = table.columns if columns is None else columns
    lines = ["| target | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for label, cells in table.rows:
        texts = [cell_text(cells[c]) if c in cells else MISSING for c in columns]
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def _marked(text, rank):
    if text == MISSING:
        return text
    return {BEST: f"**{text}**", SECOND: f"_{text}_"}.get(rank, text)


def _pruned_columns(table):
    return [c for c in table.columns if not _is_scratch_column(table, c)]


def _is_scratch_column(table, column):
    return any(cells[column].line.role == "scratch" for _, cells in table.rows if column in cells)


def table2_markdown(table, primary=None):
    """Table 2 as Markdown; `primary` (primary.markdown's text) comes first when the grid
    named a primary level, and Table 2 is then labelled secondary."""
    def by_val(e):
        return _marked(_accuracy(e.pick.test) if e.pick else MISSING, e.rank)

    def by_test(e):
        return _marked(_accuracy(e.optimistic.test) if e.optimistic else MISSING,
                       e.optimistic_rank)

    def candidates(e):
        return ",".join(map(str, e.candidates)) or "none shared"

    def noisy(e):
        flagged, recorded = e.noisy_stops
        if not e.pick:
            return MISSING
        return f"{flagged} of {recorded}" if recorded else "not recorded"

    pruned = _pruned_columns(table)
    scratch = [c for c in table.columns if c not in pruned]
    # Where every pruned cell had one candidate level there was no pick: nothing favours
    # the pruned cells, and the test-picked copy would repeat the table.
    levels = {e.candidates for e in table.entries() if e.column in pruned and e.pick}
    no_pick = bool(levels) and all(len(c) == 1 for c in levels)
    if no_pick:
        picking = (" Here every pruned cell had one candidate level "
                   f"({', '.join(str(c[0]) for c in sorted(levels))}): no level was picked, "
                   "so no pick favours the pruned cells, and the copy picked by test would "
                   "be this table.")
    elif primary:
        picking = (" Picking the best of several levels on the same seeds favours the pruned "
                   "cells; the result above says whether its level was named in advance.")
    else:
        picking = ""
    title = ("# Table 2 (secondary): best pruned model vs scratch (test accuracy, %)"
             if primary else "# Table 2: best pruned model vs scratch (test accuracy, %)")
    parts = [primary] if primary else []
    parts += [
        title,
        "",
        "Each pruned cell is the level L >= 1 with the highest mean *validation* accuracy over "
        "ticket searches (among the levels finished by the most runs, and of those the ones "
        "every pruned line of the target has; ties: lower level); its *test* accuracy is "
        "shown. Scratch is the dense model. The unit is the ticket search: each search's "
        "transfer seeds are averaged first, then mean ± sample std (ddof=1) over the n "
        "searches; n=1 has no spread. **Bold**: best in the row, "
        f"_italic_: second best (scratch included). {MISSING}: no finished run." + picking,
        "",
        _markdown_table(table, by_val),
    ]
    parts += [
        "## Candidate levels and early stops on noise",
        "",
        "The levels each pick chose among, and at the picked level how many runs stopped "
        "early on a noisy validation loss (best epoch within `patience` of the start while "
        "training accuracy still rose: metrics.json `noisy_stop`) of those that record it.",
        "",
        _markdown_table(table, candidates, pruned),
        _markdown_table(table, noisy, scratch + pruned),
        "## Welch's t-test: best pruned model vs scratch (p-value; Holm-adjusted)",
        "",
        "Exploratory, no verdicts: Table 2's tests are not named in advance. Each kind of test "
        "is one Holm family over every cell of the table tested against scratch. The target's "
        "own tickets (the paper's line) keep θ_k's head, trained on the target; every other "
        "line starts with a fresh head, so their tests also compare head treatments.",
        "",
        "Two-sided, unequal variances, on the per-search test accuracies of the level above and "
        f"of scratch; {MISSING} when either side has fewer than 2 searches.",
        "",
        _markdown_table(table, lambda e: (f"{_p_value(e.welch[1])}; {_p_value(e.welch_holm)}"
                                          if not math.isnan(e.welch[1]) else MISSING), pruned),
        "## Paired t-test: best pruned model vs scratch (p-value, n searches; Holm-adjusted)",
        "",
        "Two-sided, with the ticket search as the unit: each search's mean difference over the "
        "transfer seeds both sides have (a tickets seed's runs start from the same θ_0; a "
        "transfer seed fixes the head and the target's batches), or, for a side with no "
        "transfer seeds of its own (the target's tickets), the difference of the search means; "
        "then the one-sample t-test "
        "of those means (Welch's test above treats the sides as independent). Caveat: "
        + ("" if no_pick else "neither test accounts for the level having been picked on "
           "these searches' validation accuracy, and ")
        + f"with few searches either has little power. {MISSING} when fewer than 2 "
        "searches are shared or their differences are constant.",
        "",
        _markdown_table(table, lambda e: (f"{_p_value(e.paired[1])} (n={e.paired[2]}); "
                                          f"{_p_value(e.paired_holm)}"
                                          if not math.isnan(e.paired[1]) else MISSING), pruned),
    ]
    if not no_pick:
        parts += [
            "## Picked by test (optimistic)",
            "",
            "The same, but the level is picked by mean *test* accuracy. This uses the test set "
            "for a decision and overstates every pruned result; it is shown only because the "
            "paper does not say how its best level was picked.",
            "",
            _markdown_table(table, by_test),
        ]
    return "\n".join(parts)


def table3_markdown(table):
    def sparsity(e, pick):
        if pick is None:
            return MISSING
        return (f"{_fraction(pick.fraction_pruned)} / {_fraction(pick.fraction_pruned_all_params)}"
                f" (L={pick.level})")

    pruned = _pruned_columns(table)
    return "\n".join([
        "# Table 3: sparsity of the best pruned models of Table 2",
        "",
        "Fraction of prunable weights pruned / fraction of all trainable parameters pruned "
        "(level L), "
        "for the level picked by validation accuracy. Scratch models are dense and not shown.",
        "",
        _markdown_table(table, lambda e: sparsity(e, e.pick), pruned),
        "## Picked by test (optimistic)",
        "",
        _markdown_table(table, lambda e: sparsity(e, e.optimistic), pruned),
    ])


TABLE2_CSV = ("target", "column", "role", "condition", "source", "model", "image_size",
              "seeds", "level", "n", "val_accuracy_mean", "test_accuracy_mean",
              "test_accuracy_std", "rank", "welch_t", "welch_p", "paired_t", "paired_p",
              "paired_n", "optimistic_level",
              "optimistic_n", "optimistic_test_accuracy_mean", "optimistic_test_accuracy_std",
              "optimistic_rank", "optimistic_welch_p", "scratch_test_accuracy_mean",
              "scratch_test_accuracy_std", "scratch_n", "candidates", "noisy_stops",
              "noisy_stops_recorded", "welch_p_holm", "paired_p_holm")
TABLE3_CSV = ("target", "column", "source", "model", "image_size", "level", "n", "density",
              "fraction_pruned", "fraction_pruned_all_params", "optimistic_level",
              "optimistic_fraction_pruned", "optimistic_fraction_pruned_all_params")


def csv_text(columns, rows):
    """CSV of dict rows, NaN and None left empty."""
    def text(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return value

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: text(v) for k, v in row.items()} for row in rows)
    return out.getvalue()


def _identity(e):
    cell = e.line.cell
    return {"target": e.row, "column": e.column, "source": cell.source, "model": cell.model,
            "image_size": cell.image_size}


def table2_csv(table):
    return csv_text(TABLE2_CSV, table2_rows(table))


def table2_rows(table):
    """Table 2 as one dict per entry (the columns of table2.csv; None where empty)."""
    rows = []
    for e in table.entries():
        p, o, s = e.pick, e.optimistic, e.scratch
        rows.append({
            **_identity(e), "role": e.line.role, "condition": e.line.cell.condition,
            "seeds": " ".join(str(seed) for seed in e.line.cell.seeds),
            "level": p and p.level, "n": p and p.test.n, "val_accuracy_mean": p and p.val.mean,
            "test_accuracy_mean": p and p.test.mean, "test_accuracy_std": p and p.test.std,
            "rank": e.rank, "welch_t": e.welch[0], "welch_p": e.welch[1],
            "paired_t": e.paired[0], "paired_p": e.paired[1], "paired_n": e.paired[2] or None,
            "welch_p_holm": e.welch_holm, "paired_p_holm": e.paired_holm,
            "optimistic_level": o and o.level, "optimistic_n": o and o.test.n,
            "optimistic_test_accuracy_mean": o and o.test.mean,
            "optimistic_test_accuracy_std": o and o.test.std, "optimistic_rank": e.optimistic_rank,
            "optimistic_welch_p": e.optimistic_welch[1],
            "scratch_test_accuracy_mean": s and s.test.mean,
            "scratch_test_accuracy_std": s and s.test.std, "scratch_n": s and s.test.n,
            "candidates": " ".join(map(str, e.candidates)),
            "noisy_stops": e.noisy_stops[0] if p else None,
            "noisy_stops_recorded": e.noisy_stops[1] if p else None})
    return rows


def table3_csv(table):
    return csv_text(TABLE3_CSV, table3_rows(table))


def table3_rows(table):
    """Table 3 as one dict per pruned entry (the columns of table3.csv)."""
    rows = []
    for e in table.entries():
        if e.line.role == "scratch":
            continue
        p, o = e.pick, e.optimistic
        rows.append({**_identity(e), "level": p and p.level, "n": p and p.test.n,
                     "density": p and p.density, "fraction_pruned": p and p.fraction_pruned,
                     "fraction_pruned_all_params": p and p.fraction_pruned_all_params,
                     "optimistic_level": o and o.level,
                     "optimistic_fraction_pruned": o and o.fraction_pruned,
                     "optimistic_fraction_pruned_all_params": o and o.fraction_pruned_all_params})
    return rows


# --- LaTeX ----------------------------------------------------------------------

_COLOURS = {BEST: r"\cellcolor{green!25}", SECOND: r"\cellcolor{yellow!25}"}


def _tex_escape(text):
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"),
                 ("#", r"\#"), ("θ", r"$\theta$")):
        text = text.replace(a, b)
    return text


def _tex_accuracy(stat):
    if stat.n == 0:
        return "--"
    if stat.n == 1:
        return f"{100 * stat.mean:.2f} {{\\scriptsize (n=1)}}"
    return f"{100 * stat.mean:.2f} $\\pm$ {100 * stat.std:.2f} {{\\scriptsize (n={stat.n})}}"


def _tex_tabular(table, cell_text, columns, comment):
    lines = [f"% {comment}", "\\begin{tabular}{l" + "r" * len(columns) + "}", "\\hline",
             " & ".join(["target"] + [_tex_escape(c) for c in columns]) + r" \\", "\\hline"]
    for label, cells in table.rows:
        texts = [cell_text(cells[c]) if c in cells else "--" for c in columns]
        lines.append(" & ".join([_tex_escape(label)] + texts) + r" \\")
    lines += ["\\hline", "\\end{tabular}", ""]
    return "\n".join(lines)


def table2_latex(table):
    def coloured(stat_pick, rank):
        if stat_pick is None:
            return "--"
        return _COLOURS.get(rank, "") + _tex_accuracy(stat_pick.test)

    pruned = _pruned_columns(table)
    return "\n".join([
        "% Table 2 (lth_keras.analyze): test accuracy (%) of the best pruned model vs scratch.",
        "% Level picked by mean validation accuracy over seeds; mean $\\pm$ std (ddof=1) over n.",
        "% Green: best in the row, yellow: second best. Needs \\usepackage[table]{xcolor}.",
        _tex_tabular(table, lambda e: coloured(e.pick, e.rank), table.columns,
                     "picked by validation accuracy"),
        _tex_tabular(table, lambda e: "--" if math.isnan(e.welch[1]) else f"{e.welch[1]:.3g}",
                     pruned, "Welch's t-test p-value, best pruned model vs scratch"),
        _tex_tabular(table, lambda e: "--" if math.isnan(e.paired[1]) else
                     f"{e.paired[1]:.3g} {{\\scriptsize (n={e.paired[2]})}}", pruned,
                     "paired t-test p-value (n seeds shared), best pruned model vs scratch"),
        _tex_tabular(table, lambda e: coloured(e.optimistic, e.optimistic_rank), table.columns,
                     "picked by test accuracy (optimistic: the test set made the choice)"),
    ])


def table3_latex(table):
    def sparsity(pick):
        if pick is None:
            return "--"
        return (f"{_fraction(pick.fraction_pruned)} / "
                f"{_fraction(pick.fraction_pruned_all_params)} {{\\scriptsize (L={pick.level})}}")

    pruned = _pruned_columns(table)
    return "\n".join([
        "% Table 3 (lth_keras.analyze): fraction of prunable weights pruned / of all trainable",
        "% parameters pruned, for the best pruned models of Table 2.",
        _tex_tabular(table, lambda e: sparsity(e.pick), pruned, "picked by validation accuracy"),
        _tex_tabular(table, lambda e: sparsity(e.optimistic), pruned,
                     "picked by test accuracy (optimistic)"),
    ])


# --- every level (Fig. 3 and 4 as numbers) ----------------------------------------

LEVELS_CSV = ("target", "model", "image_size", "line", "role", "tickets_seed", "seed", "level",
              "density", "val_accuracy", "test_accuracy", "best_epoch", "epochs", "noisy_stop")


def _view_lines(view):
    return view.scratch + view.fig3_lines() + view.final + view.train_fractions


def levels_rows(views):
    """One dict per (line, seed, finished level) of every target view: the numbers behind
    Fig. 3 and Fig. 4 (the columns of levels.csv)."""
    return [{"target": view.title, "model": view.model, "image_size": view.image_size,
             "line": line.label, "role": line.role, "tickets_seed": run.replicate[0],
             "seed": run.seed, "level": level, "density": found.density,
             "val_accuracy": found.val_accuracy, "test_accuracy": found.test_accuracy,
             "best_epoch": found.best_epoch, "epochs": found.epochs,
             "noisy_stop": found.noisy_stop}
            for view in views for line in _view_lines(view)
            for run in line.cell.runs for level, found in sorted(run.levels.items())]


def levels_csv(views):
    return csv_text(LEVELS_CSV, levels_rows(views))


def levels_markdown(views):
    """Per target view, test accuracy (mean ± std over searches) of every line at every
    level."""
    out = ["# Test accuracy at every level (%)", "",
           "Mean ± sample std (ddof=1) over the n ticket searches that finished the level "
           "(each search's transfer seeds averaged first); density is "
           f"the fraction of prunable weights left. {MISSING}: no finished run.", ""]
    for view in views:
        lines = _view_lines(view)
        levels = sorted({level for line in lines for level in line.cell.levels()})
        out += [f"## {view.title} ({view.model}, {view.image_size} px)", "",
                "| level | density | " + " | ".join(line.label for line in lines) + " |",
                "|---:|---:|" + "---:|" * len(lines)]
        for level in levels:
            density = next(float(np.mean(line.cell.values(level, "density"))) for line in lines
                           if line.cell.n_at(level))
            texts = [_accuracy(line.cell.stat(level, "test_accuracy")) for line in lines]
            out.append(f"| {level} | {density:.4f} | " + " | ".join(texts) + " |")
        out.append("")
    return "\n".join(out)
