"""``prunescope prune``: prune to an allocation, fine-tune, save; for channels also export and check the export.

Weights (:func:`prune_weights_and_recover`): :func:`prunescope.apply.prune` masks (or
re-fits by reconstruction) exactly ``round(s · n)`` weights per target, fine-tuning keeps
them at zero, and the checkpoint holds the zeros baked in.

Channels (:func:`prune_channels_and_recover`): read the pick (which groups, how far, with
which importance and ``round_to``), :func:`prunescope.apply.prune_channels`, optional
fine-tuning with :func:`prunescope.train.train` (a smaller dense model: nothing to mask),
a prunescope checkpoint whose spec rebuilds the smaller architecture, and a
:mod:`torch.export` file that loads without prunescope, checked to give the same
predictions as the model in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunescope.apply import ChannelPruned, check_allocation, prune, prune_channels, read_pick
from prunescope.apply import export as save_baked
from prunescope.checkpoint import save_checkpoint
from prunescope.data.types import Dataset, Split
from prunescope.device import resolve_device
from prunescope.errors import PrunescopeError, UsageError
from prunescope.evaluate import Evaluator, Metrics
from prunescope.patterns import Pattern, check_pattern
from prunescope.reconstruct import Reconstruction
from prunescope.scan.files import load_scan
from prunescope.structured.export import export_model, load_exported
from prunescope.structured.find import find_groups
from prunescope.targets import effective_weight, find_targets
from prunescope.train import TrainConfig, finetune, recalibrate_batchnorm, train
from prunescope.train.loop import EpochRecord

EXPORT_TOLERANCE = 1e-4  # largest logit difference between the export and the model in memory


@dataclass(frozen=True)
class PickSettings:
    """What a pick file says about how to apply it: allocation, importance, ``round_to``."""

    allocation: dict[str, float]
    importance: str | None
    round_to: int | None


def read_channel_pick(path: Path, model: nn.Module, model_spec: dict[str, Any]) -> PickSettings:
    """The channel allocation in pick file ``path`` (or a bare ``{group: fraction}`` JSON), checked against ``model``.

    Groups the pick does not name stay dense. The importance is the one of the scan the pick
    was made from, when the pick names a scan that is still there.
    """
    raw, settings = read_pick(path, model_spec=model_spec)
    groups = list(find_groups(model, model_spec["input_shape"]).groups)
    allocation = check_allocation(raw, groups, source=f"allocation file {path}", dense_if_missing=True)
    importance = None
    scan_dir = settings.get("scan")
    if scan_dir and (Path(scan_dir) / "scan.json").is_file():
        curves = load_scan(scan_dir).curves
        if curves.granularity != "channel":
            raise UsageError(f"the pick in {path} comes from a weight scan: apply it without --granularity channel")
        importance = curves.criterion
    round_to = settings.get("round_to")
    return PickSettings(allocation, importance, int(round_to) if round_to else None)


@dataclass
class ChannelPruneResult:
    """Val metrics at each stage, the pruning, and where the files went."""

    pruned: ChannelPruned
    dense: Metrics
    one_shot: Metrics
    finetuned: Metrics
    history: list[EpochRecord] = field(default_factory=list)
    checkpoint: Path | None = None
    export: Path | None = None
    export_difference: float | None = None
    export_batch: int | str | None = None  # "dynamic", or the one batch size the export runs
    export_batch_reason: str | None = None  # why the batch is static


def _predictions(model: nn.Module, split: Split, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    # Not Evaluator.logits: it restores the training flag, and an exported graph refuses train(True).
    batches = range(0, len(split), batch_size)
    with torch.no_grad():
        return torch.cat([model(split.x[i : i + batch_size].to(device)).cpu() for i in batches])


def check_export(model: nn.Module, path: Path, split: Split, device: torch.device) -> tuple[float, dict[str, Any]]:
    """Largest logit difference on ``split`` between the exported file and ``model``, and the file's metadata.

    Raises PrunescopeError if a logit differs by more than ``EXPORT_TOLERANCE`` (relative to the
    largest logit, at least 1), or is NaN.
    """
    loaded = load_exported(path, device, trusted=True)  # the file this process just wrote
    batch = loaded.metadata.get("batch")
    size = 256
    if isinstance(batch, int):  # a static export runs only its own batch size
        size, whole = batch, len(split) - len(split) % batch
        split = Split(split.x[:whole], split.y[:whole])
    model.eval()
    ours, theirs = _predictions(model, split, device, size), _predictions(loaded.module, split, device, size)
    difference = float((ours - theirs).abs().max()) if len(split) else 0.0
    # No exact test of the predictions: the export runs other kernels, so an example whose top two logits are
    # within rounding of each other may go either way; wherever they are more than twice the bound apart, the
    # bound itself keeps the prediction. ``not <=``: a NaN logit fails.
    if not difference <= EXPORT_TOLERANCE * max(1.0, float(ours.abs().max())):
        raise PrunescopeError(f"the exported model {path} does not reproduce the pruned model "
                              f"(logits differ by up to {difference:.3g}); the checkpoint next to it is still valid")
    return difference, loaded.metadata


def prune_channels_and_recover(
    model: nn.Module,
    model_spec: dict[str, Any],
    dataset_spec: dict[str, Any],
    data: Dataset,
    allocation: dict[str, float],
    *,
    importance: str,
    round_to: int,
    config: TrainConfig | None,
    out: Path,
    export: Path | None,
    patience: int | None,
    device: torch.device,
    meta: dict[str, Any],
    on_epoch: Callable[[EpochRecord], None] | None = None,
    bn_batches: int = 0,
) -> ChannelPruneResult:
    """Prune ``model`` (in place) to ``allocation``, fine-tune with ``config`` (None: one-shot), save and export.

    Writes ``out/model.pt`` (a prunescope checkpoint of the smaller architecture) and, with
    ``export``, a :mod:`torch.export` file checked against the model on ``data.val``.
    ``bn_batches`` > 0 re-estimates the BatchNorm statistics on that many training batches
    right after removal (:func:`~prunescope.train.recalibrate_batchnorm`), before the
    one-shot evaluation and fine-tuning.
    """
    device = resolve_device(device)
    model.to(device)
    dense = Evaluator(model, data.val, device=device).evaluate()
    pruned = prune_channels(model, model_spec, allocation, importance=importance, data=data.train,
                            round_to=round_to)
    if bn_batches:
        recalibrate_batchnorm(model, data.train, batches=bn_batches)
    one_shot = Evaluator(model, data.val, device=device).evaluate()
    history: list[EpochRecord] = []
    if config is not None:
        result = train(model, data, config, device=device, checkpoint=out / "finetune.pt",
                       model_spec=pruned.model_spec, patience=patience, on_epoch=on_epoch)
        model, history = result.model, result.history
    finetuned = Evaluator(model, data.val, device=device).evaluate()
    meta = {**meta, "removed_this_step": pruned.removal, "bn_recalibration_batches": bn_batches,
            "dense_footprint": vars(pruned.dense), "footprint": vars(pruned.pruned), "round_to": round_to,
            "importance": importance}
    checkpoint = save_checkpoint(out / "model.pt", model, pruned.model_spec, dataset_spec, meta=meta)
    outcome = ChannelPruneResult(pruned, dense, one_shot, finetuned, history, checkpoint)
    if export is not None:
        metadata = {"model_spec": _dense_spec(model_spec), "pruned_spec": pruned.model_spec,
                    "input_shape": list(model_spec["input_shape"]), "num_classes": model_spec["num_classes"],
                    "removal": pruned.model_spec["removed_channels"], "val_accuracy": finetuned.accuracy, **meta}
        outcome.export = export_model(model, tuple(model_spec["input_shape"]), export, metadata)
        outcome.export_difference, written = check_export(model, outcome.export, data.val, device)
        outcome.export_batch, outcome.export_batch_reason = written.get("batch"), written.get("batch_reason")
    return outcome


@dataclass
class WeightPruneResult:
    """Val metrics dense / one-shot / fine-tuned, the fine-tuning history, the reconstruction report, the checkpoint."""

    dense: Metrics
    one_shot: Metrics
    finetuned: Metrics
    history: list[EpochRecord]
    reconstruction: Reconstruction | None
    checkpoint: Path


def prune_weights_and_recover(
    model: nn.Module,
    model_spec: dict[str, Any],
    dataset_spec: dict[str, Any],
    data: Dataset,
    allocation: dict[str, float],
    *,
    criterion: str,
    config: TrainConfig | None,
    out: Path,
    patience: int | None,
    device: str | torch.device,
    meta: dict[str, Any],
    reconstruction: dict[str, Any] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    seed: int = 0,
    pattern: Pattern | None = None,
) -> WeightPruneResult:
    """Prune ``model``'s weights (in place) to ``allocation``, fine-tune with ``config`` (None: one-shot), save.

    ``reconstruction``: keyword arguments of :func:`prunescope.apply.prune` that re-fit the
    kept weights (``reconstruct``, ``calibration``, ``reconstruct_fallback``; None: masks alone).
    ``pattern``: N:M in every layer the allocation prunes (checked before fine-tuning and saving).
    Writes ``out/model.pt`` with the zeros baked in (fine-tuning checkpoints to ``out/finetune.pt``).
    """
    device = resolve_device(device)
    model.to(device)
    targets = find_targets(model)
    dense = Evaluator(model, data.val, device=device).evaluate()
    reports: list[Reconstruction] = []
    masks = prune(model, allocation, criterion=criterion, data=data.train, seed=seed, **(reconstruction or {}),
                  on_reconstructed=reports.append, pattern=pattern)
    one_shot = Evaluator(model, data.val, device=device).evaluate()
    history: list[EpochRecord] = []
    if config is not None:
        result = finetune(model, data, targets, masks, config, checkpoint=out / "finetune.pt",
                          model_spec=model_spec, patience=patience, device=device, on_epoch=on_epoch)
        model, history = result.model, result.history
    finetuned = Evaluator(model, data.val, device=device).evaluate()
    if pattern is not None:  # fine-tuning keeps pruned weights at zero: the saved zeros are still N:M
        check_pattern({t.name: effective_weight(model, t) != 0 for t in targets if t.name in masks}, pattern,
                      at_most=True, layouts={t.name: t for t in targets})
    checkpoint = save_baked(model, out / "model.pt", model_spec, dataset_spec, meta=meta)
    return WeightPruneResult(dense, one_shot, finetuned, history, reports[0] if reports else None, checkpoint)


def _dense_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if key != "removed_channels"}
