"""Level planners: which sparsities of one target to evaluate next.

A planner is a small object with one method, ``ask(drops, unresolved) -> sparsities``, in
the spirit of an Optuna sampler: given the drops measured so far for one target
(``{sparsity: dense - value}``, a fraction of the metric; negative is an improvement) and
the sparsities whose decision (drop within tolerance?) stayed within noise on the largest
subset the scan allows, it returns the sparsities to evaluate next, or ``[]`` when the
curve is complete. Planners keep no state, so a resumed scan plans exactly what the
interrupted one did.

- :class:`Grid`: fixed levels; by default sconce's 0.10, 0.15, …, 0.95 (18 levels).
- :class:`Adaptive`: coarse levels (extended up to 0.999 while the curve has not
  collapsed), then bisection of every interval where the curve crosses the tolerance
  while the crossing can be resolved, plus one point where the coarse curve bends.
- :class:`Whole` wraps either for one unit of ``size`` whole elements (weights or
  channels): a level that removes as many elements as one already planned is not
  evaluated again (the planner is told that point's drop), none removes all of them, and
  for channel groups every level is exactly ``k / size`` (whole channels, nothing between).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prunescope.errors import UsageError
from prunescope.masks import removed_count

SCONCE_LEVELS: tuple[float, ...] = tuple(round(0.10 + 0.05 * i, 2) for i in range(18))  # 0.10, …, 0.95
COARSE_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.98)
BEYOND_LEVELS: tuple[float, ...] = (0.99, 0.995, 0.999)  # probed above 0.98 while a curve has not collapsed
BEYOND_REACH = 10.0  # ... that is, while its drop is at most 10 × tolerance (5 points for half a point)
_DIGITS = 4  # planned sparsities are rounded to 1e-4, so that the same level is always the same float
_EPS = 1e-9  # slack for float comparisons (1.0 - 0.98 > 0.02 in floats)


class Planner(Protocol):
    def ask(self, drops: Mapping[float, float], unresolved: Collection[float] = ()) -> list[float]:
        """Sparsities to evaluate next, given ``{sparsity: drop}`` measured so far; ``[]`` when done.

        ``unresolved``: the sparsities among ``drops`` whose decision (drop within tolerance?)
        is still within noise where the scan stopped growing their subset.
        """
        ...


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """Sorted, de-duplicated levels, each strictly inside (0, 1)."""
    if not levels:
        raise UsageError("levels is empty: give sparsities in (0, 1), e.g. 0.5 0.8 0.9")
    for level in levels:
        if not 0.0 < level < 1.0:
            raise UsageError(f"level {level:g} is outside (0, 1): give a fraction of weights to remove, e.g. 0.9")
    return tuple(sorted({float(level) for level in levels}))


def _midpoint(a: float, b: float) -> float:
    return round((a + b) / 2, _DIGITS)


def within(drop: float, tolerance: float) -> bool:
    """Is ``drop`` (dense - value, signed) at most ``tolerance``? An improvement always is."""
    return drop <= tolerance + _EPS


@dataclass(frozen=True)
class Grid:
    """Every level of a fixed grid, all at once."""

    levels: tuple[float, ...] = SCONCE_LEVELS

    def ask(self, drops: Mapping[float, float], unresolved: Collection[float] = ()) -> list[float]:
        return [s for s in self.levels if s not in drops]


@dataclass(frozen=True)
class Adaptive:
    """Coarse-to-fine: few evaluations, resolution ``resolution`` where the curve crosses ``tolerance``.

    1. The ``coarse`` levels.
    2. Above the highest coarse level, the ``beyond`` levels (by default 0.99, 0.995,
       0.999), one after the other while the drop at the highest level measured so far is
       at most ``reach`` × ``tolerance``: within tolerance, and also past it by a few
       points. A budget picker never extrapolates past the highest measured level, so a
       layer that holds most of the weights needs measured points up there, even costly
       ones, for a high global budget to be spread by cost rather than uniformly.
    3. Every interval between neighbouring measured points (the dense model at sparsity 0
       counts as a point with drop 0) whose ends disagree on "drop <= tolerance" is bisected
       until it is at most ``resolution`` wide, or until both of its ends are
       ``unresolved``: their decisions are within noise on the largest subset allowed, so
       the crossing lies in a band the noise does not resolve and bisecting it would only
       measure noise. Monotonicity is not assumed: a violation followed by a higher level
       within tolerance is an interval like any other, so the dip and the recovery are
       both bracketed, and the final curve holds the two points that justify every
       crossing.
    4. One point in the middle of the coarse segment right after the coarse curve's knee
       (the largest increase of slope), where the shape of the curve changes most.
    """

    tolerance: float
    coarse: tuple[float, ...] = COARSE_LEVELS
    resolution: float = 0.01
    beyond: tuple[float, ...] = BEYOND_LEVELS
    reach: float = BEYOND_REACH

    def ask(self, drops: Mapping[float, float], unresolved: Collection[float] = ()) -> list[float]:
        missing = [s for s in self.coarse if s not in drops]
        if missing:
            return missing
        planned = set()
        highest = max(self.coarse)
        for level in sorted(s for s in self.beyond if s > highest):
            if level in drops:
                highest = level
                continue
            if drops[highest] <= self.reach * self.tolerance + _EPS:
                planned.add(level)
            break
        curve = sorted({0.0: 0.0, **drops}.items())
        planned |= {
            _midpoint(a, b)
            for (a, drop_a), (b, drop_b) in itertools.pairwise(curve)
            if within(drop_a, self.tolerance) != within(drop_b, self.tolerance)
            and b - a > self.resolution + _EPS
            and not (a in unresolved and b in unresolved)
        }
        bend = self._bend(drops)
        if bend is not None:
            planned.add(bend)
        return sorted(s for s in planned if s not in drops)

    def _bend(self, drops: Mapping[float, float]) -> float | None:
        # Computed on the coarse levels only, so that it is one fixed point per curve.
        coarse = [(0.0, 0.0), *((s, drops[s]) for s in self.coarse)]
        slopes = [(d2 - d1) / (s2 - s1) for (s1, d1), (s2, d2) in itertools.pairwise(coarse)]
        increases = [right - left for left, right in itertools.pairwise(slopes)]
        if not increases or max(increases) <= 0:
            return None
        knee = increases.index(max(increases)) + 1  # increases[i] is at coarse[i + 1]
        (a, _), (b, _) = coarse[knee], coarse[knee + 1]
        return _midpoint(a, b) if b - a > self.resolution + _EPS else None


@dataclass(frozen=True)
class Whole:
    """``planner``'s levels for a unit of ``size`` elements, one level per distinct removed count.

    The count a level removes is ``removed_count(level, size)``, at least 1 and at most
    ``size - 1`` (removing every element disconnects the network; removing none is the
    dense model). A level whose count is already measured is answered to ``planner`` with
    that measurement, so it plans on as if it had been evaluated. ``exact``: report each
    level as ``k / size`` (channel groups: whole channels); otherwise the planner's own level
    is kept, unless it had to be clamped.
    """

    planner: Planner
    size: int
    exact: bool = False

    def count(self, level: float) -> int:
        return min(removed_count(level, self.size), self.size - 1)

    def ask(self, drops: Mapping[float, float], unresolved: Collection[float] = ()) -> list[float]:
        if self.size < 2:
            return []  # one element: nothing to remove but all of it
        measured = {self.count(s): s for s in drops}
        seen: dict[float, float] = {}  # the planner's levels, with the drop of the level removing as many
        seen_unresolved: set[float] = set()
        while True:
            new: dict[int, float] = {}
            answered = False
            for level in self.planner.ask(seen, frozenset(seen_unresolved)):
                k = self.count(level)
                if level in seen:
                    continue
                if k == 0 or k in measured:
                    seen[level] = drops[measured[k]] if k else 0.0  # removing nothing is the dense model
                    if k and measured[k] in unresolved:
                        seen_unresolved.add(level)
                    answered = True
                else:
                    new.setdefault(k, level)
            if not answered:  # else ask again: knowing more, the planner may plan otherwise
                return sorted(self._level(k, level) for k, level in new.items())

    def _level(self, k: int, level: float) -> float:
        return k / self.size if self.exact or removed_count(level, self.size) != k else level


PlannerFactory = Callable[[Sequence[float] | None, float], Planner]

STRATEGIES: dict[str, PlannerFactory] = {
    "grid": lambda levels, tolerance: Grid(check_levels(levels) if levels is not None else SCONCE_LEVELS),
    "adaptive": lambda levels, tolerance: Adaptive(
        tolerance, check_levels(levels) if levels is not None else COARSE_LEVELS
    ),
}
"""Planner by strategy name, built from ``(levels or None, tolerance)``: levels are the grid
for ``grid`` and the coarse levels for ``adaptive``."""


def make_planner(strategy: str, levels: Sequence[float] | None, tolerance: float) -> Planner:
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy](levels, tolerance)
