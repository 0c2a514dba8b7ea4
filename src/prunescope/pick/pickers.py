"""Pickers: turn sensitivity curves into per-target sparsities.

Every picker is a small object with one method, ``pick(curves) -> Pick``, so that pickers
can be swapped, combined (:class:`EnsemblePicker`) and built by name (:func:`~prunescope.pick.registry.make_allocator`).
Sparsities are fractions of a target's weights (of a channel group's channels, for
channel curves); metric values and drops are fractions of the scan's metric (0.005 = half
an accuracy point). A drop is ``dense.value - value``, the dense model measured on the
same examples as the point (see :func:`aligned`); it is signed, so an improvement is a
negative drop, never a violation.

- :class:`ThresholdPicker`: per target the highest measured sparsity whose drop is at most
  ``max_drop``. Its preset :meth:`ThresholdPicker.sconce` is sconce's
  ``auto_sensitivity_picker``: levels 0.95, 0.90, …, 0.10, keep the first (highest) level
  with ``|acc_dense - acc| <= degradation / 3``.
- :class:`KneePicker`: the knee of each curve (``kneed``, Satopää et al., "Finding a
  'Kneedle' in a Haystack", 2011), where the metric starts to fall.
- :class:`~prunescope.pick.budget.BudgetPicker` (its own module): reach a global sparsity,
  parameter, MAC or (channel curves) latency budget exactly while losing the least
  predicted metric.
- :class:`EnsemblePicker`: the most conservative (or the median) sparsity of its members.

:func:`prunescope.pick.registry.make_allocator` builds any of them by name; as allocators
(:class:`~prunescope.pick.allocator.Allocator`) they pick on a problem's curves.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from kneed import KneeLocator

from prunescope.curves import Curve, CurvePoint, Curves
from prunescope.errors import UsageError
from prunescope.masks import check_sparsity
from prunescope.pick.allocator import Pick, ReadsCurves
from prunescope.scan.strategy import SCONCE_LEVELS

SAME_LEVEL = 1e-9  # two sparsities closer than this are the same level


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
    if not any(p.sparsity <= SAME_LEVEL for p in points):
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
class ThresholdPicker(ReadsCurves):
    """Per target, the highest measured sparsity whose drop is at most ``max_drop``.

    max_drop: allowed drop of the metric per target (fraction, 0.005 = half a point).
    use_lower_bound: judge the pessimistic end of the point's drop instead of the drop: the
        upper end of its paired interval (``point.drop_high``) where the scan kept one,
        else ``dense.value - point.low``; for subset curves.
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
        return cls(max_drop=degradation / 3, absolute=True, levels=SCONCE_LEVELS[::-1], name="sconce")  # from 0.95 down

    def judged_drop(self, point: CurvePoint, dense: float) -> float:
        """The drop this rule compares with ``max_drop``; ``dense`` is the dense metric on the point's scale."""
        if self.use_lower_bound and point.drop_high is not None:
            drop = point.drop_high
        else:
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
    return any(abs(sparsity - level) <= SAME_LEVEL for level in levels)


@dataclass
class KneePicker(ReadsCurves):
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
class EnsemblePicker(ReadsCurves):
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
