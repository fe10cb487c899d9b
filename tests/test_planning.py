"""The study planner: power against published and hand-computed numbers, the cheapest
design, and a plan made from a fabricated pilot grid (tests/test_analyze.py's formats)."""

import math
import os

import pytest
from scipy import stats

from conftest import run_binary
from lth_keras.analysis import planning
from test_analyze import make_pairs_grid, make_tickets, make_transfer


def _nct_power(effect_sd, n, alpha=0.05):
    """The reference: scipy's noncentral t, a different algorithm from ours (which
    integrates over the chi-square of the variance)."""
    df, lam = n - 1, effect_sd * math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(critical, df, lam) + stats.nct.cdf(-critical, df, lam)


def test_power_against_published_numbers():
    # G*Power, one-sample t-test, two-sided α = 0.05, d = 1: power 0.8030962 at n = 10 and
    # 0.7476... below 0.8 at n = 9. Here d = 1 is an effect of 0.02 with σ²_b = 1e-4 and
    # σ²_w = 9e-4 over m = 3 seeds: a search mean's variance 1e-4 + 3e-4 = 4e-4, sd 0.02.
    assert planning.study_power(0.02, 1e-4, 9e-4, 10, 3) == pytest.approx(0.8030962, abs=2e-6)
    assert planning.study_power(0.02, 1e-4, 9e-4, 9, 3) < 0.8
    assert planning.searches_needed(0.02, 1e-4, 9e-4, 3) == 10
    # The same variance from one seed per search with no within-search noise.
    assert planning.study_power(0.02, 4e-4, 0.0, 10, 1) == pytest.approx(0.8030962, abs=2e-6)
    # d = 0.5 at n = 34: 0.8077775 (G*Power 0.8077).
    assert planning.study_power(0.01, 4e-4, 0.0, 34, 1) == pytest.approx(0.8077775, abs=2e-6)


def test_the_cheapest_design_trades_searches_for_seeds():
    # σ²_b = 1e-4, σ²_w = 9e-4, effect 0.02; a search costs 30 s, a seed 2 s. By hand:
    # m = 1: sd of a search mean sqrt(1e-3) = 0.0316, d = 0.632, 22 searches: 22 · 32 = 704;
    # m = 3: d = 1, 10 searches (above): 10 · 36 = 360; m = 7: 7 searches, 7 · 44 = 308,
    # the cheapest up to 8 seeds (m = 8: 7 · 46 = 322; m = 5: 8 · 40 = 320).
    found = planning.designs(0.02, 1e-4, 9e-4, planning.Cost(30, 0, 30), planning.Cost(2, 0, 2))
    by_m = {d.transfer_seeds: d for d in found}
    assert (by_m[1].searches, by_m[1].cost.seconds) == (22, 704)
    assert (by_m[3].searches, by_m[3].cost.seconds) == (10, 360)
    best = planning.cheapest(found)
    assert (best.searches, best.transfer_seeds, best.cost.seconds) == (7, 7, 308)
    for d in found:  # each is the fewest searches with 80% power, by the reference
        sd = math.sqrt(1e-4 + 9e-4 / d.transfer_seeds)
        assert _nct_power(0.02 / sd, d.searches) >= 0.8 > _nct_power(0.02 / sd, d.searches - 1)
    # The effect a design detects: 10 x 3 detects 0.02 at 80.3%, so a little less at 80%.
    assert planning.detectable(1e-4, 9e-4, 10, 3) == pytest.approx(0.019920, abs=1e-6)


def test_a_plan_from_a_pilot_grid(tmp_path):
    # The clustered grid of test_analyze: σ²_b = 4e-4, σ²_w = 1e-4 at level 2; every level
    # recorded 1000 images, 10 s and 3 GFLOP: a search (levels 0-2) 30 s, a seed (the
    # ticket's level 2 and its scratch) 20 s.
    root = make_pairs_grid(str(tmp_path / "pilot"))
    plan = planning.plan_study([root], effect=0.02, design=(8, 2))
    assert plan.level == 2  # the grid's primary level
    assert (plan.search_cost.seconds, plan.seed_cost.seconds) == (30, 20)
    assert (plan.search_cost.images, plan.search_cost.flops) == (3000, 9e9)
    (target,) = plan.targets
    assert target.pilot.components.between == pytest.approx(4e-4)
    best = target.best
    # Little noise within a search: one seed each is cheapest.
    assert best.transfer_seeds == 1
    sd = math.sqrt(4e-4 + 1e-4)
    assert _nct_power(0.02 / sd, best.searches) >= 0.8 > _nct_power(0.02 / sd, best.searches - 1)
    assert best.cost.seconds == best.searches * 50
    given = target.given
    assert (given.searches, given.transfer_seeds) == (8, 2)
    assert given.power == pytest.approx(_nct_power(0.02 / math.sqrt(4e-4 + 0.5e-4), 8), abs=1e-6)
    assert plan.overall == best
    text = planning.markdown(plan)
    assert f"| 1 | {best.searches} **(cheapest)** |" in text
    assert "The design given (`--design`), 8 searches × 2 transfer seeds" in text
    assert "Holm family" not in text  # one target: a family of one, nothing to say


def test_one_study_of_two_targets_pays_both_targets_pairs_per_seed(tmp_path):
    # The pilot grid above on histo, and the same transfers on a second target, art: every
    # level records 10 s, so a seed costs 20 s on each target and 40 s for a study of both;
    # a search (its ticket run to level 2) 30 s either way.
    from test_analyze import DIFFERENCES, SEARCHES, TRANSFER_SEEDS

    root = make_pairs_grid(str(tmp_path / "pilot"))
    for s in SEARCHES:
        tickets = os.path.join(root, "tickets", f"cifar10-frac1-seed{s}")
        for t, d in zip(TRANSFER_SEEDS, DIFFERENCES[s]):
            make_transfer(root, "art", "scratch", t, [(0.6, 0.5)], tickets, levels=[0],
                          name=f"art-scratch-{s}-{t}")
            make_transfer(root, "art", "rewind", t, [(0.6, 0.5), (0.7, 0.5 + d)], tickets,
                          levels=[0, 2], name=f"art-rewind-{s}-{t}")
    plan = planning.plan_study([root], effect=0.02, design=(8, 2))
    assert [p.seed_cost.seconds for p in plan.targets] == [20, 20]
    assert plan.seed_cost.seconds == 40
    for p in plan.targets:  # a target studied alone pays its own pair only
        assert p.best.cost.seconds == p.best.searches * (30 + p.best.transfer_seeds * 20)
        assert p.given.cost.seconds == 8 * (30 + 2 * 20)
    o = plan.overall
    assert o.cost.seconds == o.searches * (30 + o.transfer_seeds * 40)
    # Both targets' primary contrasts are one Holm family of 2: the study plans each at
    # α = 0.025, so it needs more searches than either target alone at 0.05. The targets
    # have the same variances here: by the reference, the fewest n at 0.025 with o's m.
    assert plan.family_alpha == 0.025
    comp = plan.targets[0].pilot.components
    sd = math.sqrt(comp.between + comp.within / o.transfer_seeds)
    assert (_nct_power(0.02 / sd, o.searches, 0.025) >= 0.8
            > _nct_power(0.02 / sd, o.searches - 1, 0.025))
    assert o.searches > max(p.designs[o.transfer_seeds - 1].searches for p in plan.targets)
    # The named design, 8 x 2, in the study of both: what it detects at 0.025, more than alone.
    for p in plan.targets:
        detects = plan.given_detectable[p.target, p.source]
        assert _nct_power(detects / math.sqrt(comp.between + comp.within / 2), 8, 0.025) == \
            pytest.approx(0.8, abs=1e-4)
        assert detects > p.given_detectable
    text = planning.markdown(plan)
    assert "one Holm family of 2: each is planned at α = 0.05 / 2 = 0.025" in text
    assert f"{100 * plan.given_detectable['art', 'cifar10']:.2f} points on art (cifar10 tickets)" \
        in text


def test_a_pilot_that_cannot_feed_the_planner_is_refused(tmp_path):
    root = str(tmp_path / "pilot")
    # Two searches, one transfer seed each: neither variance component can be told apart.
    for s in (0, 1):
        tickets = make_tickets(root, "cifar10", s, [(0.5, 0.5)] * 3)
        make_transfer(root, "histo", "scratch", 0, [(0.6, 0.6)], tickets, levels=[0],
                      name=f"scratch-{s}")
        make_transfer(root, "histo", "rewind", 0, [(0.6, 0.6), (0.7, 0.7)], tickets,
                      levels=[0, 2], name=f"rewind-{s}")
    with pytest.raises(planning.PlanningError, match="needs at least 3 searches with at "
                                                     "least 2 transfer seeds"):
        planning.plan_study([root], level=2)
    # The binary: one line, exit 1, nothing written.
    out = tmp_path / "plan"
    proc = run_binary("lth_keras.plan", f"--runs={root}", "--level=2", f"--output_dir={out}")
    assert proc.returncode == 1 and not out.exists()
    assert proc.stderr.strip().splitlines()[-1].startswith("plan: error: histo: the pilot has 2")
    bad = run_binary("lth_keras.plan", f"--runs={root}", "--design=8", f"--output_dir={out}")
    assert bad.returncode == 1 and "--design must be SEARCHESxSEEDS" in bad.stderr


@pytest.mark.slow
def test_the_plan_binary_writes_its_files(tmp_path):
    root = make_pairs_grid(str(tmp_path / "pilot"))
    out = tmp_path / "plan"
    proc = run_binary("lth_keras.plan", f"--runs={root}", "--effect=2", "--design=8x2",
                      f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["plan.csv", "plan.md"]
    assert "# Study plan: ticket − scratch at level 2" in (out / "plan.md").read_text()


def test_the_pilot_level_rule():
    """tools/pilot_level.py: the candidate with the highest validation accuracy, each target
    weighing the same; a tie goes to the sparser level."""
    import sys

    from conftest import REPO

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import pilot_level

    # Means over targets: 3 -> 0.65, 5 -> 0.67, 7 -> 0.67: a tie, which level 7 takes.
    means = {3: {"a": 0.80, "b": 0.50}, 5: {"a": 0.70, "b": 0.64}, 7: {"a": 0.75, "b": 0.59}}
    level, overall = pilot_level.choose(means)
    assert level == 7 and overall == pytest.approx({3: 0.65, 5: 0.67, 7: 0.67})
    means[5]["b"] = 0.66
    assert pilot_level.choose(means)[0] == 5
    # A level that one target lacks does not compete, however high its mean.
    means[9] = {"a": 0.99}
    level, overall = pilot_level.choose(means)
    assert level == 5 and 9 not in overall
