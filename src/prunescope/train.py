"""Seeded dense training, checkpointed every epoch and resumable.

:func:`train` is the one training loop of prunescope: dense training, and (with masks
applied through ``torch.nn.utils.prune``) fine-tuning. Studies call it with an
``on_epoch`` hook that can stop a run early (e.g. an Optuna pruner raising
``optuna.TrialPruned``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from prunescope.checkpoint import load_checkpoint, load_extra_state, save_checkpoint
from prunescope.data.types import Dataset
from prunescope.device import resolve_device
from prunescope.errors import PrunescopeError, UsageError
from prunescope.evaluate import Evaluator

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. lr is the peak learning rate; cosine decays it to 0 over ``epochs``."""

    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"epochs must be at least 1, got {self.epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}: use {' or '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}: use {' or '.join(SCHEDULES)}")
        if not self.lr > 0:
            raise UsageError(f"learning rate must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: mean train loss (nats), learning rate used, val metrics, seconds."""

    epoch: int
    train_loss: float
    lr: float
    val_accuracy: float
    val_macro_f1: float
    val_loss: float
    seconds: float


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochRecord] = field(default_factory=list)

    @property
    def final(self) -> EpochRecord:
        return self.history[-1]


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    *,
    device: str | torch.device = "auto",
    checkpoint: str | Path | None = None,
    model_spec: dict | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train``, evaluating on ``data.val`` after every epoch.

    With ``checkpoint`` (and the ``model_spec`` that rebuilds the model), the model,
    optimiser and schedule are saved after every epoch; if the file already holds a
    shorter run with the same settings, training resumes from it and gives the same
    weights as an uninterrupted run. Shuffling is seeded per epoch for that reason.

    A non-finite loss stops training with an error; the last good checkpoint is kept.
    """
    device = resolve_device(device)
    model.to(device)
    optimizer = _optimizer(model, config)
    scheduler = _scheduler(optimizer, config)
    history: list[EpochRecord] = []
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and model_spec is None:
        raise UsageError("saving training checkpoints needs the model spec that rebuilds the model")
    if path is not None and path.exists():
        history = _resume(path, model, optimizer, scheduler, config, data)

    x, y = data.train.x.to(device), data.train.y.to(device)
    evaluator = Evaluator(model, data.val, device=device)
    for epoch in range(len(history) + 1, config.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        model.train()
        total_loss = 0.0
        for i in range(0, len(y), config.batch_size):
            index = order[i : i + config.batch_size].to(device)
            loss = F.cross_entropy(model(x[index]), y[index], label_smoothing=config.label_smoothing)
            if not torch.isfinite(loss):
                kept = f"; the last good checkpoint is {path}" if path is not None and path.exists() else ""
                raise PrunescopeError(
                    f"training diverged at epoch {epoch} (loss {loss.item()}){kept}; lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(index)
        scheduler.step()
        metrics = evaluator.evaluate()
        record = EpochRecord(
            epoch=epoch,
            train_loss=total_loss / len(y),
            lr=lr,
            val_accuracy=metrics.accuracy,
            val_macro_f1=metrics.macro_f1,
            val_loss=metrics.loss,
            seconds=time.perf_counter() - start,
        )
        history.append(record)
        if path is not None:
            save_checkpoint(
                path,
                model,
                model_spec,
                data.spec,
                meta={"train_config": config.to_dict(), "history": [asdict(r) for r in history]},
                extra_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            )
        if on_epoch is not None:
            on_epoch(record)
    model.eval()
    return TrainResult(model=model, history=history)


def _resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    data: Dataset,
) -> list[EpochRecord]:
    """Load a previous run of the same settings from ``path``; return its epoch history."""
    saved = load_checkpoint(path)
    previous = saved.meta.get("train_config", {})
    differing = [k for k, v in config.to_dict().items() if k != "epochs" and previous.get(k) != v]
    if differing or saved.dataset_spec != data.spec:
        what = ", ".join(differing) if differing else "dataset"
        raise UsageError(f"{path} holds a run with other settings ({what}); use another --out to start afresh")
    history = [EpochRecord(**r) for r in saved.meta.get("history", [])]
    if len(history) > config.epochs:
        raise UsageError(f"{path} already holds {len(history)} epochs, more than --epochs {config.epochs}")
    model.load_state_dict(saved.model.state_dict())
    extra = load_extra_state(path)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    # A cosine schedule's length is part of its state; keep the new horizon.
    if hasattr(scheduler, "T_max"):
        scheduler.T_max = config.epochs
    return history

