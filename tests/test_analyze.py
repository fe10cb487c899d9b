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
from lth_keras import artifacts, settings
from lth_keras.lottery import directory
from lth_keras.analysis import cells, collect, figures, masks, report, statistics, targets

LAYERS = {"fc1/kernel": (10, 10), "fc2/kernel": (10, 5)}
SIZE = sum(int(np.prod(s)) for s in LAYERS.values())


def _mask(level, seed):
    """A mask with round(SIZE * 0.8^level) survivors, seeded."""
    keep = round(SIZE * 0.8 ** level)
    flat = np.zeros(SIZE, np.float32)
    flat[np.random.default_rng(seed * 100 + level).permutation(SIZE)[:keep]] = 1
    parts = np.split(flat, np.cumsum([int(np.prod(s)) for s in LAYERS.values()])[:-1])
    return {k: p.reshape(s) for (k, s), p in zip(LAYERS.items(), parts)}


def _metrics(level, val, test, mask, condition=None, noisy_stop=None):
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
    if noisy_stop is not None:
        metrics["noisy_stop"] = noisy_stop
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
        "kind": "find_tickets", "hparams": hparams, "hparams_hash": directory.hparams_hash(hparams),
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


CONDITION_FLAGS = {"rewind": [], "final": ["--init=final"], "reinit": ["--reinit"],
                   "scratch": ["--scratch"], "random": ["--random_mask"],
                   "random_reinit": ["--random_mask", "--reinit"]}


def transfer_hparams(target, condition, seed, tickets_hash, recipe=()):
    """A transfer's hparams as directory.start records them: every result-defining setting
    (init, reinit and scratch among them) plus the identity's extras."""
    groups = settings.parse(settings.TRANSFER, [
        f"--target={target}", "--model=lenet_300_100", "--image_size=16", f"--seed={seed}",
        "--learning_rate=0.01", *CONDITION_FLAGS[condition], *recipe])
    return {**settings.result_values(groups), "condition": condition,
            "tickets_hash": tickets_hash, "head": "transfer seed/target/head"}


def make_transfer(root, target, condition, seed, accuracies, tickets=None, in_progress=None,
                  levels=None, noisy=(), recipe=(), name=None):
    """A transfer run from the ticket run at `tickets` (a path; None for plain scratch),
    fine-tuned with `seed`; accuracies[i] = (val, test) of `levels`[i] (default 0, 1, ...);
    `noisy`: the levels that stopped early on noise (the others record that they did not)."""
    ticket_info = None
    tickets_seed = seed
    if tickets is not None:
        config = artifacts.read_json(os.path.join(tickets, "config.json"))
        ticket_info = {"path": os.path.abspath(tickets), "hparams_hash": config["hparams_hash"],
                       "source": config["dataset"]["name"], "source_fingerprint": "f"}
        tickets_seed = config["hparams"]["seed"]
    model = {"model": "lenet_300_100", "image_size": 16, "source_classes": 3,
             "seed": tickets_seed, "bn_momentum": 0.9}
    hparams = transfer_hparams(target, condition, seed, ticket_info and ticket_info["hparams_hash"],
                               recipe)
    source = ticket_info["source"] if ticket_info else "none"
    path = os.path.join(root, "transfer", name or f"{source}-{target}-{condition}-seed{seed}")
    artifacts.write_json(os.path.join(path, "config.json"), {
        "kind": "transfer", "condition": condition, "tickets": ticket_info, "hparams": hparams,
        "hparams_hash": directory.hparams_hash(hparams), "dataset": _dataset(target), "model": model})
    for level, (val, test) in zip(levels or range(len(accuracies)), accuracies):
        mask = _mask(level, 0)
        artifacts.write_json(os.path.join(path, "levels", f"level_{level:02d}", "metrics.json"),
                             _metrics(level, val, test, mask, condition,
                                      noisy_stop=level in noisy if levels else None))
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
    # The paired test's row, as in the Markdown: p and the number of seeds it pairs.
    paired_p = float(cifar["paired_p"])
    assert "paired t-test p-value" in tex and f"{paired_p:.3g} {{\\scriptsize (n=2)}}" in tex


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


def test_fig4_draws_the_theta_k_line_from_real_transfer_hparams(results):
    """A rewind and a final transfer of the same tickets record init=rewind / init=final
    (and reinit, scratch) in their hparams, as directory.start writes them: Fig. 4's θ_k-vs-θ_i
    panel must still pair them and draw the ticket's line beside θ_i's."""
    rewind = collect.read_run(os.path.join(results, "transfer", "cifar10-human_lba-rewind-seed0"))
    final = collect.read_run(os.path.join(results, "transfer", "cifar10-human_lba-final-seed0"))
    hparams = [artifacts.read_json(os.path.join(r.path, "config.json"))["hparams"]
               for r in (rewind, final)]
    assert (hparams[0]["init"], hparams[1]["init"]) == ("rewind", "final")
    views = targets.build_views(cells.group_cells(collect.collect_runs([results])))
    panel = next(a for a in figures.figure4(views).axes if a.get_title() == "θ_k vs θ_i: human_lba")
    legend = [t.get_text() for t in panel.get_legend().get_texts()]
    assert legend[:2] == ["cifar10 θ_k (ticket) (n=1-2)", "cifar10 θ_i (final weights) (n=2)"]
    styles = sorted(line.get_linestyle() for line in panel.get_lines())
    assert styles.count("-") == 1 and styles.count("--") >= 1


# A grid with a primary level: tickets seeds 0 and 1, each fine-tuned with transfer seeds
# 0-3 (8 pairs); rewind at levels 0 and 2, the reinit of level 2, scratch. The ticket's
# differences from scratch are, pair by pair in replicate order (0/0, 0/1, ..., 1/3):
DIFFERENCES = [0.01, 0.03, 0.02, 0.04, 0.00, 0.05, 0.02, 0.03]
# Their mean is 0.025 and their sample sd sqrt(0.0018 / 7) = 0.0160357; t(0.975, 7) =
# 2.364624 and sd / sqrt(8) = 0.00566947, so the 95% CI is 0.025 ± 0.0134062 =
# [0.0115938, 0.0384062], and t = 0.025 / 0.00566947 = 4.40959.
# The effect a paired t-test of 8 pairs detects with 80% power is 1.15603 sd (the
# noncentral t's power integrated; 400,000 simulated studies at that effect rejected
# 80.0% of the time), 0.0185377; the textbook approximation (t(0.975, 7) + t(0.80, 7)) /
# sqrt(8) sd = (2.364624 + 0.896030) / 2.828427 sd = 1.152821 sd is 0.3% below it.


def make_pairs_grid(root, primary_level=2, noisy_scratch=(("1/3"),)):
    tickets = {s: make_tickets(root, "cifar10", s, [(0.5, 0.5)] * 3) for s in (0, 1)}
    pairs = [(s, t) for s in (0, 1) for t in range(4)]
    for (s, t), d in zip(pairs, DIFFERENCES):
        scratch = 0.70 + 0.01 * t - 0.02 * s
        label = f"{s}/{t}"
        make_transfer(root, "histo", "scratch", t, [(0.6, scratch)], tickets[s], levels=[0],
                      noisy=[0] if label in noisy_scratch else [], name=f"scratch-{s}-{t}")
        # Level 0 (dense θ_k) is 0.01 below scratch; level 2 is the ticket.
        make_transfer(root, "histo", "rewind", t, [(0.6, scratch - 0.01), (0.7, scratch + d)],
                      tickets[s], levels=[0, 2], name=f"rewind-{s}-{t}")
        make_transfer(root, "histo", "reinit", t, [(0.6, scratch + d - 0.02)], tickets[s],
                      levels=[2], name=f"reinit-{s}-{t}")
    if primary_level is not None:
        artifacts.write_json(os.path.join(root, "grid.json"),
                             {"kind": "grid", "primary_level": primary_level})
    return root


def test_minimum_detectable_effect_against_hand_computed_numbers():
    from scipy import stats as sps

    d = statistics.paired_difference(dict(enumerate(np.array(DIFFERENCES) + 0.7)),
                                     dict(enumerate([0.7] * 8)))
    assert d.n == 8 and d.mean == pytest.approx(0.025, abs=1e-12)
    assert d.sd == pytest.approx(np.sqrt(0.0018 / 7), rel=1e-9)
    assert d.ci == pytest.approx((0.0115938, 0.0384062), abs=1e-7)
    assert d.t == pytest.approx(4.40959, rel=1e-5)
    assert d.p == pytest.approx(2 * sps.t.sf(4.40959, 7), rel=1e-4)
    assert d.mde == pytest.approx(1.15603 * d.sd, rel=1e-5)
    assert d.mde == pytest.approx(1.152821 * d.sd, rel=0.005)
    # At 3 pairs (2 degrees of freedom) the textbook approximation is 5% short: 3.0965 sd
    # against 3.2640 (again confirmed by simulation).
    assert statistics.minimum_detectable_effect(1.0, 3) == pytest.approx(3.26404, rel=1e-5)
    assert np.isnan(statistics.paired_difference({0: 1.0}, {0: 0.5}).ci[0])
    assert statistics.paired_difference({0: 1.0}, {1: 0.5}).n == 0


def test_the_primary_result_named_by_the_grid(tmp_path):
    root = make_pairs_grid(str(tmp_path / "grid"))
    result = report.analyze([root], overlap=False)
    rows = {r["contrast"]: r for r in result.tables["primary"]}
    main = rows["ticket − scratch"]
    assert main["primary"] and main["level"] == 2 and main["n"] == 8
    assert main["pairs"] == "0 0/1 0/2 0/3 1/0 1 1/2 1/3"
    assert main["mean"] == pytest.approx(0.025)
    assert (main["ci_low"], main["ci_high"]) == pytest.approx((0.0115938, 0.0384062), abs=1e-7)
    assert main["mde"] == pytest.approx(0.0185377, rel=1e-5)
    assert (main["noisy_a"], main["noisy_b"]) == (0, 1)  # scratch 1/3 stopped on noise
    assert rows["ticket − dense θ_k"]["mean"] == pytest.approx(0.035)
    assert rows["dense θ_k − scratch"]["mean"] == pytest.approx(-0.01)
    assert rows["dense θ_k − scratch"]["sd"] == pytest.approx(0, abs=1e-12)
    assert rows["ticket − reinit"]["mean"] == pytest.approx(0.02)
    assert "ticket − random mask" not in rows  # random pruning did not run: no row

    md = result.files["table2.md"].decode()
    assert md.startswith("# Primary result: ticket − scratch at level 2, named in advance")
    line = next(x for x in md.splitlines() if "(primary)" in x)
    assert "| 8 | +2.50 | [+1.16, +3.84] |" in line and "| 1.85 |" in line
    assert "the interval excludes 0: ticket is better" in line
    assert "# Table 2 (secondary)" in md
    assert result.files["primary.csv"].decode().splitlines()[0].startswith("target,tickets,")
    # Named on the command line instead: that level, and said so.
    other = report.analyze([root], overlap=False, primary_level=1)
    assert "--primary_level: --primary_level=1" in other.files["primary.md"].decode()
    assert "absent: no pair has both sides" in other.files["primary.md"].decode()


def test_random_pruning_is_a_line_a_row_and_a_contrast(tmp_path):
    root = make_pairs_grid(str(tmp_path / "grid"))
    tickets = {s: os.path.join(root, "tickets", f"cifar10-frac1-seed{s}") for s in (0, 1)}
    for (s, t), d in zip([(s, t) for s in (0, 1) for t in range(4)], DIFFERENCES):
        scratch = 0.70 + 0.01 * t - 0.02 * s
        # The random mask of level 2 from θ_k: 0.03 below the ticket in every pair.
        make_transfer(root, "histo", "random", t, [(0.6, scratch + d - 0.03)], tickets[s],
                      levels=[2], name=f"random-{s}-{t}")
    make_transfer(root, "histo", "random_reinit", 0, [(0.6, 0.5)], tickets[0], levels=[2],
                  name="random-reinit-0-0")
    result = report.analyze([root], overlap=False)
    rows = {r["contrast"]: r for r in result.tables["primary"]}
    random = rows["ticket − random mask"]
    assert random["n"] == 8 and random["mean"] == pytest.approx(0.03)
    assert rows["ticket − scratch"]["mean"] == pytest.approx(0.025)  # the primary stands
    table2 = {r["column"] for r in result.tables["table2"]}
    assert {"random mask (cifar10 tickets)",
            "random mask, fresh weights (cifar10 tickets)"} <= table2
    legend = [t.get_text() for ax in result.figures["fig3"].axes
              if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any(text.startswith("random mask (cifar10 tickets)") for text in legend)


def test_tickets_seeds_fine_tuned_with_the_same_transfer_seeds_are_distinct_replicates(tmp_path):
    root = make_pairs_grid(str(tmp_path / "grid"), primary_level=None)
    result = report.analyze([root], overlap=False)
    assert "primary.md" not in result.files and "Primary" not in result.table2_markdown
    levels = list(csv.DictReader(io.StringIO(result.files["levels.csv"].decode())))
    rewind2 = [(r["tickets_seed"], r["seed"]) for r in levels
               if r["role"] == "source" and r["level"] == "2"]
    assert sorted(rewind2) == [(str(s), str(t)) for s in (0, 1) for t in range(4)]
    table2 = _csv_rows(result.files["table2.csv"])[("histo", "cifar10")]
    assert table2["paired_n"] == "8" and table2["noisy_stops"] == "0"
    assert table2["noisy_stops_recorded"] == "8"


def test_lines_trained_with_different_recipes_are_named(tmp_path):
    root = str(tmp_path / "grid")
    tickets = make_tickets(root, "cifar10", 0, [(0.5, 0.5)] * 3)
    make_transfer(root, "histo", "scratch", 0, [(0.6, 0.6)], tickets,
                  recipe=["--max_epochs=10", "--patience=3"])
    make_transfer(root, "histo", "rewind", 0, [(0.6, 0.6)] * 3, tickets,
                  recipe=["--max_epochs=5", "--patience=3"])
    result = report.analyze([root], overlap=False)
    md = result.files["table2.md"].decode()
    assert "**Recipes differ between the lines compared**" in md
    assert "- histo: max_epochs 10 (scratch); 5 (cifar10)" in md
    assert any(note.startswith("recipes differ: histo") for note in result.notes)


def test_every_pruned_line_picks_among_the_same_levels(tmp_path):
    """Target tickets with levels 1-3 and a transfer of level 2 only: the tickets' pick is
    made among level 2 alone, as the transfer's is (more candidates win more by chance)."""
    root = str(tmp_path / "grid")
    cifar = make_tickets(root, "cifar10", 0, [(0.5, 0.5)] * 3)
    make_tickets(root, "histo", 0, [(0.5, 0.5), (0.9, 0.9), (0.6, 0.6), (0.5, 0.5)])
    make_transfer(root, "histo", "rewind", 0, [(0.6, 0.6), (0.7, 0.7)], cifar, levels=[0, 2])
    rows = _csv_rows(report.analyze([root], overlap=False).files["table2.csv"])
    assert rows[("histo", "target tickets")]["level"] == "2"
    assert rows[("histo", "target tickets")]["candidates"] == "2"


def test_the_controls_table_and_its_search_level_contrasts(tmp_path, capsys):
    """tools/controls.py on a grid's layout: per-seed rows, the ticket's lead over each
    control, and per range the mean over searches of each search's mean difference."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import controls

    grid = str(tmp_path / "grid")
    tickets = {0: [0.80, 0.82, 0.84], 1: [0.70, 0.74, 0.78]}  # test accuracy of levels 0-2
    random = {0: [0.80, 0.80, 0.81], 1: [0.70, 0.73, 0.74]}
    for seed in (0, 1):
        made = make_tickets(grid, "fashion_mnist", seed, [(a, a) for a in tickets[seed]])
        path = os.path.join(grid, "tickets", f"fashion_mnist-seed{seed}")
        os.rename(made, path)
        make_transfer(grid, "fashion_mnist", "random", seed, [(a, a) for a in random[seed]],
                      path, name=f"fashion_mnist/fashion_mnist-random-seed{seed}")
        make_transfer(grid, "fashion_mnist", "reinit", seed, [(0.5, 0.5)] * 2, path,
                      name=f"fashion_mnist/fashion_mnist-reinit-seed{seed}")  # no level 2
    data = controls.read(grid, "fashion_mnist", "fashion_mnist", "tickets",
                         ["random", "reinit"], [0, 1])
    # Search means over levels 1-2: seed 0 (2 + 3) / 2 = 2.5 points, seed 1 (1 + 4) / 2 = 2.5.
    means, d = controls.contrast(data, "tickets", "random", [1, 2])
    assert (d.n, d.pairs) == (2, (0, 1)) and d.mean == pytest.approx(2.5) and d.sd == 0
    assert controls.contrast(data, "tickets", "reinit", [1, 2]) is None  # reinit lacks level 2
    controls.main([f"--grid={grid}", "--target=fashion_mnist", "--controls=random,reinit",
                   "--ranges=1-2,1"])
    out = capsys.readouterr().out
    assert "| 2 | 0.6400 | 84.00 | 81.00 | — | +3.00 | — |" in out
    assert "| tickets − random | +2.50, +2.50 | +2.50 |" in out
    assert "| tickets − reinit | — (a search lacks a level) |" in out
    assert "| tickets − random | +2.00, +1.00 | +1.50 | [−4.85, +7.85] |" in out  # level 1
