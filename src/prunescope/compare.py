"""Allocations side by side at matched global sparsities, one-shot (no fine-tuning).

Every method's allocation is applied with the same criterion scores, masks and
evaluator, so the only difference between rows is how the global sparsity is split over
targets. ``ours`` is the budget picker on a scan's curves. Selection reads only the val
split; the test split is evaluated once per row, after every val evaluation is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from prunescope.criteria import compute_scores
from prunescope.curves import Curves
from prunescope.data.types import Dataset
from prunescope.device import resolve_device
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator, Metrics
from prunescope.masks import applied, check_sparsity, compute_masks, global_sparsity
from prunescope.pick.baselines import ALLOCATIONS, allocate
from prunescope.pick.pickers import BudgetPicker
from prunescope.targets import Target, find_targets

METHODS = ("ours", *ALLOCATIONS)


@dataclass
class ComparisonRow:
    """One method at one sparsity. ``error`` says why a method cannot reach it (e.g. uniform+)."""

    method: str
    sparsity: float
    allocation: dict[str, float] = field(default_factory=dict)
    achieved: float | None = None
    val: Metrics | None = None
    test: Metrics | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "allocation": self.allocation,
            "achieved": self.achieved,
            "val": self.val.to_dict() if self.val else None,
            "test": self.test.to_dict() if self.test else None,
            "error": self.error,
        }


@dataclass
class Comparison:
    criterion: str
    dense_val: Metrics
    dense_test: Metrics | None
    rows: list[ComparisonRow]

    def to_dict(self) -> dict:
        return {
            "criterion": self.criterion,
            "dense_val": self.dense_val.to_dict(),
            "dense_test": self.dense_test.to_dict() if self.dense_test else None,
            "rows": [r.to_dict() for r in self.rows],
        }


def allocation_for(
    method: str, model: nn.Module, targets: Sequence[Target], sparsity: float, curves: Curves | None
) -> dict[str, float]:
    """The per-target sparsities ``method`` gives at global ``sparsity``."""
    if method != "ours":
        return allocate(method, model, targets, sparsity)
    if curves is None:
        raise UsageError("method 'ours' needs a scan: run prunescope scan first and pass --scan")
    missing = {t.name for t in targets} - set(curves.curves)
    if missing:
        raise UsageError(f"the scan has no curve for {sorted(missing)[0]}: it belongs to another model or target set")
    picked = BudgetPicker(target_sparsity=sparsity).pick(curves).allocation
    return {t.name: picked.get(t.name, 0.0) for t in targets}


def compare(
    model: nn.Module,
    data: Dataset,
    sparsities: Sequence[float],
    methods: Sequence[str] = METHODS,
    *,
    curves: Curves | None = None,
    criterion: str = "magnitude",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    device: str = "auto",
    test: bool = True,
    on_row: Callable[[ComparisonRow], None] | None = None,
) -> Comparison:
    """Evaluate every method at every global sparsity on val, then each once on test."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown allocation {unknown[0]!r}: use one of {', '.join(METHODS)}")
    levels = [check_sparsity(s) for s in sparsities]
    device = resolve_device(device)
    model.to(device).eval()
    targets = find_targets(model, include, exclude)
    scores = compute_scores(model, targets, criterion, data=data.train)
    val = Evaluator(model, data.val, device=device)
    rows = []
    for sparsity in levels:
        for method in methods:
            row = ComparisonRow(method=method, sparsity=sparsity)
            try:
                row.allocation = allocation_for(method, model, targets, sparsity, curves)
            except UsageError as error:
                row.error = str(error)
            else:
                row.achieved = global_sparsity(row.allocation, targets)
                with applied(model, targets, compute_masks(scores, row.allocation)):
                    row.val = val.evaluate()
            rows.append(row)
            if on_row is not None:
                on_row(row)
    dense_test = None
    if test:
        test_evaluator = Evaluator(model, data.test, device=device)
        dense_test = test_evaluator.evaluate()
        for row in rows:
            if row.error is None:
                with applied(model, targets, compute_masks(scores, row.allocation)):
                    row.test = test_evaluator.evaluate()
    return Comparison(criterion=criterion, dense_val=val.evaluate(), dense_test=dense_test, rows=rows)
