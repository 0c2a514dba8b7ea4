"""Cross-validated sensitivity curves: the same scan on k folds of the train split.

Sensitivity-based pruning as it is taught measures each layer's curve once; how much of a
curve is the layer and how much is the sample it was measured on stays unknown. Here the
train split is cut into ``k`` stratified, seeded folds and the scan runs on each (grid
levels, so that every fold measures the same sparsities). The merged curve's ``value`` is
the mean over folds and ``low`` / ``high`` are mean ∓ one standard deviation of the fold
values, which is what a picker's ``use_lower_bound`` then reads. Drops are taken per fold
(fold value − fold dense) before averaging, so that folds that are easier as a whole do not
widen the spread.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from sklearn.model_selection import StratifiedKFold
from torch import nn

from prunescope.curves import Curve, CurvePoint, Curves
from prunescope.data.types import Dataset, Split
from prunescope.errors import UsageError
from prunescope.scan import scan

CV_LEVELS = (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)


def folds_of(split: Split, k: int, seed: int = 0) -> list[Split]:
    """``k`` stratified, seeded, disjoint folds covering ``split``."""
    if k < 2:
        raise UsageError(f"cross-validation needs at least 2 folds, got {k}")
    labels = split.y.numpy()
    if np.bincount(labels).min(initial=len(labels)) < k:
        raise UsageError(f"{k} folds need at least {k} training examples of every class")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [Split(split.x[index], split.y[index]) for _, index in splitter.split(np.zeros(len(labels)), labels)]


def _merge(per_fold: list[Curves]) -> Curves:
    first = per_fold[0]
    dense_values = [c.dense.value for c in per_fold]
    dense = CurvePoint(0.0, statistics.fmean(dense_values), min(dense_values), max(dense_values),
                       sum(c.dense.n for c in per_fold))
    curves = {}
    for name, curve in first.curves.items():
        points = []
        for point in curve.sorted_points():
            drops = []
            for fold in per_fold:
                match = next(p for p in fold.curves[name].points if p.sparsity == point.sparsity)
                drops.append(fold.dense_at(match.n).value - match.value)
            mean, spread = statistics.fmean(drops), statistics.stdev(drops)
            value = dense.value - mean
            points.append(CurvePoint(point.sparsity, value, value - spread, value + spread, dense.n))
        curves[name] = Curve(name, curve.numel, curve.macs, points, curve.params)
    return Curves(
        metric=first.metric,
        criterion=first.criterion,
        dense=dense,
        curves=curves,
        evaluations=sum(c.evaluations for c in per_fold),
        reused=sum(c.reused for c in per_fold),
        examples=sum(c.examples for c in per_fold),
        dense_by_n={dense.n: dense},
        granularity=first.granularity,
    )


def crossval_scan(
    model: nn.Module,
    data: Dataset,
    *,
    folds: int = 5,
    levels: Sequence[float] = CV_LEVELS,
    criterion: str = "magnitude",
    metric: str = "accuracy",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    device: str = "auto",
    storage: str | None = None,
    seed: int = 0,
    on_trial: Callable[[int, int], None] | None = None,
) -> Curves:
    """Grid scans of ``model`` on ``folds`` folds of ``data.train``, merged into one set of curves.

    Every fold is its own study (``fold-0`` … in ``storage``), so a killed run resumes.
    ``on_trial(done, planned)`` counts over all folds.
    """
    parts = folds_of(data.train, folds, seed)
    per_fold = []
    done_before = 0
    for i, fold in enumerate(parts):
        def progress(done: int, planned: int, offset: int = done_before, index: int = i) -> None:
            if on_trial is not None:
                on_trial(offset + done, offset + planned * (folds - index))

        curves = scan(
            model, replace(data, val=fold), criterion=criterion, strategy="grid", levels=levels, metric=metric,
            include=include, exclude=exclude, device=device, storage=storage, study_name=f"fold-{i}", seed=seed,
            on_trial=progress,
        )
        per_fold.append(curves)
        done_before += curves.evaluations
    return _merge(per_fold)
