"""Seeded training, checkpointed every epoch and resumable: the one training loop of prunescope.

:func:`train` does dense training and, given keep-masks, masked training (fine-tuning,
the steps of gradual pruning, scratch baselines). Studies call it with an ``on_epoch``
hook that can stop a run early (e.g. an Optuna pruner raising ``optuna.TrialPruned``).

Masks are applied with ``torch.nn.utils.prune`` re-parametrisation
(``weight = weight_orig * weight_mask``): the gradient of ``weight_orig`` is zero where the
mask is, so no optimiser step (momentum and weight decay included) can move a pruned
weight of the forward pass away from exactly zero. Checkpoints bake masks into the
weights (:mod:`prunescope.checkpoint`), so the masks are also stored in the checkpoint's
``extra_state`` and re-applied on resume; otherwise a resumed fine-tune would let the
zeros grow back.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunescope.apply import existing_masks, release
from prunescope.checkpoint import load_checkpoint, load_extra_state, save_checkpoint
from prunescope.data.types import Dataset
from prunescope.device import resolve_device
from prunescope.errors import PrunescopeError, UsageError
from prunescope.evaluate import Evaluator, prediction_loss
from prunescope.masks import Masks, apply_permanently
from prunescope.models import spec_difference
from prunescope.scores import default_metric
from prunescope.targets import Target, by_name, find_targets
from prunescope.train.sam import SAM
from prunescope.trust import Trust

OPTIMIZERS = ("sgd", "adamw", "sam", "sam-adamw")  # sam: SAM around SGD; sam-adamw: around AdamW
SAM_DEFAULT_RHO = 0.05  # Foret et al. 2021's usual radius
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
    sam_rho: float | None = None  # SAM's radius ρ; only with optimizer sam / sam-adamw (default 0.05)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"epochs must be at least 1, got {self.epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}: use {' or '.join(OPTIMIZERS)}")
        if self.optimizer.startswith("sam"):
            if self.sam_rho is None:
                object.__setattr__(self, "sam_rho", SAM_DEFAULT_RHO)
            elif not self.sam_rho >= 0:
                raise UsageError(f"SAM rho must be at least 0, got {self.sam_rho}")
        elif self.sam_rho is not None:
            raise UsageError(f"optimizer {self.optimizer} has no rho: use optimizer sam (SGD) or sam-adamw for SAM")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}: use {' or '.join(SCHEDULES)}")
        if not self.lr > 0:
            raise UsageError(f"learning rate must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The config of a :meth:`to_dict` document; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: mean train loss (nats), learning rate used, val metrics, seconds.

    For a language model val_accuracy is over tokens, val_macro_f1 is None and val_perplexity
    is ``exp(val_loss)``; early stopping then keeps the epoch of lowest val perplexity.
    """

    epoch: int
    train_loss: float
    lr: float
    val_accuracy: float
    val_macro_f1: float | None
    val_loss: float
    seconds: float
    val_perplexity: float | None = None


@dataclass
class TrainResult:
    """The trained model and every epoch run.

    With early stopping (``patience``) ``model`` holds the weights of ``best_epoch`` (the
    epoch of highest val accuracy, or lowest perplexity), which may be earlier than the last epoch in ``history``;
    ``stopped_early`` says whether training ended before ``config.epochs``.
    """

    model: nn.Module
    history: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int | None = None

    @property
    def final(self) -> EpochRecord:
        """The record of the last epoch trained."""
        return self.history[-1]

    @property
    def best(self) -> EpochRecord:
        """The record of the epoch whose weights ``model`` holds."""
        if self.best_epoch is None:
            return self.final
        return next(r for r in self.history if r.epoch == self.best_epoch)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer in ("sgd", "sam"):
        base: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        base = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return SAM(base, config.sam_rho, model) if config.optimizer.startswith("sam") else base


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _backward(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The batch loss, back-propagated (SAM's second pass)."""
    loss = prediction_loss(model(inputs), labels, label_smoothing=smoothing)
    loss.backward()
    return loss


# --------------------------------------------------------------------------- masks


def _has_prune_masks(model: nn.Module) -> bool:
    return any(name.endswith("_mask") for name, _ in model.named_buffers())


def _combine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> Masks:
    """Keep a weight only where every mask keeps it (a pruned weight stays pruned)."""
    combined = {name: mask.bool() for name, mask in a.items()}
    for name, mask in b.items():
        mask = mask.bool()
        combined[name] = combined[name] & mask.to(combined[name].device) if name in combined else mask
    return combined


def _covers(stored: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``stored`` prunes at least every weight that ``given`` prunes."""
    for name, mask in given.items():
        if name not in stored:
            if not bool(mask.all()):
                return False
        elif bool((stored[name].cpu() & ~mask.bool().cpu()).any()):
            return False
    return True


# --------------------------------------------------------------------------- the loop


@dataclass
class _Saved:
    """A previous run of the same settings, read from the checkpoint file."""

    history: list[EpochRecord]
    state: dict[str, torch.Tensor]
    extra: dict[str, Any]
    meta: dict[str, Any]


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    *,
    device: str | torch.device = "auto",
    checkpoint: str | Path | None = None,
    model_spec: dict | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    targets: Sequence[Target] | None = None,
    patience: int | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train``, evaluating on ``data.val`` after every epoch.

    With ``checkpoint`` (and the ``model_spec`` that rebuilds the model), the model,
    optimiser and schedule are saved after every epoch; if the file already holds a
    shorter run with the same settings, training resumes from it and gives the same
    weights as an uninterrupted run. Shuffling is seeded per epoch for that reason.

    ``masks`` (target name → keep-mask, ``True`` = kept; ``targets`` default to all of
    ``find_targets(model)``) are applied with ``torch.nn.utils.prune`` before training, so
    pruned weights stay exactly zero through every optimiser step. A target the model
    already has pruned keeps its zeros (masks are combined, never loosened). The masks are
    saved in the checkpoint's ``extra_state`` and re-applied on resume, also when the
    resumed call passes no ``masks``. After training the model still has its masks applied
    (``weight_orig`` / ``weight_mask``); :func:`prunescope.masks.make_permanent` turns them
    into plain zeroed weights.

    ``patience``: stop when val accuracy has not improved for this many epochs, and return
    the model with the weights of its best epoch (also when all epochs ran). The checkpoint
    keeps the last epoch's training state (so that it resumes exactly) and the best
    weights in its ``extra_state``.

    A non-finite loss stops training with an error; the last good checkpoint is kept.
    """
    if patience is not None and patience < 1:
        raise UsageError(f"patience must be at least 1 epoch, got {patience}")
    device = resolve_device(device)
    model.to(device)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and model_spec is None:
        raise UsageError("saving training checkpoints needs the model spec that rebuilds the model")
    saved = _read_saved(path, config, data, patience, model_spec) if path is not None and path.exists() else None

    # Masks: those given, those the model already has, and (on resume) those the run was saved with.
    wanted: Masks = {name: m.bool() for name, m in (masks or {}).items()}
    stored: Masks = saved.extra.get("masks", {}) if saved is not None else {}
    if saved is not None and masks is not None and not _covers(stored, wanted):
        raise UsageError(f"{path} holds a run with other masks; use another checkpoint path to start afresh")
    if wanted or stored or _has_prune_masks(model):
        targets = list(targets) if targets is not None else find_targets(model)
        already = existing_masks(model, targets)
        wanted = _combine(_combine(already, wanted), stored)
        unknown = [name for name in wanted if name not in by_name(targets)]
        if unknown:
            raise UsageError(f"masks name unknown layers {', '.join(unknown)}; known: {', '.join(by_name(targets))}")
        named = by_name(targets)
        misfit = [name for name, mask in wanted.items() if tuple(mask.shape) != named[name].shape]
        if misfit:
            name = misfit[0]
            raise UsageError(
                f"mask of {name} has shape {tuple(wanted[name].shape)} but the weight has {named[name].shape}: "
                "the masks belong to another model"
            )
        release(model, targets, list(already))
    if saved is not None:
        model.load_state_dict(saved.state)
    if wanted:
        ordered = {t.name: wanted[t.name] for t in targets if t.name in wanted}  # a fixed parameter order
        apply_permanently(model, targets, ordered, reparametrize=True)

    optimizer = _optimizer(model, config)
    scheduler = _scheduler(optimizer, config)
    history: list[EpochRecord] = []
    best_epoch: int | None = None
    best_score = -float("inf")
    metric = default_metric(data.val)
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early = False
    if saved is not None:
        history = saved.history
        optimizer.load_state_dict(saved.extra["optimizer"])
        scheduler.load_state_dict(saved.extra["scheduler"])
        # A cosine schedule's length is part of its state; keep the new horizon.
        if hasattr(scheduler, "T_max"):
            scheduler.T_max = config.epochs
        if "best" in saved.extra:
            best_epoch = saved.extra["best"]["epoch"]
            best_score = saved.extra["best"].get("score", saved.extra["best"].get("accuracy"))
            best_state = {k: v.to(device) for k, v in saved.extra["best"]["state"].items()}
        stopped_early = bool(saved.meta.get("stopped_early", False))

    x, y = data.train.x.to(device), data.train.y.to(device)
    evaluator = Evaluator(model, data.val, device=device)
    first = config.epochs + 1 if stopped_early else len(history) + 1
    for epoch in range(first, config.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        model.train()
        total_loss = 0.0
        for i in range(0, len(y), config.batch_size):
            index = order[i : i + config.batch_size].to(device)
            loss = prediction_loss(model(x[index]), y[index], label_smoothing=config.label_smoothing)
            if not torch.isfinite(loss):
                kept = f"; the last good checkpoint is {path}" if path is not None and path.exists() else ""
                raise PrunescopeError(
                    f"training diverged at epoch {epoch} (loss {loss.item()}){kept}; lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if isinstance(optimizer, SAM):  # the gradient again at the ascended weights, same batch
                optimizer.step(functools.partial(_backward, model, x[index], y[index], config.label_smoothing))
            else:
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
            val_perplexity=metrics.get("perplexity") if metric == "perplexity" else None,
        )
        history.append(record)
        if patience is not None:
            if metrics.score(metric) > best_score:
                best_epoch, best_score = epoch, metrics.score(metric)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            stopped_early = epoch - best_epoch >= patience and epoch < config.epochs
        if path is not None:
            extra: dict[str, Any] = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            if wanted:
                extra["masks"] = {name: mask.cpu() for name, mask in wanted.items()}
            if best_state is not None:
                extra["best"] = {"epoch": best_epoch, "score": best_score, "state": best_state}
            meta = {"train_config": config.to_dict(), "history": [asdict(r) for r in history]}
            if patience is not None:
                meta |= {"patience": patience, "best_epoch": best_epoch, "stopped_early": stopped_early}
            save_checkpoint(path, model, model_spec, data.spec, meta=meta, extra_state=extra)
        if on_epoch is not None:
            on_epoch(record)
        if stopped_early:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model=model, history=history, stopped_early=stopped_early, best_epoch=best_epoch)


def _read_saved(path: Path, config: TrainConfig, data: Dataset, patience: int | None, model_spec: dict) -> _Saved:
    """A previous run of the same settings from ``path`` (UsageError if the settings differ).

    Only the factories of this run's own specs are imported: the file's may name others.
    """
    saved = load_checkpoint(path, trust_factory=Trust.of_specs(model_spec, data.spec))
    if (difference := spec_difference(saved.model_spec, model_spec)) is not None:
        raise UsageError(f"{path} holds a run of another model ({difference}); use another --out to start afresh")
    previous = saved.meta.get("train_config", {})
    differing = [k for k, v in config.to_dict().items() if k != "epochs" and previous.get(k) != v]
    if saved.meta.get("patience") != patience:
        differing.append("patience")
    if differing or saved.dataset_spec != data.spec:
        what = ", ".join(differing) if differing else "dataset"
        raise UsageError(f"{path} holds a run with other settings ({what}); use another --out to start afresh")
    history = [EpochRecord(**r) for r in saved.meta.get("history", [])]
    if len(history) > config.epochs:
        raise UsageError(f"{path} already holds {len(history)} epochs, more than --epochs {config.epochs}")
    return _Saved(history=history, state=saved.model.state_dict(), extra=load_extra_state(path), meta=saved.meta)
