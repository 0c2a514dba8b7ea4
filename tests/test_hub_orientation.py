"""Hugging Face ``Conv1D`` (weight stored in × out) is pruned as the Linear it is: masks, Wanda, reconstruction, MACs.

Every comparison is against an ``nn.Linear`` holding the transposed weight: the same layer stored the other way.
Float tolerances: ``addmm(b, x, W)`` and ``linear(x, Wᵀ, b)`` sum in other orders, so outputs agree to float32
rounding (rtol 1e-5, atol 1e-6); what reads the same numbers in the same order (scores, OBS on identical
inputs) is compared exactly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunescope.calibration import input_norms
from prunescope.criteria import compute_scores
from prunescope.data.types import Split
from prunescope.masks import removed_count
from prunescope.measure import count_macs
from prunescope.models import build_model
from prunescope.reconstruct import reconstruct
from prunescope.targets import find_targets
from prunescope.units import WeightPruning

transformers = pytest.importorskip("transformers")
import tiny_hf  # noqa: E402  (examples/, on sys.path by conftest)
from transformers.pytorch_utils import Conv1D  # noqa: E402

OUTPUTS = {"rtol": 1e-5, "atol": 1e-6}  # float32 rounding of two summation orders


class Stack(nn.Module):
    """first → tanh → second; the first layer sees the model's inputs unchanged."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


def as_linear(conv: Conv1D) -> nn.Linear:
    """The nn.Linear computing what ``conv`` computes: weight (out, in) = Conv1D's (in, out) transposed."""
    linear = nn.Linear(conv.nx, conv.nf)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    return linear


@pytest.fixture
def pair() -> tuple[Stack, Stack]:
    torch.manual_seed(0)
    first, second = Conv1D(12, 10), Conv1D(3, 12)
    with torch.no_grad():
        first.bias.normal_()
    return Stack(first, second), Stack(as_linear(first), as_linear(second))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    directory = tiny_hf.save("GPT2ForSequenceClassification", tiny_hf.gpt2_config(),
                                tmp_path_factory.mktemp("gpt2"))
    return build_model(f"hf:{directory}", (tiny_hf.SEQ_LEN,), 3).eval()


def test_conv1d_targets_are_found_transposed_in_a_gpt2_block(gpt2):
    targets = {t.name: t for t in find_targets(gpt2)}
    convs = [f"transformer.h.{i}.{layer}.weight" for i in range(2)
             for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert list(targets) == ["transformer.wte.weight", "transformer.wpe.weight", *convs, "score.weight"]
    for name in convs:
        t = targets[name]
        weight = gpt2.get_submodule(t.module).weight
        assert t.kind == "linear" and t.transposed and t.shape == tuple(weight.shape)
        assert (t.rows, t.fan_in) == (weight.shape[1], weight.shape[0])  # (out, in) of a weight stored (in, out)
        assert torch.equal(t.matrix(weight), weight.T) and torch.equal(t.from_matrix(t.matrix(weight)), weight)
    assert not targets["score.weight"].transposed


def test_gpt2_conv1d_layers_are_pruned_to_the_asked_count_and_equal_the_masked_linear(gpt2):
    targets = find_targets(gpt2)
    convs = [t for t in targets if t.transposed]
    scores = compute_scores(gpt2, targets, "magnitude")
    pruning = WeightPruning(gpt2, targets, scores)
    dense = {t.name: gpt2.get_submodule(t.module) for t in convs}
    linears = {name: as_linear(conv) for name, conv in dense.items()}
    allocation = {t.name: 0.6 for t in convs}
    masks = pruning.masks  # per target: the mask an allocation applies
    with pruning.applied(allocation):
        for t in convs:
            conv = gpt2.get_submodule(t.module)
            zeros = int((conv.weight == 0).sum())
            assert zeros == removed_count(0.6, t.numel)
            keep = masks(t.name, 0.6)[t.name]
            assert torch.equal(conv.weight != 0, keep)  # the zeros are where the mask says, nowhere else
            linear = linears[t.name]
            with torch.no_grad():
                linear.weight.mul_(keep.T)  # the same mask on the Linear: transposed
            x = torch.randn(5, 4, conv.nx)
            torch.testing.assert_close(conv(x), linear(x), **OUTPUTS)
    assert all(int((gpt2.get_submodule(t.module).weight == 0).sum()) == 0 for t in convs)  # restored


def test_wanda_scores_of_conv1d_equal_those_of_the_linear_transposed(pair):
    conv_model, linear_model = pair
    data = Split(torch.randn(64, 10), torch.zeros(64, dtype=torch.long))
    conv_target = find_targets(conv_model, include=["first"])
    linear_target = find_targets(linear_model, include=["first"])
    conv_norms = input_norms(conv_model, "first", data.x)
    assert conv_norms.shape == (10,)  # one norm per input feature (nx), not per output
    torch.testing.assert_close(conv_norms, input_norms(linear_model, "first", data.x), rtol=0, atol=0)
    conv_scores = compute_scores(conv_model, conv_target, "wanda", data=data, calibration=64)["first.weight"]
    linear_scores = compute_scores(linear_model, linear_target, "wanda", data=data, calibration=64)["first.weight"]
    assert conv_scores.shape == (10, 12)
    assert torch.equal(conv_scores, linear_scores.T)  # same numbers, same order: exact
    # Wanda compares within an output row: removing k per layer spreads them evenly over the 12 outputs.
    removed = torch.zeros_like(conv_scores, dtype=torch.bool)
    removed.view(-1)[conv_scores.flatten().argsort()[:36]] = True
    assert removed.sum(0).tolist() == [3] * 12


@pytest.mark.parametrize("select", ["obs", "mask"])
def test_reconstruction_of_conv1d_equals_that_of_the_linear(pair, select):
    conv_model, linear_model = pair
    calibration = torch.randn(96, 10)
    conv_targets, linear_targets = find_targets(conv_model), find_targets(linear_model)
    conv_scores = compute_scores(conv_model, conv_targets[:1], "magnitude")
    masks = {"first.weight": conv_scores["first.weight"] > conv_scores["first.weight"].median()}
    conv_result = reconstruct(conv_model, conv_targets, {"first.weight": 0.5}, calibration, select=select,
                              masks=masks)
    linear_result = reconstruct(linear_model, linear_targets, {"first.weight": 0.5}, calibration, select=select,
                                masks={"first.weight": masks["first.weight"].T})
    conv, linear = conv_model.first, linear_model.first
    assert int((conv.weight == 0).sum()) == removed_count(0.5, conv.weight.numel())
    assert torch.equal(conv_result.masks["first.weight"], linear_result.masks["first.weight"].T)
    assert torch.equal(conv.weight, linear.weight.T) and torch.equal(conv.bias, linear.bias)  # identical arithmetic
    assert conv_result.layers[0].error_reconstructed == linear_result.layers[0].error_reconstructed
    assert conv_result.layers[0].error_reconstructed < conv_result.layers[0].error_masked
    torch.testing.assert_close(conv_model(calibration), linear_model(calibration), **OUTPUTS)


def test_macs_of_conv1d_equal_those_of_the_linear(pair, gpt2):
    conv_model, linear_model = pair
    conv, linear = count_macs(conv_model, (7, 10)), count_macs(linear_model, (7, 10))
    expected = {"first.weight": (7 * 10 * 12,) * 2, "second.weight": (7 * 12 * 3,) * 2}  # tokens × in × out
    assert conv.per_weight == linear.per_weight == expected
    with torch.no_grad():
        conv_model.first.weight[:5].zero_()  # 5 of the 10 input rows: half the weights
    assert count_macs(conv_model, (7, 10)).per_weight["first.weight"] == (7 * 10 * 12, 7 * 5 * 12)
    block = count_macs(gpt2, (tiny_hf.SEQ_LEN,)).per_weight
    for name, (dense, _) in block.items():
        if name.endswith("c_fc.weight"):
            assert dense == tiny_hf.SEQ_LEN * 16 * 64  # tokens × in × out of each block's c_fc
