"""Joint verification: does the combined allocation keep the metric, and if not, back off.

Curves measure one target at a time; pruning all targets together can cost more than
the sum of their drops (or less). :func:`verify` evaluates the combined allocation and,
while the joint drop exceeds the bound, lowers the sparsity of the target that the
curves say costs the most drop per removed weight, then evaluates again. Drops are
fractions of the metric, ``dense - measured`` (an improvement is negative), where
``dense`` is the dense model's metric as the same ``evaluate`` measures it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from prunescope.curves import Curves
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.masks import removed_count
from prunescope.pick.pickers import Pick, predicted_drops
from prunescope.scan.evaluation import Pruning

Evaluate = Callable[[dict[str, float]], float]
"""Metric (higher is better, same scale as the curves) of the model pruned with an allocation."""


@dataclass
class VerifyStep:
    """One evaluation: the allocation tried, its measured and predicted joint drop, and the
    target whose sparsity was lowered to get here (None for the pick itself)."""

    allocation: dict[str, float]
    measured_drop: float
    backed_off: str | None
    predicted_drop: float


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


def _drop_per_weight(name: str, allocation: dict[str, float], drops: dict[str, float], curves: Curves) -> float:
    """Predicted drop per removed weight of one target (fraction of the metric per weight)."""
    return drops[name] / max(removed_count(allocation[name], curves.curves[name].numel), 1)


def verify(
    pick: Pick,
    curves: Curves,
    evaluate: Evaluate,
    *,
    max_drop: float,
    step: float = 0.05,
    reference: float | None = None,
) -> Verified:
    """Evaluate ``pick``'s allocation jointly; back off one target at a time until the drop is within ``max_drop``.

    The target backed off is the one with the worst predicted drop per removed weight;
    its sparsity goes down to its next lower measured level, or by ``step`` when that is
    closer. Stops within the bound, or with every target dense (``within_bound`` False
    when even that exceeds the bound: a negative ``max_drop``, or a ``reference`` that
    ``evaluate`` does not reproduce). Every evaluation of a pruned allocation is a step.

    max_drop: allowed joint drop (fraction of the metric).
    step: largest back-off of one target at a time (fraction of its weights).
    reference: the dense model's metric on ``evaluate``'s data; None measures it once with
        ``evaluate`` (the scan's dense point may come from a subset of other examples).
    """
    if not step > 0:
        raise UsageError(f"back-off step must be a positive sparsity, got {step:g}")
    if reference is None:
        reference = evaluate(dict.fromkeys(pick.allocation, 0.0))
    allocation = dict(pick.allocation)
    steps: list[VerifyStep] = []
    backed_off: str | None = None
    while True:
        drops = predicted_drops(curves, allocation)
        measured = reference - evaluate(dict(allocation))
        steps.append(VerifyStep(dict(allocation), measured, backed_off, sum(drops.values())))
        pruned = [name for name, s in allocation.items() if s > 0]
        if measured <= max_drop or not pruned:
            break
        backed_off = max(pruned, key=lambda name: _drop_per_weight(name, allocation, drops, curves))
        levels = [p.sparsity for p in curves.curves[backed_off].points]
        allocation[backed_off] = _next_lower(allocation[backed_off], levels, step)
    last = steps[-1]
    within = last.measured_drop <= max_drop
    return Verified(last.allocation, last.predicted_drop, last.measured_drop, within, steps, reference)


def model_evaluator(pruning: Pruning, evaluator: Evaluator, metric: str = "accuracy") -> Evaluate:
    """An ``evaluate`` for :func:`verify`: prune the model in place with the allocation
    (``pruning.applied``, restored after), return ``metric``.

    ``metric`` must be higher-is-better like the curves (accuracy, macro_f1 or a user metric).
    """
    if metric == "loss":
        raise UsageError("verify compares higher-is-better metrics: use accuracy, macro_f1 or a user metric, not loss")

    def evaluate(allocation: dict[str, float]) -> float:
        with pruning.applied(allocation):
            return evaluator.evaluate().get(metric)

    return evaluate
