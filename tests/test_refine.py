"""Joint refinement at constant global sparsity, and ``ours`` in compare built on it."""

from __future__ import annotations

import pytest
import torch
from conftest import fitted, make_dataset

from prunescope.curves import Curve, CurvePoint, Curves
from prunescope.errors import UsageError
from prunescope.masks import removed_count
from prunescope.pick import PairwiseRefiner, Refiner
from prunescope.pick.ours import budget_start
from prunescope.pipeline.compare import compare
from prunescope.targets import find_targets

NUMELS = {"big": 20_000, "mid": 3_000, "small": 300}
# How much a target's accuracy suffers from losing its kept weights: small targets are fragile.
FRAGILITY = {"big": 0.02, "mid": 0.05, "small": 0.3}


def _objective(allocation):
    """A smooth joint metric with an interaction term; its optimum is not the uniform allocation."""
    drops = {name: FRAGILITY[name] * s**4 for name, s in allocation.items()}
    interaction = 0.05 * allocation["big"] * allocation["mid"]
    return 0.95 - sum(drops.values()) - interaction


def _removed(allocation):
    return sum(removed_count(s, NUMELS[name]) for name, s in allocation.items())


class Counting:
    """Wraps an objective and counts its calls."""

    def __init__(self, objective):
        self.objective, self.calls, self.seen = objective, 0, []

    def __call__(self, allocation):
        self.calls += 1
        self.seen.append(dict(allocation))
        return self.objective(allocation)


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95, 0.98])
def test_refinement_keeps_the_global_sparsity_exactly_and_never_gets_worse(sparsity):
    start = {name: sparsity for name in NUMELS}
    total = round(sparsity * sum(NUMELS.values()))
    objective = Counting(_objective)
    refined = PairwiseRefiner(max_evaluations=30).refine(start, NUMELS, objective)

    # Every allocation tried, not only the answer, removes exactly the same number of weights.
    assert objective.seen and all(_removed(a) == total for a in objective.seen)
    assert _removed(refined.allocation) == total
    assert all(0 <= removed_count(s, NUMELS[n]) <= NUMELS[n] - 1 for n, s in refined.allocation.items())
    assert refined.value >= refined.start_value == pytest.approx(_objective(start))
    assert refined.value == pytest.approx(_objective(refined.allocation))
    # Within budget, every call recorded as a step.
    assert refined.evaluations == objective.calls == len(refined.steps) <= 30
    accepted = [step.value for step in refined.steps if step.accepted]
    assert accepted == sorted(accepted)  # each accepted move beats the previous best


def test_refinement_improves_a_bad_start_towards_the_fragile_target():
    start = {name: 0.9 for name in NUMELS}
    refined = PairwiseRefiner(max_evaluations=60).refine(start, NUMELS, _objective)
    assert refined.gain > 0.01
    assert refined.allocation["small"] < 0.9 < refined.allocation["big"]


def test_budget_counts_the_start_only_when_it_is_measured_here():
    start = {name: 0.9 for name in NUMELS}
    objective = Counting(_objective)
    refined = PairwiseRefiner(max_evaluations=5).refine(start, NUMELS, objective, start_value=_objective(start))
    assert objective.calls == refined.evaluations == 5
    assert all(step.move is not None for step in refined.steps)

    objective = Counting(_objective)
    refined = PairwiseRefiner(max_evaluations=5).refine(start, NUMELS, objective)
    assert objective.calls == refined.evaluations == 5 and refined.steps[0].move is None


def test_a_start_that_no_move_improves_is_returned_unchanged():
    start = {"big": 0.9, "mid": 0.5, "small": 0.1}
    refined = PairwiseRefiner(max_evaluations=50).refine(start, NUMELS, lambda a: 1.0 if a == start else 0.5)
    assert refined.allocation == start and refined.value == refined.start_value == 1.0
    assert not any(step.accepted for step in refined.steps[1:])
    assert refined.evaluations <= 50


def test_min_gain_rejects_small_improvements_and_a_zero_budget_evaluates_nothing():
    start = {name: 0.9 for name in NUMELS}
    refined = PairwiseRefiner(max_evaluations=20, min_gain=1.0).refine(start, NUMELS, _objective)
    assert refined.allocation == start
    objective = Counting(_objective)
    refined = PairwiseRefiner(max_evaluations=0).refine(start, NUMELS, objective, start_value=0.5)
    assert objective.calls == 0 and refined.allocation == start and refined.value == 0.5


def _noise(half_width):
    """A paired interval of the true gain ± ``half_width`` (as if val had that much noise)."""

    def noise(before, after):
        gain = _objective(after) - _objective(before)
        return gain - half_width, gain + half_width

    return noise


def test_moves_count_only_when_their_gain_is_beyond_the_noise():
    start = {name: 0.9 for name in NUMELS}
    quiet = PairwiseRefiner(max_evaluations=60).refine(start, NUMELS, _objective, noise=_noise(0.0))
    plain = PairwiseRefiner(max_evaluations=60).refine(start, NUMELS, _objective)
    assert quiet.allocation == plain.allocation  # no noise: the same search
    noisy = PairwiseRefiner(max_evaluations=60).refine(start, NUMELS, _objective, noise=_noise(0.005))
    for step in noisy.steps:
        if step.accepted and step.move is not None:
            assert step.gain_interval[0] > 0  # every accepted gain is beyond the noise
    inside = [s for s in noisy.steps if not s.accepted and s.gain_interval is not None]
    assert inside and all(s.gain_interval[0] <= 0 < s.gain_interval[1] for s in inside)
    assert noisy.value <= plain.value and noisy.details["noise"] == "paired 95% interval"
    # With noise wider than any gain, nothing is accepted, and each pair stops at its first better-in-noise move.
    deaf = PairwiseRefiner(max_evaluations=60).refine(start, NUMELS, _objective, noise=_noise(1.0))
    assert deaf.allocation == {n: pytest.approx(s) for n, s in start.items()} and deaf.value == deaf.start_value
    moves = [s.move[:2] for s in deaf.steps if s.gain_interval is not None]
    assert len(moves) == len(set(moves))


@pytest.mark.parametrize(
    "options",
    [
        {"max_evaluations": -1},
        {"step": 0.0},
        {"min_step": 0.6, "step": 0.5},
        {"min_gain": -0.1},
        {"min_kept": 0},
        {"grow": 0.5},
    ],
)
def test_bad_settings_are_usage_errors(options):
    with pytest.raises(UsageError):
        PairwiseRefiner(**options)


def test_refiner_protocol():
    assert isinstance(PairwiseRefiner(), Refiner)


# ------------------------------------------------------------------ ours in compare


@pytest.fixture(scope="module")
def trained():
    """TinyNet fitted to the tiny data in a few full-batch steps (once for the module)."""
    data = make_dataset()
    return fitted(data, steps=30, lr=0.05), data


def _curves(model):
    """Hand-made curves for every target (the scan's API is not what is tested here)."""
    levels = [0.5, 0.8, 0.9, 0.95, 0.98]
    curves = {
        t.name: Curve(t.name, t.numel, 0, [CurvePoint(s, 0.9 - 0.1 * s**3, 0, 1, 60) for s in levels])
        for t in find_targets(model)
    }
    return Curves("accuracy", "magnitude", CurvePoint(0.0, 0.9, 0.9, 0.9, 60), curves)


def test_ours_hits_the_sparsity_beats_its_candidates_on_val_and_stays_in_budget(trained):
    model, tiny_data = trained
    targets = find_targets(model)
    total = sum(t.numel for t in targets)
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    comparison = compare(
        model, tiny_data, [0.8, 0.95], curves=_curves(model), refiner=PairwiseRefiner(max_evaluations=12)
    )
    for name, p in model.state_dict().items():
        assert torch.equal(p, before[name])  # every evaluation restored the weights
    ours = [r for r in comparison.rows if r.method == "ours"]
    assert [r.sparsity for r in ours] == [0.8, 0.95]
    for row in ours:
        assert row.error is None
        removed = sum(removed_count(row.allocation[t.name], t.numel) for t in targets)
        assert removed == round(row.sparsity * total)
        assert row.achieved == pytest.approx(removed / total)
        details = row.details
        assert details["start"] in details["candidates"] and "budget" in details["candidates"]
        assert row.val.accuracy >= max(details["candidates"].values())
        assert row.val.accuracy == pytest.approx(details["refined"]["value"])
        assert details["refined"]["evaluations"] <= 12
        # Refinement moves on val count only beyond the paired val noise; the selection effort is stated.
        assert details["refined"]["details"]["noise"] == "paired 95% interval"
        assert all(step["gain_interval"][0] > 0 for step in details["refined"]["steps"] if step["accepted"])
        effort = details["val_evaluations"]
        assert effort["candidates"] == len(details["candidates"])
        assert effort["total"] == effort["candidates"] + details["refined"]["evaluations"]
        baselines = {r.method: r for r in comparison.rows if r.sparsity == row.sparsity and r.method != "ours"}
        for method, baseline in baselines.items():
            if baseline.val is not None:
                assert details["candidates"][method] == baseline.val.accuracy
                assert row.val.accuracy >= baseline.val.accuracy
        assert row.test is not None


def test_ours_without_refinement_or_starts_is_the_budget_pick(trained):
    model, tiny_data = trained
    curves = _curves(model)
    comparison = compare(model, tiny_data, [0.9], ["ours"], curves=curves, refiner=None, starts=(), test=False)
    (row,) = comparison.rows
    assert row.allocation == budget_start(curves, find_targets(model), 0.9)
    assert row.details["start"] == "budget" and "refined" not in row.details and row.test is None


def test_ours_needs_a_scan_and_known_starts(tiny_model, tiny_data):
    comparison = compare(tiny_model, tiny_data, [0.9], ["ours", "uniform"], test=False)
    assert "needs a scan" in comparison.rows[0].error and comparison.rows[1].val is not None
    with pytest.raises(UsageError):
        compare(tiny_model, tiny_data, [0.9], ["ours"], curves=_curves(tiny_model), starts=("magic",))
