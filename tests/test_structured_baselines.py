"""Uniform and global channel baselines meet a MAC budget exactly, measured on the physically pruned model."""

from __future__ import annotations

import pytest
import torch

from prunescope.errors import UsageError
from prunescope.measure import count_macs
from prunescope.models import build_model
from prunescope.structured.baselines import global_channels, minimum_macs, uniform_channels
from prunescope.structured.find import find_groups, pruned_copy
from prunescope.structured.importance import group_scores
from prunescope.structured.pruning import ChannelPruning

SHAPE = (1, 16, 16)
BASELINES = {"uniform": uniform_channels, "global": global_channels}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20", SHAPE, 10).eval()


def _pruning(model: torch.nn.Module, round_to: int = 1) -> ChannelPruning:
    groups = find_groups(model, SHAPE)
    return ChannelPruning(groups, group_scores(groups, "l2"), round_to)


def _kept(pruning: ChannelPruning, allocation: dict[str, float]) -> dict[str, int]:
    removal = pruning.removal(allocation)
    return {name: g.width - len(removal.get(name, [])) for name, g in pruning.groups.groups.items()}


@pytest.mark.parametrize("round_to", [1, 8])
@pytest.mark.parametrize("factor", [0.5, 0.33])
@pytest.mark.parametrize("method", list(BASELINES))
def test_meets_the_mac_target_on_the_pruned_model(model, method, factor, round_to) -> None:
    pruning = _pruning(model, round_to)
    dense = count_macs(model, SHAPE).dense
    target = int(dense * factor)
    allocation = BASELINES[method](pruning, target)
    measured = count_macs(pruned_copy(model, SHAPE, pruning.removal(allocation)), SHAPE).dense
    assert measured == pruning.footprint(allocation).macs
    assert measured <= target
    # Not grossly under: one more round_to step of every group would cross the target.
    step = sum(round_to * g.macs / g.width for g in pruning.groups.groups.values())
    assert target - measured < step
    if round_to > 1:
        kept = _kept(pruning, allocation)
        assert all(k % round_to == 0 or k == pruning.groups.groups[n].width for n, k in kept.items())


def test_global_is_within_one_channel_of_the_target(model) -> None:
    pruning = _pruning(model)
    target = int(count_macs(model, SHAPE).dense * 0.5)
    measured = pruning.footprint(global_channels(pruning, target)).macs
    assert target - measured < max(g.macs / g.width for g in pruning.groups.groups.values())


def test_uniform_keeps_equal_fractions_up_to_rounding(model) -> None:
    pruning = _pruning(model)
    allocation = uniform_channels(pruning, int(count_macs(model, SHAPE).dense * 0.33))
    removed = {name: round(s * pruning.groups.groups[name].width) for name, s in allocation.items()}
    widths = {name: g.width for name, g in pruning.groups.groups.items()}
    assert any(removed.values())
    # One ratio r rounds to every group's count: the intervals [(c - ½) / w, (c + ½) / w] share a point.
    lowest = max((c - 0.5) / widths[n] for n, c in removed.items())
    assert lowest <= min((c + 0.5) / widths[n] for n, c in removed.items())


def test_global_removes_the_lowest_normalised_scores_first(model) -> None:
    pruning = _pruning(model)
    scores = pruning.scores.scores
    assert all(torch.isclose(s.mean(), torch.tensor(1.0)) for s in scores.values())  # Torch-Pruning's mean normaliser
    removal = pruning.removal(global_channels(pruning, int(count_macs(model, SHAPE).dense * 0.5)))
    assert sum(map(len, removal.values())) > 0
    open_groups = [n for n, g in pruning.groups.groups.items() if g.width - len(removal.get(n, [])) > 1]
    removed = [float(scores[n][i]) for n in open_groups for i in removal.get(n, [])]
    kept = [float(scores[n][i]) for n in open_groups for i in range(len(scores[n])) if i not in removal.get(n, [])]
    assert max(removed) <= min(kept)


@pytest.mark.parametrize("method", list(BASELINES))
def test_target_below_the_minimum_is_refused_with_the_minimum(model, method) -> None:
    pruning = _pruning(model)
    least = minimum_macs(pruning)
    with pytest.raises(UsageError, match=f"{least:,}"):
        BASELINES[method](pruning, least - 1)
    assert pruning.footprint(BASELINES[method](pruning, least)).macs == least


@pytest.mark.parametrize("method", list(BASELINES))
def test_a_target_at_or_above_dense_keeps_the_model_dense(model, method) -> None:
    pruning = _pruning(model)
    assert set(BASELINES[method](pruning, count_macs(model, SHAPE).dense).values()) == {0.0}
    with pytest.raises(UsageError):
        BASELINES[method](pruning, -1)
