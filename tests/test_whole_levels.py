"""Scan levels come in whole elements: no two levels remove the same count, none removes all."""

import pytest

from prunescope.masks import removed_count
from prunescope.scan.strategy import Adaptive, Grid, Whole


def _run(planner, drop):
    """Every level ``planner`` asks for until it is done, each measured as ``drop(level)``."""
    drops: dict[float, float] = {}
    while asked := planner.ask(drops):
        assert not set(asked) & set(drops)
        drops |= {level: drop(level) for level in asked}
    return sorted(drops)


def test_channel_grid_is_whole_channels_without_duplicates():
    levels = _run(Whole(Grid(), 16, exact=True), lambda s: 0.0)
    assert levels == [k / 16 for k in range(2, 16)]  # sconce's 0.10 … 0.95 on 16 channels: 2 … 15 removed


def test_adaptive_on_eight_channels_never_evaluates_one_count_twice():
    levels = _run(Whole(Adaptive(0.005), 8, exact=True), lambda s: 0.0 if s < 0.9 else 0.2)
    counts = [removed_count(s, 8) for s in levels]
    assert levels == [k / 8 for k in counts] and len(set(counts)) == len(counts) and max(counts) == 7


@pytest.mark.parametrize("size", [5, 72, 1000])
def test_weight_levels_keep_their_value_but_never_remove_everything(size):
    levels = _run(Whole(Adaptive(0.005), size), lambda s: 0.0)
    counts = [removed_count(s, size) for s in levels]
    assert len(set(counts)) == len(counts) and min(counts) > 0 and max(counts) < size
    if size == 1000:
        assert 0.999 in levels  # a level that is a whole count already stays as it is


def test_a_single_channel_is_not_scanned():
    assert Whole(Grid(), 1, exact=True).ask({}) == []
