"""Re-estimate BatchNorm statistics after pruning (adaptive BN, Li et al., "EagleEye", ECCV 2020).

Removing channels changes what every later BatchNorm sees, so the running statistics the
dense model learned are stale: a pruned network can drop to chance one-shot although its
weights are fine. A few forward passes in train mode on training data, with the running
statistics reset and averaged cumulatively, restore them; no weight changes. The same
holds for one-shot unstructured masking: zeroed weights shift every later activation.

- :func:`recalibrate_batchnorm`: re-estimate for good (after permanent pruning).
- :func:`recalibrated`: re-estimate for a ``with`` block (a temporary masked evaluation) and
  put the dense statistics back bit-exactly afterwards.
- :class:`RecalibratedPruning`: a scan / verify / compare pruning (``applied(allocation)``)
  that re-estimates the statistics of every pruned model it applies, the same for every
  allocation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Protocol

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


DEFAULT_BN_BATCHES = 20
"""Batches (of 128 training examples) that ``--recalibrate-bn`` uses by default on a model with BatchNorm."""


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


def bn_batches(model: nn.Module, requested: int | None) -> int:
    """Batches to recalibrate with: ``requested``, or when None :data:`DEFAULT_BN_BATCHES` for a
    model with BatchNorm and 0 (off) for one without."""
    if requested is None:
        return DEFAULT_BN_BATCHES if has_batchnorm(model) else 0
    if requested < 0:
        raise UsageError(f"--recalibrate-bn must be a number of batches (0: off), got {requested}")
    return requested


@contextlib.contextmanager
def recalibrated(
    model: nn.Module, split: Split, batches: int, *, batch_size: int = 128, seed: int = 0
) -> Iterator[nn.Module]:
    """For the block, BatchNorm statistics re-estimated on ``batches`` seeded batches of ``split``
    (:func:`recalibrate_batchnorm`); every BatchNorm buffer (running mean, variance, batch
    count) restored bit-exactly when the block exits, also when it raises. ``batches=0``: a no-op."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if batches == 0 or not layers:
        yield model
        return
    saved = [(buffer, buffer.clone()) for layer in layers for buffer in layer.buffers(recurse=False)]
    try:
        recalibrate_batchnorm(model, split, batches=batches, batch_size=batch_size, seed=seed)
        yield model
    finally:
        with torch.no_grad():
            for buffer, original in saved:
                buffer.copy_(original)


class _Pruning(Protocol):
    model: nn.Module

    def applied(self, allocation: Mapping[str, float]) -> contextlib.AbstractContextManager[nn.Module]: ...


class RecalibratedPruning:
    """``pruning`` whose every pruned model gets BatchNorm statistics re-estimated on ``split``.

    ``applied(allocation)`` prunes with ``pruning``, then re-estimates the statistics on
    ``batches`` seeded batches (the same batches for every allocation, so every method is
    treated alike), and on exit restores statistics and weights bit-exactly. An allocation
    that removes nothing is the dense model, whose statistics are not stale: left as trained.
    """

    def __init__(self, pruning: _Pruning, split: Split, batches: int, *, batch_size: int = 128, seed: int = 0) -> None:
        self.pruning, self.model = pruning, pruning.model
        self.split, self.batches, self.batch_size, self.seed = split, batches, batch_size, seed

    @contextlib.contextmanager
    def applied(self, allocation: Mapping[str, float]) -> Iterator[nn.Module]:
        batches = self.batches if any(s > 0 for s in allocation.values()) else 0
        with self.pruning.applied(allocation) as model, recalibrated(
            model, self.split, batches, batch_size=self.batch_size, seed=self.seed
        ):
            yield model


def recalibrating(pruning: _Pruning, split: Split, batches: int) -> _Pruning:
    """``pruning`` itself when ``batches`` is 0, else a :class:`RecalibratedPruning` of it."""
    return RecalibratedPruning(pruning, split, batches) if batches else pruning
