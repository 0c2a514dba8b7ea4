"""``--cv retrain``: cross-validation of the pick that includes training variance.

Cross-validation on val folds (:mod:`prunescope.pick.crossval`) varies the examples a pick
is chosen on, not the model. Here the train split is cut into ``k`` stratified folds and,
for fold ``i``, a model is trained on the other ``k - 1`` folds (same settings as the dense
model), scanned on fold ``i`` (examples it never trained on), picked and verified there for
each candidate allowed degradation ``t``, and the joint drop of that allocation measured on
the val split, which that model neither trained nor selected on. The spread over folds then
holds the training variance too. ``t`` is chosen as in :func:`~prunescope.pick.crossval.cross_validate`:
the largest whose held-out drop, averaged over the folds, stays within the bound. Costly
(``k`` trainings and ``k`` scans), so opt-in; each fold's training and scan resume from
``out/cv/fold-i``.

In the result, a fold's ``seen`` indices point into the train split (its scan fold) and its
``held_out`` indices into val.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from prunescope.curves import Curves
from prunescope.data.types import Dataset, Split
from prunescope.pick.choose import choose
from prunescope.pick.crossval import Candidate, CrossValidation, FoldResult, thresholds_for, val_folds, with_threshold
from prunescope.pick.registry import make_allocator
from prunescope.pick.verify import ExampleEvaluator
from prunescope.train.batchnorm import bn_batches, recalibrating
from prunescope.units import find_units

Fit = Callable[[Dataset, Path], torch.nn.Module]
"""``fit(data, directory)``: a model trained on ``data.train`` (checkpointed, resumable, in ``directory``)."""

Scan = Callable[[torch.nn.Module, Dataset, Path], Curves]
"""``scan(model, data, directory)``: its curves on ``data.val`` (journal in ``directory``); here ``data.val`` is
the fold of train the model did not train on."""


def _rows(split: Split, index: np.ndarray) -> Split:
    rows = torch.from_numpy(index)
    return Split(split.x[rows], split.y[rows])


def retrain_cross_validate(
    data: Dataset,
    fit: Fit,
    scan: Scan,
    out: Path,
    *,
    max_drop: float,
    k: int = 3,
    seed: int = 0,
    picker: str = "ensemble",
    device: str = "auto",
    recalibrate_bn: int | None = None,
) -> CrossValidation:
    """Cross-validate the ``picker`` pick over ``k`` models trained on ``k - 1`` folds of ``data.train`` (see module).

    Returns a :class:`~prunescope.pick.crossval.CrossValidation` with ``mode="retrain"``; its
    chosen threshold is the allowed degradation the pick on the main model should use.
    """
    folds = val_folds(data.train.y.numpy(), k, seed)
    everything = np.arange(len(data.train))
    val = np.arange(len(data.val))
    thresholds = thresholds_for(make_allocator(picker, max_drop=max_drop), max_drop)
    results: dict[float | None, list[FoldResult]] = {t: [] for t in thresholds}
    for i, held in enumerate(folds):
        rest = _rows(data.train, np.setdiff1d(everything, held))
        directory = out / f"fold-{i}"
        model = fit(replace(data, train=rest), directory)  # its training history reads val, as the dense model's
        # Scanned, picked and verified on its held-out train fold (in place of val: internal to this function).
        fold_data = replace(data, train=rest, val=_rows(data.train, held))
        curves = scan(model, fold_data, directory)
        units = find_units(model, fold_data, curves.granularity, curves.criterion, names=list(curves.curves))
        pruning = recalibrating(units, fold_data.train, bn_batches(model, recalibrate_bn))
        on_val = ExampleEvaluator(pruning, data.val, device=device)
        for threshold in thresholds:
            allowed = max_drop if threshold is None else threshold
            chosen = choose(curves, with_threshold(make_allocator(picker, max_drop=max_drop), allowed), model,
                            fold_data, max_drop=allowed, device=device, recalibrate_bn=recalibrate_bn)
            allocation = chosen.verified.allocation
            results[threshold].append(FoldResult(i, allocation, held, val, chosen.verified.measured_drop,
                                                 on_val.drop(allocation, val)))
    candidates = [Candidate(t, found) for t, found in results.items()]
    return CrossValidation.conclude(candidates, k=k, seed=seed, bound=max_drop, mode="retrain")
