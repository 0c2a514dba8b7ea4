import statistics
from dataclasses import replace

import pytest
import torch

from prunescope.crossval import crossval_scan, folds_of
from prunescope.errors import UsageError
from prunescope.pick.pickers import ThresholdPicker
from prunescope.scan import scan


def test_folds_are_disjoint_stratified_and_cover_the_split(tiny_data):
    folds = folds_of(tiny_data.train, 4, seed=1)
    assert sum(len(f) for f in folds) == len(tiny_data.train)
    rows = torch.cat([f.x.flatten(1) for f in folds])
    assert len(torch.unique(rows, dim=0)) == len(tiny_data.train)
    for fold in folds:
        counts = torch.bincount(fold.y, minlength=3)
        assert counts.max() - counts.min() <= 1


def test_merged_curve_is_the_mean_of_fold_drops_with_their_spread(tiny_model, tiny_data):
    levels = (0.5, 0.9)
    merged = crossval_scan(tiny_model, tiny_data, folds=3, levels=levels, device="cpu")
    per_fold = [
        scan(tiny_model, replace(tiny_data, val=fold), strategy="grid", levels=levels, device="cpu")
        for fold in folds_of(tiny_data.train, 3)
    ]
    for name, curve in merged.curves.items():
        for point in curve.points:
            drops = [f.dense.value - next(p for p in f.curves[name].points if p.sparsity == point.sparsity).value
                     for f in per_fold]
            assert merged.dense.value - point.value == pytest.approx(statistics.fmean(drops))
            assert point.high - point.value == pytest.approx(statistics.stdev(drops))
            assert point.low <= point.value <= point.high
    assert merged.evaluations == sum(f.evaluations for f in per_fold)


def test_lower_bound_pick_is_never_bolder(tiny_model, tiny_data):
    merged = crossval_scan(tiny_model, tiny_data, folds=3, levels=(0.3, 0.5, 0.7, 0.9), device="cpu")
    plain = ThresholdPicker(max_drop=0.02).pick(merged).allocation
    cautious = ThresholdPicker(max_drop=0.02, use_lower_bound=True).pick(merged).allocation
    assert all(cautious[name] <= plain[name] for name in plain)


def test_bad_fold_counts(tiny_data):
    with pytest.raises(UsageError, match="at least 2 folds"):
        folds_of(tiny_data.train, 1)
    with pytest.raises(UsageError, match="of every class"):
        folds_of(tiny_data.train, 1000)
