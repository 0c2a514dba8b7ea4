import pytest
import torch
from torch.nn.utils import prune

from prunescope.criteria import compute_scores
from prunescope.errors import UsageError
from prunescope.masks import (
    above,
    applied,
    apply_permanently,
    check_sparsity,
    compute_masks,
    lowest_cut,
    make_permanent,
    measured_sparsity,
    removed_count,
    zero_dropped,
)
from prunescope.targets import find_targets


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_bit_identical(model, state):
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.333, 0.5, 0.9, 0.99])
def test_masks_remove_exactly_round_s_n_weights(tiny_model, sparsity):
    targets = find_targets(tiny_model)
    scores = compute_scores(tiny_model, targets, "magnitude")
    masks = compute_masks(scores, {t.name: sparsity for t in targets})
    for t in targets:
        assert int((~masks[t.name]).sum()) == round(sparsity * t.numel)
        assert masks[t.name].shape == t.shape


def test_masks_remove_the_lowest_scores():
    scores = {"w": torch.tensor([[0.5, -0.0, 3.0], [0.1, 2.0, 0.7]]).abs()}
    keep = compute_masks(scores, {"w": 0.5})["w"]
    assert keep.tolist() == [[False, False, True], [False, True, True]]


def test_ties_still_give_the_exact_count():
    keep = compute_masks({"w": torch.zeros(10)}, {"w": 0.3})["w"]
    assert int((~keep).sum()) == 3


def test_applied_zeroes_then_restores_bit_exactly(tiny_model, tiny_data):
    targets = find_targets(tiny_model)
    before = _state(tiny_model)
    dense_output = tiny_model(tiny_data.val.x)
    masks = compute_masks(compute_scores(tiny_model, targets, "magnitude"), {t.name: 0.7 for t in targets})
    with applied(tiny_model, targets, masks):
        zeros = measured_sparsity(tiny_model, targets)
        assert all(zeros[t.name] == pytest.approx(round(0.7 * t.numel) / t.numel) for t in targets)
        assert not torch.equal(tiny_model(tiny_data.val.x), dense_output)
    _assert_bit_identical(tiny_model, before)
    assert torch.equal(tiny_model(tiny_data.val.x), dense_output)


def test_applied_restores_after_an_exception(tiny_model):
    targets = find_targets(tiny_model)
    before = _state(tiny_model)
    masks = compute_masks(compute_scores(tiny_model, targets, "magnitude"), {"fc1.weight": 0.9})
    with pytest.raises(RuntimeError, match="boom"), applied(tiny_model, targets, masks):
        assert measured_sparsity(tiny_model, targets)["fc1.weight"] > 0.89
        raise RuntimeError("boom")
    _assert_bit_identical(tiny_model, before)


def test_applied_with_unknown_layer_leaves_model_untouched(tiny_model):
    targets = find_targets(tiny_model)
    before = _state(tiny_model)
    masks = {"fc1.weight": torch.zeros(16, 64, dtype=torch.bool), "nope.weight": torch.ones(3, dtype=torch.bool)}
    with pytest.raises(UsageError, match=r"unknown layer 'nope\.weight'"), applied(tiny_model, targets, masks):
        pass
    _assert_bit_identical(tiny_model, before)


@pytest.mark.parametrize("bad", [1.3, -0.1])
def test_sparsity_out_of_range_is_a_usage_error(bad):
    with pytest.raises(UsageError, match=r"outside \[0, 1"):
        check_sparsity(bad)
    with pytest.raises(UsageError, match="outside"):
        compute_masks({"w": torch.ones(4)}, {"w": bad})


def test_unknown_layer_in_allocation(tiny_model):
    scores = compute_scores(tiny_model, find_targets(tiny_model), "magnitude")
    with pytest.raises(UsageError, match=r"unknown layer 'fc9\.weight'"):
        compute_masks(scores, {"fc9.weight": 0.5})


def test_permanent_reparametrisation_keeps_zeros_through_sgd(tiny_model, tiny_data):
    targets = find_targets(tiny_model)
    masks = compute_masks(compute_scores(tiny_model, targets, "magnitude"), {t.name: 0.8 for t in targets})
    apply_permanently(tiny_model, targets, masks)
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    tiny_model.train()
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(tiny_model(tiny_data.train.x), tiny_data.train.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for t in targets:
        weight = getattr(tiny_model.get_submodule(t.module), t.param)
        assert torch.all(weight[~masks[t.name]] == 0)
        assert int((weight == 0).sum()) >= removed_count(0.8, t.numel)
    make_permanent(tiny_model)
    assert not any(isinstance(h, prune.BasePruningMethod) for h in tiny_model.fc1._forward_pre_hooks.values())
    zeros = measured_sparsity(tiny_model, targets)["fc1.weight"] * 1024
    assert round(zeros) >= removed_count(0.8, 1024)


def test_bake_writes_zeros_without_reparametrisation(tiny_model):
    targets = find_targets(tiny_model)
    masks = compute_masks(compute_scores(tiny_model, targets, "magnitude"), {"fc2.weight": 0.5})
    apply_permanently(tiny_model, targets, masks, reparametrize=False)
    assert "weight_orig" not in dict(tiny_model.fc2.named_parameters())
    assert measured_sparsity(tiny_model, targets)["fc2.weight"] == 0.5


def test_temporary_masks_on_an_already_pruned_model_restore_exactly(tiny_model, tiny_data):
    prune.l1_unstructured(tiny_model.fc1, "weight", amount=0.5)
    targets = find_targets(tiny_model)
    before = _state(tiny_model)
    output = tiny_model(tiny_data.val.x)
    masks = compute_masks(compute_scores(tiny_model, targets, "magnitude"), {"fc1.weight": 0.9})
    with applied(tiny_model, targets, masks):
        assert measured_sparsity(tiny_model, targets)["fc1.weight"] >= 0.9
    _assert_bit_identical(tiny_model, before)
    assert torch.equal(tiny_model(tiny_data.val.x), output)


def _scores_with(kind: str) -> torch.Tensor:
    """Scores of 1000 weights: distinct, with runs of ties at every cut, or with a NaN."""
    score = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    if kind == "ties":
        return (score * 20).round()
    if kind == "nan":
        score[17] = float("nan")
    return score


@pytest.mark.parametrize("kind", ["distinct", "ties", "nan"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.bfloat16])
def test_lowest_cut_is_the_kth_lowest_exactly_where_it_removes_the_k_lowest(kind, dtype):
    score = _scores_with(kind).to(dtype)  # bfloat16 takes torch's selection, the others numpy's
    for k in (1, 10, 333, 500, 999, 1000):
        cut = lowest_cut(score, k)
        kth = torch.kthvalue(score.float(), k).values
        unique = not bool(score.isnan().any()) and int((score.float() <= kth).sum()) == k
        assert (cut is not None) == unique, (k, cut)
        if cut is not None:
            assert float(cut) == float(kth)
            assert torch.equal(above(score, cut), compute_masks({"w": score}, {"w": k / 1000})["w"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_zero_dropped_writes_positive_zeros_and_leaves_kept_values_bit_identical(dtype):
    values = torch.tensor([-1.5, -0.0, 0.0, float("inf"), float("-inf"), float("nan"), 2.0, -3.0] * 2, dtype=dtype)
    keep = torch.tensor([True] * 8 + [False] * 8)
    expected = values.clone().masked_fill_(~keep, 0)
    zeroed = values.clone()
    zero_dropped(zeroed, keep)
    width = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[values.element_size()]
    assert torch.equal(zeroed.view(width), expected.view(width))  # bits: -0.0 kept, +0.0 written, NaN kept
    strided = values.clone().view(2, 8).t()  # a transposed weight: not contiguous
    zero_dropped(strided, keep.view(2, 8).t())
    assert torch.equal(strided.t().reshape(-1).view(width), expected.view(width))
