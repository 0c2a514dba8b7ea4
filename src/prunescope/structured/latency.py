"""Latency budgets for channel pruning: the time removing a group's channels saves, measured on the device.

A :class:`LatencyTable` times the model with ONE group pruned physically
(:func:`~prunescope.structured.groups.pruned_copy`) at a few kept fractions of its channels,
every other group dense. Those are the budget picker's per-group savings, interpolated
linearly in channels between the measured counts. Savings of several groups do not add up
exactly (fixed per-layer costs, kernels that change with the shape), so
:meth:`LatencyTable.measure` times the whole pruned model, which the picker's search is
checked against. Times are medians of ``repeats`` forward passes
(:func:`prunescope.measure.measure_latency`), in ms per batch of ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from prunescope.device import resolve_device
from prunescope.errors import UsageError
from prunescope.measure import Latency, measure_latency
from prunescope.structured.allocation import kept_channels
from prunescope.structured.find import pruned_copy
from prunescope.structured.groups import Removal
from prunescope.structured.pruning import ChannelPruning

KEPT_FRACTIONS = (0.75, 0.5, 0.25)  # timed per group, besides its full width and the fewest channels it can keep


def kept_counts(width: int, fractions: Sequence[float], round_to: int = 1) -> list[int]:
    """Kept channel counts timed for a group of ``width``: all, each kept fraction, the fewest; descending.

    Counts follow :func:`~prunescope.structured.allocation.kept_channels` (multiples of ``round_to``).
    """
    timed = {width, kept_channels(width, (width - 1) / width, round_to)}
    timed |= {kept_channels(width, 1 - fraction, round_to) for fraction in fractions}
    return sorted(timed, reverse=True)


class LatencyTable:
    """Per group, the median latency of the model with only that group pruned, at a few kept channel counts.

    ``dense``: the dense model's :class:`~prunescope.measure.Latency`. ``kept[group]``: the kept
    counts timed, descending from the group's width (the dense model) to the fewest it can keep
    under the pruning's ``round_to``. ``median_ms[group]``: the median latency (ms per batch) at
    each. Every removal is timed once: :meth:`measure` returns the same timing for it again,
    so that one pick judges one allocation by one number. Built on ``device`` (a device that
    is not present is a UsageError) with ``warmup`` untimed and ``repeats`` timed passes.
    """

    def __init__(
        self,
        pruning: ChannelPruning,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 1,
        warmup: int = 3,
        repeats: int = 20,
        fractions: Sequence[float] = KEPT_FRACTIONS,
    ) -> None:
        if not all(0 < fraction < 1 for fraction in fractions):
            raise UsageError(f"kept fractions must lie in (0, 1), got {', '.join(f'{f:g}' for f in fractions)}")
        self.pruning = pruning
        self.device = resolve_device(device)
        self.batch_size, self.warmup, self.repeats = batch_size, warmup, repeats
        self._timed: dict[tuple, Latency] = {}
        self.dense = self.measure({})
        widths = {name: group.width for name, group in pruning.groups.groups.items()}
        self.kept = {name: kept_counts(width, fractions, pruning.round_to) for name, width in widths.items()}
        self.median_ms = {
            name: [self.measure({name: 1 - kept / widths[name]}).median_ms for kept in counts]
            for name, counts in self.kept.items()
        }

    def saved_ms(self, group: str) -> list[float]:
        """Measured ms per batch saved at each of ``kept[group]`` (noise can make one negative)."""
        return [self.dense.median_ms - median for median in self.median_ms[group]]

    def savings(self, group: str, removed: np.ndarray) -> np.ndarray:
        """Estimated ms per batch saved by removing each of ``removed`` (ascending) channels of ``group`` alone.

        Interpolated between the timed counts; 0 at 0 and non-decreasing, since timing noise
        can make a deeper cut look slower but removing channels never adds work.
        """
        width = self.kept[group][0]
        estimate = np.interp(width - np.asarray(removed), self.kept[group][::-1], self.saved_ms(group)[::-1])
        return np.maximum.accumulate(np.maximum(estimate, 0.0))

    def measure(self, allocation: Mapping[str, float]) -> Latency:
        """Latency of the whole model pruned physically with ``allocation`` (fractions of channels), on the device."""
        removal = self.pruning.removal(allocation)
        key = tuple(sorted((name, tuple(idxs)) for name, idxs in removal.items() if len(idxs)))
        if key not in self._timed:
            self._timed[key] = self._time(removal)
        return self._timed[key]

    def _time(self, removal: Removal) -> Latency:
        shape = self.pruning.groups.input_shape
        model = pruned_copy(self.pruning.model, shape, removal)
        return measure_latency(model, shape, device=self.device, batch_size=self.batch_size, warmup=self.warmup,
                               repeats=self.repeats)
