"""The grid around the dense optimum: which knobs, which values, and the landscape measured on it.

The axes are the knobs that matter most by Optuna's ``get_param_importances`` (fANOVA,
Hutter et al. 2014) on the dense search, or those the user names. Each axis spans the
neighbourhood of the optimum: one decade either side on a log scale, a quarter of the
declared range either side on a linear one (shifted, not shrunk, where it meets a bound),
every choice of a categorical knob. The other searched knobs stay at the optimum.

Every grid point is trained with several seeds, each a queued trial of one study per
landscape (see :mod:`prunescope.hparams.studies`), so a killed grid resumes without
repeating a finished point and any executor's workers can share it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState

from prunescope.errors import UsageError
from prunescope.hparams.space import Param, Space
from prunescope.hparams.studies import finished, run_study
from prunescope.hparams.trials import Recipe
from prunescope.trials.points import LOCAL, Execution

DECADES = 1.0  # half-width of a log axis
LINEAR_HALF_WIDTH = 0.25  # half-width of a linear axis, as a fraction of the declared range
SEED_BOUND = 2**31 - 1


def importances(study: optuna.Study, seed: int = 0) -> dict[str, float]:
    """fANOVA importance of every searched knob on the study's finished trials (sums to 1).

    When every finished trial scored the same there is nothing to rank: equal shares, in
    the order the knobs were declared.
    """
    complete = finished(study, (TrialState.COMPLETE,))
    if len(complete) < 2:
        raise UsageError("importance needs at least two finished trials: raise --budget")
    try:
        return dict(get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed)))
    except RuntimeError:  # fANOVA's "zero total variance": a flat search
        names = list(complete[0].params)
        return dict.fromkeys(names, 1 / len(names))


def choose_axes(ranked: Mapping[str, float], count: int, chosen: Sequence[str] | None, space: Space) -> list[str]:
    """The ``count`` most important knobs, or the ``chosen`` ones (checked against the space)."""
    if chosen:
        for name in chosen:
            space.param(name)
        if len(set(chosen)) != len(chosen):
            raise UsageError(f"--axes names a knob twice: {', '.join(chosen)}")
        return list(chosen)
    if count > len(space.params):
        raise UsageError(f"a grid of {count} axes needs as many searched knobs; the space searches "
                         f"{len(space.params)} ({', '.join(space.names)})")
    ordered = sorted(space.names, key=lambda name: -ranked.get(name, 0.0))
    return ordered[:count]


def axis_values(param: Param, centre: Any, points: int) -> list[Any]:
    """``points`` values of ``param`` spanning the neighbourhood of ``centre`` (fewer for a narrow int axis)."""
    if param.kind == "categorical":
        return list(param.choices)
    low, high = float(param.low), float(param.high)
    if param.log:
        low, high, centre, half = math.log10(low), math.log10(high), math.log10(centre), DECADES
    else:
        centre, half = float(centre), LINEAR_HALF_WIDTH * (high - low)
    start = min(max(centre - half, low), max(high - 2 * half, low))
    values = np.linspace(start, min(start + 2 * half, high), points) if points > 1 else np.array([centre])
    if param.log:
        values = 10**values
    if param.kind == "int":
        return sorted({int(min(max(round(v), param.low), param.high)) for v in values})
    # four significant digits: readable grid values, far finer than any landscape resolves
    return [float(f"{min(max(v, param.low), param.high):.4g}") for v in values]


@dataclass(frozen=True)
class Grid:
    """Axes and their values; every other searched knob at ``base`` (the dense optimum)."""

    axes: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]
    base: tuple[tuple[str, Any], ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.values)

    def points(self) -> list[dict[str, Any]]:
        """Every point in C order (the last axis varies fastest), as the knobs it sets."""
        return [dict(zip(self.axes, combo, strict=True)) for combo in itertools.product(*self.values)]

    def to_dict(self) -> dict[str, Any]:
        return {"axes": list(self.axes), "values": [list(v) for v in self.values], "base": dict(self.base)}

    @classmethod
    def around(cls, space: Space, optimum: Mapping[str, Any], axes: Sequence[str], points: Sequence[int]) -> Grid:
        if len(points) != len(axes):
            raise UsageError(f"the grid has {len(points)} sizes for {len(axes)} axes ({', '.join(axes)})")
        values = tuple(tuple(axis_values(space.param(a), optimum[a], n)) for a, n in zip(axes, points, strict=True))
        base = tuple((k, v) for k, v in optimum.items() if k not in axes)
        return cls(tuple(axes), values, base)


def parse_grid(text: str) -> list[int]:
    """``"5x5"`` → ``[5, 5]``; every size at least 2."""
    try:
        sizes = [int(part) for part in text.lower().split("x")]
    except ValueError:
        raise UsageError(f"--grid {text!r} is not like 5x5 (points per axis, 'x' between axes)") from None
    if not sizes or min(sizes) < 2:
        raise UsageError(f"--grid {text!r}: every axis needs at least 2 points")
    return sizes


@dataclass
class GridObjective:
    """One grid trial: the point's knobs (others at the optimum), trained with ``recipe`` at the trial's seed."""

    space: Space
    grid: Grid
    recipe: Recipe

    def __call__(self, trial: optuna.Trial) -> float:
        point = self.space.only(self.grid.axes).suggest(trial)  # a queued trial's fixed values
        seed = trial.suggest_int("seed", 0, SEED_BOUND)
        outcome = self.recipe.run(self.space.config({**dict(self.grid.base), **point}, seed))
        trial.set_user_attr("epochs", outcome.epochs)
        trial.set_user_attr("diverged", outcome.diverged)
        return outcome.value


def run_grid(
    space: Space,
    grid: Grid,
    recipe: Recipe,
    seeds: Sequence[int],
    *,
    storage: Any,
    name: str,
    identity: Mapping[str, Any],
    execution: Execution = LOCAL,
    on_trial: Callable[[], None] | None = None,
) -> np.ndarray:
    """Train every point of ``grid`` with every seed (resuming a stored grid); the landscape.

    Returns val accuracy, shape ``(len(seeds), *grid.shape)``, axes in ``grid.axes`` order.
    ``execution``: who trains the trials.
    """
    full_identity = {"role": "grid", "space": space.to_dict(), "grid": grid.to_dict(), **identity}
    points = [{**point, "seed": seed} for seed in seeds for point in grid.points()]
    study = run_study(storage, name, full_identity, GridObjective(space, grid, recipe), points, execution,
                      on_trial=on_trial)
    return landscape(study, grid, seeds)


def landscape(study: optuna.Study, grid: Grid, seeds: Sequence[int]) -> np.ndarray:
    """The stored values as an array ``(seeds, *grid.shape)``; error if a point is missing."""
    values: dict[tuple, float] = {}
    for t in finished(study, (TrialState.COMPLETE,)):
        values[(*(repr(t.params.get(a)) for a in grid.axes), t.params.get("seed"))] = t.value
    out = np.empty((len(seeds), *grid.shape))
    for s, seed in enumerate(seeds):
        for index in itertools.product(*(range(n) for n in grid.shape)):
            key = (*(repr(grid.values[i][j]) for i, j in enumerate(index)), seed)
            if key not in values:
                raise UsageError(f"grid study {study.study_name!r} lacks the point {key}: run again to finish it")
            out[(s, *index)] = values[key]
    return out
