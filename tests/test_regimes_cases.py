"""The regime rule's case studies on synthetic cells whose answers are known by construction."""

import pytest

from prunescope.errors import UsageError
from prunescope.regimes import cases


def cell(t, d, *, error, test_error=None, mc=0.0, cka=0.99, std=0.0, dense_error=0.1):
    test_error = error if test_error is None else test_error
    return {"temperature": t, "density": d, "error": error, "error_std": std, "test_error": test_error,
            "test_error_std": std, "mc": mc, "cka_outputs": cka, "cka_features": cka, "dense_error": dense_error,
            "dense_test_error": dense_error}


def summary(cells):
    return {"cells": cells, "densities": sorted({c["density"] for c in cells})}


# One density, temperatures 1..4: a barrier at T=1 (regime I: raise), II-A at T=4 (lower).
COLUMN = [cell(1, 0.1, error=0.30, mc=-0.2, std=0.01), cell(2, 0.1, error=0.20, std=0.01),
          cell(3, 0.1, error=0.205, std=0.01), cell(4, 0.1, error=0.40, cka=0.5, std=0.01)]


def test_differs_calls_a_tie_within_the_larger_spread():
    assert cases.differs(0.10, 0.01, 0.12, 0.005) == -1
    assert cases.differs(0.12, 0.005, 0.10, 0.01) == 1
    assert cases.differs(0.10, 0.03, 0.12, 0.0) == 0  # 2 points apart, one spread is 3 points
    assert cases.differs(0.10, 0.0, 0.10, 0.0) == 0


def test_direction_counts_right_wrong_and_tie_by_the_spread_rule():
    scored = cases.direction(COLUMN, epsilon=0.05, delta=0.9)
    # T=1 raise to T=2: 30% -> 20%, right. T=4 lower to T=3: 40% -> 20.5%, right. T=2, T=3: II-B, no step.
    assert (scored["right"], scored["wrong"], scored["tie"], scored["total"]) == (2, 0, 0, 2)
    # The same cells with the neighbour's error made worse: the step at T=1 becomes wrong.
    worse = [dict(COLUMN[0]), dict(COLUMN[1], test_error=0.35), COLUMN[2], COLUMN[3]]
    assert cases.direction(worse, 0.05, 0.9)["wrong"] == 1
    # A spread wider than the difference makes it a tie.
    noisy = [dict(c, test_error_std=0.5) for c in COLUMN]
    assert cases.direction(noisy, 0.05, 0.9)["tie"] == 2
    # A barrier smaller than epsilon is no barrier: T=1 is then II-B and advises nothing.
    assert cases.direction(COLUMN, epsilon=0.3, delta=0.9)["total"] == 1


def test_direction_is_scored_on_the_metric_it_is_given():
    # Val says the step from T=1 is right, test says wrong: each is read from its own column.
    column = [dict(COLUMN[0], error=0.30, test_error=0.10), dict(COLUMN[1], error=0.20, test_error=0.30)]
    assert cases.direction(column, 0.05, 0.9, "error")["right"] == 1
    assert cases.direction(column, 0.05, 0.9, "test_error")["wrong"] == 1


def test_walks_compare_the_rule_with_staying_put():
    scored = cases.walks(COLUMN, 0.05, 0.9)
    by_start = {w["start"]: w for w in scored["walks"]}
    assert by_start[1]["chosen"] == 2 and by_start[1]["against_staying"] == -1
    assert by_start[4]["chosen"] == 3 and by_start[4]["within_spread"]  # 20.5% is within 1 point of 20%
    assert by_start[2]["chosen"] == 2 and by_start[2]["against_staying"] == 0
    assert scored["better_than_staying"] == 2 and scored["worse_than_staying"] == 0
    assert scored["stay_within_spread"] == 2  # starting at 2 or 3


def test_calibrate_finds_boundaries_that_make_the_rule_right_on_val():
    # Every cell connected and similar under the default boundaries: the rule gives no advice.
    # The barrier at T=1 (-0.2) and the low CKA at T=4 (0.5) are the only splits that score.
    chosen = cases.calibrate(COLUMN, metric="error")
    assert chosen["score"] == 2
    assert 0 <= chosen["epsilon"] < 0.2
    assert 0.5 < chosen["delta"] <= 0.99
    # On errors where raising T from 1 hurts, the barrier is best not called one.
    hurts = [dict(COLUMN[0], error=0.1), *COLUMN[1:]]
    assert cases.calibrate(hurts, metric="error")["epsilon"] >= 0.2


def test_combine_takes_the_spread_across_replicates():
    a = summary([cell(1, 0.1, error=0.2, test_error=0.20, mc=-0.1, std=0.05)])
    b = summary([cell(1, 0.1, error=0.4, test_error=0.30, mc=0.1, std=0.05)])
    (combined,) = cases.combine([a, b])
    assert combined["test_error"] == pytest.approx(0.25)
    assert combined["test_error_std"] == pytest.approx(0.0707107, rel=1e-5)  # sd of 0.2 and 0.3, not the seeds'
    assert combined["mc"] == pytest.approx(0.0)
    (alone,) = cases.combine([a])
    assert alone["test_error_std"] == 0.05  # one replicate: its recovery seeds' sd
    with pytest.raises(UsageError, match="different grids"):
        cases.combine([a, summary([cell(2, 0.1, error=0.2)])])


def test_selection_scores_the_rule_against_random_and_the_best_dense_model():
    # Two replicates of a family of three: the rule picks the connected, most similar member (T=3),
    # the best dense model is T=1 (lowest dense error), whose pruned error is the worst.
    def family(shift):
        return summary([cell(1, 0.1, error=0, test_error=0.40 + shift, mc=-0.3, dense_error=0.05),
                        cell(2, 0.1, error=0, test_error=0.30 + shift, cka=0.8, dense_error=0.10),
                        cell(3, 0.1, error=0, test_error=0.20 + shift, cka=0.95, dense_error=0.20)])

    (row,) = cases.selection([family(0.0), family(0.01)], epsilon=0.05, delta=0.9)
    assert [p["rule"] for p in row["picks"]] == [3, 3]
    assert [p["best_dense"] for p in row["picks"]] == [1, 1]
    assert row["rule"] == pytest.approx(0.205) and row["random"] == pytest.approx(0.305)
    assert row["best_dense"] == pytest.approx(0.405) and row["best"] == pytest.approx(0.205)
    assert row["rule_vs_random"] == -1 and row["rule_vs_best_dense"] == -1


def test_tuning_counts_the_cells_the_walk_measures_against_the_grid():
    scored = {r["start"]: r for r in cases.tuning(COLUMN, 0.05, 0.9)}
    assert scored[1]["rule"] == 2 and scored[1]["rule_cells"] == 2  # 1 (I) -> 2 (II-B)
    assert scored[1]["grid"] == 2 and scored[1]["grid_cells"] == 4 and scored[1]["rule_vs_grid"] == 0
    assert scored[4]["rule"] == 3 and scored[4]["rule_vs_grid"] == 0  # within one point of the grid's 20%
    # I next to II-A: the walk stops where the advice turns back, having measured both.
    turned = cases.tuning([COLUMN[0], dict(COLUMN[1], cka=0.5)], 0.05, 0.9)[0]
    assert turned["rule"] == 2 and turned["rule_cells"] == 2


def test_temperature_effect_marks_help_and_harm_beyond_the_spread():
    effects = cases.temperature_effect(COLUMN)
    assert [e["effect"] for e in effects] == [-1, 0, 1]  # helps, tie (1 point = the spread), hurts
    assert effects[0]["change"] == pytest.approx(-0.10)


def test_a_transition_is_a_raise_that_helps_at_one_load_and_hurts_at_another():
    # 1 -> 3 helps at d = 0.02 (30% -> 20%), hurts at d = 0.5 (10% -> 15%); 1 -> 2 helps at both.
    grid = [cell(1, 0.02, error=0.30, std=0.01), cell(2, 0.02, error=0.25, std=0.01),
            cell(3, 0.02, error=0.20, std=0.01),
            cell(1, 0.5, error=0.10, std=0.01), cell(2, 0.5, error=0.08, std=0.01), cell(3, 0.5, error=0.15, std=0.01)]
    found = cases.transitions(grid)
    assert {(t["from"], t["to"]) for t in found} == {(1, 3), (2, 3)}
    one_three = next(t for t in found if (t["from"], t["to"]) == (1, 3))
    assert [s["density"] for s in one_three["helps"]] == [0.02] and [s["density"] for s in one_three["hurts"]] == [0.5]
    assert cases.transitions(grid[:3]) == []  # one density: no load to differ at
