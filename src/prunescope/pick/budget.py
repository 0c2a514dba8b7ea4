"""The budget picker: meet one global budget exactly while losing the least predicted metric.

A multiple-choice knapsack over per-target candidates (removed weights, or removed channels
of a group), solved by Lagrangian relaxation and repaired to the budget; channel budgets are
checked against the model's exact footprint (and measured latency). See :class:`BudgetPicker`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from prunescope.curves import Curve, Curves
from prunescope.errors import UsageError
from prunescope.masks import check_sparsity, removed_count
from prunescope.pick.allocator import Pick, Problem, ReadsCurves
from prunescope.pick.knapsack import (
    Choices,
    additive_saving,
    allocation_of,
    deepest_counts,
    finest_step,
    lagrangian,
    repair,
    total_drop,
)

if TYPE_CHECKING:
    from prunescope.measure import Latency
    from prunescope.structured.groups import Footprint
from prunescope.pick.pickers import _aligned_curves, _finish


class LatencyCosts(Protocol):
    """What a latency budget reads; :class:`prunescope.structured.latency.LatencyTable` implements it."""

    dense: Latency

    def savings(self, group: str, removed: np.ndarray) -> np.ndarray:
        """Milliseconds per batch saved by removing each of ``removed`` (ascending) channels of ``group`` alone."""
        ...

    def measure(self, allocation: Mapping[str, float]) -> Latency:
        """The whole model pruned with ``allocation``, timed on the device (the same allocation: the same timing)."""
        ...


@dataclass(frozen=True)
class _Budget:
    """A budget on the knapsack's scale: of ``dense`` at most ``limit`` may remain.

    Units: weights (sparsity, and params of weight curves), parameters, MACs per sample or
    ms per batch. ``exact``: what remains of the whole model under an allocation, where the
    knapsack's additive saving is only an estimate (coupled channel groups share slices;
    latency is measured); None where the additive saving is exact.
    """

    kind: str  # "sparsity", "params", "MACs" or "latency"
    dense: float
    limit: float
    exact: Callable[[dict[str, float]], float] | None = None

    @property
    def required(self) -> float:
        return self.dense - self.limit

    def show(self, value: float) -> str:
        return f"{value:.4g} ms" if self.kind == "latency" else f"{value:.0f}"


def macs_limit(target_macs: float, dense: float) -> float:
    """A MAC target in MACs per sample: a value in (0, 1] is that fraction of ``dense``, a larger one a count."""
    return target_macs * dense if 0 < target_macs <= 1 else float(target_macs)


MAX_BISECTIONS = 40  # knapsack solutions tried against the exact footprint or latency


@dataclass
class BudgetPicker(ReadsCurves):
    """Reach one global budget while losing the least predicted metric.

    Exactly one of:

    target_sparsity: weight curves only; removed weights of all curves' targets must total
        ``round(s · N)`` exactly (N = Σ numel).
    target_params: weight curves: remaining weights of the targets ≤ this many; channel
        curves: remaining parameters of the WHOLE model (biases and norms included) ≤ this many.
    target_macs: remaining MACs per sample ≤ this many; a value in (0, 1] is that fraction of
        the dense MACs (0.5: half of them). Weight curves count the targets'
        unstructured-effective MACs, Σ macs_l · (1 - s_l), and their dense MACs are Σ macs_l
        (the whole model's when every layer was scanned); channel curves count the whole
        model's dense MACs once the channels are removed.
    target_latency_ms: channel curves only; the whole model's median latency (ms per batch,
        on ``latency``'s device and batch size) ≤ this.

    Candidates per target are its measured points plus, for weights, a grid every ``grid``
    between 0 and its highest measured point (never beyond: values there are unknown); for
    channels, every count of removed channels that leaves a multiple of ``round_to`` (at
    least one), up to the highest measured sparsity and one channel short of the width.
    Drops between measured points are interpolated. This is a multiple-choice knapsack,
    solved by Lagrangian relaxation: bisect the multiplier λ so that choosing per target
    ``argmin drop(s) - λ · saving(s)`` reaches the budget. The choices just short of the
    budget and just past it are then repaired, one candidate step at a time: short of it,
    remove more where a unit of budget costs the least drop; past it, give back the units
    whose removal cost the most; the better of the two is kept. Weights may stop between
    candidates, so a weight budget is met to the weight; channels move whole candidate steps.
    That is optimal (up to the grid) where the drops are convex in sparsity, the usual
    shape; on non-convex stretches (noise, a cliff) it is a heuristic that can miss the
    optimum by part of one such stretch.

    Channel savings are standalone (one group pruned, the rest dense): the parameters or
    MACs of a group's slices per channel, or the latency it saves alone (``latency``'s
    table). Coupled groups share slices (a conv losing input and output channels), so their
    sum overstates the saving. Channel budgets are therefore met EXACTLY against ``footprint``
    (the whole model's parameters and MACs under an allocation, e.g.
    :meth:`prunescope.structured.pruning.ChannelPruning.footprint`, with the same
    ``round_to``) or ``latency.measure``: the knapsack's required saving is bisected until
    the exact remaining meets the limit, then candidate steps are given back while it still
    does (``details``: every trial, estimated and exact). Without them the savings are the
    units' standalone ones added up: exact for weights, an overestimate for coupled channel
    groups (``prunescope.pick.choose`` passes the footprint of units that are not additive).
    """

    target_sparsity: float | None = None
    target_params: int | None = None
    target_macs: float | None = None
    target_latency_ms: float | None = None
    grid: float = 0.005
    round_to: int = 1
    footprint: Callable[[Mapping[str, float]], Footprint] | None = field(default=None, repr=False)
    latency: LatencyCosts | None = field(default=None, repr=False)
    name: str = "budget"

    def __post_init__(self) -> None:
        keys = ("target_sparsity", "target_params", "target_macs", "target_latency_ms")
        given = [k for k in keys if getattr(self, k) is not None]
        if len(given) != 1:
            got = ", ".join(given) or "none"
            raise UsageError(f"the budget picker needs exactly one of {', '.join(keys)}; got {got}")
        if self.target_sparsity is not None:
            check_sparsity(self.target_sparsity, "target sparsity")
        for key in ("target_params", "target_macs"):
            if (getattr(self, key) or 0) < 0:
                raise UsageError(f"{key} must be a non-negative count, got {getattr(self, key)}")
        if self.target_latency_ms is not None and not self.target_latency_ms > 0:
            raise UsageError(f"target latency must be a positive number of ms, got {self.target_latency_ms:g}")
        if not 0 < self.grid < 1:
            raise UsageError(f"budget grid must be a sparsity step in (0, 1), got {self.grid:g}")
        if not (isinstance(self.round_to, int) and self.round_to >= 1):
            raise UsageError(f"round_to must be a positive number of channels, got {self.round_to}")

    def pick(self, curves: Curves) -> Pick:
        """The allocation that meets the budget exactly with the least predicted drop on ``curves``."""
        aligned = _aligned_curves(curves)
        budget = self._budget(aligned)
        choices = self._choices(curves, aligned, budget.kind)
        self._check_reachable(budget, choices)
        if budget.exact is None:
            counts, multiplier = self._solve(choices, budget.required)
            search: dict = {}
        else:
            counts, multiplier, search = self._meet_exactly(choices, budget)
        allocation = allocation_of(choices, counts)
        details = {
            "target_sparsity": self.target_sparsity,
            "target_params": self.target_params,
            "target_macs": self.target_macs,
            "target_latency_ms": self.target_latency_ms,
            "grid": self.grid,
            "budget": budget.kind,
            "limit": budget.limit,  # the target in absolute units (a MAC fraction resolved)
            "lagrange_multiplier": multiplier,
            "estimated_remaining": budget.dense - additive_saving(choices, counts),
            **search,
        }
        details |= self._outcome(curves, choices, counts, allocation)
        return _finish(curves, allocation, self.name, details)

    def allocate(self, problem: Problem) -> Pick:
        """As a picker on the problem's curves; channel groups lend their exact footprint and ``round_to``."""
        curves = problem.needs_curves(f"the {self.name} picker")
        picker = self
        if problem.pruning is not None and self.footprint is None and set(curves.curves) <= set(
                problem.pruning.groups.groups):  # curves of the problem's channel groups
            picker = replace(self, footprint=problem.pruning.footprint, round_to=problem.pruning.round_to)
        return picker.pick(curves)

    def _macs_limit(self, dense: float) -> float:
        return macs_limit(self.target_macs, dense)

    def _budget(self, curves: Mapping[str, Curve]) -> _Budget:
        """The budget on the knapsack's scale: exact over the whole model when a footprint is given
        (units whose savings do not add up, such as coupled channel groups), else additive over the units."""
        if self.target_latency_ms is not None:
            if self.latency is None:
                raise UsageError("a latency budget needs units whose removal saves time, timed on the device: "
                                 "scan channel groups (prunescope scan --granularity channel) and pick with "
                                 "prunescope pick; zeroed single weights leave the dense kernels as slow")
            latency = self.latency
            return _Budget("latency", latency.dense.median_ms, self.target_latency_ms,
                           lambda allocation: latency.measure(allocation).median_ms)
        if self.footprint is not None:
            if self.target_sparsity is not None:
                raise UsageError("these units share parameters (coupled channel groups): give --target-macs or "
                                 "--target-params; --target-sparsity counts single weights")
            footprint, dense = self.footprint, self.footprint({})
            if self.target_params is not None:
                return _Budget("params", dense.params, self.target_params,
                               lambda allocation: footprint(allocation).params)
            return _Budget("MACs", dense.macs, self._macs_limit(dense.macs),
                           lambda allocation: footprint(allocation).macs)
        total = sum(c.numel for c in curves.values())
        if self.target_sparsity is not None:
            return _Budget("sparsity", total, total - removed_count(self.target_sparsity, total))
        if self.target_params is not None:
            return _Budget("params", total, self.target_params)
        dense_macs = sum(c.macs for c in curves.values())
        if dense_macs == 0:
            raise UsageError("the curves carry no MAC counts: give target_sparsity or target_params instead")
        return _Budget("MACs", dense_macs, self._macs_limit(dense_macs))

    def _choices(self, curves: Curves, aligned: Mapping[str, Curve], kind: str) -> list[Choices]:
        # Between two candidates a count may stop only where the saving is linear there and any count is allowed:
        # not under round_to, nor where the exact footprint or a timing judges (coupled units, latency).
        discrete = self.round_to > 1 or self.footprint is not None or kind == "latency"
        result = []
        for name, curve in aligned.items():
            counts = self._counts(curve)
            drops = np.array([curves.dense.value - curve.value_at(int(c) / curve.numel) for c in counts])
            result.append(Choices(name, curve.numel, counts, drops, self._savings(curve, counts, kind), discrete))
        return result

    def _counts(self, curve: Curve) -> np.ndarray:
        """Elements removed: the measured points, and every ``grid`` of the curve (at least one element) up to the
        highest one (never beyond: values there are unknown), each leaving a multiple of ``round_to`` or none."""
        measured = [removed_count(p.sparsity, curve.numel) for p in curve.points]
        highest = min(curve.numel - 1, max(measured))  # what the scan removed at its deepest point, never all
        step = max(1, math.floor(self.grid * curve.numel))
        removed = np.union1d(np.arange(0, highest + 1, step), [m for m in measured if m <= highest])
        return removed[(removed == 0) | ((curve.numel - removed) % self.round_to == 0)].astype(int)

    def _savings(self, curve: Curve, counts: np.ndarray, kind: str) -> np.ndarray:
        """Budget saved at each count with this target pruned alone."""
        if kind == "latency":
            return np.asarray(self.latency.savings(curve.target, counts), dtype=float)
        params = curve.numel if curve.params is None else curve.params  # a weight target holds numel parameters
        per_unit = {"sparsity": 1.0, "params": params / curve.numel, "MACs": curve.macs / curve.numel}[kind]
        return per_unit * counts

    def _check_reachable(self, budget: _Budget, choices: list[Choices]) -> None:
        """UsageError when even every target at its largest candidate leaves more than the limit."""
        deepest = deepest_counts(choices)
        if budget.exact is None:
            least = budget.dense - additive_saving(choices, deepest)
        else:
            least = budget.exact(allocation_of(choices, deepest))
        if least <= budget.limit:
            return
        if budget.kind == "sparsity":
            raise UsageError(
                f"target sparsity {self.target_sparsity:g} is above what the scanned levels allow "
                f"(max {(budget.dense - least) / budget.dense:.4g}); scan higher levels"
            )
        if budget.exact is None:
            raise UsageError(
                f"target {budget.kind} {budget.show(budget.limit)} is below what the scanned levels allow "
                f"(min {budget.show(least)} remaining); scan higher levels"
            )
        raise UsageError(
            f"target {budget.kind} {budget.show(budget.limit)} is below what leaving every unit its fewest elements "
            f"gives ({budget.show(least)}; one channel, or one multiple of round_to, within the scanned sparsities): "
            "aim higher"
        )

    def _solve(self, choices: list[Choices], required: float) -> tuple[list[int], float]:
        """Counts saving ``required`` (exactly, for a sparsity) at the least predicted drop, and the multiplier λ."""
        multiplier, under, over = lagrangian(choices, required)
        exact = self.target_sparsity is not None
        # Repair both neighbours of the multiplier: where a curve is not convex (a cliff, then a
        # plateau at chance) the hull jumps over the budget, and either side can be the better start.
        repaired = [repair(choices, counts, required, exact=exact) for counts in (under, over)]
        return min(repaired, key=lambda counts: total_drop(choices, counts)), multiplier

    def _meet_exactly(self, choices: list[Choices], budget: _Budget) -> tuple[list[int], float | None, dict]:
        """Counts whose EXACT remaining meets the limit with the least removal, λ, and how they were found.

        Bisects the knapsack's required saving between 0 and the largest saving (starting from
        the budget's own) down to the finest candidate step, keeping the lowest that meets the
        limit; then gives back candidate steps, costliest first, while the exact remaining
        still meets it. Each set of counts is measured once.
        """
        known: dict[tuple[int, ...], float] = {}
        trials: list[dict] = []

        def remaining(counts: Sequence[int]) -> float:
            key = tuple(int(n) for n in counts)
            if key not in known:
                known[key] = budget.exact(allocation_of(choices, counts))
            return known[key]

        def attempt(required: float) -> tuple[bool, list[int], float]:
            counts, multiplier = self._solve(choices, required)
            estimated, exact = budget.dense - additive_saving(choices, counts), remaining(counts)
            trials.append({"required": required, "estimated_remaining": estimated, "exact_remaining": exact})
            return exact <= budget.limit, counts, multiplier

        most = additive_saving(choices, deepest_counts(choices))
        start = min(max(budget.required, 0.0), most)
        met, counts, multiplier = attempt(start)
        # Every target at its deepest candidate meets the limit (checked before): the upper end when the start fails.
        low, high = (0.0, start) if met else (start, most)
        best: tuple[list[int], float | None] = (counts, multiplier) if met else (deepest_counts(choices), None)
        while high - low > finest_step(choices) and len(trials) < MAX_BISECTIONS:
            middle = (low + high) / 2
            met, counts, multiplier = attempt(middle)
            if met:
                high, best = middle, (counts, multiplier)
            else:
                low = middle
        counts, multiplier = best
        trimmed = repair(choices, counts, budget.required, exact=False, saving=lambda n: budget.dense - remaining(n))
        search = {
            "iterations": len(trials),
            "trials": trials,
            "given_back": int(sum(counts) - sum(trimmed)),  # units given back after the bisection
            "exact_evaluations": len(known),
            "exact_remaining": remaining(trimmed),
        }
        return trimmed, multiplier, search

    def _outcome(
        self, curves: Curves, choices: list[Choices], counts: Sequence[int], allocation: dict[str, float]
    ) -> dict:
        """Elements kept per unit, the units' removed fraction and remaining MACs, and, where the budget was met
        exactly, the whole model's footprint (parameters, MACs per sample) and latency measured."""
        total = sum(c.numel for c in choices)
        removed = int(sum(counts))
        details: dict = {
            "round_to": self.round_to,
            "kept": {c.name: c.numel - int(n) for c, n in zip(choices, counts, strict=True)},
            "removed": removed,
            "sparsity": removed / total,  # of the units' elements (weights, or channels)
            "remaining_macs": sum(curves.curves[name].macs * (1 - s) for name, s in allocation.items()),
        }
        if self.footprint is not None:
            footprint = self.footprint(allocation)
            details["footprint"] = {"params": footprint.params, "macs": footprint.macs}
        if self.latency is not None:
            # Medians and p10–p90 in ms per batch: the timing the budget was judged by, and the dense one.
            details["measured_latency"] = asdict(self.latency.measure(allocation))
            details["dense_latency"] = asdict(self.latency.dense)
        return details
