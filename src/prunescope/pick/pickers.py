"""Pickers: turn sensitivity curves into per-target sparsities.

Every picker is a small object with one method, ``pick(curves) -> Pick``, so that pickers
can be swapped, combined (:class:`EnsemblePicker`) and built by name (:func:`make_picker`).
Sparsities are fractions of a target's weights; metric values and drops are fractions of
the scan's metric (0.005 = half an accuracy point). A drop is ``dense.value - value``,
the dense model measured on the same examples as the point (see :func:`aligned`); it is
signed, so an improvement is a negative drop, never a violation.

- :class:`ThresholdPicker`: per target the highest measured sparsity whose drop is at most
  ``max_drop``. Its preset :meth:`ThresholdPicker.sconce` is sconce's
  ``auto_sensitivity_picker``: levels 0.95, 0.90, …, 0.10, keep the first (highest) level
  with ``|acc_dense - acc| <= degradation / 3``.
- :class:`KneePicker`: the knee of each curve (``kneed``, Satopää et al., "Finding a
  'Kneedle' in a Haystack", 2011), where the metric starts to fall.
- :class:`BudgetPicker`: reach a global sparsity, parameter or MAC budget exactly while
  losing the least predicted metric (multiple-choice knapsack, solved by Lagrangian
  relaxation).
- :class:`EnsemblePicker`: the most conservative (or the median) sparsity of its members.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from kneed import KneeLocator

from prunescope.curves import Curve, CurvePoint, Curves
from prunescope.errors import UsageError
from prunescope.masks import check_sparsity, removed_count

SCONCE_LEVELS = tuple(round(0.95 - 0.05 * i, 2) for i in range(18))  # 0.95, 0.90, …, 0.10
_SAME_LEVEL = 1e-9  # two sparsities closer than this are the same level


@dataclass
class Pick:
    """A picker's answer.

    allocation: ``{target: sparsity}`` for every curve (0.0 = dense).
    predicted_drop: sum over targets of the curves' drop at the chosen sparsity (fraction of the metric).
    decided_by: ``{target: name of the picker or ensemble member that chose its sparsity}``.
    details: picker-specific facts (knees found, fallbacks, budget reached, members' picks).
    """

    allocation: dict[str, float]
    predicted_drop: float
    decided_by: dict[str, str]
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Picker(Protocol):
    name: str

    def pick(self, curves: Curves) -> Pick: ...


def aligned(curve: Curve, curves: Curves) -> Curve:
    """``curve`` on the scale of ``curves.dense``, starting with the dense model at sparsity 0.

    A scan on subsets measures each point on its own number of examples n; its drop is
    against the dense model on that same subset (``curves.dense_at(n)``). Each point is
    shifted by the difference of the two dense values, so that ``dense.value - value`` is
    that drop. The dense model is added as the point at 0 when the scan did not measure one.
    """
    dense = curves.dense
    points = [_shifted(p, dense.value - curves.dense_at(p.n).value) for p in curve.points]
    if not any(p.sparsity <= _SAME_LEVEL for p in points):
        points.insert(0, replace(dense, sparsity=0.0))
    return Curve(curve.target, curve.numel, curve.macs, points, curve.params)


def _shifted(point: CurvePoint, shift: float) -> CurvePoint:
    if shift == 0:
        return point
    return replace(point, value=point.value + shift, low=point.low + shift, high=point.high + shift)


def _aligned_curves(curves: Curves) -> dict[str, Curve]:
    if not curves.curves:
        raise UsageError("there are no sensitivity curves to pick from: scan at least one layer first")
    return {name: aligned(curve, curves) for name, curve in curves.curves.items()}


def predicted_drops(curves: Curves, allocation: Mapping[str, float]) -> dict[str, float]:
    """Per-target drop ``dense.value - value`` at the allocated sparsity.

    Values are interpolated linearly between measured points (the dense model at 0) and
    clamped beyond the highest measured point, which is an optimistic guess there.
    """
    unknown = [name for name in allocation if name not in curves.curves]
    if unknown:
        raise UsageError(f"no curve for layer {unknown[0]!r}; scanned: {', '.join(curves.curves)}")
    dense = curves.dense.value
    return {name: dense - aligned(curves.curves[name], curves).value_at(s) for name, s in allocation.items()}


def _finish(curves: Curves, allocation: dict[str, float], decided_by: str, details: dict) -> Pick:
    """A Pick whose predicted drop is read off the curves, every target decided by one picker."""
    drops = predicted_drops(curves, allocation)
    return Pick(allocation, sum(drops.values()), dict.fromkeys(allocation, decided_by), {"drops": drops, **details})


@dataclass
class ThresholdPicker:
    """Per target, the highest measured sparsity whose drop is at most ``max_drop``.

    max_drop: allowed drop of the metric per target (fraction, 0.005 = half a point).
    use_lower_bound: judge ``dense.value - point.low`` (the pessimistic end of the point's
        interval) instead of its value; for cross-validated or subset curves.
    absolute: judge ``|drop|``, so that an improvement beyond ``max_drop`` is rejected too
        (sconce's rule); by default an improvement always passes.
    levels: judge only measured points at these sparsities (None: every measured point).
    Targets with no level within the bound stay dense.
    """

    max_drop: float = 0.005
    use_lower_bound: bool = False
    absolute: bool = False
    levels: Sequence[float] | None = None
    name: str = "threshold"

    def __post_init__(self) -> None:
        if not self.max_drop >= 0:
            raise UsageError(f"max drop must be a non-negative fraction of the metric, got {self.max_drop:g}")
        for level in self.levels or ():
            check_sparsity(level, "threshold level")

    @classmethod
    def sconce(cls, degradation: float = 0.012) -> ThresholdPicker:
        """sconce's ``auto_sensitivity_picker``: first level from 0.95 down with |dense - acc| <= degradation / 3."""
        return cls(max_drop=degradation / 3, absolute=True, levels=SCONCE_LEVELS, name="sconce")

    def judged_drop(self, point: CurvePoint, dense: float) -> float:
        """The drop this rule compares with ``max_drop``; ``dense`` is the dense metric on the point's scale."""
        drop = dense - (point.low if self.use_lower_bound else point.value)
        return abs(drop) if self.absolute else drop

    def highest(self, curve: Curve, dense: float) -> float:
        """The highest judged sparsity of an :func:`aligned` curve within the bound, 0.0 when there is none."""
        judged = [p for p in curve.points if self.levels is None or _is_level(p.sparsity, self.levels)]
        passing = [p.sparsity for p in judged if self.judged_drop(p, dense) <= self.max_drop]
        return max(passing, default=0.0)

    def pick(self, curves: Curves) -> Pick:
        allocation = {name: self.highest(c, curves.dense.value) for name, c in _aligned_curves(curves).items()}
        details: dict = {"max_drop": self.max_drop, "use_lower_bound": self.use_lower_bound, "absolute": self.absolute}
        if self.levels is not None:
            # A level the scan never measured cannot be judged: say which, rather than interpolate.
            details["unmeasured_levels"] = {
                name: [lv for lv in self.levels if not any(_is_level(p.sparsity, [lv]) for p in curve.points)]
                for name, curve in curves.curves.items()
            }
        return _finish(curves, allocation, self.name, details)


def _is_level(sparsity: float, levels: Sequence[float]) -> bool:
    return any(abs(sparsity - level) <= _SAME_LEVEL for level in levels)


@dataclass
class KneePicker:
    """Per target the knee of the curve: where the metric starts to fall.

    ``kneed.KneeLocator(curve="concave", direction="decreasing")`` on the measured points
    (the dense model at 0). A curve with no knee (flat, straight, or fewer than three
    points) falls back to the threshold rule with ``fallback_max_drop``: the highest
    level when nothing hurts, dense when every level does; ``details["fallback"]`` lists
    those targets.

    sensitivity: kneed's S, how pronounced a knee must be (higher finds fewer knees).
    fallback_max_drop: allowed drop of the fallback (fraction of the metric).
    """

    sensitivity: float = 1.0
    fallback_max_drop: float = 0.005
    name: str = "knee"

    def __post_init__(self) -> None:
        if not self.sensitivity > 0:
            raise UsageError(f"knee sensitivity must be positive, got {self.sensitivity:g}")
        self._fallback = ThresholdPicker(max_drop=self.fallback_max_drop)

    def knee(self, curve: Curve) -> float | None:
        """The knee's sparsity on an :func:`aligned` curve, None when kneed finds none."""
        points = curve.sorted_points()
        if len(points) < 3:
            return None
        # kneed warns (and divides by zero on flat curves) when there is no knee: that is our fallback case.
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            locator = KneeLocator(
                [p.sparsity for p in points],
                [p.value for p in points],
                S=self.sensitivity,
                curve="concave",
                direction="decreasing",
            )
        return None if locator.knee is None else float(locator.knee)

    def pick(self, curves: Curves) -> Pick:
        aligned_curves = _aligned_curves(curves)
        knees = {name: self.knee(curve) for name, curve in aligned_curves.items()}
        allocation = {
            name: self._fallback.highest(aligned_curves[name], curves.dense.value) if knee is None else knee
            for name, knee in knees.items()
        }
        fallback = [name for name, knee in knees.items() if knee is None]
        details = {
            "knees": knees,
            "fallback": fallback,
            "fallback_rule": f"threshold with max_drop {self.fallback_max_drop:g}",
        }
        return _finish(curves, allocation, self.name, details)


@dataclass
class _Choices:
    """One target's candidates for the knapsack: removed weights and the predicted drop at each."""

    name: str
    numel: int
    counts: np.ndarray  # removed weights, ascending, first 0
    drops: np.ndarray  # predicted drop at each count (fraction of the metric)
    unit: float  # budget saved per removed weight: 1 weight, or the target's MACs per weight

    def drop(self, count: int) -> float:
        # Candidates include every measured point, so the curve is linear between two neighbours.
        return float(np.interp(count, self.counts, self.drops))

    def below(self, count: int) -> int:
        """The largest candidate below ``count``."""
        return int(self.counts[self.counts < count][-1])

    def above(self, count: int) -> int:
        """The smallest candidate above ``count``."""
        return int(self.counts[self.counts > count][0])

    def slope(self, low: int, high: int) -> float:
        """Drop per unit of budget from ``low`` to ``high`` removed weights."""
        return (self.drop(high) - self.drop(low)) / (self.unit * (high - low))


@dataclass
class BudgetPicker:
    """Reach one global budget while losing the least predicted metric.

    Exactly one of:

    target_sparsity: removed weights of all curves' targets must total ``round(s · N)``
        exactly (N = Σ numel).
    target_params: remaining weights of the targets ≤ this many.
    target_macs: remaining MACs per sample ≤ this many, counted unstructured-effective:
        Σ macs_l · (1 - s_l).

    Candidate sparsities per target are its measured points plus a grid every ``grid``
    between 0 and its highest measured point (never beyond: values there are unknown);
    drops between measured points are interpolated. This is a multiple-choice knapsack,
    solved by Lagrangian relaxation: bisect the multiplier λ so that choosing per target
    ``argmin drop(s) - λ · saving(s)`` reaches the budget. The choices just short of the
    budget and just past it are then repaired, one candidate step at a time: short of it,
    remove more where a unit of budget costs the least drop; past it, give back the
    weights whose removal cost the most; the better of the two is kept, its total exact
    to the weight. That is optimal (up to the grid) where the drops are convex in
    sparsity, the usual shape; on non-convex stretches (noise, a cliff) it is a heuristic
    that can miss the optimum by part of one such stretch.
    """

    target_sparsity: float | None = None
    target_params: int | None = None
    target_macs: int | None = None
    grid: float = 0.005
    name: str = "budget"

    def __post_init__(self) -> None:
        given = [k for k in ("target_sparsity", "target_params", "target_macs") if getattr(self, k) is not None]
        if len(given) != 1:
            raise UsageError(
                "the budget picker needs exactly one of target_sparsity, target_params, target_macs; "
                f"got {', '.join(given) or 'none'}"
            )
        if self.target_sparsity is not None:
            check_sparsity(self.target_sparsity, "target sparsity")
        for key in ("target_params", "target_macs"):
            if (getattr(self, key) or 0) < 0:
                raise UsageError(f"{key} must be a non-negative count, got {getattr(self, key)}")
        if not 0 < self.grid < 1:
            raise UsageError(f"budget grid must be a sparsity step in (0, 1), got {self.grid:g}")

    def _choices(self, curves: Curves) -> list[_Choices]:
        result = []
        for name, curve in _aligned_curves(curves).items():
            measured = [p.sparsity for p in curve.points]
            sparsities = np.union1d(np.arange(0.0, max(measured), self.grid), measured)
            counts = np.unique([removed_count(float(s), curve.numel) for s in sparsities])
            drops = np.array([curves.dense.value - curve.value_at(int(c) / curve.numel) for c in counts])
            unit = curve.macs / curve.numel if self.target_macs is not None else 1.0
            result.append(_Choices(name, curve.numel, counts, drops, unit))
        return result

    def _required(self, choices: list[_Choices], curves: Curves) -> float:
        """Budget to save (removed weights, or MACs), checked against what the scanned levels allow."""
        total = sum(c.numel for c in choices)
        most = sum(c.unit * c.counts[-1] for c in choices)
        if self.target_sparsity is not None:
            required = removed_count(self.target_sparsity, total)
            if required > most:
                raise UsageError(
                    f"target sparsity {self.target_sparsity:g} is above what the scanned levels allow "
                    f"(max {most / total:.4g}); scan higher levels"
                )
            return required
        if self.target_params is not None:
            if total - most > self.target_params:
                raise UsageError(
                    f"target params {self.target_params} is below what the scanned levels allow "
                    f"(min {int(total - most)} remaining); scan higher levels"
                )
            return total - self.target_params
        dense_macs = sum(curve.macs for curve in curves.curves.values())
        if dense_macs == 0:
            raise UsageError("the curves carry no MAC counts: give target_sparsity or target_params instead")
        if dense_macs - most > self.target_macs:
            raise UsageError(
                f"target MACs {self.target_macs} is below what the scanned levels allow "
                f"(min {dense_macs - most:.0f} remaining); scan higher levels"
            )
        return dense_macs - self.target_macs

    def pick(self, curves: Curves) -> Pick:
        choices = self._choices(curves)
        required = self._required(choices, curves)
        multiplier, under, over = _lagrangian(choices, required)
        exact = self.target_sparsity is not None
        # Repair both neighbours of the multiplier: where a curve is not convex (a cliff, then a
        # plateau at chance) the hull jumps over the budget, and either side can be the better start.
        repaired = [_repair(choices, counts, required, exact=exact) for counts in (under, over)]
        counts = min(repaired, key=lambda counts: sum(c.drop(n) for c, n in zip(choices, counts, strict=True)))
        allocation = {c.name: int(n) / c.numel for c, n in zip(choices, counts, strict=True)}
        total = sum(c.numel for c in choices)
        removed = int(sum(counts))
        details = {
            "target_sparsity": self.target_sparsity,
            "target_params": self.target_params,
            "target_macs": self.target_macs,
            "grid": self.grid,
            "lagrange_multiplier": multiplier,
            "removed": removed,
            "sparsity": removed / total,
            "remaining_params": total - removed,
            "remaining_macs": sum(curves.curves[name].macs * (1 - s) for name, s in allocation.items()),
        }
        return _finish(curves, allocation, self.name, details)


def _saving(choices: list[_Choices], counts: Sequence[int]) -> float:
    return sum(c.unit * n for c, n in zip(choices, counts, strict=True))


def _lagrangian(choices: list[_Choices], required: float) -> tuple[float, list[int], list[int]]:
    """Bisect the multiplier λ (drop per unit of budget) at which the per-target argmins reach ``required``.

    Returns λ and the argmins just below it (saving short of ``required`` unless λ = 0)
    and at it (saving at least ``required``).
    """

    def choose(multiplier: float) -> list[int]:
        # argmin takes the first minimum: among equal costs, the fewest removed weights.
        return [int(c.counts[np.argmin(c.drops - multiplier * c.unit * c.counts)]) for c in choices]

    if _saving(choices, choose(0.0)) >= required:
        return 0.0, choose(0.0), choose(0.0)
    low, high = 0.0, 1.0
    while _saving(choices, choose(high)) < required:
        low, high = high, high * 2
    for _ in range(100):
        middle = (low + high) / 2
        if _saving(choices, choose(middle)) >= required:
            high = middle
        else:
            low = middle
    return high, choose(low), choose(high)


def _repair(choices: list[_Choices], counts: list[int], required: float, *, exact: bool) -> list[int]:
    """Move weights one candidate step at a time until the saving meets ``required``.

    Short of the budget: remove more where a unit of budget costs the least drop. Past it:
    give back the weights whose removal cost the most drop per unit of budget, while the
    budget stays met. ``exact`` gives back even where removing helped the metric, so that
    the saving lands exactly on ``required`` (whole weights); otherwise only weights whose
    removal cost something are given back. A step may stop between candidates: the curve
    is linear there.
    """
    counts = list(counts)
    movable = [i for i, c in enumerate(choices) if c.unit > 0]

    def gap() -> float:
        return required - _saving(choices, counts)

    growing = [i for i in movable if counts[i] < choices[i].counts[-1]]
    while gap() > 0 and growing:
        i = min(growing, key=lambda i: choices[i].slope(counts[i], choices[i].above(counts[i])))
        c = choices[i]
        counts[i] += min(c.above(counts[i]) - counts[i], math.ceil(gap() / c.unit))
        if counts[i] == c.counts[-1]:
            growing.remove(i)
    shrinking = [i for i in movable if counts[i] > 0]
    while gap() < 0 and shrinking:
        i = max(shrinking, key=lambda i: choices[i].slope(choices[i].below(counts[i]), counts[i]))
        c, n = choices[i], counts[i]
        if not exact and c.slope(c.below(n), n) <= 0:
            break
        step = n - c.below(n)
        back = min(step, math.floor(-gap() / c.unit))
        counts[i] = n - back
        if back < step or counts[i] == 0:
            shrinking.remove(i)  # it cannot give back more without breaking the budget, or is dense
    return counts


@dataclass
class EnsemblePicker:
    """Combine pickers per target.

    rule ``"min"``: the lowest sparsity of the members (the most conservative);
    ``"vote"``: the (lower) median of the members' sparsities, a majority when there is one.
    ``decided_by`` names the member whose sparsity was taken (the first one on ties).
    A ``"min"`` over a budget member does not keep its budget.
    """

    members: list[Picker]
    rule: Literal["min", "vote"] = "min"
    name: str = "ensemble"

    def __post_init__(self) -> None:
        if not self.members:
            raise UsageError("an ensemble needs at least one member picker")
        if self.rule not in ("min", "vote"):
            raise UsageError(f"unknown ensemble rule {self.rule!r}: use min or vote")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise UsageError(f"ensemble members need distinct names, got {', '.join(names)}")

    def pick(self, curves: Curves) -> Pick:
        picks = {m.name: m.pick(curves) for m in self.members}
        allocation, decided_by = {}, {}
        for target in curves.curves:
            # Stable sort by sparsity: ties keep member order, so the first member wins them.
            ranked = sorted(picks, key=lambda member: picks[member].allocation[target])
            chosen = ranked[0] if self.rule == "min" else ranked[(len(ranked) - 1) // 2]
            allocation[target] = picks[chosen].allocation[target]
            decided_by[target] = chosen
        drops = predicted_drops(curves, allocation)
        members = {
            member: {"allocation": p.allocation, "predicted_drop": p.predicted_drop, "details": p.details}
            for member, p in picks.items()
        }
        details = {"drops": drops, "rule": self.rule, "members": members}
        return Pick(allocation, sum(drops.values()), decided_by, details)


PICKERS: dict[str, Callable[..., Picker]] = {
    "threshold": ThresholdPicker,
    "sconce": ThresholdPicker.sconce,
    "knee": KneePicker,
    "budget": BudgetPicker,
    "ensemble": EnsemblePicker,
}


def make_picker(name: str, **options: object) -> Picker:
    """Build a picker by name: threshold, sconce, knee, budget or ensemble.

    The ensemble's ``members`` may be pickers or picker names; by default it is the
    ``"min"`` of threshold and knee (sconce likewise combines its two methods).
    """
    if name not in PICKERS:
        raise UsageError(f"unknown picker {name!r}: use one of {', '.join(PICKERS)}")
    factory = PICKERS[name]
    allowed = {"degradation"} if name == "sconce" else {f.name for f in fields(factory) if f.init}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UsageError(f"the {name} picker has no option {unknown[0]!r}; options: {', '.join(sorted(allowed))}")
    if name == "ensemble":
        members = options.get("members") or ["threshold", "knee"]
        options["members"] = [make_picker(m) if isinstance(m, str) else m for m in members]
        if not all(isinstance(m, Picker) for m in options["members"]):
            raise UsageError("ensemble members must be pickers or picker names")
    return factory(**options)
