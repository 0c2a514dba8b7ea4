"""recalibrate_batchnorm: running statistics become those of the data; nothing else changes."""

import pytest
import torch
from torch import nn

from prunescope.criteria import compute_scores
from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.targets import find_targets
from prunescope.train import (
    DEFAULT_BN_BATCHES,
    RecalibratedPruning,
    bn_batches,
    recalibrate_batchnorm,
    recalibrated,
    recalibrating,
)
from prunescope.units import WeightPruning


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_running_statistics_become_those_of_the_batches_and_weights_stay():
    model = _model().eval()
    model[1].running_mean.fill_(5.0)  # stale statistics, as after pruning
    model[1].running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    split = Split(torch.randn(64, 1, 8, 8) * 2 + 1, torch.zeros(64, dtype=torch.long))
    assert recalibrate_batchnorm(model, split, batches=1, batch_size=64) == 1
    with torch.no_grad():
        conv = model[0](split.x)  # (64, 4, 6, 6): what the BatchNorm saw, as one batch
    assert torch.allclose(model[1].running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[1].running_var, conv.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4)
    # Two batches of 32 are averaged with equal weight (not an exponential average): same mean.
    recalibrate_batchnorm(model, split, batches=2, batch_size=32)
    assert torch.allclose(model[1].running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not model.training and model[1].momentum == 0.1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_nothing_to_do_and_bad_sizes():
    linear = nn.Linear(4, 2)
    before = linear.weight.clone()
    assert recalibrate_batchnorm(linear, Split(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))) == 0
    assert torch.equal(linear.weight, before)
    with pytest.raises(UsageError, match="at least one batch"):
        recalibrate_batchnorm(_model(), Split(torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)), batches=0)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_temporary_masked_recalibrated_evaluation_restores_weights_and_statistics_bit_exactly():
    model = _model().eval()
    model[1].running_mean.uniform_(-1, 1)  # statistics with bits to lose
    model[1].num_batches_tracked.fill_(123)
    before = _state(model)
    split = Split(torch.randn(64, 1, 8, 8), torch.zeros(64, dtype=torch.long))
    targets = find_targets(model)
    pruning = RecalibratedPruning(WeightPruning(model, targets, compute_scores(model, targets)), split, 2,
                                  batch_size=16)
    with pruning.applied({"0.weight": 0.75, "4.weight": 0.5}):
        assert int((model[0].weight == 0).sum()) == 27  # masked
        assert not torch.equal(model[1].running_mean, before["1.running_mean"])  # recalibrated
        assert int(model[1].num_batches_tracked) == 2
    assert _same(model, before)
    with pytest.raises(RuntimeError, match="boom"), pruning.applied({"0.weight": 0.75}):
        raise RuntimeError("boom")
    assert _same(model, before)  # also when the evaluation fails
    with pruning.applied({"0.weight": 0.0}):
        assert _same(model, before)  # nothing removed: the dense model keeps its own statistics


def test_recalibration_is_the_same_for_every_allocation_and_on_by_default_with_batchnorm():
    model = _model().eval()
    split = Split(torch.randn(64, 1, 8, 8), torch.zeros(64, dtype=torch.long))
    with recalibrated(model, split, 3, batch_size=8):
        first = model[1].running_var.clone()
    with recalibrated(model, split, 3, batch_size=8):
        assert torch.equal(model[1].running_var, first)  # same seeded batches every time
    assert bn_batches(model, None) == DEFAULT_BN_BATCHES and bn_batches(nn.Linear(2, 2), None) == 0
    assert bn_batches(model, 0) == 0 and recalibrating(pruning := object(), split, 0) is pruning
    with pytest.raises(UsageError, match="--recalibrate-bn"):
        bn_batches(model, -1)
