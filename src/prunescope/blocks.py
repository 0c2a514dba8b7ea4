"""A network's repeated blocks (a transformer's decoder layers, a ResNet's residual blocks) and exact counts in them.

- :func:`block_of` / :func:`blocks` group targets by their module path up to its first
  numeric component (a ``ModuleList`` / ``Sequential`` index): ``model.layers.3.mlp.up_proj``
  and ``model.layers.3.self_attn.q_proj`` are both in ``model.layers.3``; a layer outside every
  numbered container (an embedding, an output layer) is a block of its own.
- :func:`exact_counts` rounds fractional removed counts by the largest-remainder method so that
  they add up to a given total (REFERENCES, "Allocations").
- :func:`spread` turns one sparsity per block into per-target sparsities: the block's
  ``round(s_b · n_b)`` removed weights spread over its targets in proportion to their weights
  (the same sparsity for each, up to one weight of rounding), so the block's count is exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from prunescope.errors import UsageError
from prunescope.masks import removed_count
from prunescope.targets import Target


def block_of(module: str) -> str:
    """The block a module belongs to: its path up to its first numeric component (a ModuleList /
    Sequential index: ``model.layers.3.self_attn.q_proj`` → ``model.layers.3``), else the module itself."""
    parts = module.split(".")
    for end, part in enumerate(parts, 1):
        if part.isdigit():
            return ".".join(parts[:end])
    return module


def blocks(targets: Sequence[Target], per_block: bool = True) -> dict[str, list[Target]]:
    """``{block: its targets}`` in the targets' order; ``per_block=False``: every target its own block."""
    grouped: dict[str, list[Target]] = {}
    for t in targets:
        key = (block_of(t.module) or t.name) if per_block else t.name
        grouped.setdefault(key, []).append(t)
    return grouped


def exact_counts(
    targets: Sequence[Target], removed: Mapping[str, float], total: int, *, keep_one: bool = False
) -> dict[str, float]:
    """Round fractional removed counts so that they sum to ``total`` (largest remainder).

    ``keep_one``: no target loses its last weight (at most ``n − 1`` removed).
    """
    limit = {t.name: t.numel - 1 if keep_one else t.numel for t in targets}
    floors = {t.name: min(math.floor(removed[t.name]), limit[t.name]) for t in targets}
    missing = total - sum(floors.values())
    by_remainder = sorted(targets, key=lambda t: removed[t.name] - floors[t.name], reverse=True)
    for t in by_remainder:
        if missing <= 0:
            break
        if floors[t.name] < limit[t.name]:
            floors[t.name] += 1
            missing -= 1
    return {t.name: floors[t.name] / t.numel for t in targets}


def spread(allocation: Mapping[str, float], grouped: Mapping[str, Sequence[Target]]) -> dict[str, float]:
    """Per-target sparsities of a per-block ``allocation`` ({block: sparsity}; blocks absent stay dense).

    Block b (n_b weights) removes exactly ``round(s_b · n_b)`` weights, each of its targets
    ``s_b · n_t`` of them rounded by :func:`exact_counts` (no target emptied where the block keeps
    at least one weight per target); a one-line UsageError for an unknown block.
    """
    unknown = [b for b in allocation if b not in grouped]
    if unknown:
        raise UsageError(f"unknown block {unknown[0]!r} in allocation; known: {', '.join(grouped)}")
    result: dict[str, float] = {}
    for block, members in grouped.items():
        level = allocation.get(block, 0.0)
        size = sum(t.numel for t in members)
        total = removed_count(level, size)
        keep_one = total <= size - len(members)
        result |= exact_counts(members, {t.name: level * t.numel for t in members}, total, keep_one=keep_one)
    return result


def block_units(targets: Sequence[Target]) -> dict[str, list[Target]]:
    """The units of ``--units block``: ``{block: its targets}`` by :func:`block_of`, a target outside every
    numbered block a unit of its own named as the target (``head.weight``), in the targets' order."""
    grouped: dict[str, list[Target]] = {}
    for t in targets:
        block = block_of(t.module)
        grouped.setdefault(t.name if block == t.module else block, []).append(t)
    return grouped
