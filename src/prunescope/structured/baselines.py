"""Structured comparison baselines at a MAC budget: the same channel ratio everywhere, and global group magnitude.

Each baseline returns an allocation ``{group: fraction of its channels removed}`` for a
:class:`~prunescope.structured.pruning.ChannelPruning` whose exact footprint (the MACs per
sample of the physically pruned model, :meth:`ChannelGroups.footprint`) is at most the
target, and the least pruning of its kind that gets there: one more channel kept (one step
of the baseline's rounding) would exceed the target. Kept counts respect the pruning's
``round_to`` (:func:`~prunescope.structured.allocation.kept_channels`), and every group
keeps at least one channel (one ``round_to`` multiple), so a target below what that
allows is refused with the minimum.

- :func:`uniform_channels`: every group at the same channel ratio (sconce's channel-wise
  "uniform" baseline; Torch-Pruning's local pruning with one ``pruning_ratio``).
- :func:`global_channels`: Torch-Pruning's global pruning (Fang et al., "DepGraph", CVPR
  2023; ``tp.pruner.MetaPruner(global_pruning=True)``): channels of all groups ranked
  together by their group importance normalised within the group.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Sequence

from prunescope.errors import UsageError
from prunescope.structured.allocation import kept_channels
from prunescope.structured.pruning import ChannelPruning

Allocation = dict[str, float]  # group name -> fraction of its channels removed


def _min_kept(pruning: ChannelPruning) -> dict[str, int]:
    """Fewest channels each group may keep: one, or one ``round_to`` multiple."""
    return {name: kept_channels(group.width, 1.0, pruning.round_to) for name, group in pruning.groups.groups.items()}


def _allocation(pruning: ChannelPruning, kept: dict[str, int]) -> Allocation:
    """``{group: fraction removed}`` that keeps exactly ``kept`` channels per group."""
    return {name: (group.width - kept[name]) / group.width for name, group in pruning.groups.groups.items()}


def minimum_macs(pruning: ChannelPruning) -> int:
    """MACs per sample of the model with every group down to its fewest channels (one, or ``round_to``)."""
    return pruning.footprint(_allocation(pruning, _min_kept(pruning))).macs


def _check_target(pruning: ChannelPruning, target_macs: int) -> None:
    if isinstance(target_macs, bool) or not isinstance(target_macs, numbers.Real) or not target_macs >= 0:
        raise UsageError(f"target MACs must be a non-negative number of MACs per sample, got {target_macs!r}")
    least = minimum_macs(pruning)
    if target_macs < least:
        raise UsageError(
            f"target MACs {target_macs:,.0f} is below the minimum reachable by removing channels ({least:,} MACs "
            f"per sample, every group down to {'one channel' if pruning.round_to == 1 else 'one round_to multiple'})"
        )


def _smallest_meeting(
    candidates: int, allocation_at: Callable[[int], Allocation], pruning: ChannelPruning, target_macs: int
) -> Allocation:
    """The allocation of the smallest candidate index whose exact MACs are at most ``target_macs``.

    Candidates ``0 … candidates - 1`` prune monotonically more (MACs never rise), and the
    last one meets the target (checked before), so bisection finds it.
    """
    low, high = -1, candidates - 1  # low: fails (or none), high: meets
    while high - low > 1:
        middle = (low + high) // 2
        if pruning.footprint(allocation_at(middle)).macs <= target_macs:
            high = middle
        else:
            low = middle
    return allocation_at(high)


# --------------------------------------------------------------------------- uniform


def _uniform_ratios(widths: Sequence[int]) -> list[float]:
    """One channel ratio inside every interval on which no group's kept count changes, ascending.

    A group of width ``w`` removes ``round(r · w)`` channels, which changes only at
    ``r = (c + ½) / w``; the middle of each interval between consecutive breakpoints stands
    for it (a ratio exactly at a breakpoint would depend on round-half-to-even).
    """
    breaks = sorted({(c + 0.5) / w for w in set(widths) for c in range(w)})
    inner = [(a + b) / 2 for a, b in itertools.pairwise(breaks)]
    return [0.0, *inner, (breaks[-1] + 1) / 2]  # the last: every group down to its fewest channels


def uniform_channels(pruning: ChannelPruning, target_macs: int) -> Allocation:
    """Every group at one channel ratio, the lowest that brings the exact MACs to at most ``target_macs``.

    The uniform baseline of structured pruning: the same fraction of channels removed from
    every group (sconce's channel-wise uniform pruning; Torch-Pruning's local pruning with
    one ``pruning_ratio``). Kept counts are ``kept_channels(width, ratio, pruning.round_to)``,
    so groups differ from the ratio only by that rounding (and the one channel each
    keeps). The ratio is bisected over the finitely many allocations it can produce.

    target_macs: MACs per sample (multiply-accumulates of one input) the pruned model may
    have. UsageError when it is below :func:`minimum_macs`.
    """
    _check_target(pruning, target_macs)
    groups = pruning.groups.groups
    ratios = _uniform_ratios([group.width for group in groups.values()])

    def at(index: int) -> Allocation:
        kept = {name: kept_channels(g.width, ratios[index], pruning.round_to) for name, g in groups.items()}
        return _allocation(pruning, kept)

    return _smallest_meeting(len(ratios), at, pruning, target_macs)


# --------------------------------------------------------------------------- global


def global_order(pruning: ChannelPruning) -> list[str]:
    """The group of every channel of every group, least important (lowest normalised score) first.

    The scores are compared across groups as :func:`~prunescope.structured.importance.group_scores`
    gives them, which is what Torch-Pruning's global pruning concatenates: its importance
    classes already normalise within the group. ``GroupMagnitudeImportance`` (``l1``,
    ``l2``) and its subclasses for ``bn``, ``taylor`` and ``fpgm`` default to
    ``normalizer="mean"`` (each group's scores divided by their mean over the group, so
    every group averages 1); ``LAMPImportance`` to ``normalizer="lamp"`` (a score over the
    sum of itself and every larger score of the group).

    Ties go to the earlier group, then to the lower channel index. Within a group the order
    is :meth:`GroupScores.ranked`, the order in which channels are removed.
    """
    scores = pruning.scores.scores
    entries = [
        (float(scores[name][channel]), group_index, position, name)
        for group_index, name in enumerate(pruning.groups.groups)
        for position, channel in enumerate(pruning.scores.ranked(name))
    ]
    return [name for *_, name in sorted(entries)]


def global_channels(pruning: ChannelPruning, target_macs: int) -> Allocation:
    """Remove the globally least important channels until the exact MACs are at most ``target_macs``.

    Global group-magnitude pruning as in Torch-Pruning (Fang et al., "DepGraph", CVPR 2023;
    ``MetaPruner(global_pruning=True)``): every channel of every group is ranked by its
    group importance normalised within its group (:func:`global_order`; by default the
    group's mean score is 1), and the ``k`` lowest go, each group then rounded to
    ``pruning.round_to`` with :func:`kept_channels` (Torch-Pruning rounds its per-group count
    likewise) and capped so that it keeps one channel, or one multiple. Where Torch-Pruning
    picks ``k`` from a channel ratio, ``k`` is bisected here on the exact MACs of the result.

    target_macs: MACs per sample the pruned model may have. UsageError when it is below
    :func:`minimum_macs`.
    """
    _check_target(pruning, target_macs)
    groups = pruning.groups.groups
    order = global_order(pruning)

    def at(removed: int) -> Allocation:
        counts = dict.fromkeys(groups, 0)
        for name in order[:removed]:
            counts[name] += 1
        # kept_channels rounds to round_to and never goes below one channel (one multiple): the cap.
        kept = {name: kept_channels(g.width, counts[name] / g.width, pruning.round_to) for name, g in groups.items()}
        return _allocation(pruning, kept)

    return _smallest_meeting(len(order) + 1, at, pruning, target_macs)
