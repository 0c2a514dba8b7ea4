"""Which channels of a group go first: Torch-Pruning's group importance classes.

- ``l1`` / ``l2``: group magnitude, Σ|w| / Σw² over the channel's slices of every member
  weight, biases not counted, divided by the group's mean (``GroupMagnitudeImportance(p=1|2)``,
  default ``normalizer="mean"``).
- ``bn``: the absolute BatchNorm scale |γ| (``BNScaleImportance``; Liu et al., "Network
  Slimming", 2017); a group without BatchNorm falls back to ``l2`` (said in ``fallbacks``).
- ``taylor``: first-order Taylor, |w · g| summed over the group's slices (``GroupTaylorImportance``;
  Molchanov et al. 2019), gradients accumulated over seeded training batches.
- ``fpgm``: distance to the geometric median of the layer's filters (``FPGMImportance``;
  He et al., CVPR 2019): the most replaceable filters go first.
- ``lamp``: LAMP scores on the channels' group norms (``LAMPImportance``; Lee et al. 2021).

Scores are per root channel, lower = removed first; :meth:`GroupScores.ranked` turns them
into the removal order. Torch-Pruning reads the Conv, Linear and BatchNorm members of a
group; an LSTM's hidden units are scored from the columns of the layers reading them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch_pruning as tp

from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.evaluate import prediction_loss
from prunescope.structured.groups import ChannelGroups

IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn": tp.importance.BNScaleImportance,
    "taylor": tp.importance.GroupTaylorImportance,
    "fpgm": tp.importance.FPGMImportance,
    "lamp": tp.importance.LAMPImportance,
}
NEEDS_DATA = frozenset({"taylor"})


@dataclass
class GroupScores:
    """``scores[group]``: one importance per root channel (shape ``(width,)``, lower = removed first).

    ``fallbacks``: groups scored by ``l2`` because the asked importance has nothing to read
    there (``bn`` on a group without BatchNorm).
    """

    importance: str
    scores: dict[str, torch.Tensor]
    fallbacks: list[str] = field(default_factory=list)

    def ranked(self, group: str) -> list[int]:
        """Root channel indices of ``group``, least important first (ties by index)."""
        return torch.sort(self.scores[group], stable=True).indices.tolist()  # stable: ties keep index order


def _accumulate_gradients(groups: ChannelGroups, data: Split, *, batches: int, batch_size: int, seed: int) -> None:
    """Sum the loss gradients of ``batches`` seeded mini-batches into ``.grad`` (eval mode: BN stats untouched)."""
    model = groups.model
    device = next(model.parameters()).device
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            for start in range(0, min(len(data), batches * batch_size), batch_size):
                index = order[start : start + batch_size]
                prediction_loss(model(data.x[index].to(device)), data.y[index].to(device)).backward()
    finally:
        model.train(was_training)


def group_scores(
    groups: ChannelGroups,
    importance: str = "l2",
    *,
    data: Split | None = None,
    batches: int = 16,
    batch_size: int = 128,
    seed: int = 0,
) -> GroupScores:
    """Importance of every root channel of every group (``data``: the train split, for ``taylor``)."""
    if importance not in IMPORTANCES:
        raise UsageError(f"unknown importance {importance!r}: use one of {', '.join(IMPORTANCES)}")
    if importance in NEEDS_DATA:
        if data is None:
            raise UsageError(f"importance {importance!r} needs training data for gradients")
        _accumulate_gradients(groups, data, batches=batches, batch_size=batch_size, seed=seed)
    scorer, fallback = IMPORTANCES[importance](), IMPORTANCES["l2"]()
    result = GroupScores(importance, {})
    try:
        for name, group in groups.groups.items():
            tp_group = groups.tp_group(name, range(group.width))
            with torch.no_grad():
                score = scorer(tp_group)
            if score is None:
                result.fallbacks.append(name)
                with torch.no_grad():
                    score = fallback(tp_group)
            result.scores[name] = score.detach().float().cpu()
    finally:
        if importance in NEEDS_DATA:
            groups.model.zero_grad(set_to_none=True)
    return result
