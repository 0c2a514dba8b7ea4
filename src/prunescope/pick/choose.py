"""From curves to a verified allocation: pick, then verify jointly on val.

This is what ``prunescope pick`` runs; the pieces it combines are the pickers (built by
name with :func:`prunescope.pick.registry.make_allocator`) and joint verification
(:mod:`prunescope.pick.verify`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from prunescope.curves import Curves
from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.pick.allocator import Pick
from prunescope.pick.budget import BudgetPicker
from prunescope.pick.crossval import CrossValidation, cross_validate, with_threshold
from prunescope.pick.pickers import Picker
from prunescope.pick.registry import DEFAULT_MAX_DROP
from prunescope.pick.verify import ExampleEvaluator, Verified, model_evaluator, verify
from prunescope.targets import find_targets
from prunescope.train.batchnorm import bn_batches, recalibrating
from prunescope.units import find_units


@dataclass
class Choice:
    """A pick and its joint verification on the val split, and its cross-validation there.

    ``bound`` is the joint drop verify backs off to (None for budget picks, which must keep
    their size: those are measured only). ``crossval``: the pick cross-validated on folds of
    val (None when not asked for); its chosen threshold is the one ``pick`` and verify used
    (then ``bound``), chosen so that the held-out drop stays within ``crossval.bound``.
    ``global_sparsity`` is that of the verified allocation: removed weights of the weight
    targets, or for channel picks the fraction of the whole model's parameters removed.
    ``footprint`` (channel picks only): the verified allocation's exact size once its
    channels are removed (see :meth:`prunescope.units.ChannelUnits.summary`). ``units``: what
    the scan's curves are (``matrix``, ``block``, ``group``); ``applied``: the verified allocation
    as ``prunescope prune`` applies it: a weight pick's names every weight tensor of the model (those the
    scan left out, such as a language model's embeddings and output layer, at 0), a block pick's
    spread over each block's matrices with exact counts.
    """

    picker: str
    pick: Pick
    verified: Verified
    bound: float | None
    global_sparsity: float
    footprint: dict | None = None
    recalibrate_bn: int = 0  # BatchNorm recalibration batches of every verified (pruned) model
    crossval: CrossValidation | None = None
    units: str = "matrix"
    applied: dict[str, float] | None = None

    def to_dict(self) -> dict:
        """``result.json``'s ``pick``: picker, verified allocation and its steps, bound, cross-validation."""
        return {
            "picker": self.picker,
            "recalibrate_bn": self.recalibrate_bn,
            "allocation": self.verified.allocation if self.applied is None else self.applied,
            "units": self.units,
            "unit_allocation": self.verified.allocation,
            "global_sparsity": self.global_sparsity,
            "bound": self.bound,
            "footprint": self.footprint,
            "pick": self.pick.to_dict(),
            "verified": self.verified.to_dict(),
            "crossval": None if self.crossval is None else self.crossval.to_dict(),
        }


def choose(
    curves: Curves,
    picker: Picker,
    model: nn.Module,
    data: Dataset,
    *,
    max_drop: float | None = None,
    device: str = "auto",
    round_to: int = 1,
    latency_batch: int = 1,
    recalibrate_bn: int | None = None,
    folds: int = 0,
    seed: int = 0,
) -> Choice:
    """Pick on ``curves``, then evaluate the allocation jointly on the whole val split.

    Pickers other than budget are verified against ``max_drop`` (default half a point):
    targets are backed off, by their measured drops, until the joint drop holds. A budget
    pick is measured, not backed off, so that it keeps the size it was asked for.

    ``folds`` >= 2: the pick is first cross-validated on that many stratified folds of val
    (seeded by ``seed``; see :mod:`prunescope.pick.crossval`), which chooses the allowed
    degradation the pick on the whole of val then uses (per-layer threshold, and the joint
    drop verify backs off to: ``Choice.bound``) so that the held-out joint drop stays within
    ``max_drop``, and reports that held-out drop. Needs an accuracy scan with per-example results.

    Every allocation is applied with kept counts rounded to multiples of ``round_to``
    (channel units). A budget picker on units whose savings do not add up (coupled channel
    groups) is given the model's exact footprint, and for a latency target the units' latency
    table (:class:`~prunescope.structured.latency.LatencyTable`) timed on ``device`` with
    batches of ``latency_batch``.

    ``recalibrate_bn``: batches of training data every pruned model's BatchNorm statistics
    are re-estimated on before it is evaluated (None: 20 for a model with BatchNorm, else 0).
    """
    structure = find_units(model, data, curves.granularity, curves.criterion, names=list(curves.curves),
                           round_to=round_to, units="block" if curves.units == "block" else "matrix")
    if isinstance(picker, BudgetPicker):
        # The budget met exactly on this model: its footprint, or its latency timed on the device.
        timed = picker.target_latency_ms is not None
        picker = replace(picker, round_to=structure.round_to,
                         footprint=None if structure.additive else structure.footprint,
                         latency=structure.latency_table(device, latency_batch) if timed else None)
    batches = bn_batches(model, recalibrate_bn)
    pruning = recalibrating(structure, data.train, batches)
    bound = None if isinstance(picker, BudgetPicker) else (DEFAULT_MAX_DROP if max_drop is None else max_drop)
    limit = math.inf if bound is None else bound
    crossval = None
    if curves.metric == "accuracy":
        joint = ExampleEvaluator(pruning, data.val, device=device)
        if folds:
            crossval = cross_validate(curves, picker, joint, data.val.y.numpy(), bound=limit, k=folds, seed=seed)
            if crossval.chosen.threshold is not None:  # the allowed degradation, per layer and jointly in-sample
                picker = with_threshold(picker, crossval.chosen.threshold)
                bound = limit = crossval.chosen.threshold
        picked = picker.pick(curves)
        verified = joint.verify(picked, curves, np.arange(len(data.val)), max_drop=limit)
    else:
        if folds:
            raise UsageError(f"cross-validation reads per-example accuracy: this scan's metric is {curves.metric}; "
                             "pass --folds 0")
        picked = picker.pick(curves)
        verified = verify(picked, curves, model_evaluator(pruning, Evaluator(model, data.val, device=device),
                                                          curves.metric), max_drop=limit)
    applied = structure.expand(verified.allocation)
    if structure.granularity == "weight":  # a weight pick names every weight tensor: those not scanned stay dense
        applied = {t.name: applied.get(t.name, 0.0) for t in find_targets(model)}
    return Choice(picker.name, picked, verified, bound, structure.removed_fraction(verified.allocation),
                  structure.summary(verified.allocation), batches, crossval, structure.unit_kind, applied)
