"""From curves to a verified allocation: build the picker the options ask for, pick, verify.

This is what ``prunescope pick`` runs; the pieces it combines are the pickers
(:mod:`prunescope.pick.pickers`) and joint verification (:mod:`prunescope.pick.verify`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from prunescope.criteria import compute_scores
from prunescope.curves import Curves
from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.masks import global_sparsity
from prunescope.pick.pickers import BudgetPicker, EnsemblePicker, KneePicker, Pick, Picker, ThresholdPicker
from prunescope.pick.verify import Verified, model_evaluator, verify
from prunescope.scan.evaluation import WeightPruning
from prunescope.targets import find_targets

CHOICES = ("threshold", "sconce", "knee", "budget", "ensemble")
DEFAULT_MAX_DROP = 0.005  # half an accuracy point


def build_picker(
    name: str,
    *,
    max_drop: float | None = None,
    target_sparsity: float | None = None,
    target_params: int | None = None,
    target_macs: int | None = None,
    lower_bound: bool = False,
    vote: bool = False,
) -> Picker:
    """The picker ``name`` configured from command-line style options; contradictions are errors.

    ``max_drop`` (a fraction of the metric) drives threshold, knee and ensemble; the budget
    picker meets exactly one of the three targets instead. ``sconce`` reads ``max_drop``
    as a third of sconce's ``degradation``.
    """
    if name not in CHOICES:
        raise UsageError(f"unknown picker {name!r}: use one of {', '.join(CHOICES)}")
    budgets = {"--target-sparsity": target_sparsity, "--target-params": target_params, "--target-macs": target_macs}
    given = [option for option, value in budgets.items() if value is not None]
    if name == "budget":
        if max_drop is not None:
            raise UsageError("--max-drop does not apply to --picker budget, which meets a size target; "
                             "its joint drop is measured and reported")
        return BudgetPicker(target_sparsity=target_sparsity, target_params=target_params, target_macs=target_macs)
    if given:
        raise UsageError(f"{given[0]} applies to --picker budget; the {name} picker chooses by --max-drop")
    if max_drop is not None and max_drop < 0:
        raise UsageError(f"--max-drop must be at least 0, got {max_drop * 100:g} points")
    drop = DEFAULT_MAX_DROP if max_drop is None else max_drop
    if name == "sconce":
        return ThresholdPicker.sconce(degradation=3 * drop) if max_drop is not None else ThresholdPicker.sconce()
    threshold = ThresholdPicker(max_drop=drop, use_lower_bound=lower_bound)
    knee = KneePicker(fallback_max_drop=drop)
    if name == "threshold":
        return threshold
    if name == "knee":
        return knee
    return EnsemblePicker([threshold, knee], rule="vote" if vote else "min")


@dataclass
class Choice:
    """A pick and its joint verification on the val split.

    ``bound`` is the joint drop verify backs off to (None for budget picks, which must keep
    their size: those are measured only). ``global_sparsity`` is that of the verified allocation.
    """

    picker: str
    pick: Pick
    verified: Verified
    bound: float | None
    global_sparsity: float

    def to_dict(self) -> dict:
        return {
            "picker": self.picker,
            "allocation": self.verified.allocation,
            "global_sparsity": self.global_sparsity,
            "bound": self.bound,
            "pick": self.pick.to_dict(),
            "verified": self.verified.to_dict(),
        }


def choose(
    curves: Curves,
    picker: Picker,
    model: nn.Module,
    data: Dataset,
    *,
    max_drop: float | None = None,
    device: str = "auto",
) -> Choice:
    """Pick on ``curves``, then evaluate the allocation jointly on the whole val split.

    Pickers other than budget are verified against ``max_drop`` (default half a point):
    targets are backed off until the joint drop holds. A budget pick is measured, not
    backed off, so that it keeps the size it was asked for.
    """
    targets = [t for t in find_targets(model) if t.name in curves.curves]
    picked = picker.pick(curves)
    scores = compute_scores(model, targets, curves.criterion, data=data.train)
    pruning = WeightPruning(model, targets, scores)
    evaluate = model_evaluator(pruning, Evaluator(model, data.val, device=device), curves.metric)
    bound = None if isinstance(picker, BudgetPicker) else (DEFAULT_MAX_DROP if max_drop is None else max_drop)
    verified = verify(picked, curves, evaluate, max_drop=math.inf if bound is None else bound)
    return Choice(picker.name, picked, verified, bound, global_sparsity(verified.allocation, find_targets(model)))
