"""Block-by-block reconstruction: the whole-model result, one block's inputs in memory, exact counts and N:M."""

from __future__ import annotations

import copy
import gc

import pytest
import tiny_hf
import torch
from torch import nn

import prunescope.reconstruct as reconstruct_module
from prunescope.criteria import compute_scores
from prunescope.masks import compute_masks, removed_count
from prunescope.models import build_model
from prunescope.patterns import parse_pattern
from prunescope.reconstruct import reconstruct, reconstruction_plan
from prunescope.targets import chosen_targets, find_targets

VOCAB, LENGTH, WIDTH = 30, 8, 16
# The block path runs the same float32 operations on the same values as the whole-model path (here the
# results are bit-identical); the tolerance leaves room for kernels that pick another path on other inputs.
TOLERANCE = 1e-6


def gpt(layers: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("gpt", (LENGTH,), VOCAB, width=WIDTH, layers=layers, heads=2).eval()


def tokens(n: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed)).float()


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    pytest.importorskip("transformers")
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_hf.llama_config(vocab_size=VOCAB, num_hidden_layers=3))
    from prunescope.models import as_logits

    return as_logits(model).eval()


@pytest.fixture(scope="module")
def gpt2() -> nn.Module:
    pytest.importorskip("transformers")
    import transformers

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(tiny_hf.gpt2_config(vocab_size=VOCAB, n_layer=3))
    from prunescope.models import as_logits

    return as_logits(model).eval()


def both_paths(model: nn.Module, targets, allocation, x, **options):
    by_block, whole = copy.deepcopy(model), copy.deepcopy(model)
    first = reconstruct(by_block, targets, allocation, x, batch_size=16, **options)
    second = reconstruct(whole, targets, allocation, x, batch_size=16, blockwise=False, **options)
    return (by_block, first), (whole, second)


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=TOLERANCE * max(1.0, float(q.detach().abs().max())), msg=name)


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("select", ["obs", "mask"])
def test_block_by_block_equals_the_whole_model_reconstruction(layers, select):
    model = gpt(layers)
    targets = chosen_targets(model, VOCAB)[0]
    x = tokens()
    allocation = {t.name: 0.3 + 0.1 * (i % 5) for i, t in enumerate(targets)}
    masks = compute_masks(compute_scores(model, targets, "magnitude"), allocation) if select == "mask" else None
    (by_block, first), (whole, second) = both_paths(model, targets, allocation, x, select=select, masks=masks)
    assert first.plan.startswith(f"reconstruction block by block over {layers} blocks (blocks.0")
    assert second.plan.endswith("block by block turned off (blockwise=False)") and second.block_inputs_peak_bytes == 0
    assert all(torch.equal(first.masks[k], second.masks[k]) for k in second.masks)
    assert_same_model(by_block, whole)
    for a, b in zip(first.layers, second.layers, strict=True):
        assert a.name == b.name and a.removed == b.removed
        assert a.error_reconstructed == pytest.approx(b.error_reconstructed, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_hugging_face_decoders_are_reconstructed_block_by_block_as_through_the_whole_model(which, request):
    model = request.getfixturevalue(which)
    targets = chosen_targets(model, VOCAB)[0]
    allocation = {t.name: 0.5 for t in targets}
    (by_block, first), (whole, _) = both_paths(model, targets, allocation, tokens())
    blocks = "model.layers" if which == "llama" else "transformer.h"
    assert first.plan.startswith(f"reconstruction block by block over 3 blocks ({blocks}.0 … {blocks}.2)")
    assert_same_model(by_block, whole)


def test_block_by_block_removes_exact_counts_and_keeps_n_m_masks_exact(gpt2):
    model = gpt(3)
    targets = chosen_targets(model, VOCAB)[0]
    allocation = {t.name: s for t, s in zip(targets, torch.linspace(0.15, 0.85, len(targets)).tolist(), strict=True)}
    pruned = copy.deepcopy(model)
    record = reconstruct(pruned, targets, allocation, tokens(), batch_size=16)
    assert record.plan.startswith("reconstruction block by block")
    for t in targets:
        weight = getattr(pruned.get_submodule(t.module), t.param)
        assert int((weight == 0).sum()) == removed_count(allocation[t.name], t.numel)
    for model in (gpt(3), gpt2):  # a Linear / attention model, and Conv1D layers stored (in, out)
        targets = chosen_targets(model, VOCAB)[0]
        pruned = copy.deepcopy(model)
        record = reconstruct(pruned, targets, {t.name: 0.5 for t in targets}, tokens(), batch_size=16,
                             pattern=parse_pattern("2:4"))
        assert record.plan.startswith("reconstruction block by block")
        for t in targets:
            zeros = (t.matrix(getattr(pruned.get_submodule(t.module), t.param)) == 0).reshape(t.rows, -1, 4)
            assert torch.equal(zeros.sum(2), torch.full_like(zeros.sum(2), 2)), t.name  # 2 of every 4 inputs


def live_hidden_states() -> int:
    """Tensors alive now that hold hidden states of the gpt (…, LENGTH, WIDTH): what the blocks' inputs are."""
    return sum(1 for o in gc.get_objects()
               if type(o) is torch.Tensor and o.dim() == 3 and tuple(o.shape[1:]) == (LENGTH, WIDTH))


def test_memory_holds_one_blocks_inputs_whatever_the_number_of_blocks(monkeypatch):
    counted: list[int] = []
    layer = reconstruct_module.reconstruct_layer

    def counting(*args, **kwargs):  # at every layer: the hidden-state tensors held while it is fitted
        counted.append(live_hidden_states())
        return layer(*args, **kwargs)

    monkeypatch.setattr(reconstruct_module, "reconstruct_layer", counting)
    x = tokens(40)
    batches = 3  # 40 sequences in batches of 16
    peaks, held = {}, {}
    for layers in (1, 2, 4, 8):
        model = gpt(layers)
        targets = chosen_targets(model, VOCAB)[0]
        counted.clear()
        record = reconstruct(model, targets, {t.name: 0.5 for t in targets}, x, batch_size=16)
        peaks[layers], held[layers] = record.block_inputs_peak_bytes, max(counted)
        assert len(counted) == len(targets)
    # One block's inputs, float32, of two streams (pruned, dense) once a pruned block's outputs part them (one
    # stream for a single block): never more, for any number of blocks.
    one = 40 * LENGTH * WIDTH * 4
    assert peaks == {1: one, 2: 2 * one, 4: 2 * one, 8: 2 * one}
    assert held[2] == held[4] == held[8] <= 2 * batches and held[1] <= batches, held


def test_models_without_a_chain_of_blocks_take_the_whole_model_path_and_say_why():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    plan = reconstruction_plan(mlp, find_targets(mlp), torch.randn(2, 12))
    assert plan.line() == ("reconstruction through the whole model for every layer: no prunable layer sits in a "
                           "numbered block (such as a transformer's decoder layers)")

    class Looped(nn.Module):  # one block applied twice: its inputs differ between the calls
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks[0](self.blocks[0](x))

    looped = Looped()
    assert reconstruction_plan(looped, find_targets(looped), torch.randn(2, 6)).reason == (
        "block blocks.0 runs 2 times in one forward pass")
    x = torch.randn(30, 6)
    record = reconstruct(looped, find_targets(looped), {"blocks.0.0.weight": 0.5, "blocks.0.2.weight": 0.5}, x)
    assert record.plan.endswith("runs 2 times in one forward pass") and len(record.layers) == 2


def test_layers_outside_the_blocks_go_through_the_whole_model_before_and_after_them():
    model = gpt(2)
    targets = chosen_targets(model, VOCAB, include=["embed", "blocks.*", "head"])[0]  # embedding first, head last
    allocation = {t.name: 0.5 for t in targets}
    masks = compute_masks(compute_scores(model, targets, "magnitude"), allocation)
    (by_block, first), (whole, _) = both_paths(model, targets, allocation, tokens(), masks=masks, fallback=True)
    assert first.plan.startswith("reconstruction block by block over 2 blocks")
    assert set(first.fallback) == {"embed.weight"} and first.layers[-1].name == "head.weight"
    assert_same_model(by_block, whole)
