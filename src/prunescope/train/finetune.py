"""Fine-tuning a pruned model: training with its keep-masks held fixed.

The pruned weights stay exactly zero through every optimiser step (momentum and weight
decay included), because the masks are applied as a ``torch.nn.utils.prune``
re-parametrisation, ``weight = weight_orig * weight_mask`` (see :mod:`prunescope.train.loop`).
Han et al. ("Learning both Weights and Connections for Efficient Neural Networks", 2015)
retrain the remaining connections this way after each pruning round; Liu et al.
("Rethinking the Value of Network Pruning", ICLR 2019) fine-tune 40 epochs at lr 1e-3 on
CIFAR-10.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.targets import Target
from prunescope.train.loop import EpochRecord, TrainConfig, TrainResult, train


def finetune(
    model: nn.Module,
    data: Dataset,
    targets: Sequence[Target],
    masks: Mapping[str, torch.Tensor],
    config: TrainConfig,
    *,
    checkpoint: str | Path | None = None,
    model_spec: dict | None = None,
    patience: int | None = None,
    device: str | torch.device = "auto",
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train ``model`` with ``masks`` (target name → keep-mask) applied for the whole run.

    The masks are applied with ``torch.nn.utils.prune`` (combined with any the model already
    has) and stay applied afterwards: the returned model has ``weight_orig`` /
    ``weight_mask`` on every masked target, so further training keeps the zeros. To make the
    pruning permanent, call :func:`prunescope.masks.make_permanent` (plain parameters with
    the zeros written in), or save with :func:`prunescope.apply.export` /
    :func:`prunescope.checkpoint.save_checkpoint`, which bake the masks into the weights.

    ``checkpoint`` (with ``model_spec``) saves every epoch and resumes a killed run with the
    same masks; ``patience`` stops after that many epochs without a better val accuracy and
    keeps the best epoch's weights. A diverging loss (NaN / inf) stops with an error that
    names the last good checkpoint, which is left in place.
    """
    if not masks:
        raise UsageError("fine-tuning needs the masks of the pruned model; use train() for a dense model")
    return train(
        model,
        data,
        config,
        device=device,
        checkpoint=checkpoint,
        model_spec=model_spec,
        on_epoch=on_epoch,
        masks=masks,
        targets=targets,
        patience=patience,
    )
