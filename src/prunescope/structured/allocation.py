"""From per-group sparsities to the channels removed: counts, ``round_to`` multiples, importance order."""

from __future__ import annotations

import math
from collections.abc import Mapping

from prunescope.errors import UsageError
from prunescope.masks import check_sparsity, removed_count
from prunescope.structured.groups import ChannelGroups
from prunescope.structured.importance import GroupScores


def kept_channels(width: int, sparsity: float, round_to: int = 1) -> int:
    """Channels a group of ``width`` keeps at ``sparsity``: ``width - round(sparsity · width)``.

    With ``round_to`` the kept count is rounded to the nearest multiple (half up), never
    below one multiple; a dense group keeps all ``width`` (which need not be a multiple).
    At least one channel is always kept.
    """
    kept = width - removed_count(sparsity, width)
    if round_to > 1 and kept < width:
        kept = min(width, max(round_to, math.floor(kept / round_to + 0.5) * round_to))
    return max(kept, 1)


def check_round_to(groups: ChannelGroups, round_to: int, names: list[str] | None = None) -> None:
    """UsageError for a ``round_to`` below 1 or above the width of a group it would apply to."""
    if round_to < 1:
        raise UsageError(f"--round-to must be a positive number of channels, got {round_to}")
    for name in names if names is not None else groups.groups:
        width = groups.groups[name].width
        if round_to > width:
            raise UsageError(
                f"--round-to {round_to} exceeds the width of group {name!r} ({width} channels); "
                "use a smaller multiple or --exclude that group"
            )


def removal_for(
    groups: ChannelGroups, scores: GroupScores, allocation: Mapping[str, float], round_to: int = 1
) -> dict[str, list[int]]:
    """The least important channels of each group, as many as ``allocation`` (fractions of channels) removes."""
    pruned = [name for name, sparsity in allocation.items() if sparsity > 0]
    for name in allocation:
        if name not in groups.groups:
            raise UsageError(
                f"the allocation names {name!r}, which is not a channel group of this model; "
                f"groups: {', '.join(groups.groups)}"
            )
        check_sparsity(allocation[name], f"sparsity of {name}")
    check_round_to(groups, round_to, pruned)
    removal = {}
    for name in pruned:
        width = groups.groups[name].width
        removal[name] = sorted(scores.ranked(name)[: width - kept_channels(width, allocation[name], round_to)])
    return removal
