"""The instability report's rules on hand-made numbers: the barrier inside a path, the
interval over pairs, the monotone "stable from k" and the uncertain cells."""

import math
import os
import sys

import numpy as np
import pytest

from conftest import REPO
from lth_keras.analysis import stability_report as report
from lth_keras.lottery import instability as stability
from lth_keras.lottery.directory import StabilityRecord


def test_barriers_of_a_hand_made_path():
    # Errors along α = 0, 0.25, 0.5, 0.75, 1: 0.10, 0.20, 0.25, 0.30, 0.40. The ends' mean
    # is 0.25, the highest error 0.40 (an end): Frankle's barrier 0.15, all from the ends.
    # Above the line 0.10 + 0.30·α the errors rise by 0.025, 0, -0.025, 0: inside 0.025.
    alphas = np.linspace(0, 1, 5)
    accuracies = [0.90, 0.80, 0.75, 0.70, 0.60]
    points = [{"val": {"accuracy": a}, "test": {"accuracy": a}} for a in accuracies]
    summary = stability.path_summary(alphas, points)
    assert summary["barrier"]["val"] == pytest.approx(0.15)
    assert summary["inside"]["val"] == pytest.approx(0.025)
    assert summary["end_gap"]["val"] == pytest.approx(0.30)
    # A bump in the middle of two equal ends: all three say the same.
    bump = [0.9, 0.85, 0.6, 0.85, 0.9]
    assert stability.error_barrier(bump) == pytest.approx(0.3)
    assert stability.inside_barrier(alphas, bump) == pytest.approx(0.3)


def _pairs(level, k, k_steps, barriers):
    return [{"level": level, "density": 0.5, "k": k, "k_steps": k_steps, "pair": p,
             "val_barrier": b, "val_inside": b / 2, "val_end_gap": 0.0, "test_barrier": b,
             "test_inside": 0.0, "test_end_gap": 0.0} for p, b in enumerate(barriers)]


def test_the_interval_over_pairs():
    # 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t(0.975, 2) = 4.302653: ± 0.0248414.
    (cell,) = report.cells(_pairs(0, "01", 8, [0.01, 0.02, 0.03]), threshold=0.02)
    assert cell["val_barrier"] == pytest.approx(0.02) and cell["pairs"] == 3
    assert (cell["val_barrier_low"], cell["val_barrier_high"]) == pytest.approx(
        (0.02 - 0.0248414, 0.02 + 0.0248414), abs=1e-7)
    assert cell["uncertain"]  # the interval straddles the 2% threshold
    (one,) = report.cells(_pairs(0, "01", 8, [0.01]), threshold=0.02)
    # One pair has no interval: whether it is stable is uncertain, not settled.
    assert math.isnan(one["val_barrier_low"]) and one["uncertain"]


def _record(budget, annealed):
    return StabilityRecord(levels=(3,), rewind_points=("00",), rewind_steps=(0,), pairs=3,
                           budget_steps=budget, steps_per_epoch=126,
                           annealed_at_epochs=tuple(annealed), masks="the ticket run's")


def test_stable_from_is_monotone_and_says_when_it_is_uncertain():
    rows = (_pairs(3, "00", 0, [0.05, 0.06, 0.07]) + _pairs(3, "040it", 40, [0.01, 0.01, 0.01])
            + _pairs(3, "01", 126, [0.03, 0.03, 0.03]) + _pairs(3, "02", 252, [0.005] * 3)
            + _pairs(3, "04", 504, [0.004, 0.006, 0.005]))
    table = report.cells(rows, threshold=0.02)
    # 40it is under 2% but 1 ep above it: the smallest k below at every larger k is 2 ep.
    assert report.stable_from(table, 0.02) == {3: ("02", False, ())}
    never = report.cells(_pairs(1, "00", 0, [0.01] * 3) + _pairs(1, "01", 126, [0.05] * 3), 0.02)
    assert report.stable_from(never, 0.02) == {1: (None, False, ())}
    edge = report.cells(_pairs(2, "00", 0, [0.01, 0.02, 0.035]) + _pairs(2, "01", 126, [0.001] * 3),
                        0.02)
    # Stable from 00 (mean 0.0217 > 0.02: no) -> from 01; the cell before it is uncertain.
    assert report.stable_from(edge, 0.02) == {2: ("01", True, ())}
    text = report.markdown(table, 0.02, "title", _record(1260, [7]))
    assert "- level 3: stable from k = 02" in text
    assert "annealed at epochs 7" in text
    unconverged = report.markdown(table, 0.02, "t", _record(10, []))
    assert "the copies end unconverged" in unconverged


def test_a_barrier_equal_to_the_threshold_is_not_under_it_whatever_the_rounding():
    # 2,000 validation images; errors at the ends and the peak as counts. (100, 140, 100)
    # gives 0.07 - 0.05 = 0.019999999999999907 in floats, (100, 153, 126) gives
    # 0.0765 - 0.0565 = 0.020000000000000018: both are exactly 40 images, 2%, and "under 2%"
    # is false for both.
    for ends, peak in (((100, 100), 140), ((100, 126), 153)):
        barrier = stability.error_barrier(
            [1 - ends[0] / 2000, 1 - peak / 2000, 1 - ends[1] / 2000])
        assert barrier == pytest.approx(0.02) and barrier != 0.02
        table = report.cells(_pairs(4, "02", 252, [barrier] * 3), 0.02)
        assert report.stable_from(table, 0.02) == {4: (None, False, ())}
        assert not table[0]["uncertain"]  # a zero-width interval at the threshold: settled


def test_a_level_missing_a_rewind_point_or_pairs_gets_no_verdict():
    record = StabilityRecord(levels=(7,), rewind_points=("00", "01", "02"),
                             rewind_steps=(0, 126, 252), pairs=3, budget_steps=1260,
                             steps_per_epoch=126, annealed_at_epochs=(7,),
                             masks={"00": "/runs/k0"})
    # k = 01 not evaluated yet: 00 and 02 under the threshold could not make it stable.
    table = report.cells(_pairs(7, "00", 0, [0.01] * 3) + _pairs(7, "02", 252, [0.01] * 3),
                         0.02, expected_pairs=3)
    assert report.stable_from(table, 0.02, record) == {7: (None, True, ("01",))}
    text = report.markdown(table, 0.02, "t", record)
    assert "- level 7: no verdict yet: k = 01 not evaluated" in text
    # Every k there, but one cell with 2 of its 3 pairs: a verdict, marked uncertain.
    table = report.cells(_pairs(7, "00", 0, [0.01] * 3) + _pairs(7, "01", 126, [0.01] * 2)
                         + _pairs(7, "02", 252, [0.01] * 3), 0.02, expected_pairs=3)
    assert [r["uncertain"] for r in table] == [False, True, False]
    assert report.stable_from(table, 0.02, record) == {7: ("00", True, ())}
    # Masks per k where given, and the ticket run's named for the k without one.
    text = report.markdown(table, 0.02, "t", record)
    assert ("Masks: per k, from runs rewound to it where given (k=00: k0, "
            "k=01: the ticket run's, k=02: the ticket run's).") in text


def test_paths_the_record_did_not_choose_are_left_out():
    """A run re-run into its directory with fewer levels, rewind points or pairs keeps the
    earlier paths on disk; the report reads only those its record names."""
    from types import SimpleNamespace

    def path(barrier):
        split = {"val": barrier, "test": barrier}
        return {"density": 0.5, "k_steps": 0, "bn": "none", "barrier": split, "inside": split,
                "end_gap": split, "copies": [{"test": {"accuracy": 0.9}}] * 2}

    paths = {(3, "00", 0): path(0.01), (3, "00", 1): path(0.02), (3, "00", 2): path(0.5),
             (5, "00", 0): path(0.5), (3, "01", 0): path(0.5)}
    record = StabilityRecord(levels=(3,), rewind_points=("00",), rewind_steps=(0,), pairs=2,
                             budget_steps=10, steps_per_epoch=5, annealed_at_epochs=(),
                             masks="the ticket run's")
    run = SimpleNamespace(record=lambda: SimpleNamespace(stability=record),
                          paths=lambda: paths)
    rows = report.pair_rows(run)
    assert [(r["level"], r["k"], r["pair"]) for r in rows] == [(3, "00", 0), (3, "00", 1)]
    assert [r["val_barrier"] for r in rows] == [0.01, 0.02]


def test_path_points_measures_what_a_sparser_path_misses():
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import path_points

    assert path_points.subsets(7) == {7: [0, 1, 2, 3, 4, 5, 6], 4: [0, 2, 4, 6], 3: [0, 3, 6],
                                      2: [0, 6]}
    accuracies = [0.9, 0.7, 0.85, 0.88, 0.88, 0.88, 0.9]  # the peak error at α = 1/6 only
    path = {"level": 1, "k": "1", "pair": 0,
            "points": [{"alpha": i / 6, "val": {"accuracy": a}, "test": {"accuracy": a}}
                       for i, a in enumerate(accuracies)]}
    val = {r["points"]: r for r in path_points.rows(path) if r["split"] == "val"}
    assert val[7]["barrier"] == pytest.approx(0.20) and val[7]["missed"] == pytest.approx(0)
    assert val[4]["barrier"] == pytest.approx(0.05) and val[4]["missed"] == pytest.approx(0.15)
    assert val[3]["missed"] == pytest.approx(0.18) and val[2]["missed"] == pytest.approx(0.20)
    assert val[7]["argmax_alpha"] == pytest.approx(1 / 6)
