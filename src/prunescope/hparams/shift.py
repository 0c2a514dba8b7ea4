"""How far a hyperparameter landscape moves, and the noise floor each measure is judged against.

A landscape is the val accuracy at every grid point, one array per seed, shape
``(seeds, *grid shape)``. Between two single-seed landscapes ``a`` (the reference) and
``b`` (see REFERENCES.md, hyperparameter study):

- **distance**: Wasserstein-1 between ``p_a`` and ``p_b``, ``p(θ) = softmax(acc(θ) / τ)`` over
  the grid, on coordinates scaled to [0, 1] per axis (log10 on log axes), by exact optimal
  transport (SciPy's ``wasserstein_distance_nd``). τ is the seed-to-seed spread of the
  reference (mean over grid points of the standard deviation across seeds, at least
  :data:`MIN_TEMPERATURE`), so that differences within noise weigh little.
- **regret**: ``max_θ b(θ) − b(θ*_a)``, θ*_a the optimum of ``a``: accuracy lost by keeping
  ``a``'s hyperparameters (a fraction; 0.01 = one point).
- **rank agreement**: weighted Kendall tau between the flattened grids (SciPy ``weightedtau``,
  hyperbolic weights, top ranks weigh most); 1 = same order.
- **optimum displacement** per axis: coordinate of θ*_b minus that of θ*_a, in decades on a
  log axis, in the knob's own unit on a linear one, in steps of the choice list for a
  categorical knob. Its mean over seed pairs must also exceed half a grid step to count as a
  move (a floor of exactly 0 from a few seeds would otherwise call a move of one pair in six).
- **importance change** per axis: the share of the landscape's variance that axis explains
  alone (functional ANOVA main effects, computed exactly on the full factorial grid, shares
  summing to 1), ``b``'s minus ``a``'s.

Pairs: a shift compares reference seed i with other seed j (i ≠ j, every ordered pair); its
**noise floor** is the same measure between reference seeds i ≠ j, so both compare two
single runs that differ in seed. A shift is significant beyond the floor's 95th percentile
(5th for rank agreement, where lower is worse); with few seeds that is near the floor's extreme.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import softmax
from scipy.stats import wasserstein_distance_nd, weightedtau

from prunescope.errors import UsageError
from prunescope.hparams.grid import Grid
from prunescope.hparams.space import Space

MIN_TEMPERATURE = 1e-3  # 0.1 accuracy point: a floor for τ when seeds agree exactly
FLOOR_QUANTILE = 95.0
SCALARS = ("distance", "regret", "rank")


@dataclass(frozen=True)
class Axes:
    """Per grid axis: its name, unit coordinates of its values in [0, 1], and its displacement coordinates."""

    names: tuple[str, ...]
    unit: tuple[np.ndarray, ...]
    native: tuple[np.ndarray, ...]
    units: tuple[str, ...]

    @classmethod
    def of(cls, space: Space, grid: Grid) -> Axes:
        unit, native, units = [], [], []
        for name, values in zip(grid.axes, grid.values, strict=True):
            param = space.param(name)
            coords = param.unit(values)
            span = coords.max() - coords.min()
            unit.append((coords - coords.min()) / span if span > 0 else np.zeros_like(coords))
            if param.kind == "categorical":
                native.append(np.arange(len(values), dtype=float))
                units.append("choices")
            elif param.log:
                native.append(np.log10(np.asarray(values, float)))
                units.append("decades")
            else:
                native.append(np.asarray(values, float))
                units.append(name)
        return cls(tuple(grid.axes), tuple(unit), tuple(native), tuple(units))

    def steps(self) -> list[float]:
        """The smallest step between neighbouring values of each axis, in displacement units."""
        return [float(np.diff(np.sort(native)).min()) if len(native) > 1 else 0.0 for native in self.native]

    def points(self) -> np.ndarray:
        """Unit coordinates of every grid point in C order, shape (points, axes)."""
        mesh = np.meshgrid(*self.unit, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1)


def temperature(reference: np.ndarray) -> float:
    """τ: mean over grid points of the standard deviation across the seeds of ``reference`` (seeds, ...)."""
    if reference.shape[0] < 2:
        raise UsageError("the noise floor needs at least two seeds per grid point: use --seeds 2 or more")
    return max(float(reference.std(axis=0, ddof=1).mean()), MIN_TEMPERATURE)


def distance(a: np.ndarray, b: np.ndarray, axes: Axes, tau: float) -> float:
    """Wasserstein-1 between softmax(a / τ) and softmax(b / τ) on the grid's unit coordinates."""
    coords = axes.points()
    p, q = softmax(a.ravel() / tau), softmax(b.ravel() / tau)
    return float(wasserstein_distance_nd(coords, coords, p, q))


def regret(a: np.ndarray, b: np.ndarray) -> float:
    """``max b − b[argmax a]``: what keeping ``a``'s optimum costs on ``b``."""
    return float(b.max() - b.ravel()[int(np.argmax(a))])


def rank_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Weighted Kendall tau of the two grids' values (1: same order); 1 when either is constant."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0 if np.ptp(a) == np.ptp(b) else 0.0
    return float(weightedtau(a.ravel(), b.ravel()).statistic)


def optimum(landscape: np.ndarray, axes: Axes) -> dict[str, float]:
    """Displacement coordinates of the landscape's best point, per axis."""
    index = np.unravel_index(int(np.argmax(landscape)), landscape.shape)
    return {name: float(axes.native[i][j]) for i, (name, j) in enumerate(zip(axes.names, index, strict=True))}


def main_effects(landscape: np.ndarray, axes: Axes) -> dict[str, float]:
    """Share of the variance each axis explains alone (exact functional ANOVA main effects), summing to 1."""
    effects = []
    for i in range(landscape.ndim):
        others = tuple(j for j in range(landscape.ndim) if j != i)
        effects.append(float(landscape.mean(axis=others).var()) if others else float(landscape.var()))
    total = sum(effects)
    shares = [e / total if total > 0 else 1 / len(effects) for e in effects]
    return dict(zip(axes.names, shares, strict=True))


@dataclass
class Measures:
    """Every measure between two single-seed landscapes."""

    distance: float
    regret: float
    rank: float
    displacement: dict[str, float]
    importance: dict[str, float]


def measure(a: np.ndarray, b: np.ndarray, axes: Axes, tau: float) -> Measures:
    """The measures from reference landscape ``a`` to landscape ``b`` (both one seed, grid shape)."""
    ends = optimum(a, axes), optimum(b, axes)
    effects = main_effects(a, axes), main_effects(b, axes)
    return Measures(
        distance(a, b, axes, tau),
        regret(a, b),
        rank_agreement(a, b),
        {name: ends[1][name] - ends[0][name] for name in axes.names},
        {name: effects[1][name] - effects[0][name] for name in axes.names},
    )


def pairs(reference: np.ndarray, other: np.ndarray, axes: Axes, tau: float) -> list[Measures]:
    """Measures from reference seed i to other seed j, every ordered pair with i ≠ j."""
    seeds = range(min(len(reference), len(other)))
    return [measure(reference[i], other[j], axes, tau) for i, j in itertools.permutations(seeds, 2)]


def _values(measures: Sequence[Measures], key: str, name: str | None = None) -> np.ndarray:
    if name is None:
        return np.array([getattr(m, key) for m in measures])
    return np.array([getattr(m, key)[name] for m in measures])


@dataclass
class Judged:
    """One measure at one degree: mean and spread over seed pairs, the floor's quantile, and the call."""

    mean: float
    std: float
    floor: float
    significant: bool
    values: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "floor": self.floor, "significant": self.significant,
                "values": self.values}


def judge(values: np.ndarray, floor_values: np.ndarray, *, lower_is_shift: bool = False,
          absolute: bool = False, at_least: float = 0.0) -> Judged:
    """Mean of ``values`` against the floor's 95th percentile (5th with ``lower_is_shift``; |x| with ``absolute``).

    ``at_least``: a shift must also exceed this (e.g. half a grid step: a floor of 0 from a few
    seeds does not make a move of a minority of seed pairs significant).
    """
    mean = float(values.mean())
    if lower_is_shift:
        floor = float(np.percentile(floor_values, 100 - FLOOR_QUANTILE))
        significant = mean < floor
    else:
        floor_of = np.abs(floor_values) if absolute else floor_values
        floor = float(np.percentile(floor_of, FLOOR_QUANTILE))
        significant = (abs(mean) if absolute else mean) > max(floor, at_least)
    return Judged(mean, float(values.std(ddof=1)) if len(values) > 1 else 0.0, floor, significant,
                  [float(v) for v in values])


@dataclass
class Shift:
    """The judged measures of one landscape against the reference."""

    distance: Judged
    regret: Judged
    rank: Judged
    displacement: dict[str, Judged]
    importance: dict[str, Judged]

    def to_dict(self) -> dict:
        return {"distance": self.distance.to_dict(), "regret": self.regret.to_dict(), "rank": self.rank.to_dict(),
                "displacement": {k: v.to_dict() for k, v in self.displacement.items()},
                "importance": {k: v.to_dict() for k, v in self.importance.items()}}


def shift(reference: np.ndarray, other: np.ndarray, axes: Axes, tau: float | None = None) -> Shift:
    """How far ``other`` (seeds, *grid) moved from ``reference`` (seeds, *grid), each measure against its floor."""
    if reference.shape[1:] != other.shape[1:]:
        raise UsageError(f"landscapes of different grids: {reference.shape[1:]} and {other.shape[1:]}")
    tau = temperature(reference) if tau is None else tau
    floor = pairs(reference, reference, axes, tau)
    moved = pairs(reference, other, axes, tau)
    return Shift(
        judge(_values(moved, "distance"), _values(floor, "distance")),
        judge(_values(moved, "regret"), _values(floor, "regret")),
        judge(_values(moved, "rank"), _values(floor, "rank"), lower_is_shift=True),
        {n: judge(_values(moved, "displacement", n), _values(floor, "displacement", n), absolute=True,
                  at_least=step / 2) for n, step in zip(axes.names, axes.steps(), strict=True)},
        {n: judge(_values(moved, "importance", n), _values(floor, "importance", n), absolute=True)
         for n in axes.names},
    )
