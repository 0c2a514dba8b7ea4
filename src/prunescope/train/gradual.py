"""Gradual and iterative pruning: raise the sparsity step by step, fine-tuning in between.

Schedules (lists of global sparsities, one per pruning step):

- :func:`polynomial_schedule`: automated gradual pruning (AGP), Zhu & Gupta, "To prune, or
  not to prune: exploring the efficacy of pruning for model compression", 2017; the same
  curve as TF Model Optimization's ``PolynomialDecay``:
  ``s_t = s_f + (s_i − s_f) · (1 − t / n)^3`` for ``t = 1 … n``, the last step exactly ``s_f``.
- :func:`iterative_schedule`: iterative pruning in the manner of Han et al., "Learning both
  Weights and Connections for Efficient Neural Networks", 2015 (and the iterative baseline
  of Lee et al., LAMP, ICLR 2021): each round removes a fixed fraction of the weights still
  remaining, ``s_k = 1 − (1 − f)^k``, until the final sparsity, which the last round hits
  exactly.

:func:`gradual_prune` walks a schedule: at each step it takes an allocation at ``s_t``,
prunes to it without ever restoring a pruned weight, fine-tunes, and records what it
measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunescope.apply import check_allocation, existing_masks, pruning_masks
from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.masks import Masks, check_sparsity
from prunescope.targets import Target, effective_weight, find_targets
from prunescope.train.loop import EpochRecord, TrainConfig, train

Allocator = Callable[[float], Mapping[str, float]]
"""``allocate(global sparsity) -> {target name: sparsity}``, e.g.
``lambda s: prunescope.pick.baselines.allocate("uniform", model, targets, s)``."""


# --------------------------------------------------------------------------- schedules


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"a pruning schedule needs at least 1 step, got {steps!r}")


def polynomial_schedule(initial: float, final: float, steps: int, power: float = 3) -> list[float]:
    """AGP sparsities of steps ``t = 1 … steps``: ``s_f + (s_i − s_f) · (1 − t / steps)^power``.

    Zhu & Gupta (2017), eq. 1, with ``n = steps`` pruning steps of ``Δt = 1`` (TF-MOT's
    ``PolynomialDecay(initial_sparsity, final_sparsity, end_step=n, power=3)`` evaluated at
    its pruning steps). The start ``s_i`` itself (t = 0) is not a step; the last value is
    exactly ``final``. The sparsity rises fast at first and slowly at the end, when fewer
    weights are left to absorb each cut.

    UsageError for fewer than 1 step, sparsities outside [0, 1), a schedule that ends below
    its start, or a non-positive power.
    """
    _check_steps(steps)
    initial = check_sparsity(initial, "initial sparsity")
    final = check_sparsity(final, "final sparsity")
    if final < initial:
        raise UsageError(
            f"schedule ends below its start (final {final:g} < initial {initial:g}): gradual pruning only adds zeros"
        )
    if not power > 0:
        raise UsageError(f"schedule power must be positive, got {power:g}")
    values = [final + (initial - final) * (1 - t / steps) ** power for t in range(1, steps + 1)]
    values[-1] = final
    return values


def iterative_schedule(final: float, fraction: float = 0.2) -> list[float]:
    """Sparsities of rounds that each remove ``fraction`` of the weights still remaining.

    Round ``k`` reaches ``1 − (1 − fraction)^k`` (Han et al. 2015; 20% per round as in the
    LAMP paper's iterative magnitude pruning); the rounds stop at the first one that would
    reach ``final``, which is set to exactly ``final`` (it removes at most ``fraction``).
    ``final = 0`` gives ``[0.0]``. UsageError for ``fraction`` outside (0, 1) or ``final``
    outside [0, 1).
    """
    final = check_sparsity(final, "final sparsity")
    if not 0 < fraction < 1:
        raise UsageError(f"the fraction removed per round must be in (0, 1), got {fraction:g}")
    values = []
    k = 1
    while True:
        sparsity = 1 - (1 - fraction) ** k
        if sparsity >= final - 1e-12:
            values.append(final)
            return values
        values.append(sparsity)
        k += 1


def check_schedule(schedule: Sequence[float]) -> list[float]:
    """``schedule`` as floats after checking it has a step, each in [0, 1), never decreasing."""
    values = [check_sparsity(s, f"sparsity of step {i}") for i, s in enumerate(schedule, 1)]
    if not values:
        raise UsageError("a pruning schedule needs at least 1 step, got an empty schedule")
    for i in range(1, len(values)):
        if values[i] < values[i - 1]:
            raise UsageError(
                f"schedule goes down at step {i + 1} ({values[i - 1]:g} → {values[i]:g}): "
                "gradual pruning never restores weights"
            )
    return values


# --------------------------------------------------------------------------- results


@dataclass
class GradualStep:
    """One pruning step.

    sparsity: the global sparsity the schedule asked for (``s_t``).
    requested: the per-target sparsities of the step's allocation.
    allocation: the per-target sparsities pruned to; above ``requested`` only where the
        target already had more zeros (weights are never restored).
    achieved: measured per-target fraction of exact zeros after fine-tuning;
        removed: the same as counts; achieved_sparsity: measured over all targets.
    val: val metrics after fine-tuning (of the weights kept, the best epoch with patience).
    """

    step: int
    sparsity: float
    requested: dict[str, float]
    allocation: dict[str, float]
    achieved: dict[str, float]
    removed: dict[str, int]
    achieved_sparsity: float
    val: dict[str, Any]
    history: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "history": [asdict(r) for r in self.history]}


@dataclass
class GradualResult:
    """The pruned, fine-tuned model (masks still applied), its masks and every step."""

    model: nn.Module
    masks: Masks
    steps: list[GradualStep]
    repick: bool

    @property
    def final(self) -> GradualStep:
        return self.steps[-1]

    @property
    def schedule(self) -> list[float]:
        return [s.sparsity for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        return {"repick": self.repick, "schedule": self.schedule, "steps": [s.to_dict() for s in self.steps]}


# --------------------------------------------------------------------------- gradual pruning


def _scaled(final: Mapping[str, float], targets: Sequence[Target], fraction: float) -> dict[str, float]:
    """``final``'s removed counts times ``fraction``, rounded (largest remainder) to a total of
    ``round(fraction · Σ counts)``: the final allocation's proportions at a lower sparsity."""
    counts = {t.name: round(final[t.name] * t.numel) * fraction for t in targets}
    total = round(sum(round(final[t.name] * t.numel) for t in targets) * fraction)
    floors = {name: math.floor(c) for name, c in counts.items()}
    missing = total - sum(floors.values())
    for name in sorted(counts, key=lambda n: counts[n] - floors[n], reverse=True)[: max(missing, 0)]:
        floors[name] += 1
    return {t.name: floors[t.name] / t.numel for t in targets}


def _zero_pruned(model: nn.Module, targets: Sequence[Target]) -> None:
    """Write zeros into ``weight_orig`` where the mask prunes (the forward pass is unchanged).

    Then every criterion and allocator that reads the raw tensor sees a pruned weight as 0,
    whatever weight decay left there, and a resumed run (whose checkpoint stores baked
    weights) sees the same tensors as an uninterrupted one.
    """
    with torch.no_grad():
        for t in targets:
            module = model.get_submodule(t.module)
            mask = module._buffers.get(t.param + "_mask")
            if mask is not None:
                module._parameters[t.param + "_orig"].mul_(mask)


def gradual_prune(
    model: nn.Module,
    data: Dataset,
    allocate: Allocator,
    schedule: Sequence[float],
    config_per_step: TrainConfig,
    *,
    targets: Sequence[Target] | None = None,
    criterion: str = "magnitude",
    repick: bool = True,
    patience: int | None = None,
    device: str | torch.device = "auto",
    checkpoint_dir: str | Path | None = None,
    model_spec: dict | None = None,
    seed: int = 0,
    on_step: Callable[[GradualStep], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> GradualResult:
    """Prune ``model`` in place along ``schedule``, fine-tuning ``config_per_step`` after each step.

    At step ``t`` the allocation is ``allocate(s_t)`` (``repick=True``: re-picked every
    round, on the current model if the allocator looks at it), or the final allocation
    ``allocate(schedule[-1])``, taken once on the model as given, with every target's
    removed count scaled by the same factor (``repick=False``: fixed proportions). Each
    allocation must name exactly ``targets`` (default ``find_targets(model)``).

    Pruning is monotone: weights pruned at an earlier step score lowest and stay pruned, so
    each target loses exactly ``round(s · n)`` weights, or keeps its current zeros where it
    already had more (possible when re-picking moves sparsity between targets; the step
    then records ``allocation`` above ``requested``). The zeros stay exact through
    fine-tuning (masks via ``torch.nn.utils.prune``). Gradient criteria use ``data.train``.

    With ``checkpoint_dir`` (and ``model_spec``) every step's fine-tune is checkpointed as
    ``step-001.pt`` …; calling again with the same arguments resumes where it stopped with
    the same result. A diverging loss stops with an error naming the last good checkpoint.
    The returned model keeps its masks applied (see :func:`prunescope.masks.make_permanent`).
    """
    values = check_schedule(schedule)
    if checkpoint_dir is not None and model_spec is None:
        raise UsageError("checkpointing gradual pruning needs the model spec that rebuilds the model")
    targets = list(targets) if targets is not None else find_targets(model)
    fixed = None
    if not repick:
        fixed = check_allocation(allocate(values[-1]), targets, source=f"allocation at sparsity {values[-1]:g}")
    steps: list[GradualStep] = []
    masks: Masks = {}
    for index, sparsity in enumerate(values, 1):
        _zero_pruned(model, targets)
        if fixed is not None:
            scale = sparsity / values[-1] if values[-1] > 0 else 0.0
            requested = _scaled(fixed, targets, scale)
        else:
            requested = check_allocation(
                allocate(sparsity), targets, source=f"allocation at step {index} (sparsity {sparsity:g})"
            )
        masks = pruning_masks(model, targets, requested, criterion=criterion, data=data, seed=seed + index)
        previous = existing_masks(model, targets)
        for name, mask in masks.items():
            if name in previous and bool((mask & ~previous[name].to(mask.device)).any()):
                raise AssertionError(f"step {index} would restore pruned weights of {name}")  # a bug, never input
        checkpoint = Path(checkpoint_dir) / f"step-{index:03d}.pt" if checkpoint_dir is not None else None
        result = train(
            model, data, config_per_step, device=device, checkpoint=checkpoint, model_spec=model_spec,
            on_epoch=on_epoch, masks=masks, targets=targets, patience=patience,
        )
        zeros = {t.name: int((effective_weight(model, t) == 0).sum()) for t in targets}
        step = GradualStep(
            step=index,
            sparsity=sparsity,
            requested=requested,
            allocation={t.name: float((~masks[t.name]).sum()) / t.numel for t in targets},
            achieved={t.name: zeros[t.name] / t.numel for t in targets},
            removed=zeros,
            achieved_sparsity=sum(zeros.values()) / sum(t.numel for t in targets),
            val=Evaluator(model, data.val, device=device).evaluate().to_dict(),
            history=result.history,
            stopped_early=result.stopped_early,
        )
        steps.append(step)
        if on_step is not None:
            on_step(step)
    return GradualResult(model=model, masks=masks, steps=steps, repick=repick)
