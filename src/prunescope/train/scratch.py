"""Scratch baselines: train the pruned mask from a fresh initialisation.

Liu, Sun, Zhou, Huang & Darrell, "Rethinking the Value of Network Pruning", ICLR 2019:
a pruned network trained from scratch is the baseline a pruning method must beat.

- **Scratch-E**: the same number of epochs as the dense model.
- **Scratch-B**: the same compute budget as the dense model,
  ``epochs = round(dense_epochs · FLOPs_dense / FLOPs_pruned)``. A heavily pruned model
  would train for very many epochs; ``max_factor`` caps them (``max_factor=2``: at most
  twice the dense epochs).

FLOPs are counted as multiply-accumulates per sample by :func:`prunescope.measure.count_macs`:
the dense count of the unpruned model and the effective count (zero weights skipped) of
the masked one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.masks import applied
from prunescope.measure import count_macs
from prunescope.structured.find import rebuild
from prunescope.targets import Target, find_targets
from prunescope.train.loop import EpochRecord, TrainConfig, TrainResult, train

SCRATCH_MODES = ("E", "B")


def _mode(mode: str) -> str:
    normalised = str(mode).upper().removeprefix("SCRATCH-")
    if normalised not in SCRATCH_MODES:
        raise UsageError(f"unknown scratch mode {mode!r}: use E (same epochs) or B (same compute)")
    return normalised


def scratch_epochs(
    mode: str, dense_epochs: int, dense_macs: int, pruned_macs: int, max_factor: float | None = None
) -> int:
    """Epochs of a scratch baseline (Liu et al., ICLR 2019).

    ``E``: ``dense_epochs``. ``B``: ``round(dense_epochs · dense_macs / pruned_macs)``, the
    dense model's compute spent on the cheaper pruned one; with ``max_factor`` at most
    ``round(dense_epochs · max_factor)``. Never below 1.
    ``mode`` may also be written ``scratch-e`` / ``scratch-b``.
    """
    mode = _mode(mode)
    if dense_epochs < 1:
        raise UsageError(f"dense epochs must be at least 1, got {dense_epochs}")
    if mode == "E":
        return dense_epochs
    if not dense_macs > 0 or not pruned_macs > 0:
        raise UsageError(f"scratch-B needs positive MAC counts, got dense {dense_macs}, pruned {pruned_macs}")
    if max_factor is not None and not max_factor >= 1:
        raise UsageError(f"max_factor caps the extra epochs of scratch-B and must be at least 1, got {max_factor:g}")
    epochs = round(dense_epochs * dense_macs / pruned_macs)
    if max_factor is not None:
        epochs = min(epochs, round(dense_epochs * max_factor))
    return max(epochs, 1)


def measure_macs(
    model: nn.Module, input_shape: tuple[int, ...], targets: Sequence[Target], masks: Mapping[str, torch.Tensor]
) -> tuple[int, int]:
    """(dense MACs, effective MACs with ``masks`` applied) per sample, measured by ``count_macs``.

    The masks are applied temporarily (:func:`prunescope.masks.applied`); ``model`` is left as it was.
    """
    dense = count_macs(model, tuple(input_shape)).dense
    with applied(model, targets, dict(masks)):
        pruned = count_macs(model, tuple(input_shape)).effective
    return dense, pruned


def train_scratch(
    model_spec: dict,
    data: Dataset,
    targets: Sequence[Target] | None,
    masks: Mapping[str, torch.Tensor],
    config: TrainConfig,
    mode: str,
    dense_macs: int | None,
    pruned_macs: int | None,
    seed: int,
    *,
    max_factor: float | None = None,
    patience: int | None = None,
    device: str | torch.device = "auto",
    checkpoint: str | Path | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Scratch-E / scratch-B: a fresh model from ``model_spec`` trained with ``masks`` held.

    The architecture is re-initialised with ``torch.manual_seed(seed)`` (without touching
    the global RNG state of the caller), the same keep-masks are applied and kept through
    training, and it trains for :func:`scratch_epochs` epochs, with ``config.epochs`` as the
    dense model's epochs and ``seed`` also seeding the data order. ``dense_macs`` /
    ``pruned_macs`` of ``None`` are measured on the fresh model (:func:`measure_macs`).
    ``targets`` default to ``find_targets`` of the fresh model. The number of epochs run is
    ``len(result.history)`` (fewer only when ``patience`` stopped it early).
    """
    mode = _mode(mode)
    if not masks:
        raise UsageError("a scratch baseline needs the masks of the pruned model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = rebuild(model_spec)
    targets = list(targets) if targets is not None else find_targets(model)
    if dense_macs is None or pruned_macs is None:
        measured_dense, measured_pruned = measure_macs(model, data.input_shape, targets, masks)
        dense_macs = measured_dense if dense_macs is None else dense_macs
        pruned_macs = measured_pruned if pruned_macs is None else pruned_macs
    epochs = scratch_epochs(mode, config.epochs, dense_macs, pruned_macs, max_factor)
    return train(
        model,
        data,
        replace(config, epochs=epochs, seed=seed),
        device=device,
        checkpoint=checkpoint,
        model_spec=model_spec,
        on_epoch=on_epoch,
        masks=masks,
        targets=targets,
        patience=patience,
    )
