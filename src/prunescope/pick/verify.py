"""Joint verification: does the combined allocation keep the metric, and if not, back off.

Curves measure one target at a time; pruning all targets together can cost more than
the sum of their drops (or less). :func:`verify` evaluates the combined allocation and,
while the joint drop exceeds the bound, lowers the sparsity of the target whose *measured*
drop (that target alone at its current sparsity, on the data ``evaluate`` reads) per removed
weight is the worst, then evaluates again. Measured, not read off the curves: a curve point
measured on a small subset, or interpolated between levels, can be off by more than the
bound, and a back-off led by it removes the wrong layers. Drops are fractions of the metric,
``dense - measured`` (an improvement is negative), where ``dense`` is the dense model's
metric as the same ``evaluate`` measures it.

:class:`ExampleEvaluator` evaluates allocations on chosen val examples, each example of
each allocation at most once, and keeps which examples were right: the per-layer drops
then come with their paired interval (:func:`prunescope.evaluate.paired_drop`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from prunescope.curves import Curves
from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator, paired_drop
from prunescope.masks import removed_count
from prunescope.pick.allocator import Pick
from prunescope.pick.pickers import predicted_drops
from prunescope.units import Pruning

Evaluate = Callable[[dict[str, float]], float]
"""Metric (higher is better, same scale as the curves) of the model pruned with an allocation."""

Drop = tuple[float, float, float]
"""``(drop, low, high)``: a measured drop (fraction of the metric) and its 95% interval (``low == high == drop``
without one)."""

LayerDrop = Callable[[str, float], Drop]
"""``layer_drop(target, sparsity)``: the measured drop of the model with only ``target`` pruned to ``sparsity``."""


@dataclass
class VerifyStep:
    """One evaluation: the allocation tried, its measured and predicted joint drop, the
    target whose sparsity was lowered to get here (None for the pick itself) and that
    target's measured drop alone at its sparsity before, with its interval, that decided it."""

    allocation: dict[str, float]
    measured_drop: float
    backed_off: str | None
    predicted_drop: float
    backed_off_drop: Drop | None = None


@dataclass
class Verified:
    """The verified allocation (the last step's) with its predicted and measured joint drop,
    and ``reference``, the dense metric the measured drops are taken from."""

    allocation: dict[str, float]
    predicted_drop: float
    measured_drop: float
    within_bound: bool
    steps: list[VerifyStep]
    reference: float

    def to_dict(self) -> dict:
        return asdict(self)


def _next_lower(sparsity: float, levels: Sequence[float], step: float) -> float:
    """The next measured level below ``sparsity``, but never more than ``step`` below it."""
    below = [level for level in levels if level < sparsity]
    # Rounded so that repeated steps do not accumulate float noise (0.8500000000000001).
    return round(max(max(below, default=0.0), sparsity - step, 0.0), 12)


def verify(
    pick: Pick,
    curves: Curves,
    evaluate: Evaluate,
    *,
    max_drop: float,
    step: float = 0.05,
    reference: float | None = None,
    layer_drop: LayerDrop | None = None,
) -> Verified:
    """Evaluate ``pick``'s allocation jointly; back off one target at a time until the drop is within ``max_drop``.

    The target backed off is the one with the worst measured drop per removed weight (the
    point estimate of ``layer_drop``; by default ``reference - evaluate({target: sparsity})``,
    each (target, sparsity) measured once); its sparsity goes down to its next lower
    measured level, or by ``step`` when that is closer. Stops within the bound, or with
    every target dense (``within_bound`` False when even that exceeds the bound: a negative
    ``max_drop``, or a ``reference`` that ``evaluate`` does not reproduce). Every evaluation
    of a pruned allocation is a step. The curves only give each step's ``predicted_drop``
    (for the record) and the levels to step down to.

    max_drop: allowed joint drop (fraction of the metric).
    step: largest back-off of one target at a time (fraction of its weights).
    reference: the dense model's metric on ``evaluate``'s data; None measures it once with
        ``evaluate`` (the scan's dense point may come from a subset of other examples).
    layer_drop: measured drop of one target alone, with its interval (see :class:`ExampleEvaluator`).
    """
    if not step > 0:
        raise UsageError(f"back-off step must be a positive sparsity, got {step:g}")
    if reference is None:
        reference = evaluate(dict.fromkeys(pick.allocation, 0.0))
    if layer_drop is None:
        alone: dict[tuple[str, float], Drop] = {}

        def layer_drop(name: str, sparsity: float) -> Drop:
            if (name, sparsity) not in alone:
                drop = reference - evaluate({name: sparsity})
                alone[(name, sparsity)] = (drop, drop, drop)
            return alone[(name, sparsity)]

    allocation = dict(pick.allocation)
    steps: list[VerifyStep] = []
    backed_off: str | None = None
    backed_off_drop: Drop | None = None
    while True:
        drops = predicted_drops(curves, allocation)
        measured = reference - evaluate(dict(allocation))
        steps.append(VerifyStep(dict(allocation), measured, backed_off, sum(drops.values()), backed_off_drop))
        pruned = [name for name, s in allocation.items() if s > 0]
        if measured <= max_drop or not pruned:
            break
        alone_drops = {name: layer_drop(name, allocation[name]) for name in pruned}
        backed_off = max(
            pruned,
            key=lambda name: alone_drops[name][0] / max(removed_count(allocation[name], curves.curves[name].numel), 1),
        )
        backed_off_drop = alone_drops[backed_off]
        levels = [p.sparsity for p in curves.curves[backed_off].points]
        allocation[backed_off] = _next_lower(allocation[backed_off], levels, step)
    last = steps[-1]
    within = last.measured_drop <= max_drop
    return Verified(last.allocation, last.predicted_drop, last.measured_drop, within, steps, reference)


def model_evaluator(pruning: Pruning, evaluator: Evaluator, metric: str = "accuracy") -> Evaluate:
    """An ``evaluate`` for :func:`verify`: prune the model in place with the allocation
    (``pruning.applied``, restored after), return the score of ``metric`` (higher is better, like the curves:
    :meth:`~prunescope.evaluate.Metrics.score`).
    """

    def evaluate(allocation: dict[str, float]) -> float:
        with pruning.applied(allocation):
            return evaluator.evaluate().score(metric)

    return evaluate


class ExampleEvaluator:
    """Which examples of ``split`` the model gets right under an allocation; each example of an allocation
    is evaluated at most once.

    ``pruning`` applies an allocation in place (restored after). ``correct(allocation, index)``
    returns a bool vector over the examples ``index`` (indices into ``split``), evaluating only
    those this allocation has not met yet. Accuracy only, the metric per-example results give.
    """

    def __init__(self, pruning: Pruning, split: Split, *, device: str | torch.device = "auto") -> None:
        self.pruning = pruning
        self.split = split
        self.device = device
        self._known: dict[tuple[tuple[str, float], ...], tuple[np.ndarray, np.ndarray]] = {}
        self.evaluated = 0  # examples evaluated so far, all allocations together

    def correct(self, allocation: Mapping[str, float], index: np.ndarray) -> np.ndarray:
        """Per example of ``index`` (indices into the split), (len(index),) bool: is the pruned model right?"""
        key = tuple(sorted((name, s) for name, s in allocation.items() if s > 0))
        if key not in self._known:
            self._known[key] = (np.zeros(len(self.split), dtype=bool), np.zeros(len(self.split), dtype=bool))
        known, right = self._known[key]
        todo = np.unique(index[~known[index]])
        if len(todo):
            rows = torch.from_numpy(todo)
            evaluator = Evaluator(self.pruning.model, Split(self.split.x[rows], self.split.y[rows]), device=self.device)
            with self.pruning.applied(dict(key)):
                evaluator.evaluate()
            right[todo] = evaluator.correct.cpu().numpy()
            known[todo] = True
            self.evaluated += len(todo)
        return right[index]

    def accuracy(self, allocation: Mapping[str, float], index: np.ndarray) -> float:
        return float(self.correct(allocation, index).mean()) if len(index) else 0.0

    def drop(self, allocation: Mapping[str, float], index: np.ndarray) -> Drop:
        """Drop of ``allocation`` against the dense model on the examples ``index``, with its paired interval."""
        return paired_drop(self.correct({}, index), self.correct(allocation, index))

    def verify(self, pick: Pick, curves: Curves, index: np.ndarray, *, max_drop: float, step: float = 0.05) -> Verified:
        """:func:`verify` of ``pick`` on the examples ``index``, per-layer drops with their paired intervals."""
        return verify(pick, curves, lambda allocation: self.accuracy(allocation, index), max_drop=max_drop, step=step,
                      reference=self.accuracy({}, index), layer_drop=lambda name, s: self.drop({name: s}, index))
