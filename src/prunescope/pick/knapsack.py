"""The multiple-choice knapsack under the budget picker: one candidate per unit, the least total predicted drop
whose saving meets a required amount.

Solved by Lagrangian relaxation (a price per unit of saving, bisected) and repaired to the budget by
greedy moves; every function takes the units' :class:`Choices` and a candidate index per unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Choices:
    """One target's candidates for the knapsack: units removed, and the predicted drop and budget saved at each.

    Units are a curve's elements (weights of a tensor, channels of a group). ``discrete``: only
    the candidates themselves may be chosen (kept counts must be multiples of ``round_to``);
    otherwise any count between two candidates may (the curve and the saving are linear there).
    """

    name: str
    numel: int
    counts: np.ndarray  # units removed, ascending, first 0
    drops: np.ndarray  # predicted drop at each count (fraction of the metric)
    savings: np.ndarray  # budget saved at each count, non-decreasing, first 0 (weights, parameters, MACs or ms)
    discrete: bool = False

    def drop(self, count: int) -> float:
        # Candidates include every measured point, so the curve is linear between two neighbours.
        return float(np.interp(count, self.counts, self.drops))

    def saving(self, count: int) -> float:
        return float(np.interp(count, self.counts, self.savings))

    def below(self, count: int) -> int:
        """The largest candidate below ``count``."""
        return int(self.counts[self.counts < count][-1])

    def above(self, count: int) -> int:
        """The smallest candidate above ``count``."""
        return int(self.counts[self.counts > count][0])

    def slope(self, low: int, high: int) -> float:
        """Drop per unit of budget from ``low`` to ``high`` removed units."""
        saved, rise = self.saving(high) - self.saving(low), self.drop(high) - self.drop(low)
        if saved <= 0:  # a step that saves nothing (a flat stretch of measured latency) is worth only a gain
            return math.inf if rise >= 0 else -math.inf
        return rise / saved

    def grown(self, count: int, gap: float) -> int:
        """The count after removing toward the next candidate, no more than saving ``gap`` needs."""
        above = self.above(count)
        if self.discrete:
            return above
        per_unit = (self.saving(above) - self.saving(count)) / (above - count)
        return min(above, count + math.ceil(gap / per_unit))

    def shrunk(self, count: int, excess: float) -> int:
        """The count after giving back toward the candidate below, no more than ``excess`` of saving."""
        below = self.below(count)
        if self.discrete:
            return below
        per_unit = (self.saving(count) - self.saving(below)) / (count - below)
        return count - min(count - below, math.floor(excess / per_unit))


def allocation_of(choices: list[Choices], counts: Sequence[int]) -> dict[str, float]:
    """``{target: sparsity}`` of removed counts (weights or channels)."""
    return {c.name: int(n) / c.numel for c, n in zip(choices, counts, strict=True)}


def deepest_counts(choices: list[Choices]) -> list[int]:
    return [int(c.counts[-1]) for c in choices]


def finest_step(choices: list[Choices]) -> float:
    """The smallest saving one candidate step can make (finer changes of the required saving change nothing)."""
    steps = np.concatenate([np.diff(c.savings) for c in choices])
    return float(steps[steps > 0].min(initial=np.inf))


def additive_saving(choices: list[Choices], counts: Sequence[int]) -> float:
    return sum(c.saving(n) for c, n in zip(choices, counts, strict=True))


def total_drop(choices: list[Choices], counts: Sequence[int]) -> float:
    return sum(c.drop(n) for c, n in zip(choices, counts, strict=True))


def lagrangian(choices: list[Choices], required: float) -> tuple[float, list[int], list[int]]:
    """Bisect the multiplier λ (drop per unit of budget) at which the per-target argmins reach ``required``.

    Returns λ and the argmins just below it (saving short of ``required`` unless λ = 0)
    and at it (saving at least ``required``).
    """

    def choose(multiplier: float) -> list[int]:
        # argmin takes the first minimum: among equal costs, the fewest removed units.
        return [int(c.counts[np.argmin(c.drops - multiplier * c.savings)]) for c in choices]

    if additive_saving(choices, choose(0.0)) >= required:
        return 0.0, choose(0.0), choose(0.0)
    low, high = 0.0, 1.0
    while additive_saving(choices, choose(high)) < required:
        low, high = high, high * 2
    for _ in range(100):
        middle = (low + high) / 2
        if additive_saving(choices, choose(middle)) >= required:
            high = middle
        else:
            low = middle
    return high, choose(low), choose(high)


def repair(
    choices: list[Choices],
    counts: list[int],
    required: float,
    *,
    exact: bool,
    saving: Callable[[Sequence[int]], float] | None = None,
) -> list[int]:
    """Move units one candidate step at a time until the saving meets ``required``.

    Short of the budget: remove more where a unit of budget costs the least drop. Past it:
    give back the units whose removal cost the most drop per unit of budget, while the
    budget stays met. ``exact`` gives back even where removing helped the metric, so that
    the saving lands exactly on ``required`` (whole weights); otherwise only units whose
    removal cost something are given back. A step may stop between candidates unless the
    choice is ``discrete``; a discrete step back is kept only where the budget still holds.
    ``saving``: the saving of a set of counts; by default the knapsack's additive one (a
    channel budget passes the exact one of the whole model, which steps are judged by).
    """
    counts = list(counts)
    measure = saving or (lambda counts: additive_saving(choices, counts))
    movable = [i for i, c in enumerate(choices) if c.savings[-1] > 0]

    def gap() -> float:
        return required - measure(counts)

    growing = [i for i in movable if counts[i] < choices[i].counts[-1]]
    while gap() > 0 and growing:
        i = min(growing, key=lambda i: choices[i].slope(counts[i], choices[i].above(counts[i])))
        counts[i] = choices[i].grown(counts[i], gap())
        if counts[i] == choices[i].counts[-1]:
            growing.remove(i)
    shrinking = [i for i in movable if counts[i] > 0]
    while gap() < 0 and shrinking:
        i = max(shrinking, key=lambda i: choices[i].slope(choices[i].below(counts[i]), counts[i]))
        c, n = choices[i], counts[i]
        if not exact and c.slope(c.below(n), n) <= 0:
            break
        counts[i] = c.shrunk(n, -gap())
        if gap() > 0:
            counts[i] = n  # that step back saves more than the budget can spare
        if counts[i] > c.below(n) or counts[i] == 0:
            shrinking.remove(i)  # it cannot give back more without breaking the budget, or is dense
    return counts
