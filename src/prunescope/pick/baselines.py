"""Allocation baselines: per-target sparsities that reach a global sparsity exactly.

Global sparsity = removed weights / all weights of the targets. Each baseline returns an
allocation ``{target name: sparsity}`` whose removed counts ``round(s_l · n_l)`` add up to
exactly ``round(s · N)``; fractional counts are rounded by the largest-remainder method.

- ``uniform``: every target at s.
- ``uniform+`` (Gale, Elsen & Hooker, "The State of Sparsity in Deep Neural Networks",
  2019): first target dense, last target at most 80% pruned, the rest uniform at the
  sparsity that makes the global target. First and last in data-flow order (the order in
  which a forward pass on an example input reaches the targets, :func:`prunescope.targets.flow_order`), not
  in the order the modules were registered.
- ``global``: global magnitude, the k = round(s · N) smallest |w| over all targets.
- ``erk`` (Evci et al., "Rigging the Lottery", 2020): density_l ∝ ε · (n_in + n_out + k_h +
  k_w) / (n_in · n_out · k_h · k_w); targets whose density would exceed 1 are kept dense
  and ε is re-solved for the rest.
- ``lamp`` (Lee et al., ICLR 2021): the k smallest LAMP scores over all targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunescope.criteria import Scores, compute_scores
from prunescope.errors import UsageError
from prunescope.masks import check_sparsity
from prunescope.pick.spread import exact_counts, total_removed
from prunescope.targets import Target, flow_order

ALLOCATIONS = ("uniform", "uniform+", "global", "erk", "lamp")
UNIFORM_PLUS_LAST_CAP = 0.8


def uniform(targets: Sequence[Target], sparsity: float) -> dict[str, float]:
    return exact_counts(targets, {t.name: sparsity * t.numel for t in targets}, total_removed(targets, sparsity))


def uniform_plus(targets: Sequence[Target], sparsity: float) -> dict[str, float]:
    """uniform+ with ``targets`` in data-flow order (``targets.flow_order``): first dense, last capped."""
    if len(targets) < 3:
        raise UsageError("uniform+ needs at least three prunable layers (first dense, last capped, the rest uniform)")
    first, middle, last = targets[0], list(targets[1:-1]), targets[-1]
    total = total_removed(targets, sparsity)
    prunable = sum(t.numel for t in middle) + last.numel
    if total >= prunable:
        raise UsageError(
            f"uniform+ cannot reach {sparsity:g}: the dense first layer {first.name} holds more than "
            f"{1 - sparsity:.3g} of the weights; choose a lower sparsity or another allocation"
        )
    rest = total / prunable
    last_sparsity = min(rest, UNIFORM_PLUS_LAST_CAP)
    middle_total = sum(t.numel for t in middle)
    middle_sparsity = (total - last_sparsity * last.numel) / middle_total
    if middle_sparsity >= 1:
        raise UsageError(f"uniform+ cannot reach {sparsity:g} with {last.name} capped at 80%: choose a lower sparsity")
    removed = {first.name: 0.0, last.name: last_sparsity * last.numel}
    removed |= {t.name: middle_sparsity * t.numel for t in middle}
    return exact_counts(targets, removed, total)


def _erk_shape_factor(target: Target) -> float:
    """(n_in + n_out + k_h + k_w …) / (n_in · n_out · k_h · k_w …) of a weight tensor."""
    return sum(target.shape) / target.numel


def erk(targets: Sequence[Target], sparsity: float) -> dict[str, float]:
    kept_total = sum(t.numel for t in targets) - total_removed(targets, sparsity)
    dense: set[str] = set()
    while True:
        free = [t for t in targets if t.name not in dense]
        if not free:
            break  # everything saturated: only when nothing is removed (the kept budget is every weight)
        budget = kept_total - sum(t.numel for t in targets if t.name in dense)
        epsilon = budget / sum(_erk_shape_factor(t) * t.numel for t in free)
        saturated = [t.name for t in free if epsilon * _erk_shape_factor(t) > 1]
        if not saturated:
            break
        dense.update(saturated)
    removed = {t.name: 0.0 if t.name in dense else (1 - epsilon * _erk_shape_factor(t)) * t.numel for t in targets}
    return exact_counts(targets, removed, total_removed(targets, sparsity))


def global_threshold(targets: Sequence[Target], scores: Scores, sparsity: float) -> dict[str, float]:
    """Remove the round(s · N) lowest ``scores`` over all targets (scores must be comparable)."""
    flat = torch.cat([scores[t.name].flatten().float().cpu() for t in targets])
    owner = torch.cat([torch.full((t.numel,), i) for i, t in enumerate(targets)])
    k = total_removed(targets, sparsity)
    lowest = torch.topk(flat, k, largest=False, sorted=False).indices if k else torch.empty(0, dtype=torch.long)
    counts = torch.bincount(owner[lowest], minlength=len(targets))
    return {t.name: int(counts[i]) / t.numel for i, t in enumerate(targets)}


def allocate(
    method: str, model: nn.Module, targets: Sequence[Target], sparsity: float, *, example: torch.Tensor | None = None
) -> dict[str, float]:
    """Per-target sparsities of baseline ``method`` at global ``sparsity`` (a fraction in [0, 1)).

    ``example``: a batch of inputs, needed by ``uniform+`` to find the first and last target
    in data-flow order (:func:`prunescope.targets.flow_order`).
    """
    check_sparsity(sparsity)
    if method == "uniform":
        return uniform(targets, sparsity)
    if method == "uniform+":
        if example is None:
            raise UsageError("uniform+ needs an example input to order the layers by data flow")
        return uniform_plus(flow_order(model, targets, example), sparsity)
    if method == "erk":
        return erk(targets, sparsity)
    if method in ("global", "lamp"):
        criterion = "magnitude" if method == "global" else "lamp"
        return global_threshold(targets, compute_scores(model, targets, criterion), sparsity)
    raise UsageError(f"unknown allocation {method!r}: use one of {', '.join(ALLOCATIONS)}")
