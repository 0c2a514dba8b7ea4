"""Which channels go first (``prunescope.structured.importance``) and how many
(``prunescope.structured.allocation``)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.models import build_model
from prunescope.structured.allocation import check_round_to, kept_channels, removal_for
from prunescope.structured.find import find_groups
from prunescope.structured.importance import IMPORTANCES, GroupScores, group_scores

SHAPE = (1, 8, 8)


def model_and_groups(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    model = build_model(name, SHAPE, 3, **options).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # BN scales far from their all-ones default, so that "bn" has something to rank
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.weight.copy_(torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model, find_groups(model, SHAPE)


def split(n: int = 24, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, *SHAPE, generator=generator), torch.arange(n) % 3)


def mean_normalised(score: torch.Tensor) -> torch.Tensor:
    """Torch-Pruning's default normaliser ("mean"): scores divided by their mean."""
    return score / score.mean()


def lamp(score: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al. 2021): each score over the sum of the scores not below it."""
    order = score.argsort()
    result = torch.empty_like(score)
    for rank, i in enumerate(order):
        result[i] = score[i] / score[order[rank:]].sum()
    return result


# ----------------------------------------------------------------------------- every importance


@pytest.mark.parametrize("importance", list(IMPORTANCES))
@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20", "lstm"])
def test_every_importance_scores_every_channel_of_every_group(name, importance):
    model, groups = model_and_groups(name)
    scores = group_scores(groups, importance, data=split(), batches=2, batch_size=8)
    assert scores.importance == importance
    assert list(scores.scores) == list(groups.groups)
    for group, score in scores.scores.items():
        assert score.shape == (groups.groups[group].width,), group
        assert score.dtype == torch.float32 and torch.isfinite(score).all(), group
        assert (score >= 0).all() and score.std() > 0, group  # a ranking, not a constant
        ranked = scores.ranked(group)
        assert sorted(ranked) == list(range(score.numel()))
        assert all(score[a] <= score[b] for a, b in itertools.pairwise(ranked))
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- exact values on an MLP


def mlp():
    """fc1 (64 → 8) → fc2 (8 → 6) → fc3 (6 → 3): group fc1 is fc1's rows and fc2's columns."""
    model, groups = model_and_groups("mlp", hidden=(8, 6))
    assert groups.groups["fc1"].members == ("fc1 (out)", "fc2 (in)")
    with torch.no_grad():  # a bias large enough to change the ranking if it were counted
        model.fc1.bias.copy_(torch.linspace(10.0, -10.0, 8))
    return model, groups


def rows_and_columns(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per hidden unit j of fc1: fc1.weight row j and fc2.weight column j."""
    return model[1].weight.detach(), model[3].weight.detach().T


@pytest.mark.parametrize(
    ("importance", "expected"),
    [
        # group L1: sum |w| over fc1's row and fc2's column (bias not counted), over the mean
        ("l1", lambda r, c: mean_normalised(r.abs().sum(1) + c.abs().sum(1))),
        # "l2" is Torch-Pruning's group magnitude with p=2: squares summed, no square root
        ("l2", lambda r, c: mean_normalised(r.pow(2).sum(1) + c.pow(2).sum(1))),
        # FPGM: per member, summed distances between the channels' |w|^2 vectors
        (
            "fpgm",
            lambda r, c: mean_normalised(
                torch.cdist(r.pow(2), r.pow(2)).sum(0) + torch.cdist(c.pow(2), c.pow(2)).sum(0)
            ),
        ),
        # LAMP normalises the group L2 scores
        ("lamp", lambda r, c: lamp(r.pow(2).sum(1) + c.pow(2).sum(1))),
    ],
)
def test_magnitude_importances_equal_their_hand_computed_values(importance, expected):
    model, groups = mlp()
    score = group_scores(groups, importance).scores["fc1"]
    torch.testing.assert_close(score, expected(*rows_and_columns(model)), rtol=1e-5, atol=1e-6)


def test_l1_ignores_biases_and_lamp_ranks_as_l2():
    model, groups = mlp()
    rows, columns = rows_and_columns(model)
    with_bias = mean_normalised(rows.abs().sum(1) + model.fc1.bias.detach().abs() + columns.abs().sum(1))
    l1 = group_scores(groups, "l1").scores["fc1"]
    assert not torch.allclose(l1, with_bias, rtol=1e-3)  # Torch-Pruning's default: bias=False
    l2, lamp_scores = group_scores(groups, "l2"), group_scores(groups, "lamp")
    for group in groups.groups:
        assert l2.ranked(group) == lamp_scores.ranked(group)
        assert lamp_scores.scores[group].max() == pytest.approx(1.0)


def test_taylor_sums_weight_times_accumulated_gradient_and_leaves_no_grad():
    model, groups = mlp()
    data = split(n=24)
    model.zero_grad()
    F.cross_entropy(model(data.x), data.y).backward()  # the mean over all 24 samples
    rows = (model.fc1.weight * model.fc1.weight.grad).abs().sum(1)
    columns = (model.fc2.weight * model.fc2.weight.grad).abs().sum(0)
    expected = mean_normalised(rows + columns).detach()
    for p in model.parameters():  # stale gradients: they must not leak into the scores
        p.grad = torch.full_like(p, 100.0)
    # two half batches: their summed gradients are twice the full-batch mean, which normalising removes
    scores = group_scores(groups, "taylor", data=data, batches=2, batch_size=12)
    torch.testing.assert_close(scores.scores["fc1"], expected, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    # one half batch only: a different gradient, so different scores (the batches are accumulated)
    half = group_scores(groups, "taylor", data=data, batches=1, batch_size=12)
    assert not torch.allclose(half.scores["fc1"], expected, rtol=1e-3)


def test_taylor_needs_data():
    _, groups = mlp()
    with pytest.raises(UsageError, match="needs training data"):
        group_scores(groups, "taylor")


def test_taylor_keeps_batchnorm_statistics_and_the_training_flag():
    model, groups = model_and_groups("cnn")
    model.train()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    group_scores(groups, "taylor", data=split(), batches=2, batch_size=8)
    assert model.training and all(m.training for m in model.modules())
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name  # gradients were taken in eval mode
    assert all(p.grad is None for p in model.parameters())


def test_unknown_importance_is_a_usage_error():
    _, groups = mlp()
    with pytest.raises(UsageError, match=r"unknown importance 'l3'.*l1, l2, bn, taylor, fpgm, lamp"):
        group_scores(groups, "l3")


# ----------------------------------------------------------------------------- BatchNorm scale


def test_bn_is_the_mean_normalised_batchnorm_scale():
    model, groups = model_and_groups("cnn")
    scores = group_scores(groups, "bn")
    for i in range(1, 5):
        gamma = getattr(model, f"conv{i}").bn.weight.detach().abs()
        torch.testing.assert_close(scores.scores[f"conv{i}.conv"], mean_normalised(gamma))
    assert scores.fallbacks == ["fc1"]  # no BatchNorm in fc1's group: scored by l2 instead
    torch.testing.assert_close(scores.scores["fc1"], group_scores(groups, "l2").scores["fc1"])


def test_bn_sums_every_batchnorm_of_a_residual_group():
    model, groups = model_and_groups("resnet20")
    members = groups.groups["conv1"].members  # the first stage's residual stream
    norms = [m.removesuffix(" (out)") for m in members if m.endswith("bn2 (out)") or m == "bn1 (out)"]
    assert len(norms) == 4  # the stem's BN and the second BN of each of the 3 blocks
    modules = dict(model.named_modules())
    gamma = sum(modules[n].weight.detach().abs() for n in norms)
    scores = group_scores(groups, "bn")
    torch.testing.assert_close(scores.scores["conv1"], mean_normalised(gamma))
    assert scores.fallbacks == []


def test_bn_falls_back_to_l2_for_every_group_of_a_model_without_batchnorm():
    _, groups = model_and_groups("lstm", hidden=8)
    bn, l2 = group_scores(groups, "bn"), group_scores(groups, "l2")
    assert bn.fallbacks == list(groups.groups) == ["lstm"]
    torch.testing.assert_close(bn.scores["lstm"], l2.scores["lstm"])
    assert l2.fallbacks == []


# ----------------------------------------------------------------------------- ranking


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        ([3.0, 1.0, 2.0, 0.5], [3, 1, 2, 0]),
        ([2.0, 1.0, 2.0, 1.0], [1, 3, 0, 2]),  # ties by index
        ([0.0, 0.0, 0.0], [0, 1, 2]),
    ],
)
def test_ranked_puts_the_lowest_score_first(score, expected):
    assert GroupScores("l1", {"g": torch.tensor(score)}).ranked("g") == expected


# ----------------------------------------------------------------------------- allocation


@pytest.mark.parametrize(
    ("width", "sparsity", "round_to", "expected"),
    [
        (64, 0.5, 1, 32),
        (64, 0.3, 1, 45),  # removes round(19.2) = 19
        (64, 0.5, 8, 32),
        (64, 0.3, 8, 48),  # 45 kept → nearest multiple of 8
        (64, 0.9, 8, 8),  # 6 kept → 8
        (64, 0.99, 8, 8),  # 1 kept → never below one multiple
        (20, 0.5, 3, 9),  # 10 kept → 9
        (16, 0.25, 8, 16),  # 12 kept: half-way rounds up, to the full width
        (12, 0.25, 8, 8),  # 9 kept → 8
        (10, 0.0, 4, 10),  # dense keeps its width, not a multiple
        (10, 0.1, 4, 8),  # 9 kept → 8
        (100, 0.999, 1, 1),  # round(99.9) = 100 removed: one is kept anyway
        (1, 0.6, 1, 1),
    ],
)
def test_kept_channels(width, sparsity, round_to, expected):
    assert kept_channels(width, sparsity, round_to) == expected


@pytest.mark.parametrize("round_to", [1, 2, 4, 8])
def test_kept_channels_is_the_nearest_multiple_within_bounds(round_to):
    for width in (round_to, 8, 13, 32, 50):
        if round_to > width:
            continue
        for sparsity in [i / 20 for i in range(20)]:
            exact = width - round(sparsity * width)
            kept = kept_channels(width, sparsity, round_to)
            assert 1 <= kept <= width
            if sparsity == 0:
                assert kept == width
            assert kept % round_to == 0 or kept == width
            # the nearest multiple, unless that is 0 (then one multiple) or above the width (then the width)
            assert abs(kept - exact) <= round_to / 2 or kept == min(width, round_to)
            if round_to == 1:
                assert kept == max(exact, 1)


def test_check_round_to():
    _, groups = model_and_groups("mlp", hidden=(16, 4))
    check_round_to(groups, 4)  # the width of fc2: fine
    check_round_to(groups, 16, ["fc1"])  # fc2 is not pruned: only fc1 counts
    with pytest.raises(UsageError, match=r"--round-to 8 exceeds the width of group 'fc2' \(4 channels\)"):
        check_round_to(groups, 8)
    with pytest.raises(UsageError, match="positive"):
        check_round_to(groups, 0)


def scores_for(groups) -> GroupScores:
    """Deterministic, distinct scores: a fixed permutation per group."""
    generator = torch.Generator().manual_seed(7)
    return GroupScores(
        "l1", {n: torch.randperm(g.width, generator=generator).float() for n, g in groups.groups.items()}
    )


@pytest.mark.parametrize(
    ("allocation", "round_to", "removed"),
    [
        ({"fc1": 0.5}, 1, {"fc1": 8}),
        ({"fc1": 0.3, "fc2": 0.5}, 1, {"fc1": 5, "fc2": 2}),
        ({"fc1": 0.3, "fc2": 0.0}, 4, {"fc1": 4}),  # 11 kept → 12; the dense group is not named
        ({"fc1": 0.95}, 4, {"fc1": 12}),  # never below one multiple
    ],
)
def test_removal_for_removes_the_least_important_channels(allocation, round_to, removed):
    _, groups = model_and_groups("mlp", hidden=(16, 4))
    scores = scores_for(groups)
    removal = removal_for(groups, scores, allocation, round_to)
    assert {name: len(idxs) for name, idxs in removal.items()} == removed
    for name, idxs in removal.items():
        width = groups.groups[name].width
        assert len(idxs) == width - kept_channels(width, allocation[name], round_to)
        assert idxs == sorted(idxs) and len(set(idxs)) == len(idxs)
        score = scores.scores[name]
        kept = [i for i in range(width) if i not in idxs]
        assert score[idxs].max() < score[kept].min()  # exactly the lowest scores go
    groups.check(removal)


@pytest.mark.parametrize(
    ("allocation", "round_to", "message"),
    [
        ({"fc3": 0.5}, 1, "not a channel group"),
        ({"fc1": 1.0}, 1, "outside"),
        ({"fc1": -0.1}, 1, "outside"),
        ({"fc2": 0.5}, 8, "exceeds the width of group 'fc2'"),
    ],
)
def test_removal_for_rejects_bad_allocations(allocation, round_to, message):
    _, groups = model_and_groups("mlp", hidden=(16, 4))
    with pytest.raises(UsageError, match=message):
        removal_for(groups, scores_for(groups), allocation, round_to)


def test_removal_for_a_real_importance_keeps_the_most_important_channels_physically():
    model, groups = model_and_groups("cnn")
    scores = group_scores(groups, "l1")
    allocation = {"conv2.conv": 0.5, "fc1": 0.25}
    removal = removal_for(groups, scores, allocation, round_to=8)
    assert {n: len(i) for n, i in removal.items()} == {"conv2.conv": 16, "fc1": 32}
    top = scores.ranked("conv2.conv")[-16:]  # the 16 most important filters of conv2
    weights = model.conv2.conv.weight.detach()[sorted(top)].clone()
    groups.prune(removal)
    assert model.conv2.conv.out_channels == 16 and model.fc1.out_features == 96
    assert torch.equal(model.conv2.conv.weight, weights)
    assert model.conv3.conv.in_channels == 16
