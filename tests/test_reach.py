"""How far the whole model goes: sweep, widening and bisection on a known accuracy curve."""

from __future__ import annotations

import pytest

from prunescope.errors import UsageError
from prunescope.pick.reach import reach


def _curve(knee: float):
    """Accuracy 0.98 up to ``knee``, then falling 2 points per percent of sparsity."""
    calls: list[float] = []

    def accuracy_at(s: float) -> float:
        calls.append(s)
        return 0.98 if s <= knee else 0.98 - 2 * (s - knee)

    return accuracy_at, calls


def test_bisection_finds_the_known_answer_within_the_resolution() -> None:
    accuracy_at, calls = _curve(0.87)
    result = reach(accuracy_at, 0.98, [0.5, 0.7, 0.8, 0.9, 0.95], 0.005, resolution=0.005, max_bisections=10)
    # Within the bound up to 0.87 + 0.0025; the answer lies below it and no further than the resolution.
    assert 0.8725 - 0.005 <= result.answer <= 0.8725
    assert len(calls) == len(set(calls)), "a sparsity was evaluated twice"
    assert result.widened == []


def test_a_list_that_does_not_bracket_the_bound_is_widened_both_ways() -> None:
    accuracy_at, _ = _curve(0.995)
    high = reach(accuracy_at, 0.98, [0.5, 0.9], 0.005)
    assert high.widened[:2] == [0.95, 0.975] and high.first_failure is not None and high.answer >= 0.99
    accuracy_at, _ = _curve(0.2)
    low = reach(accuracy_at, 0.98, [0.8, 0.9], 0.005)
    assert low.widened[0] == 0.4 and 0.2 <= low.answer <= 0.2025


def test_a_failure_below_a_pass_caps_the_answer() -> None:
    points = {0.5: 0.98, 0.7: 0.90, 0.8: 0.98, 0.9: 0.5}
    result = reach(lambda s: points.get(s, 0.98), 0.98, list(points), 0.005, max_bisections=0)
    assert result.answer == 0.5  # 0.8 passes, but 0.7 failed: the non-monotone pass is not trusted


def test_bad_bounds_and_sparsities_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="outside"):
        reach(lambda s: 1.0, 0.98, [1.3], 0.005)
    with pytest.raises(UsageError, match="allowed drop"):
        reach(lambda s: 1.0, 0.98, [0.5], float("nan"))
    with pytest.raises(UsageError, match="at least one"):
        reach(lambda s: 1.0, 0.98, [], 0.005)
