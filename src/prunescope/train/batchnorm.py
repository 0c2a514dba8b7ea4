"""Re-estimate BatchNorm statistics after pruning (adaptive BN, Li et al., "EagleEye", ECCV 2020).

Removing channels changes what every later BatchNorm sees, so the running statistics the
dense model learned are stale: a pruned network can drop to chance one-shot although its
weights are fine. A few forward passes in train mode on training data, with the running
statistics reset and averaged cumulatively, restore them; no weight changes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunescope.data.types import Split
from prunescope.errors import UsageError


def recalibrate_batchnorm(
    model: nn.Module, split: Split, *, batches: int = 20, batch_size: int = 128, seed: int = 0
) -> int:
    """Recompute every BatchNorm's running mean and variance on ``batches`` seeded batches of ``split``.

    Statistics are the cumulative average over the batches (``momentum=None``); weights,
    the model's training flag and each layer's momentum are left as they were. Returns
    the number of BatchNorm layers recalibrated (0: nothing to do, the model is untouched).
    """
    if batches < 1 or batch_size < 1:
        raise UsageError(f"BatchNorm recalibration needs at least one batch of at least one example, got "
                         f"{batches} batches of {batch_size}")
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    device = next(model.parameters()).device
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
        model.train()
        with torch.no_grad():
            for start in range(0, min(len(split), batches * batch_size), batch_size):
                model(split.x[order[start : start + batch_size]].to(device))
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return len(layers)
