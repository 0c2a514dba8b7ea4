import itertools
from dataclasses import replace

import numpy as np
import pytest

from prunescope.curves import Curve, CurvePoint, Curves
from prunescope.errors import UsageError
from prunescope.masks import removed_count
from prunescope.pick import (
    PICKERS,
    BudgetPicker,
    EnsemblePicker,
    KneePicker,
    ThresholdPicker,
    make_allocator,
    predicted_drops,
)
from prunescope.pick.baselines import uniform
from prunescope.targets import Target

DENSE = 0.9
LEVELS = [round(0.1 * i, 1) for i in range(1, 10)]  # 0.1 … 0.9


def _curve(name, values, numel=1000, macs=0, spread=0.0):
    """A curve from {sparsity: value}; ``spread`` widens every point's interval symmetrically."""
    points = [CurvePoint(s, v, v - spread, v + spread, 100) for s, v in values.items()]
    return Curve(name, numel, macs, points)


def _curves(*curves):
    return Curves("accuracy", "magnitude", CurvePoint(0.0, DENSE, DENSE, DENSE, 100), {c.target: c for c in curves})


def _drop_curve(name, drop, numel=1000, macs=0):
    """A curve measured at 0.1 … 0.9 whose drop at s is ``drop(s)``."""
    return _curve(name, {s: DENSE - drop(s) for s in LEVELS}, numel, macs)


# --- threshold ----------------------------------------------------------------------------------


def test_threshold_picks_the_highest_level_within_the_drop():
    curves = _curves(
        _curve("a", {0.1: 0.9, 0.3: 0.899, 0.5: 0.896, 0.7: 0.88, 0.9: 0.6}),
        _curve("b", {0.1: 0.89, 0.5: 0.8}),  # every level too costly: stays dense
    )
    pick = ThresholdPicker(max_drop=0.005).pick(curves)
    assert pick.allocation == {"a": 0.5, "b": 0.0}
    assert pick.predicted_drop == pytest.approx(0.004)
    assert pick.decided_by == {"a": "threshold", "b": "threshold"}


def test_threshold_allows_an_improvement_unless_absolute():
    curves = _curves(_curve("a", {0.5: 0.899, 0.9: 0.93}))  # +3 points at 0.9
    assert ThresholdPicker(0.005).pick(curves).allocation["a"] == 0.9
    assert ThresholdPicker(0.005, absolute=True).pick(curves).allocation["a"] == 0.5
    assert ThresholdPicker(0.005).pick(curves).predicted_drop == pytest.approx(-0.03)


def test_lower_bound_is_more_conservative():
    values = {0.3: 0.9, 0.5: 0.899, 0.7: 0.897, 0.9: 0.85}
    curves = _curves(_curve("a", values, spread=0.003))
    assert ThresholdPicker(0.005).pick(curves).allocation["a"] == 0.7
    # Low ends 0.897, 0.896, 0.894: the pessimistic drop at 0.7 is 0.006.
    assert ThresholdPicker(0.005, use_lower_bound=True).pick(curves).allocation["a"] == 0.5


def test_drops_are_taken_against_the_dense_model_on_the_same_subset():
    # The scan's dense point is on 100 examples; the 0.9 point was re-measured on 1000, where dense is 0.85.
    curve = Curve("a", 1000, 0, [CurvePoint(0.5, 0.897, 0.89, 0.9, 100), CurvePoint(0.9, 0.848, 0.84, 0.85, 1000)])
    dense = CurvePoint(0.0, DENSE, DENSE, DENSE, 100)
    by_n = {100: dense, 1000: replace(dense, value=0.85, n=1000)}
    curves = Curves("accuracy", "magnitude", dense, {"a": curve}, dense_by_n=by_n)
    assert ThresholdPicker(0.005).pick(curves).allocation == {"a": 0.9}
    assert predicted_drops(curves, {"a": 0.9})["a"] == pytest.approx(0.002)
    assert predicted_drops(curves, {"a": 0.7})["a"] == pytest.approx(0.0025)  # halfway between 0.003 and 0.002


def test_sconce_levels_and_absolute_rule():
    picker = ThresholdPicker.sconce()
    levels = picker.levels  # 0.95, 0.90, …, 0.10
    assert len(levels) == 18 and levels[0] == 0.95 and levels[-1] == 0.1
    assert np.allclose(np.diff(levels), -0.05)
    assert picker.max_drop == pytest.approx(0.004)  # degradation 1.2 points / 3
    curves = _curves(
        # +0.5 points at 0.95 is rejected by |dense - acc| <= 0.4 points; 0.97 is no sconce level.
        _curve("improves", {0.97: 0.9, 0.95: 0.905, 0.9: 0.897, 0.5: 0.9}),
        # The first level from the top that passes wins, even above a failing one.
        _curve("first_from_top", {0.5: 0.899, 0.6: 0.85, 0.7: 0.897, 0.8: 0.8}),
        _curve("hopeless", {0.1: 0.89, 0.5: 0.7}),
    )
    pick = picker.pick(curves)
    assert pick.allocation == {"improves": 0.9, "first_from_top": 0.7, "hopeless": 0.0}
    assert set(pick.decided_by.values()) == {"sconce"}
    assert 0.1 in pick.details["unmeasured_levels"]["improves"]
    assert ThresholdPicker.sconce(degradation=0.03).pick(curves).allocation["improves"] == 0.95


# --- knee ---------------------------------------------------------------------------------------


def test_knee_of_a_curve_flat_to_0_8_then_falling():
    values = dict.fromkeys([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], DENSE) | {0.85: 0.85, 0.9: 0.6, 0.95: 0.3}
    pick = KneePicker().pick(_curves(_curve("a", values)))
    assert pick.allocation["a"] == pytest.approx(0.8)
    assert pick.details["fallback"] == []


def test_knee_falls_back_to_the_threshold_without_a_knee():
    straight = _drop_curve("straight", lambda s: 0.05 * s)  # no knee on a straight line
    flat = _drop_curve("flat", lambda s: 0.0)
    pick = KneePicker(fallback_max_drop=0.012).pick(_curves(straight, flat))
    assert sorted(pick.details["fallback"]) == ["flat", "straight"]
    assert pick.allocation == {"straight": 0.2, "flat": 0.9}  # 0.05 · 0.2 = 0.01 ≤ 0.012 < 0.05 · 0.3


# --- budget -------------------------------------------------------------------------------------


def _mixed_curves(macs=False):
    shapes = [("big", 9001, 2.0, 3), ("mid", 1234, 0.3, 2), ("small", 77, 1.0, 1), ("odd", 4999, 0.05, 2)]
    return _curves(
        *[
            _drop_curve(name, lambda s, k=k, p=p: k * s**p, numel, numel * (7 if macs else 0) + i * numel)
            for i, (name, numel, k, p) in enumerate(shapes)
        ]
    )


def _removed(allocation, curves):
    return sum(removed_count(s, curves.curves[name].numel) for name, s in allocation.items())


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.73, 0.9])
def test_budget_sparsity_is_exact(sparsity):
    curves = _mixed_curves()
    total = sum(c.numel for c in curves.curves.values())
    pick = BudgetPicker(target_sparsity=sparsity).pick(curves)
    assert _removed(pick.allocation, curves) == round(sparsity * total)
    for name, s in pick.allocation.items():  # every sparsity is a whole number of weights
        assert s * curves.curves[name].numel == pytest.approx(removed_count(s, curves.curves[name].numel), abs=1e-6)
    assert pick.predicted_drop == pytest.approx(sum(predicted_drops(curves, pick.allocation).values()))


def test_budget_params_and_macs_stay_within_the_budget():
    curves = _mixed_curves(macs=True)
    total = sum(c.numel for c in curves.curves.values())
    pick = BudgetPicker(target_params=6000).pick(curves)
    assert total - _removed(pick.allocation, curves) == 6000  # drops only grow: no weight removed needlessly

    dense_macs = sum(c.macs for c in curves.curves.values())
    target = dense_macs // 3
    pick = BudgetPicker(target_macs=target).pick(curves)
    remaining = sum(c.macs * (1 - pick.allocation[name]) for name, c in curves.curves.items())
    assert remaining <= target + 1e-6
    assert remaining > target - max(c.macs / c.numel for c in curves.curves.values())  # tight to one weight


def test_budget_finds_the_brute_force_optimum_and_beats_uniform():
    # One large insensitive layer, one small sensitive one, one in between.
    curves = _curves(
        _drop_curve("large", lambda s: max(0.0, s - 0.6) * 0.2, numel=8000),
        _drop_curve("medium", lambda s: 0.05 * s**2, numel=1500),
        _drop_curve("small", lambda s: 0.2 * s, numel=500),
    )
    sparsity = 0.6
    total = 10000
    required = round(sparsity * total)
    pick = BudgetPicker(target_sparsity=sparsity).pick(curves)
    assert _removed(pick.allocation, curves) == required

    grid = [round(0.05 * i, 2) for i in range(19)]  # 0 … 0.9
    brute = min(
        sum(predicted_drops(curves, dict(zip(curves.curves, combo, strict=True))).values())
        for combo in itertools.product(grid, repeat=3)
        if _removed(dict(zip(curves.curves, combo, strict=True)), curves) >= required
    )
    assert pick.predicted_drop <= brute + 1e-9
    assert pick.allocation["large"] > pick.allocation["small"]

    targets = [Target(name, name, "weight", "linear", (c.numel,)) for name, c in curves.curves.items()]
    uniform_drop = sum(predicted_drops(curves, uniform(targets, sparsity)).values())
    assert pick.predicted_drop < uniform_drop - 0.05


def test_budget_handles_a_cliff_then_a_plateau():
    # The hull of "cliff" jumps from 0.4 to 0.9; repairing that overshoot would keep the cliff's
    # 0.1 drop, while stopping before it and taking 0.2 of "linear" costs 0.06.
    curves = _curves(
        _drop_curve("cliff", lambda s: 0.0 if s < 0.45 else 0.1),
        _drop_curve("linear", lambda s: 0.3 * s),
    )
    pick = BudgetPicker(target_sparsity=0.3).pick(curves)
    assert pick.allocation == {"cliff": 0.4, "linear": 0.2}
    assert pick.predicted_drop == pytest.approx(0.06)


def test_budget_handles_a_step_then_a_plateau():
    # "step" costs 0.05 for any pruning, then nothing more: overshooting onto its plateau and
    # giving back the costliest weights (of "cheap") beats adding "steep" weight by weight.
    curves = _curves(
        _drop_curve("step", lambda s: 0.05),
        _drop_curve("steep", lambda s: 0.3 * s),
        _drop_curve("cheap", lambda s: 0.02 * s),
    )
    pick = BudgetPicker(target_sparsity=17 / 30).pick(curves)
    assert pick.allocation == {"step": 0.9, "steep": 0.0, "cheap": 0.8}
    assert pick.predicted_drop == pytest.approx(0.066)


def test_budget_below_its_limit_keeps_improvements():
    curves = _curves(_drop_curve("helps", lambda s: -0.01 * s), _drop_curve("hurts", lambda s: 0.1 * s))
    pick = BudgetPicker(target_params=2000).pick(curves)  # nothing needs to go
    assert pick.allocation == {"helps": 0.9, "hurts": 0.0}
    assert pick.predicted_drop == pytest.approx(-0.009)


def test_budget_above_the_scanned_levels_is_a_usage_error():
    curves = _curves(_curve("a", {0.25: 0.9, 0.5: 0.89}), _curve("b", {0.5: 0.88}))
    with pytest.raises(UsageError, match=r"target sparsity 0.8 is above what the scanned levels allow \(max 0.5\)"):
        BudgetPicker(target_sparsity=0.8).pick(curves)
    with pytest.raises(UsageError, match="target params 100 is below"):
        BudgetPicker(target_params=100).pick(curves)
    assert BudgetPicker(target_sparsity=0.5).pick(curves).allocation == {"a": 0.5, "b": 0.5}


@pytest.mark.parametrize("options", [{}, {"target_sparsity": 0.5, "target_params": 10}])
def test_budget_needs_exactly_one_target(options):
    with pytest.raises(UsageError, match="exactly one of"):
        BudgetPicker(**options)


# --- ensemble and factory -----------------------------------------------------------------------


def _ensemble_curves():
    return _curves(
        _curve("gentle", dict.fromkeys([0.1, 0.3, 0.5], DENSE) | {0.6: 0.897, 0.7: 0.892, 0.8: 0.885, 0.9: 0.8}),
        _curve("late", dict.fromkeys([0.1, 0.3, 0.5], DENSE) | {0.6: 0.899, 0.7: 0.898, 0.8: 0.897, 0.9: 0.896}),
    )


def test_ensemble_min_takes_the_lowest_sparsity_and_names_the_member():
    curves = _ensemble_curves()
    members = [ThresholdPicker(0.005, name="strict"), ThresholdPicker(0.02, name="loose"), KneePicker()]
    alone = {m.name: m.pick(curves).allocation for m in members}
    pick = EnsemblePicker(members).pick(curves)
    for target in curves.curves:
        assert pick.allocation[target] == min(a[target] for a in alone.values())
        assert alone[pick.decided_by[target]][target] == pick.allocation[target]
    assert pick.allocation == {"gentle": 0.6, "late": 0.5}
    assert pick.decided_by == {"gentle": "strict", "late": "knee"}
    assert set(pick.details["members"]) == {"strict", "loose", "knee"}


def test_ensemble_vote_takes_the_median():
    curves = _ensemble_curves()
    members = [ThresholdPicker(0.005, name="strict"), ThresholdPicker(0.02, name="loose"), KneePicker()]
    alone = {m.name: m.pick(curves).allocation for m in members}
    pick = EnsemblePicker(members, rule="vote").pick(curves)
    for target in curves.curves:
        assert pick.allocation[target] == float(np.median([a[target] for a in alone.values()]))


def test_make_allocator_builds_each_picker_and_rejects_bad_requests():
    assert make_allocator("threshold", max_drop=0.01).max_drop == 0.01
    assert make_allocator("sconce").name == "sconce"
    assert isinstance(make_allocator("knee"), KneePicker)
    assert make_allocator("budget", target_sparsity=0.5).target_sparsity == 0.5
    ensemble = make_allocator("ensemble")
    assert [m.name for m in ensemble.members] == ["threshold", "knee"] and ensemble.rule == "min"
    with pytest.raises(UsageError, match="unknown picker 'best'"):
        make_allocator("best", among=PICKERS, noun="picker")
    with pytest.raises(UsageError, match="does not take target_sparsity"):
        make_allocator("threshold", target_sparsity=0.5)
    with pytest.raises(UsageError, match="exactly one of"):
        make_allocator("budget", target_sparsity=0.5, target_macs=10)
    with pytest.raises(UsageError, match="distinct names"):
        make_allocator("ensemble", members=["threshold", "threshold"])
    with pytest.raises(UsageError, match="unknown ensemble rule"):
        make_allocator("ensemble", rule="max")
