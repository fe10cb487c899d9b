"""The analysis: Table 2 / 3 picks computed by hand, figures, partial runs, refusals, overlap.

Run directories are fabricated in the exact formats of find_tickets and
transfer (config.json, levels/level_LL/metrics.json, mask.npz); nothing trains.
"""

import csv
import io
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import REPO, fabricated_record, run_binary
from lth_keras import artifacts
from lth_keras.analysis import cells, collect, figures, masks, report, statistics, views

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
               "val": {"loss": 1.0, "accuracy": val}, "test": {"loss": 1.0, "accuracy": test},
               "cost": {"images": 1000, "seconds": 10.0,
                        "training_flops": {"dense": 3e9, "masked": 3e9 * density}}}
    if condition is not None:
        metrics.update(condition=condition, mask_digest="1" * 64)
    if noisy_stop is not None:
        metrics["noisy_stop"] = noisy_stop
    return metrics


def make_tickets(root, dataset, seed, accuracies, train_fraction=1.0, in_progress=None,
                 rewind_epoch=1, rounds=None):
    """A find_tickets run; accuracies[L] = (val, test) of level L; `rounds` recorded when
    given (else the default, which these runs never reach)."""
    path = os.path.join(root, "tickets", f"{dataset}-frac{train_fraction:g}-seed{seed}"
                        + (f"-k{rewind_epoch}" if rewind_epoch != 1 else ""))
    artifacts.write_json(os.path.join(path, "config.json"), fabricated_record(
        "find_tickets", [f"--source={dataset}", "--model=lenet_300_100", "--image_size=16",
                         f"--seed={seed}", f"--train_fraction={train_fraction}",
                         f"--rewind_epoch={rewind_epoch}", "--learning_rate=0.01",
                         *([f"--rounds={rounds}"] if rounds is not None else [])],
        dataset=dataset))
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


def transfer_args(target, condition, seed, recipe=()):
    """A transfer's settings as flags: every result-defining setting (init, reinit and
    scratch among them)."""
    return [f"--target={target}", "--model=lenet_300_100", "--image_size=16", f"--seed={seed}",
            "--learning_rate=0.01", *CONDITION_FLAGS[condition], *recipe]


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
        tickets_seed = config["settings"]["training"]["seed"]
    model = {"model": "lenet_300_100", "image_size": 16, "channels": 3, "source_classes": 3,
             "seed": tickets_seed, "bn_momentum": 0.9}
    source = ticket_info["source"] if ticket_info else "none"
    path = os.path.join(root, "transfer", name or f"{source}-{target}-{condition}-seed{seed}")
    artifacts.write_json(os.path.join(path, "config.json"), fabricated_record(
        "transfer", transfer_args(target, condition, seed, recipe), dataset=target,
        identity_extra={"condition": condition,
                        "tickets_hash": ticket_info and ticket_info["hparams_hash"],
                        "head": "transfer seed/target/head"},
        condition=condition, tickets=ticket_info, model=model,
        levels=list(levels or range(len(accuracies)))))
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
    # The target's own tickets (replicate (s, s)) against scratch with transfer seeds 0 and 1:
    # no transfer seed is shared in search 2, so the search means are paired, not the
    # replicates (which would keep searches 0 and 1 only). Scratch's search means 0.79, 0.80,
    # 0.81: differences 0.01, 0.02, 0.04, mean 0.02333, sd 0.015275, t = 2.6458 (2 df),
    # p = 1 - t / sqrt(2 + t^2) = 0.11808.
    t, p, n = tables.paired({(0, 0): 0.80, (1, 1): 0.82, (2, 2): 0.85},
                            {(0, 0): 0.78, (0, 1): 0.80, (1, 0): 0.79, (1, 1): 0.81,
                             (2, 0): 0.80, (2, 1): 0.82})
    assert n == 3 and t == pytest.approx(2.645751, rel=1e-6)
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
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


def test_table2s_tests_are_holm_adjusted_over_the_table(analysis):
    """Table 2's tests are exploratory: each kind is one Holm family over every cell tested
    against scratch, recomputed here step by step."""
    import math

    rows = [r for r in _csv_rows(analysis["table2.csv"]).values()
            if r["role"] != "scratch" and r["scratch_test_accuracy_mean"] != ""
            and r["level"] != ""]
    for kind in ("welch", "paired"):
        ps = [float(r[f"{kind}_p"]) if r[f"{kind}_p"] else math.nan for r in rows]
        k, finite = len(ps), sorted(p for p in ps if not math.isnan(p))
        assert k >= len(finite) >= 2
        expected, running = {}, 0.0
        for rank, p in enumerate(finite):
            running = max(running, min(1.0, (k - rank) * p))
            expected[p] = running
        for r, p in zip(rows, ps):
            got = r[f"{kind}_p_holm"]
            assert (got == "") if math.isnan(p) else float(got) == pytest.approx(expected[p])
    md = analysis["table2.md"].decode()
    assert "Exploratory, no verdicts: Table 2's tests are not named in advance." in md
    paired_row = next(line for line in md.split("## Paired")[1].splitlines()
                      if line.startswith("| human_lba |"))
    human = _csv_rows(analysis["table2.csv"])[("human_lba", "cifar10")]
    assert f"(n=2); {float(human['paired_p_holm']):.3g}" in paired_row


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

    found = views.build_views(cells.group_cells(collect.collect_runs([results])))
    fig = figures.figure3(found)
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
    titles = [a.get_title() for a in figures.figure4(found).axes if a.get_visible()]
    assert titles == ["θ_k vs θ_i: human_lba", "related vs natural source: mouse_lba",
                      "training-set fraction: human_lba"]


def test_a_level_in_progress_is_left_out(results):
    run = collect.read_run(os.path.join(results, "transfer", "cifar10-human_lba-rewind-seed1"))
    assert sorted(run.levels) == [0, 1, 2]


@pytest.mark.parametrize("damage, needle", [
    (lambda p: open(os.path.join(p, "config.json"), "w").write("{not json"), "config.json"),
    (lambda p: _edit(os.path.join(p, "config.json"), kind="sweep"), "unknown run kind"),
    (lambda p: _edit(os.path.join(p, "config.json"), settings="x"), "settings has an unexpected"),
    (lambda p: _edit(os.path.join(p, "config.json"), dataset={"name": "x"}), "dataset.num_classes"),
    # Records before 0.4 are refused, saying who wrote them and what to do.
    (lambda p: _edit(os.path.join(p, "config.json"), environment={"lth_keras": "0.3.1"}),
     "written by lth_keras 0.3.1; this version reads runs of 0.4 and later: move it away"),
    (lambda p: _edit(os.path.join(p, "levels", "level_01", "metrics.json"), test=None),
     "test"),
    (lambda p: _edit(os.path.join(p, "levels", "level_01", "metrics.json"), level=7), "level"),
    # A NaN accuracy would blank every contrast its search enters: refused, named.
    (lambda p: _edit(os.path.join(p, "levels", "level_01", "metrics.json"),
                     test={"accuracy": float("nan"), "loss": 1.0}), "test.accuracy is nan"),
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


@pytest.mark.slow
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
    found = views.build_views(cells.group_cells(collect.collect_runs([results])))
    panel = next(a for a in figures.figure4(found).axes if a.get_title() == "θ_k vs θ_i: human_lba")
    legend = [t.get_text() for t in panel.get_legend().get_texts()]
    assert legend[:2] == ["cifar10 θ_k (ticket) (n=1-2)", "cifar10 θ_i (final weights) (n=2)"]
    styles = sorted(line.get_linestyle() for line in panel.get_lines())
    assert styles.count("-") == 1 and styles.count("--") >= 1


# A clustered grid with a primary level: tickets seeds (searches) 0-3, each fine-tuned with
# transfer seeds 0-2 (12 pairs); rewind at levels 0 and 2, the reinit of level 2, scratch.
# The ticket's differences from scratch, search by search (transfer seeds 0, 1, 2):
DIFFERENCES = {0: [0.01, 0.02, 0.03], 1: [0.04, 0.05, 0.06], 2: [-0.01, 0.00, 0.01],
               3: [0.02, 0.03, 0.04]}
# By hand, with the search as the unit:
# - search means 0.02, 0.05, 0.00, 0.03: mean 0.025, deviations -0.005, 0.025, -0.025,
#   0.005, sum of squares 0.0013, sd sqrt(0.0013 / 3) = 0.0208167, se = sd / 2 = 0.0104083;
#   t(0.975, 3) = 3.182446, so the 95% CI is 0.025 ± 0.0331240 = [-0.0081240, 0.0581240],
#   and t = 0.025 / 0.0104083 = 2.401922 (df 3);
# - one-way ANOVA over the 12 pairs: within each search the deviations are -0.01, 0, 0.01,
#   SSW = 4 · 0.0002 = 0.0008 over N - a = 8 df, MSW = 0.0001; MSB = 3 · 0.0013 / 3 =
#   0.0013; m₀ = (12 - 36/12) / 3 = 3; σ²_between = (0.0013 - 0.0001) / 3 = 0.0004;
#   ICC(1) = 0.0012 / (0.0013 + 2 · 0.0001) = 0.8; design effect 1 + 2 · 0.8 = 2.6;
# - 4 searches: below 5, the detectable effect is not estimable.
SEARCHES, TRANSFER_SEEDS = (0, 1, 2, 3), (0, 1, 2)


def make_pairs_grid(root, primary_level=2, noisy_scratch=("1/2",), recipe=()):
    tickets = {s: make_tickets(root, "cifar10", s, [(0.5, 0.5)] * 3, rounds=2) for s in SEARCHES}
    for s in SEARCHES:
        for t, d in zip(TRANSFER_SEEDS, DIFFERENCES[s]):
            scratch = 0.70 + 0.01 * t - 0.02 * s
            label = f"{s}/{t}"
            make_transfer(root, "histo", "scratch", t, [(0.6, scratch)], tickets[s],
                          levels=[0], noisy=[0] if label in noisy_scratch else [],
                          name=f"scratch-{s}-{t}", recipe=recipe)
            # Level 0 (dense θ_k) is 0.01 below scratch; level 2 is the ticket.
            make_transfer(root, "histo", "rewind", t, [(0.6, scratch - 0.01), (0.7, scratch + d)],
                          tickets[s], levels=[0, 2], name=f"rewind-{s}-{t}", recipe=recipe)
            if t == 0:  # the controls have one transfer seed, as the study's do
                make_transfer(root, "histo", "reinit", t, [(0.6, scratch + d - 0.02 * (s + 1))],
                              tickets[s], levels=[2], name=f"reinit-{s}-{t}", recipe=recipe)
    if primary_level is not None:
        artifacts.write_json(os.path.join(root, "grid.json"),
                             {"kind": "grid", "primary_level": primary_level})
    return root


def _pairs(differences):
    """{(search, transfer seed): d} of a {search: [d per transfer seed]} table."""
    return {(s, t): d for s, ds in differences.items() for t, d in enumerate(ds)}


def test_search_level_interval_icc_and_design_effect_against_hand_computed_numbers():
    from scipy import stats as sps

    pairs = _pairs(DIFFERENCES)
    d = statistics.search_difference({k: 0.7 + v for k, v in pairs.items()},
                                     dict.fromkeys(pairs, 0.7))
    assert d.n == 4 and len(d.pairs) == 12 and d.transfer_seeds == "3"
    assert d.search_means == pytest.approx({0: 0.02, 1: 0.05, 2: 0.0, 3: 0.03}, abs=1e-12)
    assert d.mean == pytest.approx(0.025, abs=1e-12)
    assert d.sd == pytest.approx(0.0208167, rel=1e-5)
    assert d.ci == pytest.approx((-0.0081240, 0.0581240), abs=1e-7)
    assert d.t == pytest.approx(2.401922, rel=1e-6)
    assert d.p == pytest.approx(2 * sps.t.sf(2.401922, 3), rel=1e-5)
    c = d.components
    assert (c.searches, c.replicates) == (4, 12)
    assert c.m0 == pytest.approx(3.0) and c.within == pytest.approx(1e-4)
    assert c.between == pytest.approx(4e-4) and c.icc == pytest.approx(0.8)
    assert c.design_effect == pytest.approx(2.6)
    # Below 5 searches the detectable effect is not estimable, whatever the pairs.
    assert np.isnan(d.mde) and not d.mde_estimable
    assert statistics.detectable_text(d) == "not estimable (n = 4)"


def test_unbalanced_groups_and_what_cannot_be_estimated():
    # Sizes 3 and 2: N = 5, m₀ = (5 - 13/5) / 1 = 2.4; values 1,2,3 | 5,7: MSW =
    # (2 + 2) / 3 = 4/3, grand mean 3.6, MSB = 3·1.6² + 2·2.4² = 19.2; ICC = (19.2 - 4/3) /
    # (19.2 + 1.4 · 4/3) = 17.866667 / 21.066667 = 0.8481013.
    c = statistics.variance_components({0: [1, 2, 3], 1: [5, 7]})
    assert c.m0 == pytest.approx(2.4) and c.within == pytest.approx(4 / 3)
    assert c.icc == pytest.approx(0.8481013, rel=1e-6)
    assert c.between == pytest.approx((19.2 - 4 / 3) / 2.4)
    # Between-search variance below the within-search one: ICC and between truncated at 0.
    low = statistics.variance_components({0: [0, 10], 1: [4, 6]})
    assert low.icc == 0 and low.between == 0 and low.design_effect == 1
    # One transfer seed per search: no within-search variance, no ICC.
    assert np.isnan(statistics.variance_components({0: [1], 1: [2]}).icc)
    # One search: an estimate, no interval.
    one = statistics.search_difference({(0, 0): 1.0, (0, 1): 0.8}, {(0, 0): 0.5, (0, 1): 0.5})
    assert one.n == 1 and one.mean == pytest.approx(0.4) and np.isnan(one.ci[0])
    assert statistics.search_difference({(0, 0): 1.0}, {(1, 0): 0.5}).n == 0


def test_minimum_detectable_effect_against_hand_computed_numbers():
    # 8 searches, differences with mean 0.025 and sd sqrt(0.0018 / 7) = 0.0160357.
    # The effect a t-test of 8 units detects with 80% power is 1.15603 sd (the noncentral
    # t's power integrated; 400,000 simulated studies at that effect rejected 80.0% of the
    # time), 0.0185377; the textbook approximation (t(0.975, 7) + t(0.80, 7)) / sqrt(8) sd
    # = 1.152821 sd is 0.3% below it.
    differences = [0.01, 0.03, 0.02, 0.04, 0.00, 0.05, 0.02, 0.03]
    d = statistics.search_difference(dict(enumerate(np.array(differences) + 0.7)),
                                     dict(enumerate([0.7] * 8)))
    assert d.n == 8 and d.sd == pytest.approx(np.sqrt(0.0018 / 7), rel=1e-9)
    assert d.ci == pytest.approx((0.0115938, 0.0384062), abs=1e-7)
    assert d.mde == pytest.approx(1.15603 * d.sd, rel=1e-5)
    assert d.mde == pytest.approx(1.152821 * d.sd, rel=0.005)
    assert statistics.detectable_text(d) == "1.85"
    # Enough searches but all alike: what is missing is a spread, and the text says so.
    same = statistics.search_difference(dict(enumerate([0.72] * 6)), dict(enumerate([0.7] * 6)))
    assert statistics.detectable_text(same) == "not estimable (no spread)"
    # At 3 units (2 degrees of freedom) the textbook approximation is 5% short: 3.0965 sd
    # against 3.2640 (again confirmed by simulation).
    assert statistics.minimum_detectable_effect(1.0, 3) == pytest.approx(3.26404, rel=1e-5)
    # At α = 0.025 (Holm's first step over two primary contrasts) 8 units detect 1.33917 sd
    # (scipy.stats.nct's power; 400,000 simulated studies rejected 80.0% of the time).
    assert statistics.minimum_detectable_effect(1.0, 8, 0.025) == pytest.approx(1.33917,
                                                                             rel=1e-5)


def test_holm_adjustment_against_hand_computed_numbers():
    # Sorted: 0.01 · 3 = 0.03; 0.03 · 2 = 0.06; 0.04 · 1 = 0.04, raised to 0.06 (step-down
    # monotone).
    adjusted = statistics.holm([0.04, 0.01, 0.03])
    assert adjusted == pytest.approx([0.06, 0.03, 0.06])
    # A named contrast that could not be tested (NaN) stays in the family of 4: 0.01 · 4 =
    # 0.04; 0.03 · 3 = 0.09; 0.04 · 2 = 0.08, raised to 0.09.
    adjusted = statistics.holm([0.04, 0.01, math.nan, 0.03])
    assert adjusted[1] == pytest.approx(0.04) and adjusted[3] == pytest.approx(0.09)
    assert adjusted[0] == pytest.approx(0.09) and math.isnan(adjusted[2])
    assert statistics.holm([0.2]) == [0.2]  # a family of one: p_holm = p
    assert statistics.holm([0.6, 0.5]) == [1.0, 1.0]  # capped at 1


def test_table2_says_when_no_level_was_picked(tmp_path, analysis):
    """A grid that transferred one pruned level has nothing to pick: Table 2 says so and
    has no copy picked by test; a grid with several levels keeps both."""
    md = report.analyze([make_pairs_grid(str(tmp_path / "grid"))],
                        overlap=False).files["table2.md"].decode()
    assert "Here every pruned cell had one candidate level (2): no level was picked" in md
    assert "Picked by test" not in md and "favours the pruned cells;" not in md
    several = analysis["table2.md"].decode()
    assert "## Picked by test (optimistic)" in several and "no level was picked" not in several


def test_the_primary_result_named_by_the_grid(tmp_path):
    root = make_pairs_grid(str(tmp_path / "grid"))
    result = report.analyze([root], overlap=False)
    rows = {r["contrast"]: r for r in result.tables["primary"]}
    main = rows["ticket − scratch"]
    assert main["primary"] and main["family"] == "primary" and main["level"] == 2
    assert (main["unit"], main["searches"], main["n"], main["transfer_seeds"]) == (
        "search", 4, 12, "3")
    assert main["pairs"].split()[:4] == ["0/0", "0/1", "0/2", "1/0"]
    assert main["mean"] == pytest.approx(0.025)
    assert (main["ci_low"], main["ci_high"]) == pytest.approx((-0.0081240, 0.0581240), abs=1e-7)
    assert main["icc"] == pytest.approx(0.8) and main["design_effect"] == pytest.approx(2.6)
    assert np.isnan(main["mde"]) and main["p_holm"] == main["p"]  # one target: p_holm = p
    assert (main["noisy_a"], main["noisy_b"]) == (0, 1)  # scratch 1/2 stopped on noise
    assert rows["ticket − dense θ_k"]["mean"] == pytest.approx(0.035)
    assert rows["dense θ_k − scratch"]["mean"] == pytest.approx(-0.01)
    assert rows["dense θ_k − scratch"]["sd"] == pytest.approx(0, abs=1e-12)
    # The reinit has transfer seed 0 only: one pair per search, 0.02 · (s + 1) below.
    reinit = rows["ticket − reinit"]
    assert (reinit["searches"], reinit["n"], reinit["transfer_seeds"]) == (4, 4, "1")
    assert reinit["mean"] == pytest.approx(0.05) and reinit["family"] == "exploratory"
    assert "ticket − random mask" not in rows  # random pruning did not run: no row
    # Exploratory: one Holm family of the three other rows with a p.
    exploratory = [r for r in result.tables["primary"] if r["family"] == "exploratory"]
    ps = [r["p"] for r in exploratory]
    assert [r["p_holm"] for r in exploratory] == pytest.approx(statistics.holm(ps), nan_ok=True)
    # Without the reinit runs its row is absent (no search), not a member of the family: the
    # other two are adjusted as a family of 2, not 3.
    import shutil
    for name in os.listdir(os.path.join(root, "transfer")):
        if name.startswith("reinit-"):
            shutil.rmtree(os.path.join(root, "transfer", name))
    rows = {r["contrast"]: r for r in report.analyze([root], overlap=False).tables["primary"]}
    assert rows["ticket − reinit"]["searches"] == 0 and math.isnan(rows["ticket − reinit"]["p_holm"])
    two = [rows["ticket − dense θ_k"]["p"], rows["dense θ_k − scratch"]["p"]]
    assert [rows["ticket − dense θ_k"]["p_holm"], rows["dense θ_k − scratch"]["p_holm"]] == \
        pytest.approx(statistics.holm(two), nan_ok=True)

    md = result.files["table2.md"].decode()
    assert md.startswith("# Primary result: ticket − scratch at level 2, named in advance")
    line = next(x for x in md.splitlines() if "(primary)" in x)
    assert "| 4 × 3 | +2.50 | [−0.81, +5.81] |".replace("−", "-") in line
    assert "| not estimable (n = 4) | 0.80 (2.60) |" in line
    assert "no difference detected; what it could detect is not estimable (n = 4)" in line
    assert "Per search (tickets seed: mean over its transfer seeds) of histo, cifar10 " \
           "tickets: 0: +2.00, 1: +5.00, 2: +0.00, 3: +3.00." in md
    reinit_line = next(x for x in md.splitlines() if "| ticket − reinit |" in x)
    assert reinit_line.endswith("| exploratory |")
    assert "# Table 2 (secondary)" in md
    assert result.files["primary.csv"].decode().splitlines()[0].startswith("target,tickets,")
    assert "Named before the grid ran (grid.json: " in md
    # Given again at analysis, the same level: still the one named in advance.
    again = report.analyze([root], overlap=False, primary_level=2)
    assert again.files["primary.csv"] == report.analyze([root], overlap=False).files[
        "primary.csv"]
    assert "and given again at analysis (--primary_level=2)" in again.files["primary.md"].decode()
    # Another level given at analysis, against the grid's: no primary contrast, no verdict.
    other = report.analyze([root], overlap=False, primary_level=1)
    text = other.files["primary.md"].decode()
    assert text.startswith("# Ticket − scratch at level 1: not the level named in advance, "
                           "exploratory")
    assert "named level 2 before they ran" in text and "--primary_level=1" in text
    assert not any(r["primary"] for r in other.tables["primary"])
    assert "absent: no search has both sides" in text
    # A level given where no grid names one is taken, and said to rest on the caller's word.
    os.remove(os.path.join(root, "grid.json"))
    bare = report.analyze([root], overlap=False, primary_level=2)
    text = bare.files["primary.md"].decode()
    assert text.startswith("# Primary result: ticket − scratch at level 2, named at analysis")
    assert "Given at analysis (--primary_level=2): no grid record" in text
    assert [r["contrast"] for r in bare.tables["primary"] if r["primary"]] == ["ticket − scratch"]


def test_a_detected_primary_difference_gets_its_verdict_after_holm(tmp_path):
    root = make_pairs_grid(str(tmp_path / "grid"))
    # A second target where the ticket is 0.05 ahead in every pair but for noise: two
    # primary contrasts, one Holm family of two. It has a fifth search, so that what it could
    # detect is estimable.
    tickets = {s: os.path.join(root, "tickets", f"cifar10-frac1-seed{s}") for s in SEARCHES}
    tickets[4] = make_tickets(root, "cifar10", 4, [(0.5, 0.5)] * 3, rounds=2)
    for s in tickets:
        for t in TRANSFER_SEEDS:
            make_transfer(root, "other", "scratch", t, [(0.6, 0.6)], tickets[s], levels=[0],
                          name=f"o-scratch-{s}-{t}")
            make_transfer(root, "other", "rewind", t, [(0.6, 0.6), (0.7, 0.65 + 0.001 * s)],
                          tickets[s], levels=[0, 2], name=f"o-rewind-{s}-{t}")
    rows = report.analyze([root], overlap=False).tables["primary"]
    primaries = [r for r in rows if r["primary"]]
    assert len(primaries) == 2
    assert [r["p_holm"] for r in primaries] == pytest.approx(
        statistics.holm([r["p"] for r in primaries]))
    other = next(r for r in primaries if r["target"] == "other")
    assert other["p_holm"] < 0.05 and other["p_holm"] == pytest.approx(2 * other["p"])
    # What each could detect is at the level its verdict needs, α / 2; exploratory rows at α.
    assert [r["mde_alpha"] for r in rows] == [0.025 if r["primary"] else 0.05 for r in rows]
    assert other["searches"] == 5 and other["mde"] == pytest.approx(
        statistics.minimum_detectable_effect(other["sd"], 5, 0.025))
    assert other["mde"] > statistics.minimum_detectable_effect(other["sd"], 5) * 1.1
    md = report.analyze([root], overlap=False).files["primary.md"].decode()
    assert "detected (p_holm < 0.05): ticket is better" in md


def test_the_named_domain_contrast_and_the_target_ticket_row(tmp_path):
    """(natural ticket − target ticket) on one target minus the same on another, per search,
    from the grid's record; and the ticket − target ticket rows it is made of."""
    root = str(tmp_path / "grid")
    nat = {s: make_tickets(root, "cifar10", s, [(0.5, 0.5)] * 3) for s in (0, 1, 2)}
    # natural ticket - target ticket, by search: art 0.05, 0.06, 0.07; histo -0.03, 0, 0.
    gaps = {"art": [0.05, 0.06, 0.07], "histo": [-0.03, 0.0, 0.0]}
    for target, gap in gaps.items():
        for s in (0, 1, 2):
            own = make_tickets(root, target, s, [(0.5, 0.5)] * 3)
            make_transfer(root, target, "scratch", 0, [(0.6, 0.6)], nat[s], levels=[0],
                          name=f"{target}-scratch-{s}")
            make_transfer(root, target, "rewind", 0, [(0.6, 0.6), (0.7, 0.6 + gap[s])], nat[s],
                          levels=[0, 2], name=f"{target}-rewind-{s}")
            make_transfer(root, target, "rewind", 0, [(0.6, 0.6), (0.7, 0.6)], own,
                          levels=[0, 2], name=f"{target}-own-{s}")
            if target == "art":  # a second transfer seed on art only, its gap 0.04 wider
                make_transfer(root, target, "rewind", 1, [(0.6, 0.6), (0.7, 0.64 + gap[s])],
                              nat[s], levels=[0, 2], name=f"{target}-rewind-{s}-t1")
                make_transfer(root, target, "rewind", 1, [(0.6, 0.6), (0.7, 0.6)], own,
                              levels=[0, 2], name=f"{target}-own-{s}-t1")
    for s in (0, 1, 2):  # histo under another recipe too: art has no view to pair it with
        own = os.path.join(root, "tickets", f"histo-frac1-seed{s}")
        for name, tickets, acc in (("rewind", nat[s], 0.9), ("own", own, 0.5)):
            make_transfer(root, "histo", "rewind", 0, [(0.6, 0.6), (0.7, acc)], tickets,
                          levels=[0, 2], recipe=["--momentum=0.5"], name=f"lr-{name}-{s}")
    artifacts.write_json(os.path.join(root, "grid.json"), {
        "kind": "grid", "primary_level": 2, "natural_sources": ["cifar10"],
        "domain_contrast": ["art", "histo"]})
    rows = report.analyze([root], overlap=False).tables["primary"]
    by = {(r["target"], r["contrast"]): r for r in rows}
    # Art: per search the mean of its two seeds' gaps, 0.07, 0.08, 0.09.
    assert by[("art", "ticket − target ticket")]["mean"] == pytest.approx(0.08)
    histo = [r for r in rows if r["target"].startswith("histo")
             and r["contrast"] == "ticket − target ticket"]
    assert sorted(r["mean"] for r in histo) == pytest.approx([-0.01, 0.4])
    domains = [r for r in rows if r["target"] == "art vs histo"]
    assert len(domains) == 1  # the momentum=0.5 view of histo is not paired with art's
    domain = domains[0]
    # Per search, art's mean gap (over its 2 seeds) minus histo's (its one seed): 0.10,
    # 0.08, 0.09: mean 0.09, sd 0.01, ± t(0.975, 2) · 0.01 / sqrt(3) = 0.024841. Seed t of
    # art is not paired with seed t of histo: each search gives one value.
    assert domain["searches"] == 3 and domain["mean"] == pytest.approx(0.09)
    assert domain["sd"] == pytest.approx(0.01) and domain["family"] == "exploratory"
    assert (domain["ci_low"], domain["ci_high"]) == pytest.approx((0.065159, 0.114841), abs=1e-6)
    assert domain["transfer_seeds"] == "—" and domain["n"] == 3
    assert domain["pairs"] == "0 1 2"
    # The target's own fine-tuned tickets are not a natural line: no primary of their own.
    assert {r["tickets"] for r in rows if r["primary"]} == {"cifar10"}


def test_tickets_seeds_fine_tuned_with_the_same_transfer_seeds_are_distinct_replicates(tmp_path):
    root = make_pairs_grid(str(tmp_path / "grid"), primary_level=None)
    result = report.analyze([root], overlap=False)
    assert "primary.md" not in result.files and "Primary" not in result.table2_markdown
    levels = list(csv.DictReader(io.StringIO(result.files["levels.csv"].decode())))
    rewind2 = [(r["tickets_seed"], r["seed"]) for r in levels
               if r["role"] == "source" and r["level"] == "2"]
    assert sorted(rewind2) == [(str(s), str(t)) for s in SEARCHES for t in TRANSFER_SEEDS]
    table2 = _csv_rows(result.files["table2.csv"])[("histo", "cifar10")]
    # Table 2's unit is the search too: 4, each the mean of its 3 transfer seeds.
    assert table2["n"] == "4" and table2["paired_n"] == "4" and table2["noisy_stops"] == "0"
    assert table2["noisy_stops_recorded"] == "12"
    scratch_by_search = [np.mean([0.70 + 0.01 * t - 0.02 * s for t in TRANSFER_SEEDS])
                         for s in SEARCHES]
    assert float(table2["scratch_test_accuracy_std"]) == pytest.approx(
        np.std(scratch_by_search, ddof=1))


def test_a_root_with_two_recipes_is_split_by_recipe(tmp_path):
    """Scratch and ticket of one recipe are never compared with another recipe's: each
    recipe is its own view (its own Table 2 row, Fig. 3 panel and primary rows), named by
    what differs."""
    root = make_pairs_grid(str(tmp_path / "grid"), recipe=["--precise_bn=20"])
    plain = str(tmp_path / "grid" / "plain")
    tickets = os.path.join(root, "tickets", "cifar10-frac1-seed0")
    make_transfer(plain, "histo", "scratch", 0, [(0.6, 0.9)], tickets, levels=[0])
    result = report.analyze([root], overlap=False)
    rows = {(r["target"], r["contrast"]): r for r in result.tables["primary"]}
    # The precise-BN ticket is compared with the precise-BN scratch only (0.9 elsewhere).
    main = rows[("histo (precise_bn=20)", "ticket − scratch")]
    assert main["mean"] == pytest.approx(0.025) and main["searches"] == 4
    # The other recipe's view has a scratch line and no ticket: no contrast of its own.
    assert {target for target, _ in rows} == {"histo (precise_bn=20)"}
    table2 = {r["target"] for r in result.tables["table2"]}
    assert table2 == {"histo (precise_bn=20)", "histo (precise_bn=0)"}


def test_random_pruning_is_a_line_a_row_and_a_contrast(tmp_path):
    root = make_pairs_grid(str(tmp_path / "grid"))
    tickets = {s: os.path.join(root, "tickets", f"cifar10-frac1-seed{s}") for s in SEARCHES}
    for s in SEARCHES:
        scratch, d = 0.70 - 0.02 * s, DIFFERENCES[s][0]
        # The random mask of level 2 from θ_k (transfer seed 0): 0.03 below the ticket.
        make_transfer(root, "histo", "random", 0, [(0.6, scratch + d - 0.03)], tickets[s],
                      levels=[2], name=f"random-{s}-0")
    make_transfer(root, "histo", "random_reinit", 0, [(0.6, 0.5)], tickets[0], levels=[2],
                  name="random-reinit-0-0")
    result = report.analyze([root], overlap=False)
    rows = {r["contrast"]: r for r in result.tables["primary"]}
    random = rows["ticket − random mask"]
    assert (random["searches"], random["n"]) == (4, 4)
    assert random["mean"] == pytest.approx(0.03) and random["family"] == "exploratory"
    assert rows["ticket − scratch"]["mean"] == pytest.approx(0.025)  # the primary stands
    table2 = {r["column"] for r in result.tables["table2"]}
    assert {"random mask (cifar10 tickets)",
            "random mask, fresh weights (cifar10 tickets)"} <= table2
    legend = [t.get_text() for ax in result.figures["fig3"].axes
              if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any(text.startswith("random mask (cifar10 tickets)") for text in legend)


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
    """tools/controls.py on a grid's layout with transfer seeds: per-replicate rows, the
    ticket's (rewind transfer's) lead over each control, and per range the mean over
    searches of each search's mean difference over its transfer seeds."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import controls

    grid = str(tmp_path / "grid")
    # Test accuracy of levels 0-2 by (search, transfer seed).
    ticket = {(0, 0): [0.80, 0.82, 0.84], (0, 1): [0.80, 0.84, 0.84],
              (1, 0): [0.70, 0.74, 0.78], (1, 1): [0.70, 0.72, 0.78]}
    random = {(0, 0): [0.80, 0.80, 0.81], (0, 1): [0.80, 0.80, 0.81],
              (1, 0): [0.70, 0.73, 0.74], (1, 1): [0.70, 0.71, 0.74]}
    for seed in (0, 1):
        made = make_tickets(grid, "fashion_mnist", seed, [(0.5, 0.5)] * 3)
        path = os.path.join(grid, "tickets", f"fashion_mnist-seed{seed}")
        os.rename(made, path)
        for t in (0, 1):
            for condition, values in (("rewind", ticket), ("random", random)):
                make_transfer(grid, "fashion_mnist", condition, t,
                              [(a, a) for a in values[(seed, t)]], path,
                              name=f"fashion_mnist/fashion_mnist-{condition}-seed{seed}-t{t}")
            make_transfer(grid, "fashion_mnist", "reinit", t, [(0.5, 0.5)] * 2, path,
                          name=f"fashion_mnist/fashion_mnist-reinit-seed{seed}-t{t}")  # no L2
    data = controls.read(grid, "fashion_mnist", "fashion_mnist", "rewind",
                         ["random", "reinit"], [0, 1], transfer_seeds=[0, 1])
    # Replicate means over levels 1-2: 0/0 (2 + 3) / 2 = 2.5, 0/1 (4 + 3) / 2 = 3.5 (search 0:
    # 3.0); 1/0 (1 + 4) / 2 = 2.5, 1/1 (1 + 4) / 2 = 2.5 (search 1: 2.5).
    d = controls.contrast(data, "rewind", "random", [1, 2])
    assert (d.n, len(d.pairs)) == (2, 4) and d.mean == pytest.approx(2.75)
    assert d.search_means == pytest.approx({0: 3.0, 1: 2.5})
    assert controls.contrast(data, "rewind", "reinit", [1, 2]) is None  # reinit lacks level 2
    controls.main([f"--grid={grid}", "--target=fashion_mnist", "--controls=random,reinit",
                   "--transfer_seeds=0,1", "--ranges=1-2,1"])
    out = capsys.readouterr().out
    assert "## Tickets seed 0, transfer seed 1" in out
    assert "| 2 | 0.6400 | 84.00 | 81.00 | — | +3.00 | — |" in out
    assert "| rewind − random | +3.00, +2.50 | +2.75 |" in out
    assert "| not estimable (n = 2) |" in out
    assert "| rewind − reinit | — (a replicate lacks a level) |" in out
    # One Holm family over both ranges' contrasts that ran: rewind − random over 1-2, and
    # over level 1 alone (reinit has level 1: rewind − reinit and random − reinit there),
    # recomputed with lth_keras's own t-test p-values, Holm by hand.
    ps = [controls.contrast(data, a, b, levels).p for levels, a, b in
          (([1, 2], "rewind", "random"), ([1], "rewind", "random"),
           ([1], "rewind", "reinit"), ([1], "random", "reinit"))]
    order = sorted(range(4), key=lambda i: ps[i])
    running, holm_by_hand = 0.0, {}
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * ps[i]))
        holm_by_hand[i] = running
    first = next(line for line in out.splitlines() if line.startswith("| rewind − random"))
    assert f"| {ps[0]:.3f} | {holm_by_hand[0]:.3f} |" in first
    assert "p_holm is Holm-adjusted over the 4 contrast(s) above" in out
    assert "n = 2 ticket searches, 2 transfer seeds each" in out


def test_the_records_copied_for_git_recompute_the_same_tables(tmp_path):
    """tools/reference_records.py keeps what the analysis reads and nothing heavy: the
    primary result and Table 2 recomputed from the copy are the originals."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import reference_records

    root = make_pairs_grid(str(tmp_path / "grid"))
    copy = str(tmp_path / "copy")
    assert reference_records.copy_records(root, copy) > 0
    assert reference_records.copy_records(root, copy) == 0  # nothing changed since
    kept = {os.path.relpath(os.path.join(d, f), copy) for d, _, fs in os.walk(copy) for f in fs}
    assert not any(name.endswith(".npz") for name in kept) and "grid.json" in kept
    original = report.analyze([root], overlap=False)
    again = report.analyze([copy], overlap=False)
    for name in ("primary.csv", "table2.csv", "levels.csv"):
        assert again.files[name] == original.files[name]


def test_the_records_copied_for_git_leave_out_a_run_not_finished(tmp_path):
    """A copy taken while a grid runs holds the runs that hold every level their record
    chose, their logs and the grid's records, and nothing of a run still going (its lock
    held) or cut short (a level missing)."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import reference_records
    from lth_keras.lottery.directory import locked

    root = make_pairs_grid(str(tmp_path / "grid"))
    runs = sorted(f"{kind}/{name}" for kind in ("tickets", "transfer")
                  for name in os.listdir(os.path.join(root, kind)))
    going, cut_short = "transfer/rewind-3-2", "transfer/rewind-2-1"
    assert {going, cut_short} <= set(runs) and len(runs) > 10
    os.remove(os.path.join(root, cut_short, "levels", "level_02", "metrics.json"))
    os.makedirs(os.path.join(root, "logs"))
    for run in runs:
        with open(os.path.join(root, "logs", run.replace("/", "__") + ".log"), "w") as f:
            f.write("I2026-12-07 16:13:42,951 a line\n")
    copy = str(tmp_path / "copy")
    with locked(os.path.join(root, going)):
        reference_records.copy_records(root + os.sep, copy)  # a trailing slash is the same
    copied = {os.path.relpath(os.path.join(d, f), copy) for d, _, fs in os.walk(copy) for f in fs}
    for run in runs:
        ran = run not in (going, cut_short)
        assert (os.path.join(run, "config.json") in copied) == ran, run
        assert (os.path.join("logs", run.replace("/", "__") + ".log") in copied) == ran, run
    assert "grid.json" in copied
    # Once it has finished (its lock released), the next copy adds it.
    reference_records.copy_records(root, copy)
    assert os.path.exists(os.path.join(copy, going, "config.json"))


def test_the_sources_table_shows_how_well_each_search_learnt_its_natural_source(tmp_path):
    root = str(tmp_path)
    make_tickets(root, "cifar10", 1, [(0.62, 0.60), (0.66, 0.64), (0.58, 0.57)])
    make_tickets(root, "cifar10", 0, [(0.71, 0.70), (0.72, 0.69)], in_progress=2)
    make_tickets(root, "histo", 0, [(0.9, 0.9)])  # a target's own tickets: not a source
    # A stability grid's search rewound to epoch 0: another recipe, named as such.
    make_tickets(root, "cifar10", 0, [(0.40, 0.41)], rewind_epoch=0)
    out = report.analyze([root], overlap=False)
    table = out.tables["sources"]
    assert [(r["source"], r["recipe"], r["tickets_seed"], r["last_level"]) for r in table] == \
        [("cifar10", "rewind_epoch=0", 0, 0), ("cifar10", "rewind_epoch=1", 0, 1),
         ("cifar10", "rewind_epoch=1", 1, 2)]
    text = out.files["sources.md"].decode()
    assert "| cifar10 | lenet_300_100 16 px, 1 of train; rewind_epoch=1 | 1 | 62.00 | 60.00 | " \
           "2 (0.640) | 58.00 | 57.00 |" in text
    assert "cifar10 (rewind_epoch=1): the lowest level-0 validation accuracy of 2 search(es) " \
           "is 62.00 (tickets seed 1)." in text
    assert "cifar10 (rewind_epoch=0): the lowest level-0 validation accuracy of 1 search(es) " \
           "is 40.00 (tickets seed 0)." in text
    rows = list(csv.DictReader(io.StringIO(out.files["sources.csv"].decode())))
    assert [float(r["level0_val_accuracy"]) for r in rows] == [0.40, 0.71, 0.62]


def test_transfers_with_another_head_rule_are_refused_not_compared(tmp_path):
    """A scratch baseline whose head was drawn by another rule would carry the head's effect
    into every contrast: the analysis names it in one line instead of picking a baseline."""
    root = make_pairs_grid(str(tmp_path / "grid"))
    tickets = os.path.join(root, "tickets", "cifar10-frac1-seed0")
    other = make_transfer(root, "histo", "scratch", 0, [(0.6, 0.5)], tickets, levels=[0],
                          name="scratch-other-head")
    config = os.path.join(other, "config.json")
    record = artifacts.read_json(config)
    record["hparams"]["head"] = "an earlier rule"
    artifacts.write_json(config, record)
    with pytest.raises(collect.AnalysisError, match="transfers with different head rules"):
        report.analyze([root], overlap=False)


def test_grids_naming_different_primary_levels_need_the_level_and_take_it(tmp_path):
    root = make_pairs_grid(str(tmp_path / "grid"))  # names level 2
    other = tmp_path / "other"
    artifacts.write_json(str(other / "grid.json"), {"kind": "grid", "primary_level": 1})
    with pytest.raises(collect.AnalysisError, match="different primary levels"):
        report.analyze([root, str(other)], overlap=False)
    # Named by the caller, the level is computed; but grids that disagree did not all name
    # it in advance: it is exploratory, with no verdict.
    result = report.analyze([root, str(other)], overlap=False, primary_level=2)
    rows = {r["contrast"]: r for r in result.tables["primary"]}
    assert rows["ticket − scratch"]["mean"] == pytest.approx(0.025)
    assert not rows["ticket − scratch"]["primary"]
    assert "named level 1, 2 before they ran" in result.files["primary.md"].decode()
