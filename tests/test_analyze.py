"""The analysis: Table 2 / 3 picks computed by hand, figures, partial runs, refusals, overlap.

Run directories are fabricated in the exact formats of find_tickets and
transfer (config.json, levels/level_LL/metrics.json, mask.npz); nothing trains.
"""

import csv
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import REPO, run_binary
from lth_keras import artifacts, runs
from lth_keras.analysis import cells, collect, figures, masks, report, targets

LAYERS = {"fc1/kernel": (10, 10), "fc2/kernel": (10, 5)}
SIZE = sum(int(np.prod(s)) for s in LAYERS.values())


def _mask(level, seed):
    """A mask with round(SIZE * 0.8^level) survivors, seeded."""
    keep = round(SIZE * 0.8 ** level)
    flat = np.zeros(SIZE, np.float32)
    flat[np.random.default_rng(seed * 100 + level).permutation(SIZE)[:keep]] = 1
    parts = np.split(flat, np.cumsum([int(np.prod(s)) for s in LAYERS.values()])[:-1])
    return {k: p.reshape(s) for (k, s), p in zip(LAYERS.items(), parts)}


def _metrics(level, val, test, mask, condition=None):
    alive = int(sum(m.sum() for m in mask.values()))
    layers = {k: {"alive": int(m.sum()), "size": m.size, "density": float(m.sum()) / m.size}
              for k, m in mask.items()}
    density = alive / SIZE
    metrics = {"level": level, "start_digest": "0" * 64, "history": [{"epoch": 1}],
               "best_epoch": 1, "epochs": 1, "stopped_early": False,
               "density": {"layers": layers, "prunable_alive": alive, "prunable_size": SIZE,
                           "density": density, "fraction_pruned": 1 - density,
                           "fraction_pruned_all_params": (SIZE - alive) / (SIZE + 50)},
               "val": {"loss": 1.0, "accuracy": val}, "test": {"loss": 1.0, "accuracy": test}}
    if condition is not None:
        metrics.update(condition=condition, mask_digest="1" * 64)
    return metrics


def _dataset(name):
    return {"name": name, "num_classes": 3, "class_names": ["a", "b", "c"],
            "sizes": {"train": 10, "val": 5, "test": 5}, "fingerprint": name * 3}


def make_tickets(root, dataset, seed, accuracies, train_fraction=1.0, in_progress=None):
    """A find_tickets run; accuracies[L] = (val, test) of level L."""
    hparams = {"source": dataset, "model": "lenet_300_100", "image_size": 16, "seed": seed,
               "train_fraction": train_fraction, "prune_rate": 0.2, "rewind_epoch": 1,
               "learning_rate": 0.01}
    path = os.path.join(root, "tickets", f"{dataset}-frac{train_fraction:g}-seed{seed}")
    artifacts.write_json(os.path.join(path, "config.json"), {
        "kind": "find_tickets", "hparams": hparams, "hparams_hash": runs.hparams_hash(hparams),
        "dataset": _dataset(dataset)})
    for level, (val, test) in enumerate(accuracies):
        mask = _mask(level, seed)
        level_dir = os.path.join(path, "levels", f"level_{level:02d}")
        artifacts.write_arrays(os.path.join(level_dir, "mask.npz"), mask)
        artifacts.write_json(os.path.join(level_dir, "metrics.json"),
                             _metrics(level, val, test, mask))
    if in_progress is not None:  # a level still training: a checkpoint, no metrics.json
        artifacts.write_arrays(os.path.join(path, "levels", f"level_{in_progress:02d}",
                                            "checkpoint.npz"), {"x": np.zeros(1)})
    return path


def make_transfer(root, target, condition, seed, accuracies, tickets=None, in_progress=None):
    """A transfer run from the ticket run at `tickets` (a path; None for plain scratch)."""
    ticket_info = None
    model = {"model": "lenet_300_100", "image_size": 16, "source_classes": 3, "seed": seed,
             "bn_momentum": 0.9}
    if tickets is not None:
        config = artifacts.read_json(os.path.join(tickets, "config.json"))
        ticket_info = {"path": os.path.abspath(tickets), "hparams_hash": config["hparams_hash"],
                       "source": config["dataset"]["name"], "source_fingerprint": "f"}
    hparams = {"target": target, "model": "lenet_300_100", "image_size": 16, "seed": seed,
               "train_fraction": 1.0, "learning_rate": 0.01, "condition": condition,
               "tickets_hash": ticket_info and ticket_info["hparams_hash"]}
    source = ticket_info["source"] if ticket_info else "none"
    path = os.path.join(root, "transfer", f"{source}-{target}-{condition}-seed{seed}")
    artifacts.write_json(os.path.join(path, "config.json"), {
        "kind": "transfer", "condition": condition, "tickets": ticket_info, "hparams": hparams,
        "hparams_hash": runs.hparams_hash(hparams), "dataset": _dataset(target), "model": model})
    for level, (val, test) in enumerate(accuracies):
        mask = _mask(level, 0)
        artifacts.write_json(os.path.join(path, "levels", f"level_{level:02d}", "metrics.json"),
                             _metrics(level, val, test, mask, condition))
    if in_progress is not None:
        artifacts.write_arrays(os.path.join(path, "levels", f"level_{in_progress:02d}",
                                            "checkpoint.npz"), {"x": np.zeros(1)})
    return path


# Hand-picked accuracies (val, test) per level, one list per seed.
CIFAR10_ON_HUMAN = {
    # mean val: L1 0.71, L2 0.63; L3 only finished by seed 0 (0.99): not a candidate.
    # Picked by validation: L1 (test 0.60, 0.64). Picked by test: L2 (test 0.80, 0.84).
    0: [(0.50, 0.50), (0.70, 0.60), (0.60, 0.80), (0.99, 0.99)],
    1: [(0.52, 0.52), (0.72, 0.64), (0.66, 0.84)],
}
HUMAN_TICKETS = {
    # mean val: L1 0.6875, L2 0.6875, exactly (dyadic): a tie, which the lower level wins.
    0: [(0.5, 0.5), (0.75, 0.8125), (0.6875, 0.5)],
    1: [(0.5, 0.5), (0.625, 0.75), (0.6875, 0.5)],
}
SCRATCH_ON_HUMAN = {0: (0.6, 0.55), 1: (0.6, 0.57)}


def fabricate(root):
    """Two targets: human_lba (2 seeds of everything) and mouse_lba (1 seed, no scratch)."""
    cifar = {s: make_tickets(root, "cifar10", s, [(0.5, 0.5)] * 4) for s in (0, 1)}
    human = {s: make_tickets(root, "human_lba", s, HUMAN_TICKETS[s]) for s in (0, 1)}
    for s in (0, 1):
        make_transfer(root, "human_lba", "rewind", s, CIFAR10_ON_HUMAN[s], cifar[s],
                      in_progress=3 if s == 1 else None)
        make_transfer(root, "human_lba", "reinit", s, [(0.5, 0.45)] * 3, cifar[s])
        make_transfer(root, "human_lba", "final", s, [(0.5, 0.55)] * 3, cifar[s])
        make_transfer(root, "human_lba", "scratch", s, [SCRATCH_ON_HUMAN[s]], cifar[s])
    make_transfer(root, "mouse_lba", "rewind", 0, [(0.4, 0.4), (0.5, 0.5)], cifar[0])
    make_transfer(root, "mouse_lba", "rewind", 0, [(0.4, 0.4), (0.5, 0.6)], human[0])
    make_tickets(root, "human_lba", 0, [(0.5, 0.5), (0.6, 0.6)], train_fraction=0.25,
                 in_progress=2)
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Fabricated runs shared by the tests that only read them."""
    return fabricate(str(tmp_path_factory.mktemp("analyze") / "outputs"))


@pytest.fixture(scope="module")
def analysis(results):
    return report.analyze([results]).files


@pytest.fixture
def fresh_results(tmp_path):
    """Fabricated runs that a test may damage."""
    return fabricate(str(tmp_path / "outputs"))


def _csv_rows(data):
    return {(r["target"], r["column"]): r for r in csv.DictReader(io.StringIO(data.decode()))}


def _pct(stat_values):
    m, s = np.mean(stat_values), np.std(stat_values, ddof=1)
    return f"{100 * m:.2f} ± {100 * s:.2f} (n={len(stat_values)})"


def test_table2_picks_by_validation_and_reports_test(analysis):
    out = analysis
    rows = _csv_rows(out["table2.csv"])
    cifar, tickets, scratch = (rows[("human_lba", c)] for c in
                               ("cifar10", "target tickets", "scratch"))
    assert cifar["level"] == "1" and cifar["n"] == "2"
    assert float(cifar["val_accuracy_mean"]) == pytest.approx(0.71)
    assert float(cifar["test_accuracy_mean"]) == pytest.approx(0.62)
    assert float(cifar["test_accuracy_std"]) == pytest.approx(np.std([0.60, 0.64], ddof=1))
    assert cifar["optimistic_level"] == "2"
    assert float(cifar["optimistic_test_accuracy_mean"]) == pytest.approx(0.82)
    assert tickets["level"] == "1"  # the tie goes to the lower level
    assert float(tickets["test_accuracy_mean"]) == 0.78125
    assert float(tickets["test_accuracy_std"]) == pytest.approx(np.std([0.8125, 0.75], ddof=1))
    assert scratch["level"] == "0"
    assert float(scratch["test_accuracy_mean"]) == pytest.approx(0.56)
    # Best and second best per row, scratch included.
    assert (tickets["rank"], cifar["rank"], scratch["rank"]) == ("best", "second", "")
    assert (cifar["optimistic_rank"], tickets["optimistic_rank"]) == ("best", "second")
    # Welch's test against scratch, as scipy computes it on the same numbers.
    expected = stats.ttest_ind([0.60, 0.64], [0.55, 0.57], equal_var=False)
    assert float(cifar["welch_p"]) == pytest.approx(expected.pvalue)
    assert float(cifar["welch_t"]) == pytest.approx(expected.statistic)
    assert float(cifar["optimistic_welch_p"]) == pytest.approx(
        stats.ttest_ind([0.80, 0.84], [0.55, 0.57], equal_var=False).pvalue)
    assert float(cifar["scratch_test_accuracy_mean"]) == pytest.approx(0.56)

    md = out["table2.md"].decode()
    human = next(line for line in md.splitlines() if line.startswith("| human_lba |"))
    assert f"**{_pct([0.8125, 0.75])}**" in human
    assert f"_{_pct([0.60, 0.64])}_" in human
    assert _pct([0.55, 0.57]) in human
    assert f"{expected.pvalue:.3g}" in md
    optimistic = md.split("## Picked by test (optimistic)")[1]
    assert f"**{_pct([0.80, 0.84])}**" in optimistic
    tex = out["table2.tex"].decode()
    assert r"\cellcolor{green!25}78.12 $\pm$ 4.42" in tex
    assert r"\cellcolor{yellow!25}62.00 $\pm$ 2.83" in tex


def test_the_paired_t_test_against_hand_computed_numbers(analysis):
    import math

    from lth_keras.analysis import tables

    # Differences 0.02, 0.05, 0.01: mean 0.02667, sd 0.02082, t = 2.2188 on 2 degrees of
    # freedom, where the two-sided p is 1 - t / sqrt(2 + t^2) = 0.15673.
    t, p, n = tables.paired({0: 0.80, 1: 0.85, 2: 0.83, 7: 0.9}, {0: 0.78, 1: 0.80, 2: 0.82})
    assert n == 3  # seed 7 has no partner
    assert t == pytest.approx(2.21880078, rel=1e-6)
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert p == pytest.approx(0.156726, abs=1e-6)
    assert all(math.isnan(x) for x in tables.paired({0: 0.8}, {0: 0.7})[:2])
    # In Table 2: cifar10 tickets on human_lba, level 1, test 0.60 / 0.64 for seeds 0 / 1,
    # scratch 0.55 / 0.57: differences 0.05, 0.07, t = 6 on 1 degree of freedom, where the
    # two-sided p is 1 - 2 atan(t) / pi = 0.1051.
    row = _csv_rows(analysis["table2.csv"])[("human_lba", "cifar10")]
    assert float(row["paired_t"]) == pytest.approx(6.0, rel=1e-9)
    assert float(row["paired_p"]) == pytest.approx(1 - 2 * math.atan(6) / math.pi, rel=1e-9)
    assert row["paired_n"] == "2"
    md = analysis["table2.md"].decode()
    paired_row = next(line for line in md.split("## Paired")[1].splitlines()
                      if line.startswith("| human_lba |"))
    assert f"{1 - 2 * math.atan(6) / math.pi:.3g} (n=2)" in paired_row


def test_partial_results_show_dashes(analysis):
    out = analysis
    md = out["table2.md"].decode()
    mouse = next(line for line in md.splitlines() if line.startswith("| mouse_lba |"))
    cols = [c.strip() for c in mouse.strip("|").split("|")]
    header = [c.strip() for c in md.splitlines()[4].strip("|").split("|")]
    row = dict(zip(header, cols))
    assert row["scratch"] == "—" and row["target tickets"] == "—"
    assert row["cifar10"] == "_50.00 (n=1)_"  # one seed: no spread
    assert row["human_lba"] == "**60.00 (n=1)**"  # the related source is best
    welch_row = next(line for line in md.split("## Welch")[1].splitlines()
                     if line.startswith("| mouse_lba |"))
    assert "—" in welch_row and "e" not in welch_row.replace("mouse_lba", "")
    rows = _csv_rows(out["table2.csv"])
    assert rows[("mouse_lba", "cifar10")]["welch_p"] == ""
    assert rows[("mouse_lba", "cifar10")]["scratch_test_accuracy_mean"] == ""


def test_table3_reports_the_sparsity_of_the_picked_level(analysis):
    out = analysis
    rows = _csv_rows(out["table3.csv"])
    cifar = rows[("human_lba", "cifar10")]
    alive = round(SIZE * 0.8)
    assert cifar["level"] == "1"
    assert float(cifar["fraction_pruned"]) == pytest.approx(1 - alive / SIZE)
    assert float(cifar["fraction_pruned_all_params"]) == pytest.approx(
        (SIZE - alive) / (SIZE + 50))
    assert cifar["optimistic_level"] == "2"
    assert ("human_lba", "scratch") not in rows
    md = out["table3.md"].decode()
    assert f"{1 - alive / SIZE:.3f} / {(SIZE - alive) / (SIZE + 50):.3f} (L=1)" in md


def test_figures_are_written_and_read_like_the_paper(results, analysis):
    out = analysis
    for name in ("fig3", "fig4"):
        assert out[f"{name}.png"].startswith(b"\x89PNG") and len(out[f"{name}.png"]) > 1000
        assert out[f"{name}.pdf"].startswith(b"%PDF") and len(out[f"{name}.pdf"]) > 1000
    assert out["density_human_lba-frac1-seed0.png"].startswith(b"\x89PNG")

    views = targets.build_views(cells.group_cells(collect.collect_runs([results])))
    fig = figures.figure3(views)
    ax = fig.axes[0]
    assert ax.get_title() == "human_lba"
    assert "pruned" in ax.get_xlabel() and "accuracy" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["cifar10 (n=1-2)", "target tickets (n=2)", "reinit (cifar10 tickets) (n=2)",
                      "scratch (n=2)"]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_color() == "black"
    assert dashed[0].get_ydata()[0] == pytest.approx(56.0)
    assert len(ax.collections) >= 3  # ±1 std bands: 3 lines and the scratch band
    assert ax.xaxis_inverted() or ax.get_xlim()[0] > ax.get_xlim()[1]
    # Fig. 4 has its three rows: θ_k vs θ_i, related source, train fractions.
    titles = [a.get_title() for a in figures.figure4(views).axes if a.get_visible()]
    assert titles == ["θ_k vs θ_i: human_lba", "related vs natural source: mouse_lba",
                      "training-set fraction: human_lba"]


def test_a_level_in_progress_is_left_out(results):
    run = collect.read_run(os.path.join(results, "transfer", "cifar10-human_lba-rewind-seed1"))
    assert sorted(run.levels) == [0, 1, 2]


@pytest.mark.parametrize("damage, needle", [
    (lambda p: open(os.path.join(p, "config.json"), "w").write("{not json"), "config.json"),
    (lambda p: _edit(os.path.join(p, "config.json"), kind="sweep"), "unknown run kind"),
    (lambda p: _edit(os.path.join(p, "config.json"), hparams={"model": "x"}), "hparams.seed"),
    (lambda p: _edit(os.path.join(p, "levels", "level_01", "metrics.json"), test=None),
     "test"),
    (lambda p: _edit(os.path.join(p, "levels", "level_01", "metrics.json"), level=7), "level"),
    (lambda p: os.makedirs(os.path.join(p, "levels", "final")), "not a level directory"),
])
def test_malformed_run_directories_are_refused(fresh_results, damage, needle):
    path = os.path.join(fresh_results, "tickets", "human_lba-frac1-seed1")
    damage(path)
    with pytest.raises(collect.AnalysisError, match=needle) as error:
        collect.collect_runs([fresh_results])
    assert path in str(error.value)
    assert isinstance(error.value, artifacts.ArtifactError)  # cli.run makes it one line


def _edit(path, **changes):
    data = artifacts.read_json(path)
    data.update(changes)
    artifacts.write_json(path, data)


def test_the_same_seed_twice_is_refused(results, tmp_path):
    import shutil
    copy = str(tmp_path / "copy")
    shutil.copytree(os.path.join(results, "tickets", "cifar10-frac1-seed0"), copy)
    with pytest.raises(collect.AnalysisError, match="same seed"):
        report.analyze([results, copy])


def test_jaccard_of_masks_with_a_known_overlap(tmp_path):
    a = {"k1": np.array([[1, 1, 1, 0]], np.float32), "k2": np.array([1, 0, 0], np.float32)}
    b = {"k1": np.array([[0, 1, 1, 1]], np.float32), "k2": np.array([1, 0, 1], np.float32)}
    assert masks.jaccard(a, b) == pytest.approx(3 / 6)  # shared 3, union 6
    with pytest.raises(ValueError):
        masks.jaccard(a, {"k1": a["k1"]})

    root = str(tmp_path)
    paths = [make_tickets(root, name, 0, [(0.5, 0.5)] * 2) for name in ("cifar10", "cifar100")]
    for path, mask in zip(paths, (a, b)):  # replace level 1's mask by the known one
        artifacts.write_arrays(os.path.join(path, "levels", "level_01", "mask.npz"), mask)
    rows = masks.mask_overlap(collect.collect_runs([root]))
    assert [(r["level"], r["shared"], r["jaccard"]) for r in rows] == [(1, 3, 0.5)]
    assert "0.500" in masks.overlap_markdown(rows)


def test_binary_writes_everything_or_nothing(fresh_results, tmp_path):
    results = fresh_results
    out = str(tmp_path / "analysis")
    proc = run_binary("lth_keras.analyze", f"--runs={results}", f"--output_dir={out}",
                      "--overlap_levels=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "# Table 2" in proc.stdout and os.path.join(out, "fig3.png") in proc.stdout
    for name in ("fig3.png", "fig3.pdf", "fig4.png", "fig4.pdf", "table2.md", "table2.csv",
                 "table2.tex", "table3.md", "table3.csv", "table3.tex", "mask_overlap.csv",
                 "mask_overlap.md"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    levels = {r["level"] for r in csv.DictReader(open(os.path.join(out, "mask_overlap.csv")))}
    assert levels == {"1"}

    bad = os.path.join(results, "transfer", "cifar10-human_lba-rewind-seed0")
    with open(os.path.join(bad, "config.json"), "w") as f:
        f.write("{truncated")
    fresh = str(tmp_path / "fresh")
    proc = run_binary("lth_keras.analyze", f"--runs={results}", f"--output_dir={fresh}")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("analyze: error: ") and bad in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(fresh)


def test_analysis_does_not_import_tensorflow():
    code = ("import sys, lth_keras.analysis.report; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_levels_table_lists_every_line_at_every_level(results, analysis):
    rows = list(csv.DictReader(io.StringIO(analysis["levels.csv"].decode())))
    rewind = [r for r in rows if r["target"] == "human_lba" and r["role"] == "source"
              and r["line"] == "cifar10"]
    # Seed 0 finished levels 0-3 and seed 1 levels 0-2 (its level 3 is in progress).
    assert sorted((r["seed"], r["level"]) for r in rewind) == [
        ("0", "0"), ("0", "1"), ("0", "2"), ("0", "3"), ("1", "0"), ("1", "1"), ("1", "2")]
    level1 = {r["seed"]: float(r["test_accuracy"]) for r in rewind if r["level"] == "1"}
    assert level1 == {"0": 0.60, "1": 0.64}
    md = analysis["levels.md"].decode()
    section = md.split("## human_lba")[1].split("## ")[0]
    header = [c.strip() for c in section.splitlines()[2].strip("|").split("|")]
    assert {"scratch", "cifar10", "target tickets"} <= set(header)
    row1 = dict(zip(header, (c.strip() for c in next(
        line for line in section.splitlines() if line.startswith("| 1 |")).strip("|").split("|"))))
    assert row1["cifar10"] == _pct([0.60, 0.64])
    assert row1["scratch"] == "—"
    assert row1["level"] == "1" and row1["density"] == "0.8000"
