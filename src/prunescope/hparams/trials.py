"""What one trial of a hyperparameter study trains: an ordinary :func:`~prunescope.train.train` call.

A :class:`Recipe` names the model to train (a fresh initialisation of an architecture, or
the weights of a checkpoint to fine-tune), the data, and whether the zeros of a weight-
pruned model are held. It is picklable (the dataset is reloaded from its spec in a worker
process), so the same recipe runs in this process or in spawned workers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunescope.checkpoint import load_checkpoint
from prunescope.data import load_from_spec
from prunescope.data.types import Dataset
from prunescope.errors import PrunescopeError
from prunescope.models import build_from_spec
from prunescope.targets import effective_weight, find_targets
from prunescope.train import EpochRecord, TrainConfig, train
from prunescope.trust import Trust, TrustFactory

RECOVERIES = ("finetune", "scratch")


@dataclass(frozen=True)
class Outcome:
    """One trial's result: val accuracy after its last epoch (a fraction), epochs run, and whether it diverged.

    A diverged run (non-finite loss) is scored at chance, ``1 / num_classes``: its model is
    useless, and a hyperparameter landscape must have a value at every point.
    """

    value: float
    epochs: int
    diverged: bool = False


@dataclass
class Recipe:
    """How a trial builds and trains its model.

    model_spec: the architecture (dense, or channel-pruned: the spec rebuilds the smaller one).
    start: a checkpoint of that architecture (the model to recover).
    fresh: start from a fresh initialisation seeded by the trial, not from ``start``'s weights.
    keep_zeros: hold the zero weights of ``start`` at zero through training (weight-granularity
        pruning; with ``fresh``, the pruned mask trained from scratch).
    trust: the factories ``start`` may name (:mod:`prunescope.trust`): those the user named.
    """

    model_spec: dict[str, Any]
    dataset_spec: dict[str, Any]
    start: str | None = None
    fresh: bool = True
    keep_zeros: bool = False
    data_dir: str | None = None
    device: str = "auto"
    data: Dataset | None = field(default=None, repr=False, compare=False)
    trust: TrustFactory | Trust = False

    def __post_init__(self) -> None:
        if self.start is None and (self.keep_zeros or not self.fresh):
            raise PrunescopeError("a recipe that fine-tunes or keeps zeros needs the checkpoint to start from")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "data": None}  # a worker reloads the data from its spec

    def dataset(self) -> Dataset:
        if self.data is None:
            self.data = _cached(self.dataset_spec, self.data_dir)
        return self.data

    def run(self, config: TrainConfig, on_epoch: Callable[[EpochRecord], None] | None = None,
            checkpoint: Path | None = None) -> Outcome:
        """Train with ``config`` (its seed seeds the initialisation and the shuffling); val accuracy at the end.

        ``checkpoint``: save every epoch there and resume from it (see :func:`~prunescope.train.train`).
        """
        data = self.dataset()
        started = load_checkpoint(self.start, trust_factory=self.trust).model if self.start is not None else None
        masks = _zero_masks(started) if self.keep_zeros and started is not None else None
        if self.fresh:
            torch.manual_seed(config.seed)
            model = build_from_spec(self.model_spec)
        else:
            model = started
        epochs = 0

        def counted(record: EpochRecord) -> None:
            nonlocal epochs
            epochs = record.epoch
            if on_epoch is not None:
                on_epoch(record)

        try:
            result = train(model, data, config, device=self.device, masks=masks or None, on_epoch=counted,
                           checkpoint=checkpoint, model_spec=self.model_spec if checkpoint else None)
        except PrunescopeError as error:
            if "diverged" not in str(error):
                raise
            return Outcome(1 / data.num_classes, epochs, diverged=True)
        return Outcome(result.final.val_accuracy, len(result.history))


def _zero_masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Keep-masks of every target that has a zero weight."""
    masks = {t.name: effective_weight(model, t) != 0 for t in find_targets(model)}
    return {name: mask for name, mask in masks.items() if not bool(mask.all())}


_DATA: dict[str, Dataset] = {}


def _cached(spec: dict[str, Any], data_dir: str | None) -> Dataset:
    """One load per dataset per process: every trial of a worker reads the same tensors."""
    key = json.dumps([spec, data_dir], sort_keys=True, default=str)
    if key not in _DATA:
        _DATA[key] = load_from_spec(spec, data_dir=data_dir)
    return _DATA[key]
