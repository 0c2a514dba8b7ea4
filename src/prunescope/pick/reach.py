"""How far the whole model can be pruned within a bound: a sweep, then bisection, on val.

``reach`` takes a function that prunes the model to a global sparsity (one-shot, or with
fine-tuning: whatever the caller recovers with) and returns its val score (accuracy, or minus a
language model's log-perplexity: :mod:`prunescope.scores`). It
evaluates the given sparsities, widens the list while it does not bracket the bound (all
within: towards 1; none within: towards 0), then bisects between the highest sparsity
within the bound and the lowest one above it that is outside. A score after pruning is not
guaranteed monotone in sparsity, so the answer is the highest *evaluated* sparsity within
the bound that lies below every evaluated failure — never one interpolated between points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prunescope.errors import UsageError
from prunescope.masks import check_sparsity

_MAX_WIDENINGS = 6


@dataclass
class Reach:
    """Every evaluated (sparsity, val score), the bound, and the answer.

    answer: the highest evaluated sparsity within ``dense − max_drop`` below every failure
        (0.0 when none is within).
    widened: the sparsities added because the given list did not bracket the bound.
    """

    dense: float
    max_drop: float
    points: dict[float, float] = field(default_factory=dict)
    widened: list[float] = field(default_factory=list)
    bisected: list[float] = field(default_factory=list)

    def within(self, sparsity: float) -> bool:
        return self.points[sparsity] >= self.dense - self.max_drop

    @property
    def first_failure(self) -> float | None:
        failures = [s for s in self.points if not self.within(s)]
        return min(failures) if failures else None

    @property
    def answer(self) -> float:
        limit = self.first_failure
        passing = [s for s in self.points if self.within(s) and (limit is None or s < limit)]
        return max(passing, default=0.0)

    def to_dict(self) -> dict:
        return {
            "dense": self.dense,
            "max_drop": self.max_drop,
            "points": [{"sparsity": s, "score": a} for s, a in sorted(self.points.items())],
            "widened": self.widened,
            "bisected": self.bisected,
            "answer": self.answer,
            "first_failure": self.first_failure,
        }


def reach(
    score_at: Callable[[float], float],
    dense: float,
    sparsities: Sequence[float],
    max_drop: float,
    *,
    resolution: float = 0.01,
    max_bisections: int = 4,
) -> Reach:
    """Sweep ``sparsities`` with ``score_at``, widen until the bound is bracketed, then bisect.

    dense: the dense model's val score; max_drop: the allowed drop of it.
    Bisection stops after ``max_bisections`` evaluations or when the bracket is narrower
    than ``resolution`` (in sparsity).
    """
    if not sparsities:
        raise UsageError("give at least one sparsity to sweep")
    if not 0 <= max_drop < 1:
        raise UsageError(f"the allowed drop {max_drop:g} is outside [0, 1): give a fraction, e.g. 0.005")
    result = Reach(dense, max_drop)

    def evaluate(sparsity: float) -> None:
        if sparsity not in result.points:
            result.points[sparsity] = float(score_at(sparsity))

    for s in sorted({check_sparsity(s) for s in sparsities}):
        evaluate(s)
    for _ in range(_MAX_WIDENINGS):
        if result.first_failure is None:  # everything within: go further towards 1
            extra = 1 - (1 - max(result.points)) / 2
        elif not any(result.within(s) for s in result.points):  # nothing within: back towards 0
            extra = min(result.points) / 2
        else:
            break
        result.widened.append(extra)
        evaluate(extra)
    for _ in range(max_bisections):
        low, high = result.answer, result.first_failure
        if high is None or high - low < resolution:
            break
        middle = (low + high) / 2
        result.bisected.append(middle)
        evaluate(middle)
    return result
