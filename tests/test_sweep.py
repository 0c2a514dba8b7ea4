import pytest
import torch

from prunescope.criteria import compute_scores
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.masks import applied, compute_masks
from prunescope.pick.baselines import allocate
from prunescope.pipeline.sweep import sweep
from prunescope.targets import find_targets


def test_sweep_points_match_independent_masked_evaluations(tiny_model, tiny_data):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    result = sweep(tiny_model, tiny_data, [0.5, 0.9], allocation="global", device="cpu", latency_repeats=2,
                   recalibrate_bn=0)
    assert [p.sparsity for p in result.points] == [0.0, 0.5, 0.9]
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k])
    targets = find_targets(tiny_model)
    total = sum(t.numel for t in targets)
    scores = compute_scores(tiny_model, targets, "magnitude")
    for point in result.points:
        assert point.achieved_sparsity == pytest.approx(round(point.sparsity * total) / total)
        allocation = allocate("global", tiny_model, targets, point.sparsity)
        with applied(tiny_model, targets, compute_masks(scores, allocation)):
            expected = Evaluator(tiny_model, tiny_data.val, device="cpu").evaluate()
        assert point.metrics.accuracy == expected.accuracy
        assert point.metrics.loss == pytest.approx(expected.loss)
    dense, pruned = result.points[0], result.points[2]
    assert dense.measure["params_nonzero"] - pruned.measure["params_nonzero"] == round(0.9 * total)
    assert pruned.measure["macs_effective"] < dense.measure["macs_effective"] == dense.measure["macs_dense"]
    assert pruned.measure["bytes_sparse"] < dense.measure["bytes_sparse"]
    assert all(p.measure["latency"]["1"]["median_ms"] > 0 for p in result.points)


def test_sweep_rejects_bad_sparsity(tiny_model, tiny_data):
    with pytest.raises(UsageError, match="outside"):
        sweep(tiny_model, tiny_data, [0.5, 1.3], device="cpu")
