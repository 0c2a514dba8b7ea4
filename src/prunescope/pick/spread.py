"""Exact global counts: per-target sparsities that remove exactly round(s · N) weights.

Shared by the allocations that split a global sparsity ``s`` over the targets (N weights):

- :func:`exact_counts` (from :mod:`prunescope.blocks`) rounds fractional removed counts by the
  largest-remainder method so that they add up to a given total (REFERENCES, "Allocations": per
  layer ``round(s_l · n_l)``, the total exact);
- :func:`blocks` (from :mod:`prunescope.blocks`) groups targets into the blocks of a network (a
  transformer's decoder layer, a ResNet's residual block), which OWL and AlphaPruning allocate by;
- :func:`solve` finds the shift (or scale) ``c`` of a layer-wise rule ``s_b = a_b + b_b · c``
  that meets the global count with every block's sparsity clipped to ``[0, (n − 1)/n]``
  (no target removed whole), then rounds exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prunescope.blocks import block_of, blocks, exact_counts
from prunescope.errors import UsageError
from prunescope.targets import Target

__all__ = ["block_of", "blocks", "exact_counts", "solve", "total_removed"]

_BISECTIONS = 200  # float64 halvings: far below one weight of any layer


def total_removed(targets: Sequence[Target], sparsity: float) -> int:
    """round(s · N), N the weights of ``targets``."""
    return round(sparsity * sum(t.numel for t in targets))


def solve(
    grouped: Mapping[str, Sequence[Target]],
    offset: Mapping[str, float],
    slope: Mapping[str, float],
    sparsity: float,
) -> tuple[dict[str, float], float]:
    """Per-target sparsities of the rule ``s_b = clip(offset_b + slope_b · c)`` at global ``sparsity``.

    Every target of block ``b`` gets ``s_b``; ``c`` is chosen so that the removed weights add up
    to exactly round(s · N): in closed form, ``c = (round(s·N) − Σ n_b·offset_b) / Σ n_b·slope_b``,
    when no block leaves ``[0, (n_b − 1)/n_b]`` (the fewest weights of a block's targets) at that
    ``c``; otherwise by bisection of the clipped total, which is non-decreasing in ``c``. The
    fractional counts are then rounded by :func:`exact_counts`. ``slope_b`` must be positive.
    Returns the allocation and ``c``.
    """
    targets = [t for members in grouped.values() for t in members]
    total = total_removed(targets, sparsity)
    size = {b: sum(t.numel for t in members) for b, members in grouped.items()}
    cap = {b: 1 - 1 / min(t.numel for t in members) for b, members in grouped.items()}
    if total > sum(size[b] * cap[b] for b in grouped) + 0.5:
        raise UsageError(f"sparsity {sparsity:g} leaves fewer weights than one per layer: choose a lower sparsity")
    if any(not slope[b] > 0 for b in grouped):
        raise UsageError("a layer-wise allocation needs a positive slope for every block")

    def level(b: str, c: float) -> float:
        return min(max(offset[b] + slope[b] * c, 0.0), cap[b])

    def removed(c: float) -> float:
        return sum(size[b] * level(b, c) for b in grouped)

    c = (total - sum(size[b] * offset[b] for b in grouped)) / sum(size[b] * slope[b] for b in grouped)
    if any(not 0.0 <= offset[b] + slope[b] * c <= cap[b] for b in grouped):
        low = min(-offset[b] / slope[b] for b in grouped)  # every block at 0
        high = max((cap[b] - offset[b]) / slope[b] for b in grouped)  # every block at its cap
        for _ in range(_BISECTIONS):
            c = (low + high) / 2
            low, high = (c, high) if removed(c) < total else (low, c)
        c = high
    fractional = {t.name: level(b, c) * t.numel for b, members in grouped.items() for t in members}
    return exact_counts(targets, fractional, total, keep_one=True), c
