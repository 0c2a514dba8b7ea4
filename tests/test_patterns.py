"""N:M sparsity: exactly N kept in every group of M along the input dimension, for every way of pruning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunescope.apply import prune
from prunescope.criteria import compute_scores
from prunescope.data.types import Split
from prunescope.errors import PrunescopeError, UsageError
from prunescope.patterns import Pattern, PatternPruning, check_pattern, parse_pattern, pattern_masks
from prunescope.reconstruct import reconstruct
from prunescope.targets import effective_weight, find_targets

PATTERNS = [Pattern(2, 4), Pattern(1, 4), Pattern(4, 8)]


def _net() -> nn.Module:
    """Every input width a multiple of 8: a convolution (4·2·2 = 16) and two Linear layers (32, 16)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 2, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 8)).eval()


def _train(n: int = 96) -> Split:
    generator = torch.Generator().manual_seed(1)
    return Split(torch.randn(n, 4, 4, 4, generator=generator), torch.randint(0, 8, (n,), generator=generator))


def _kept_per_group(mask: torch.Tensor, m: int) -> torch.Tensor:
    """Kept weights of every group of m consecutive weights of each output row: (out, fan_in / m)."""
    return mask.reshape(mask.shape[0], -1, m).sum(2)


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "random"])
def test_every_criterion_keeps_exactly_n_of_every_m(pattern, criterion):
    model = _net()
    targets = find_targets(model)
    scores = compute_scores(model, targets, criterion, data=_train(), calibration=64)
    masks = pattern_masks(scores, pattern, [t.name for t in targets])
    for t in targets:
        assert (_kept_per_group(masks[t.name], pattern.m) == pattern.n).all()
        assert int(masks[t.name].sum()) == t.numel * pattern.n // pattern.m
    check_pattern(masks, pattern)


def test_the_n_highest_scores_of_each_group_are_kept():
    scores = {"w": torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 9.0, 8.0, 7.0]])}
    assert pattern_masks(scores, Pattern(2, 4), ["w"])["w"].tolist() == [[True, False, True, False,
                                                                          False, True, True, False]]


def test_a_convolution_is_grouped_along_its_flattened_input():
    score = torch.arange(8 * 4 * 2 * 2, dtype=torch.float32).reshape(8, 4, 2, 2)
    mask = pattern_masks({"c": score}, Pattern(2, 4), ["c"])["c"]
    # Per output channel, groups of 4 over (in, kh, kw) flattened: one input channel's 2 × 2 kernel each.
    assert mask[:, :, 1, :].all() and not mask[:, :, 0, :].any()


@pytest.mark.parametrize("pattern", [Pattern(2, 4), Pattern(1, 4)], ids=str)
@pytest.mark.parametrize("select", ["mask", "obs"])
def test_reconstruction_keeps_exactly_n_of_every_m(pattern, select):
    model = _net()
    targets = find_targets(model)
    scores = compute_scores(model, targets, "magnitude")
    masks = pattern_masks(scores, pattern, [t.name for t in targets])
    done = reconstruct(model, targets, dict.fromkeys((t.name for t in targets), 0.3), _train().x, masks=masks,
                       select=select, pattern=pattern)
    for t in targets:
        assert (_kept_per_group(done.masks[t.name], pattern.m) == pattern.n).all()
        nonzero = effective_weight(model, t) != 0
        assert not (nonzero & ~done.masks[t.name]).any()  # pruned weights are exactly zero
        assert (_kept_per_group(nonzero, pattern.m) <= pattern.n).all()
    if select == "mask":
        assert all(torch.equal(done.masks[name], mask) for name, mask in masks.items())
    removed = {layer.name: layer.removed for layer in done.layers}
    assert removed == {t.name: t.numel * (pattern.m - pattern.n) // pattern.m for t in targets}


def test_obs_with_a_diagonal_hessian_keeps_the_largest_weights_of_each_group():
    # Orthonormal calibration rows: H ∝ I, so the OBS saliency w² / [H⁻¹]_qq² orders a group as |w| does,
    # and no kept weight is moved: SparseGPT's N:M selection is then magnitude's N:M.
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 8, bias=False)).eval()
    target = find_targets(model)[0]
    dense = model[0].weight.detach().clone()
    done = reconstruct(model, [target], {target.name: 0.5}, torch.eye(16), select="obs", pattern=Pattern(2, 4))
    expected = pattern_masks({target.name: dense.abs()}, Pattern(2, 4), [target.name])[target.name]
    assert torch.equal(done.masks[target.name], expected)
    torch.testing.assert_close(model[0].weight.detach(), dense * expected, rtol=1e-5, atol=1e-6)


def test_prune_applies_the_pattern_and_checks_it():
    model = _net()
    masks = prune(model, {t.name: 0.9 for t in find_targets(model)}, criterion="wanda", data=_train(1100),
                  pattern=Pattern(2, 4), reconstruct="obs", calibration=64)
    for name, mask in masks.items():
        assert (_kept_per_group(mask, 4) == 2).all(), name


def test_pattern_pruning_restores_the_weights_after_its_block():
    model = _net()
    targets = find_targets(model)
    before = [p.detach().clone() for p in model.parameters()]
    pruning = PatternPruning(model, targets, compute_scores(model, targets), Pattern(2, 4))
    with pruning.applied({t.name: 0.5 for t in targets}):
        assert all((_kept_per_group(effective_weight(model, t) != 0, 4) <= 2).all() for t in targets)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("text", ["4:4", "5:4", "0:4", "2-4", "2:x", "-1:4"])
def test_a_pattern_needs_one_to_m_minus_one_of_m(text):
    with pytest.raises(UsageError, match="pattern") as error:
        parse_pattern(text)
    assert "\n" not in str(error.value)


def test_a_layer_whose_input_width_is_not_a_multiple_of_m_is_named():
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6)).eval()
    targets = find_targets(model)
    with pytest.raises(UsageError, match=r"^0.weight has input width 12, not a multiple of 8") as error:
        PatternPruning(model, targets, compute_scores(model, targets), Pattern(4, 8))
    assert "--exclude '0'" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UsageError, match=r"0\.weight has input width 12"):
        prune(model, {t.name: 0.5 for t in targets}, pattern=Pattern(4, 8))
    assert all((effective_weight(model, t) != 0).all() for t in targets)  # nothing pruned


def test_the_check_refuses_masks_that_are_not_n_m():
    mask = pattern_masks({"w": torch.randn(4, 8)}, Pattern(2, 4), ["w"])["w"]
    mask[0, 0] = ~mask[0, 0]
    with pytest.raises(PrunescopeError, match="not 2:4: 1 of 8 groups"):
        check_pattern({"w": mask}, Pattern(2, 4))
    check_pattern({"w": torch.eye(4, 8, dtype=torch.bool)}, Pattern(2, 4), at_most=True)  # fewer non-zeros: fine
    with pytest.raises(PrunescopeError, match="more than 2"):
        check_pattern({"w": torch.ones(4, 8, dtype=torch.bool)}, Pattern(2, 4), at_most=True)


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 ``Conv1D`` in miniature: y = x @ W + b with W stored (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.view(-1, self.nx), self.weight).view(*x.shape[:-1], self.nf)


@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_a_conv1d_is_grouped_along_its_input_dimension_like_the_equivalent_linear(criterion):
    """A Conv1D stores (in, out): its N:M groups run down the stored columns, so its mask is the equivalent
    Linear's mask transposed, and every output unit keeps 2 of every 4 consecutive inputs."""
    torch.manual_seed(5)
    conv = nn.Sequential(Conv1D(8, 16)).eval()
    linear = nn.Sequential(nn.Linear(16, 8)).eval()
    with torch.no_grad():
        linear[0].weight.copy_(conv[0].weight.t())
        linear[0].bias.copy_(conv[0].bias)
    train = Split(torch.randn(1100, 16), torch.zeros(1100, dtype=torch.long))
    masks = {}
    for name, model in (("conv", conv), ("linear", linear)):
        targets = find_targets(model)
        masks[name] = prune(model, {targets[0].name: 0.5}, criterion=criterion, data=train, pattern=Pattern(2, 4),
                            calibration=64)[targets[0].name]
    assert torch.equal(masks["conv"], masks["linear"].t())
    assert torch.equal(_kept_per_group(masks["linear"], 4), torch.full((8, 4), 2))
    torch.testing.assert_close(conv[0].weight.detach().t(), linear[0].weight.detach(), rtol=0, atol=0)
