"""Structured pruning for scans and verification: an allocation of channel fractions, masked in place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from prunescope.errors import UsageError
from prunescope.structured.allocation import removal_for
from prunescope.structured.find import find_groups, pruned_copy
from prunescope.structured.groups import ChannelGroups, Footprint
from prunescope.structured.importance import GroupScores


class ChannelPruning:
    """Per group, the ``kept_channels`` most important channels stay; the rest are masked (see
    :meth:`~prunescope.structured.groups.ChannelGroups.masked`), which computes what their
    physical removal would.

    Implements :class:`prunescope.scan.evaluation.Pruning`; picklable (worker processes
    trace their own copy of the model again).
    """

    def __init__(self, groups: ChannelGroups, scores: GroupScores, round_to: int = 1) -> None:
        self.groups = groups
        self.scores = scores
        self.round_to = round_to

    @property
    def model(self) -> nn.Module:
        return self.groups.model

    def __getstate__(self) -> dict:
        return {
            "model": self.model,
            "input_shape": self.groups.input_shape,
            "names": list(self.groups.groups),
            "scores": self.scores,
            "round_to": self.round_to,
        }

    def __setstate__(self, state: dict) -> None:
        self.groups = find_groups(state["model"], state["input_shape"], include=state["names"])
        self.scores = state["scores"]
        self.round_to = state["round_to"]

    def removal(self, allocation: Mapping[str, float]) -> dict[str, list[int]]:
        """Root channel indices removed per group under ``allocation`` (fractions of channels)."""
        return removal_for(self.groups, self.scores, allocation, self.round_to)

    def footprint(self, allocation: Mapping[str, float]) -> Footprint:
        """Exact parameters and MACs per sample of the model pruned with ``allocation``."""
        return self.groups.footprint(self.removal(allocation))

    @contextlib.contextmanager
    def applied(self, allocation: Mapping[str, float]) -> Iterator[nn.Module]:
        with self.groups.masked(self.removal(allocation)):
            yield self.model


def masking_error(groups: ChannelGroups, inputs: torch.Tensor, seed: int = 0) -> float:
    """Largest output difference between masking and physically removing half of every group's channels.

    Relative to the largest output magnitude (at least 1). Zero up to float rounding when
    every reader of a removed channel is a member of its group; a larger value means some
    layer outside the groups reads removed channels (e.g. a normalisation over channels),
    so masked scans would not predict removal. Raises a one-line UsageError naming the
    groups whose removal breaks the forward pass (a buffer or constant combined with their
    channels, which Torch-Pruning's graph does not see).
    ``inputs``: a batch of shape ``(N, *input_shape)``.
    """
    generator = torch.Generator().manual_seed(seed)
    removal = {
        name: torch.randperm(group.width, generator=generator)[: group.width // 2].tolist()
        for name, group in groups.groups.items()
    }
    try:
        return _difference(groups, inputs, removal)
    except RuntimeError:
        broken = {}
        for name, channels in removal.items():
            try:
                _difference(groups, inputs, {name: channels})
            except RuntimeError as error:
                broken[name] = str(error).splitlines()[0]
        named = "; ".join(f"{name}: {reason}" for name, reason in broken.items()) or "several groups together"
        raise UsageError(
            f"removing channels breaks the model's forward pass ({named}): a tensor outside Torch-Pruning's graph "
            f"(a buffer or constant) is combined with those channels; --exclude {' --exclude '.join(broken) or 'them'}"
        ) from None


def _difference(groups: ChannelGroups, inputs: torch.Tensor, removal: dict[str, list[int]]) -> float:
    model = groups.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            with groups.masked(removal):
                masked = model(inputs)
            removed = pruned_copy(model, groups.input_shape, removal)(inputs)
    finally:
        model.train(was_training)
    return float((masked - removed).abs().max() / masked.abs().max().clamp_min(1.0))
