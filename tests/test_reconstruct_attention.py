"""Reconstruction inside attention (in_proj / q,k,v projections, out_proj) and the masks-alone fallback."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import SequenceNet, make_dataset
from torch import nn

from prunescope.calibration import layer_inputs, unsupported
from prunescope.criteria import compute_scores
from prunescope.errors import UsageError
from prunescope.masks import compute_masks, removed_count
from prunescope.reconstruct import ReconstructedPruning, reconstruct
from prunescope.targets import find_targets, flow_order


class CrossAttention(nn.Module):
    """Queries from one projection attend to keys / values of another width (separate q, k, v projections)."""

    def __init__(self, packed: bool = False) -> None:
        super().__init__()
        self.query = nn.Linear(16, 8)
        self.memory = nn.Linear(16, 8 if packed else 6)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, **({} if packed else {"kdim": 6, "vdim": 6}))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(len(x), 1, 16).repeat(1, 3, 1) * torch.tensor([1.0, -0.5, 2.0]).reshape(1, 3, 1)
        memory = self.memory(tokens)
        out, _ = self.attn(self.query(tokens), memory, memory, need_weights=False)
        return self.head(out[:, 0])


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    module, _, param = name.rpartition(".")
    return getattr(model.get_submodule(module), param).detach()


def test_out_proj_inputs_are_the_attention_output_before_it() -> None:
    torch.manual_seed(0)
    model = SequenceNet().eval()
    x = torch.randn(20, 1, 4, 4)
    rows = torch.cat(list(layer_inputs(model, "attn.out_proj", x, batch_size=7)))
    seq, _ = model.rnn(x.flatten(1, 2))
    with torch.no_grad():
        attended, _ = model.attn(seq, seq, seq)
    # out_proj applied to the captured rows gives the attention's output, and its weights are untouched.
    # Float32 tolerances, not equality: the captured rows come from batches of 7, the reference from one batch
    # of 20 (other kernels and blockings of the LSTM, the projections and the softmax); rounding of these O(1)
    # values is ~1e-7, a wrongly captured input differs by ~0.1.
    torch.testing.assert_close(model.attn.out_proj(rows), attended.reshape(-1, 8), rtol=1e-5, atol=1e-6)
    assert rows.shape == (20 * 4, 8)
    in_rows = torch.cat(list(layer_inputs(model, "attn", x, param="in_proj_weight")))
    # Two separate LSTM runs (inside the model under no_grad here, with autograd above): the CPU's RNN kernel
    # (oneDNN) may take another path for each, and rounds differently on another CPU.
    torch.testing.assert_close(in_rows, seq.detach().reshape(-1, 8), rtol=1e-5, atol=1e-6)


def test_attention_layers_run_in_flow_order_and_are_reconstructed_with_exact_counts() -> None:
    torch.manual_seed(0)
    model = SequenceNet().eval()
    dense = copy.deepcopy(model)
    targets = find_targets(model, exclude=["rnn"])
    x = torch.randn(256, 1, 4, 4)
    assert [t.name for t in flow_order(model, targets, x[:1])] == ["attn.in_proj_weight", "attn.out_proj.weight",
                                                                   "head.weight"]
    allocation = {t.name: 0.6 for t in targets}
    masks = compute_masks(compute_scores(model, targets), allocation)
    report = reconstruct(model, targets, allocation, x, masks=masks, select="mask")
    assert [layer.name for layer in report.layers] == ["attn.in_proj_weight", "attn.out_proj.weight", "head.weight"]
    for layer in report.layers:
        assert layer.error_reconstructed < 0.8 * layer.error_masked, layer.name
    for t in targets:
        assert torch.equal(_weight(model, t.name) != 0, masks[t.name]), t.name
    assert not torch.equal(model.attn.in_proj_bias, dense.attn.in_proj_bias)  # the bias absorbs part of the error
    plain = copy.deepcopy(dense)
    with torch.no_grad():
        for t in targets:
            getattr(plain.get_submodule(t.module), t.param).mul_(masks[t.name])
        error = {name: float(((m(x) - dense(x)) ** 2).sum()) for name, m in (("plain", plain), ("rebuilt", model))}
    assert error["rebuilt"] < 0.5 * error["plain"]


def test_separate_qkv_projections_are_reconstructed_and_packed_cross_attention_is_refused() -> None:
    torch.manual_seed(1)
    model = CrossAttention().eval()
    targets = find_targets(model)
    x = torch.randn(200, 16)
    assert unsupported(model, targets, x[:1]) == {}
    bias = model.attn.in_proj_bias.detach().clone()
    report = reconstruct(model, targets, {t.name: 0.5 for t in targets}, x, select="obs")
    names = {layer.name for layer in report.layers}
    assert {"attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj.weight"} <= names
    for t in targets:
        assert int((_weight(model, t.name) == 0).sum()) == removed_count(0.5, t.numel), t.name
    assert all(not torch.equal(model.attn.in_proj_bias[i * 8:(i + 1) * 8], bias[i * 8:(i + 1) * 8]) for i in range(3))

    packed = CrossAttention(packed=True).eval()
    targets = find_targets(packed)
    assert set(unsupported(packed, targets, x[:1])) == {"attn.in_proj_weight"}
    with pytest.raises(UsageError, match=r"inputs of attn\.in_proj_weight: it is the packed in_proj_weight of a "
                                         r"cross-attention.*--reconstruct-fallback"):
        reconstruct(packed, targets, {t.name: 0.5 for t in targets}, x)


def test_recurrent_gates_are_refused_or_pruned_with_the_criterions_masks_alone() -> None:
    torch.manual_seed(0)
    model = SequenceNet().eval()
    dense = copy.deepcopy(model)
    targets = find_targets(model)
    x = torch.randn(128, 1, 4, 4)
    scores = compute_scores(model, targets)
    with pytest.raises(UsageError) as refused:
        ReconstructedPruning(model, targets, scores, x)
    message = str(refused.value)
    assert message.startswith("cannot capture the inputs of rnn.weight_ih_l0: it is a recurrent gate matrix")
    assert "--exclude 'rnn'" in message and "--reconstruct-fallback" in message and "\n" not in message

    pruning = ReconstructedPruning(model, targets, scores, x, select="obs", fallback=True)
    assert set(pruning.fallback) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0"}
    allocation = {t.name: 0.5 for t in targets}
    masks = compute_masks(scores, allocation)
    with pruning.applied(allocation) as pruned:
        for name in pruning.fallback:  # masks alone: the criterion's zeros, every kept weight as it was
            assert torch.equal(_weight(pruned, name), _weight(dense, name) * masks[name])
        for t in targets:
            assert int((_weight(pruned, t.name) == 0).sum()) == removed_count(0.5, t.numel), t.name
    assert pruning.last is not None and set(pruning.last.fallback) == set(pruning.fallback)
    assert [layer.name for layer in pruning.last.layers] == ["attn.in_proj_weight", "attn.out_proj.weight",
                                                             "head.weight"]
    assert pruning.last.to_dict()["fallback"] == pruning.fallback
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(dense.named_parameters())[name]), name


def test_wanda_scores_attention_projections() -> None:
    torch.manual_seed(0)
    model = SequenceNet().eval()
    targets = find_targets(model, exclude=["rnn"])
    scores = compute_scores(model, targets, "wanda", data=make_dataset().train, calibration=64)
    assert {name: s.shape for name, s in scores.items()} == {t.name: t.shape for t in targets}
    with pytest.raises(UsageError, match=r"recurrent gate matrix.*use a criterion that needs no calibration data"):
        compute_scores(model, find_targets(model), "wanda", data=make_dataset().train, calibration=64)
