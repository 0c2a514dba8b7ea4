"""The degrees of pruning a hyperparameter study compares: each one a pruned checkpoint of the dense model.

Built from prunescope's own stages, nothing re-implemented:

- ``channel`` (default, as in the seed study): a channel scan of the dense model
  (:func:`prunescope.scan.scan`, ``granularity="channel"``), then per MAC fraction the
  budget pick verified on val (:func:`prunescope.pick.choose.choose` with
  :class:`~prunescope.pick.budget.BudgetPicker`), or the structured baselines ``uniform`` /
  ``global`` (:mod:`prunescope.structured.baselines`); channels removed physically
  (:func:`prunescope.apply.prune_channels`).
- ``weight``: per global sparsity, the budget pick on a weight scan
  (:class:`~prunescope.pick.budget.BudgetPicker`) or any allocation baseline by name
  (:func:`prunescope.pick.baselines.allocate`: uniform, uniform+, global, ERK, LAMP), pruned by
  magnitude with :func:`prunescope.apply.prune`.

Level 1 (MAC fraction) or 0 (sparsity) is the dense model itself: the reference the shift is
measured from, required in every list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunescope.apply import export, prune, prune_channels
from prunescope.checkpoint import load_checkpoint, save_checkpoint
from prunescope.curves import Curves
from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.pick.baselines import ALLOCATIONS, allocate
from prunescope.pick.budget import BudgetPicker
from prunescope.pick.choose import choose
from prunescope.scan import scan
from prunescope.structured.baselines import global_channels, uniform_channels
from prunescope.structured.find import find_groups
from prunescope.structured.importance import group_scores
from prunescope.structured.pruning import ChannelPruning
from prunescope.targets import find_targets
from prunescope.trials.points import LOCAL, Execution
from prunescope.trust import Trust, TrustFactory

GRANULARITIES = ("channel", "weight")
DEFAULT_LEVELS = {"channel": (1.0, 0.7, 0.5, 0.35, 0.25), "weight": (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)}
ALLOCATORS = {"channel": ("budget", "uniform", "global"), "weight": ("budget", *ALLOCATIONS)}
CHANNEL_IMPORTANCE = "l2"


def check_levels(granularity: str, levels: Sequence[float] | None, allocator: str) -> list[float]:
    """The levels (MAC fractions for ``channel``, sparsities for ``weight``), checked, least pruned first."""
    if granularity not in GRANULARITIES:
        raise UsageError(f"unknown granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
    if allocator not in ALLOCATORS[granularity]:
        raise UsageError(f"unknown allocator {allocator!r} for --granularity {granularity}: use one of "
                         f"{', '.join(ALLOCATORS[granularity])}")
    levels = list(DEFAULT_LEVELS[granularity] if levels is None else levels)
    if len(set(levels)) != len(levels):
        raise UsageError(f"a level is listed twice in {', '.join(f'{v:g}' for v in levels)}")
    if granularity == "channel":
        bad = [v for v in levels if not 0 < v <= 1]
        if bad:
            raise UsageError(f"--target-macs are fractions of the dense MACs in (0, 1]; {bad[0]:g} is not")
        if 1.0 not in levels:
            raise UsageError("--target-macs must include 1 (the dense model, the reference every shift is "
                             "measured from): add 1 to the list")
        return sorted(levels, reverse=True)
    bad = [v for v in levels if not 0 <= v < 1]
    if bad:
        raise UsageError(f"--sparsities must lie in [0, 1); {bad[0]:g} does not")
    if 0.0 not in levels:
        raise UsageError("--sparsities must include 0 (the dense model, the reference every shift is measured "
                         "from): add 0 to the list")
    return sorted(levels)


def label(granularity: str, level: float) -> str:
    return f"{level:g}x MACs" if granularity == "channel" else f"{level:.0%} sparsity"


@dataclass
class Pruned:
    """One degree: its level, the checkpoint to recover, its size and its one-shot val accuracy."""

    level: float
    label: str
    removed: float  # fraction removed: sparsity, or 1 − the MAC fraction actually reached
    checkpoint: str
    model_spec: dict[str, Any]
    allocation: dict[str, float]
    one_shot: float
    macs_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "label": self.label, "removed": self.removed, "checkpoint": self.checkpoint,
                "allocation": self.allocation, "one_shot_val_accuracy": self.one_shot,
                "macs_fraction": self.macs_fraction}


def _scan(model, data: Dataset, granularity: str, out: Path, device: str, seed: int,
          progress: Callable[[int, int], None] | None, execution: Execution) -> Curves:
    criterion = CHANNEL_IMPORTANCE if granularity == "channel" else "magnitude"
    return scan(model, data, criterion=criterion, granularity=granularity, device=device, seed=seed,
                storage=out / "scan" / f"{granularity}.journal", on_trial=progress, executor_kind=execution.kind,
                workers=execution.workers, ray_address=execution.ray_address,
                gpus_per_worker=execution.gpus_per_worker, heartbeat_interval=execution.heartbeat_interval,
                grace_period=execution.grace_period)


def prune_degrees(
    dense_checkpoint: Path,
    data: Dataset,
    levels: Sequence[float],
    *,
    granularity: str,
    allocator: str,
    out: Path,
    device: str = "auto",
    seed: int = 0,
    on_scan: Callable[[int, int], None] | None = None,
    trust: TrustFactory | Trust = False,
    execution: Execution = LOCAL,
) -> list[Pruned]:
    """A pruned checkpoint per level under ``out/pruned/``, reused when already there; the dense one at level 1 / 0.

    ``trust``: the factories the checkpoints may name (those the user named); ``execution``:
    who evaluates the scan of the ``budget`` allocator.
    """
    saved = load_checkpoint(dense_checkpoint, trust_factory=trust)
    dense_accuracy = Evaluator(saved.model, data.val, device=device).evaluate().accuracy
    dense_level = 1.0 if granularity == "channel" else 0.0
    curves = None
    if allocator == "budget" and any(v != dense_level for v in levels):
        curves = _scan(saved.model, data, granularity, out, device, seed, on_scan, execution)
    degrees = []
    for level in levels:
        if level == dense_level:
            degrees.append(Pruned(level, label(granularity, level), 0.0, str(dense_checkpoint), saved.model_spec, {},
                                  dense_accuracy, 1.0 if granularity == "channel" else None))
            continue
        path = out / "pruned" / f"{granularity}-{allocator}-{level:g}" / "model.pt"
        if not path.is_file():
            model = load_checkpoint(dense_checkpoint, trust_factory=trust).model
            if granularity == "channel":
                _prune_channels(model, saved.model_spec, data, curves, allocator, level, path, device)
            else:
                _prune_weights(model, saved.model_spec, data, curves, allocator, level, path)
        pruned = load_checkpoint(path, trust_factory=trust)
        accuracy = Evaluator(pruned.model, data.val, device=device).evaluate().accuracy
        meta = pruned.meta
        removed = level if granularity == "weight" else 1 - meta["macs_fraction"]
        degrees.append(Pruned(level, label(granularity, level), removed, str(path), pruned.model_spec,
                              meta["allocation"], accuracy, meta.get("macs_fraction")))
    return degrees


def _prune_weights(model, spec: dict, data: Dataset, curves: Curves | None, allocator: str, sparsity: float,
                   path: Path) -> None:
    targets = find_targets(model)
    if allocator == "budget":
        picked = BudgetPicker(target_sparsity=sparsity).pick(curves).allocation
        allocation = {t.name: picked.get(t.name, 0.0) for t in targets}
    else:
        allocation = allocate(allocator, model, targets, sparsity)
    prune(model, allocation, criterion="magnitude")
    export(model, path, spec, data.spec, meta={"allocation": allocation, "sparsity": sparsity})


def _prune_channels(model, spec: dict, data: Dataset, curves: Curves | None, allocator: str, fraction: float,
                    path: Path, device: str) -> None:
    if allocator == "budget":
        allocation = choose(curves, BudgetPicker(target_macs=fraction), model, data, device=device).verified.allocation
        importance = curves.criterion
    else:
        groups = find_groups(model, data.input_shape)
        pruning = ChannelPruning(groups, group_scores(groups, CHANNEL_IMPORTANCE, data=data.train))
        target = fraction * pruning.footprint({}).macs
        allocation = (uniform_channels if allocator == "uniform" else global_channels)(pruning, target)
        importance = CHANNEL_IMPORTANCE
    pruned = prune_channels(model, spec, allocation, importance=importance, data=data.train)
    macs_fraction = pruned.pruned.macs / pruned.dense.macs
    save_checkpoint(path, model, pruned.model_spec, data.spec,
                    meta={"allocation": allocation, "macs_fraction": macs_fraction, "target_macs": fraction})
