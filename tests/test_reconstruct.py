"""Calibration-aware pruning: Wanda scores and layer-wise OBS reconstruction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunescope.calibration import calibration_inputs, layer_inputs
from prunescope.criteria import compute_scores
from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.masks import compute_masks, removed_count
from prunescope.pick.baselines import erk, uniform
from prunescope.reconstruct import reconstruct
from prunescope.reconstruct.obs import damped
from prunescope.targets import find_targets, flow_order


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


class _ConvNet(nn.Module):
    """Registered head first, so registration order differs from data flow."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6 * 4 * 4, 3)
        self.conv = nn.Conv2d(2, 6, 3, padding=1, stride=2)
        self.conv1d = nn.Conv1d(8, 8, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))  # (N, 6, 4, 4)
        x = self.conv1d(x.reshape(len(x), 8, 12)).reshape(len(x), -1)
        return self.head(x)


def _outputs(model: nn.Module, module: str, x: torch.Tensor) -> torch.Tensor:
    captured = []
    hook = model.get_submodule(module).register_forward_hook(lambda _m, _a, out: captured.append(out))
    with torch.no_grad():
        model(x)
    hook.remove()
    return captured[0]


def test_wanda_equals_rowwise_magnitude_when_every_input_feature_has_the_same_norm() -> None:
    model = _mlp()
    targets = find_targets(model, include=["1"])
    signs = torch.randint(0, 2, (64, 20), generator=torch.Generator().manual_seed(1)).float() * 2 - 1
    data = Split(signs, torch.zeros(64, dtype=torch.long))  # |x_j| = 1 everywhere: ‖X_j‖ equal for all j
    wanda = compute_masks(compute_scores(model, targets, "wanda", data=data, calibration=64), {"1.weight": 0.5})
    weight = model[1].weight.detach().abs()
    rowwise = torch.ones_like(weight, dtype=torch.bool)
    rowwise.scatter_(1, weight.argsort(1)[:, :10], False)
    assert torch.equal(wanda["1.weight"], rowwise)


def test_wanda_weighs_by_input_norm_and_spreads_removals_evenly_over_rows() -> None:
    model = _mlp()
    targets = find_targets(model)
    x = torch.randn(128, 20) * torch.linspace(0.01, 10, 20)  # very different feature norms
    data = Split(x, torch.zeros(128, dtype=torch.long))
    scores = compute_scores(model, targets, "wanda", data=data, calibration=100)
    masks = compute_masks(scores, {"1.weight": 0.3, "3.weight": 0.45})
    for name, s in (("1.weight", 0.3), ("3.weight", 0.45)):
        removed_per_row = (~masks[name]).sum(1)
        assert int(removed_per_row.sum()) == removed_count(s, masks[name].numel())
        assert int(removed_per_row.max() - removed_per_row.min()) <= 1
    # Features with tiny norms go first, whatever their weights.
    magnitude = compute_masks(compute_scores(model, targets, "magnitude"), {"1.weight": 0.3})
    assert not torch.equal(masks["1.weight"], magnitude["1.weight"])
    assert (~masks["1.weight"][:, :5]).float().mean() > (~masks["1.weight"][:, -5:]).float().mean()


@pytest.mark.parametrize("select", ["obs", "mask"])
def test_reconstruction_never_increases_a_layers_output_error_and_reduces_it_on_a_random_case(select: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 10))
    dense = _copy(model)
    targets = find_targets(model)
    x = torch.randn(256, 24) @ torch.randn(24, 24)  # correlated inputs: compensation has something to use
    allocation = {"0.weight": 0.6}
    masks = compute_masks(compute_scores(model, targets, "magnitude"), allocation)
    plain = _copy(model)
    plain[0].weight.data *= masks["0.weight"]
    report = reconstruct(model, targets, allocation, x, masks=masks, select=select)

    reference = dense(x).detach()
    error_plain = float(((plain(x).detach() - reference) ** 2).sum())
    error_reconstructed = float(((model(x).detach() - reference) ** 2).sum())
    assert error_reconstructed < 0.9 * error_plain
    layer = report.layers[0]
    assert layer.error_reconstructed == pytest.approx(error_reconstructed / float((reference**2).sum()), rel=1e-4)
    if select == "mask":
        assert torch.equal(model[0].weight != 0, masks["0.weight"])
        assert layer.error_masked == pytest.approx(error_plain / float((reference**2).sum()), rel=1e-4)


def test_exact_refit_is_optimal_for_its_mask() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(12, 5))
    targets = find_targets(model)
    x = torch.randn(200, 12)
    reference = model(x).detach()
    reconstruct(model, targets, {"0.weight": 0.5}, x)
    keep = model[0].weight.detach() != 0
    # Least squares per row on the kept inputs (and the bias) gives the same weights.
    for row in range(5):
        design = torch.cat([x[:, keep[row]], torch.ones(200, 1)], 1).double()
        solution = torch.linalg.lstsq(design, reference[:, row].double().unsqueeze(1)).solution.squeeze(1)
        fitted = torch.cat([model[0].weight[row, keep[row]], model[0].bias[row : row + 1]]).detach().double()
        assert torch.allclose(fitted, solution, atol=2e-3)


@pytest.mark.parametrize("allocator", [uniform, erk])
def test_reconstruction_keeps_any_allocations_counts_and_zeros_exactly(allocator) -> None:
    model = _ConvNet()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    targets = find_targets(model)
    allocation = allocator(targets, 0.7)
    x = torch.randn(96, 2, 8, 8)
    report = reconstruct(model, targets, allocation, x, blocksize=5)
    for t in targets:
        weight = model.get_submodule(t.module).weight.detach()
        assert int((weight == 0).sum()) == removed_count(allocation[t.name], t.numel), t.name
        kept = weight != 0
        assert not torch.equal(weight[kept], before[t.name][kept]), f"{t.name}: kept weights not updated"
    assert [layer.name for layer in report.layers] == ["conv.weight", "conv1d.weight", "head.weight"]
    assert all(layer.error_reconstructed <= layer.error_masked + 1e-9 for layer in report.layers)


def test_layers_run_in_data_flow_order_each_fed_the_pruned_layers_before_it() -> None:
    model = _ConvNet()
    targets = find_targets(model)
    x = torch.randn(4, 2, 8, 8)
    assert [t.name for t in flow_order(model, targets, x)] == ["conv.weight", "conv1d.weight", "head.weight"]
    dense_rows = next(layer_inputs(_copy(model), "head", x))
    reconstruct(model, targets, {"conv.weight": 0.5}, x)
    assert not torch.allclose(next(layer_inputs(model, "head", x)), dense_rows)


def test_dampening_is_raised_until_the_hessian_is_positive_definite() -> None:
    h = torch.diag(torch.tensor([1.0, 1.0, -0.05], dtype=torch.float64))  # mean diag 0.65
    damped_h, used = damped(h, 0.01)
    assert used == pytest.approx(0.1)
    assert torch.linalg.eigvalsh(damped_h).min() > 0


def test_bad_calibration_and_layers_are_one_line_errors() -> None:
    train = Split(torch.randn(10, 4), torch.zeros(10, dtype=torch.long))
    for size in (0, 11):
        with pytest.raises(UsageError, match="calibration size"):
            calibration_inputs(train, size)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    targets = find_targets(model)
    with pytest.raises(UsageError, match=r"cannot capture the inputs of 0\.weight: it is a grouped convolution"):
        reconstruct(model, targets, {"0.weight": 0.5}, torch.randn(8, 4, 3, 3))
    with pytest.raises(UsageError, match="unknown layer"):
        reconstruct(model, targets, {"nope": 0.5}, torch.randn(8, 4, 3, 3))


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def test_the_obs_sweep_alone_compensates_pruned_weights() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(30, 8))
    x = torch.randn(300, 30) @ torch.randn(30, 30)
    report = reconstruct(model, find_targets(model), {"0.weight": 0.7}, x, refit=False, blocksize=8)
    assert report.layers[0].error_reconstructed < 0.9 * report.layers[0].error_masked


def test_a_later_layer_is_fitted_to_the_dense_networks_outputs_not_to_its_pruned_inputs() -> None:
    torch.manual_seed(2)
    x = torch.randn(400, 24) @ torch.randn(24, 24)

    def output_error(allocation: dict[str, float]) -> float:
        torch.manual_seed(5)
        model = nn.Sequential(nn.Linear(24, 16), nn.Linear(16, 4))
        reference = model(x).detach()
        reconstruct(model, find_targets(model), allocation, x)
        return float(((model(x).detach() - reference) ** 2).sum())

    # Removing a single weight of the last layer lets it also correct the first layer's loss.
    assert output_error({"0.weight": 0.8, "1.weight": 0.01}) < 0.8 * output_error({"0.weight": 0.8})


def test_independent_fits_ignore_the_pruning_of_earlier_layers() -> None:
    x = torch.randn(300, 24)

    def last_layer(allocation: dict[str, float]) -> torch.Tensor:
        torch.manual_seed(5)
        model = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4))
        reconstruct(model, find_targets(model), allocation, x, sequential=False)
        return model[2].weight.detach()

    assert torch.equal(last_layer({"0.weight": 0.8, "2.weight": 0.5}), last_layer({"2.weight": 0.5}))


def test_reconstructed_pruning_restores_every_parameter_bit_exactly_also_after_an_exception() -> None:
    from prunescope.reconstruct import ReconstructedPruning

    model = _ConvNet()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    targets = find_targets(model)
    x = torch.randn(64, 2, 8, 8)
    pruning = ReconstructedPruning(model, targets, compute_scores(model, targets), x)
    allocation = uniform(targets, 0.6)
    with pruning.applied(allocation) as pruned:
        for t in targets:
            assert int((pruned.get_submodule(t.module).weight == 0).sum()) == removed_count(0.6, t.numel)
    with pytest.raises(RuntimeError), pruning.applied(allocation):
        raise RuntimeError("interrupted")
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert pruning.last is not None and len(pruning.last.layers) == 3


def test_compare_with_reconstruction_keeps_every_rows_sparsity_and_beats_plain_masks_on_val() -> None:
    from conftest import make_dataset

    from prunescope.pipeline.compare import compare

    data = make_dataset(n_train=300, n_val=90, n_test=60)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data.train.x), data.train.y).backward()
        optimizer.step()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    methods = ["global", "erk", "uniform"]
    plain = compare(model, data, [0.9], methods, test=False)
    refit = compare(model, data, [0.9], methods, test=False, reconstruct="mask", calibration=200)
    assert refit.to_dict()["reconstruct"] == "mask"
    for p_row, r_row in zip(plain.rows, refit.rows, strict=True):
        assert r_row.error is None and r_row.removed == p_row.removed
        assert r_row.val.loss < p_row.val.loss, r_row.method
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name])
