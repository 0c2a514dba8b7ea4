"""A layer-wise allocation's hyper-parameters chosen on val: ``owl-tuned`` and ``alpha-tuned``.

Each grid point is the allocation at the same global sparsity (every one removes exactly
round(s · N) weights), measured jointly on val through the problem's ``validation`` (each
allocation once); the best val metric wins (the curves' metric, accuracy without a scan;
the lowest perplexity for a language model: compared as scores, higher is better), ties to
the earlier point, and the grid lists the paper's default first. The test split is
never read. The chosen settings and every point's val metric are in the pick's details.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prunescope.errors import UsageError
from prunescope.pick.allocator import Allocator, Pick, Problem


@dataclass(frozen=True)
class GridSearch:
    """The best on val of ``members``: (settings, allocator) pairs, the default first."""

    name: str
    members: Sequence[tuple[dict, Allocator]]

    def allocate(self, problem: Problem) -> Pick:
        val = problem.needs_validation(f"method {self.name!r}")
        metric = problem.curves.metric if problem.curves is not None else "accuracy"
        before = val.evaluations
        best: tuple[float, dict, Pick] | None = None
        grid = []
        for settings, member in self.members:
            pick = member.allocate(problem)
            measured = val(pick.allocation)
            grid.append({**settings, metric: measured.get(metric)})
            if best is None or measured.score(metric) > best[0]:
                best = (measured.score(metric), settings, pick)
        if best is None:
            raise UsageError(f"{self.name} has an empty grid")
        _, settings, pick = best
        details = {**pick.details, "chosen": settings, "default": self.members[0][0], "metric": metric,
                   "grid": grid, "val_evaluations": {"grid": len(grid), "new": val.evaluations - before}}
        return Pick(pick.allocation, None, dict.fromkeys(pick.allocation, self.name), details)
