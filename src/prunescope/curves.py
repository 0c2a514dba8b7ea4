"""Sensitivity curves: what a scan produces and what pickers read.

A curve is one target's metric as a function of that target's sparsity, every other
target dense. Values are the scan's score, higher is better (:mod:`prunescope.scores`):
accuracy by default, a fraction in [0, 1]; for a language model ``-ln perplexity``.
``low`` / ``high`` bound each value (its confidence interval); without an interval they
equal the value. ``drop_low`` / ``drop_high`` bound the drop from the dense
model measured on the same examples (a paired interval, much tighter than the value's own
where the two models agree on most examples).

For accuracy, :class:`ExampleResults` keeps which val examples every evaluation got right,
so that the curves on any subset of val (:meth:`Curves.on`: cross-validation folds) come
from the scan without evaluating again.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from prunescope.errors import UsageError
from prunescope.evaluate import pack_bits, paired_drop, unpack_bits, wilson_interval


@dataclass(frozen=True)
class CurvePoint:
    """One measurement: ``value`` of the metric at ``sparsity`` on ``n`` examples, its interval ``low`` … ``high``.

    drop_low / drop_high: 95% paired interval of the drop ``dense - value`` against the dense
    model on the same ``n`` examples, as an estimate of the drop on unseen data from the same
    distribution (:func:`prunescope.evaluate.paired_drop_interval`, Bonett & Price's adjusted
    Wald interval); None where the scan kept no paired counts (a metric other than accuracy,
    or a scan from before they were kept).
    """

    sparsity: float
    value: float
    low: float
    high: float
    n: int  # examples the value was measured on
    drop_low: float | None = None
    drop_high: float | None = None


PointKey = tuple[str, float, int]
"""``(target, sparsity, n)``: one evaluation of a scan."""


@dataclass(eq=False)
class ExampleResults:
    """Per-example results of a scan (accuracy only): which val examples every evaluation got right.

    size: examples in the val split.
    index: ``{n: indices (n,) into val}``, the examples a subset size evaluates, in the
        evaluation's order (:func:`prunescope.evaluate.subset_indices`).
    dense: ``{n: correct (n,) bool}`` of the dense model on ``index[n]``.
    points: ``{(target, sparsity, n): correct (n,) bool}`` of each curve point on ``index[n]``.
    missing: curve points without per-example results (evaluated by a prunescope that did not
        keep them); :meth:`Curves.on` refuses to restrict curves that have any.
    """

    size: int
    index: dict[int, np.ndarray]
    dense: dict[int, np.ndarray]
    points: dict[PointKey, np.ndarray]
    missing: int = 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExampleResults):
            return NotImplemented

        def same(a: Mapping, b: Mapping) -> bool:
            return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

        return (self.size, self.missing) == (other.size, other.missing) and all(
            same(a, b) for a, b in ((self.index, other.index), (self.dense, other.dense), (self.points, other.points))
        )

    def to_dict(self) -> dict:
        """JSON form: index as base64 int32 (``"all"`` for the whole split), results as :func:`pack_bits`."""
        return {
            "size": self.size,
            "missing": self.missing,
            "index": {
                str(n): "all" if len(i) == self.size and np.array_equal(i, np.arange(self.size))
                else base64.b64encode(i.astype("<i4").tobytes()).decode("ascii")
                for n, i in self.index.items()
            },
            "dense": {str(n): pack_bits(c) for n, c in self.dense.items()},
            "points": [
                {"target": t, "sparsity": s, "n": n, "correct": pack_bits(c)} for (t, s, n), c in self.points.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ExampleResults:
        size = int(data["size"])
        index = {
            int(n): np.arange(size, dtype=np.int64) if text == "all"
            else np.frombuffer(base64.b64decode(text), dtype="<i4").astype(np.int64)
            for n, text in data["index"].items()
        }
        return cls(
            size,
            index,
            {int(n): unpack_bits(text, int(n)) for n, text in data["dense"].items()},
            {(p["target"], p["sparsity"], p["n"]): unpack_bits(p["correct"], p["n"]) for p in data["points"]},
            int(data.get("missing", 0)),
        )


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
    per_example: ExampleResults | None = None  # per-example results (accuracy scans), for folds without re-evaluation
    reconstruct: str | None = None  # how each point was pruned: "mask" / "obs" layer-wise reconstruction, None masks
    fallback: dict[str, str] = field(default_factory=dict)  # reconstructed scans: layers masked alone, with the reason
    units: str = "matrix"  # weight scans: one curve per weight tensor ("matrix") or per block of the network ("block")
    members: dict[str, list[str]] = field(default_factory=dict)  # block scans: each curve's weight tensors
    # Of the evaluations, those this scan's workers ran (the rest: other processes sharing the study, now or before).
    evaluated_here: int = 0

    def targets_of(self, allocation: Mapping[str, float]) -> dict[str, float]:
        """``allocation`` over these curves' units as per-unit sparsities of the targets they hold: a block
        scan's ``{block: s}`` as ``{target: s}`` for each of its members (counts spread exactly by
        :class:`prunescope.units.BlockUnits`); any other scan's as it is."""
        if self.units != "block":
            return dict(allocation)
        return {t: s for block, s in allocation.items() for t in self.members[block]}

    def dense_at(self, n: int) -> CurvePoint:
        """The dense reference for a point measured on ``n`` examples (the same seeded subset)."""
        return self.dense_by_n.get(n, self.dense)

    def to_dict(self, per_example: bool = True) -> dict:
        """JSON form; ``per_example=False`` leaves the per-example results out (they are large)."""
        data = asdict(replace(self, per_example=None))
        data["per_example"] = self.per_example.to_dict() if per_example and self.per_example is not None else None
        return data

    def without_per_example(self) -> str | None:
        """Why these curves cannot be restricted to other examples (:meth:`on`), or None when they can."""
        if self.metric != "accuracy":
            return (f"a {self.metric} scan keeps no per-example right / wrong results to cross-validate on: the "
                    "pick is verified in-sample")
        if self.per_example is None:
            return "these curves kept no per-example results (an accuracy scan keeps them): scan again"
        if self.per_example.missing:
            return (f"{self.per_example.missing} points of this scan have no per-example results (made by an older "
                    "prunescope): scan again into a new --out")
        return None

    def on(self, examples: np.ndarray) -> Curves:
        """These curves as if the scan had evaluated only the val examples ``examples`` (indices into val).

        Every point keeps the examples of its own evaluation that lie in ``examples`` (``n``
        becomes their count) and is recomputed from :attr:`examples`: value, Wilson interval,
        and the paired interval of the drop against the dense model on the same examples. A
        point with none of them left is dropped. Nothing is evaluated again.
        """
        if (reason := self.without_per_example()) is not None:
            raise UsageError(f"{reason}, or skip cross-validation (--folds 0)")
        results = self.per_example
        assert results is not None
        chosen = np.zeros(results.size, dtype=bool)
        chosen[examples] = True
        keep = {n: chosen[index] for n, index in results.index.items()}

        def point(sparsity: float, correct: np.ndarray, dense: np.ndarray | None) -> CurvePoint:
            m = int(correct.sum())
            low, high = wilson_interval(m, len(correct))
            _, drop_low, drop_high = paired_drop(dense, correct) if dense is not None else (None, None, None)
            return CurvePoint(sparsity, m / len(correct), low, high, len(correct), drop_low, drop_high)

        # Subsets of one seed are nested, so two sizes left with as many examples hold the same ones.
        dense_by_n = {
            int(keep[n].sum()): point(0.0, c[keep[n]], None) for n, c in results.dense.items() if keep[n].any()
        }
        curves = {}
        for name, curve in self.curves.items():
            points = []
            for p in curve.points:
                kept = keep[p.n]
                if kept.any():
                    points.append(point(p.sparsity, results.points[(name, p.sparsity, p.n)][kept],
                                        results.dense[p.n][kept]))
            curves[name] = replace(curve, points=points)
        first = int(keep[min(results.dense)].sum())
        if first == 0:
            raise UsageError("none of the chosen val examples was evaluated by the scan: choose others")
        return replace(self, dense=dense_by_n[first], curves=curves, dense_by_n=dict(sorted(dense_by_n.items())),
                       per_example=None)

    @classmethod
    def from_dict(cls, data: dict) -> Curves:
        """The curves of a :meth:`to_dict` document (``scan.json``'s ``curves``)."""
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
            ExampleResults.from_dict(data["per_example"]) if data.get("per_example") else None,
            reconstruct=data.get("reconstruct"),
            fallback=data.get("fallback", {}),
            units=data.get("units", "group" if data.get("granularity") == "channel" else "matrix"),
            members=data.get("members", {}),
            evaluated_here=data.get("evaluated_here", 0),
        )
