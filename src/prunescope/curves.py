"""Sensitivity curves: what a scan produces and what pickers read.

A curve is one target's metric as a function of that target's sparsity, every other
target dense. Values are the scan's metric (accuracy by default, a fraction in [0, 1];
higher is better). ``low`` / ``high`` bound each value (subset confidence interval or
fold spread); without an interval they equal the value.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class CurvePoint:
    sparsity: float
    value: float
    low: float
    high: float
    n: int  # examples the value was measured on


@dataclass
class Curve:
    """Metric vs sparsity of one target, every other target dense.

    Weight granularity: the target is a weight tensor of ``numel`` weights, sparsity the
    fraction of them removed. Channel granularity: the target is a coupled channel group
    (:mod:`prunescope.structured.groups`) of ``numel`` root channels, sparsity the fraction
    of those channels removed, and ``params`` the parameters in the group's slices (all its
    members). ``macs``: dense MACs per sample of the weights the target covers.
    """

    target: str
    numel: int
    macs: int
    points: list[CurvePoint] = field(default_factory=list)
    params: int | None = None  # channel groups only; a weight target holds ``numel`` parameters

    def sorted_points(self) -> list[CurvePoint]:
        return sorted(self.points, key=lambda p: p.sparsity)

    def value_at(self, sparsity: float) -> float:
        """Linear interpolation between measured points (clamped at the ends)."""
        points = self.sorted_points()
        if not points:
            raise ValueError(f"curve of {self.target} has no points")
        if sparsity <= points[0].sparsity:
            return points[0].value
        for left, right in itertools.pairwise(points):
            if sparsity <= right.sparsity:
                t = (sparsity - left.sparsity) / (right.sparsity - left.sparsity)
                return left.value + t * (right.value - left.value)
        return points[-1].value


@dataclass
class Curves:
    """All curves of one scan, with the dense model's metric."""

    metric: str
    criterion: str
    dense: CurvePoint
    curves: dict[str, Curve]
    evaluations: int = 0  # evaluations the curves rest on, the dense ones included: run now + reused
    reused: int = 0  # of those, read back from the scan's study instead of run again
    examples: int = 0  # sum of n over those evaluations: cost in examples (n / len(val) of a full evaluation each)
    dense_by_n: dict[int, CurvePoint] = field(default_factory=dict)  # dense metric on every subset size used
    granularity: str = "weight"  # "weight": targets are weight tensors; "channel": coupled channel groups
    skipped: dict[str, str] = field(default_factory=dict)  # channel scans: layers left dense, with the reason

    def dense_at(self, n: int) -> CurvePoint:
        """The dense reference for a point measured on ``n`` examples (the same seeded subset)."""
        return self.dense_by_n.get(n, self.dense)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Curves:
        curves = {
            name: Curve(c["target"], c["numel"], c["macs"], [CurvePoint(**p) for p in c["points"]], c.get("params"))
            for name, c in data["curves"].items()
        }
        return cls(
            data["metric"],
            data["criterion"],
            CurvePoint(**data["dense"]),
            curves,
            data.get("evaluations", 0),
            data.get("reused", 0),
            data.get("examples", 0),
            # JSON turns the integer keys into strings.
            {int(n): CurvePoint(**p) for n, p in data.get("dense_by_n", {}).items()},
            data.get("granularity", "weight"),
            data.get("skipped", {}),
        )
