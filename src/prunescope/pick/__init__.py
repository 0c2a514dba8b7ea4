"""Turn sensitivity into per-target sparsities; baselines for comparison."""

from prunescope.pick.baselines import ALLOCATIONS, allocate

__all__ = ["ALLOCATIONS", "allocate"]
