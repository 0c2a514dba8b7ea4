"""Masks hold for every module PyTorch ships, through fine-tuning; dense targets stay plain."""

import copy

import own_models as um
import pytest
import torch

from prunescope.apply import prune
from prunescope.checkpoint import plain_state_dict
from prunescope.data.types import Dataset, Split
from prunescope.masks import make_permanent
from prunescope.targets import effective_weight, find_targets
from prunescope.train import TrainConfig, finetune


def _dataset(pairs) -> Dataset:
    (xt, yt), (xv, yv) = pairs()
    return Dataset("t", Split(xt, yt), Split(xv, yv), Split(xv, yv), tuple(xt.shape[1:]), 3, {"name": "t"})


MODELS = {
    "attention": (um.attention, um.images),
    "transformer-encoder-layer": (um.encoder, um.images),
    "gru": (um.gru, um.images),
    "lstm-2-layers": (um.lstm, um.images),
    "depthwise-grouped-residual-concat": (lambda shape, n: um.separable(shape, n, groups=3), um.images),
    "embedding": (um.bag, um.tokens),
    "tabular": (um.tabular, um.features),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_prune_and_finetune_keeps_zeros(name):
    factory, pairs = MODELS[name]
    data = _dataset(pairs)
    torch.manual_seed(0)
    model = factory(data.input_shape, 3)
    targets = find_targets(model)
    dense = targets[0]
    allocation = {t.name: 0.5 for t in targets} | {dense.name: 0.0}
    masks = prune(model, allocation)
    before = {t.name: effective_weight(model, t).clone() for t in targets}
    # batch 32 on 120+ examples: several optimiser steps, each with its own backward pass
    result = finetune(model, data, targets, masks, TrainConfig(epochs=1, batch_size=32, lr=0.05), device="cpu")
    model = result.model
    for t in targets[1:]:
        weight = effective_weight(model, t)
        assert int((weight == 0).sum()) == round(0.5 * t.numel), t.name
        assert torch.equal(weight == 0, ~masks[t.name]), t.name
        kept = masks[t.name]
        assert not torch.equal(weight[kept], before[t.name][kept]), f"{t.name} did not train"
    owner = model.get_submodule(dense.module)
    assert dense.param + "_orig" not in owner._parameters and dense.param + "_mask" not in owner._buffers
    assert isinstance(getattr(owner, dense.param), torch.nn.Parameter)
    # the forward pass computes with the masked weights: same outputs as the baked copy
    baked = make_permanent(copy.deepcopy(model))
    x = data.val.x[:8]
    with torch.no_grad():
        assert torch.allclose(model(x), baked(x), atol=1e-6)
    assert set(plain_state_dict(model)) == set(baked.state_dict())


def test_out_proj_is_masked_in_the_attention_forward():
    """MultiheadAttention reads out_proj.weight itself: zeroing it must change the output."""
    data = _dataset(um.images)
    torch.manual_seed(0)
    model = um.attention(data.input_shape, 3)
    name = "attn.out_proj.weight"
    targets = find_targets(model)
    prune(model, {t.name: (0.99 if t.name == name else 0.0) for t in targets})
    baked = um.attention(data.input_shape, 3)
    baked.load_state_dict(plain_state_dict(model))
    x = data.val.x[:4]
    with torch.no_grad():
        assert torch.allclose(model(x), baked(x), atol=1e-6)
        model.attn.out_proj.weight_orig.mul_(2)  # the kept weights change: the forward must see it
        assert not torch.allclose(model(x), baked(x))
