"""Allocations side by side at matched global sparsities, one-shot (no fine-tuning).

Every method's allocation is applied with the same criterion scores, masks and
evaluator, so the only difference between rows is how the global sparsity is split over
targets. Selection reads only the val split; the test split is evaluated once per row,
after every val evaluation is done.

``ours`` at global sparsity s, by default (see :func:`compare`'s ``refiner`` and ``starts``):

1. candidates: the budget picker's allocation on the scan's curves
   (:class:`~prunescope.pick.budget.BudgetPicker` with ``target_sparsity=s``) and the
   allocations of the baselines in ``starts`` (uniform, uniform+, global, ERK, LAMP), each
   measured jointly on val (the baselines' own rows are reused, not evaluated again);
2. start from the candidate with the best val metric (ties: the budget pick, then the
   order of ``starts``);
3. refine it on val at constant global sparsity with ``refiner`` (by default
   :class:`~prunescope.pick.refine.PairwiseRefiner`: greedy moves of removed weights
   between pairs of targets, each an actual joint evaluation, at most 40).

Each candidate keeps exactly round(s · N) removed weights (±1 per target from rounding),
and refinement moves weights without changing that total, so ``ours`` is compared at the
same global sparsity as every baseline. Its val metric is never below the best
candidate's. ``refiner=None, starts=()`` is the budget pick alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from prunescope.criteria import Scores, compute_scores
from prunescope.curves import Curves
from prunescope.data.types import Dataset
from prunescope.device import resolve_device
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator, Metrics
from prunescope.masks import applied, check_sparsity, compute_masks, global_sparsity, removed_count
from prunescope.pick.baselines import ALLOCATIONS, allocate
from prunescope.pick.budget import BudgetPicker
from prunescope.pick.refine import PairwiseRefiner, Refiner
from prunescope.targets import Target, find_targets

METHODS = ("ours", *ALLOCATIONS)
DEFAULT_REFINER = PairwiseRefiner()  # stateless: one instance serves every call


@dataclass
class ComparisonRow:
    """One method at one sparsity. ``error`` says why a method cannot reach it (e.g. uniform+).

    ``details`` (``ours`` only): the candidates' val metrics, the start chosen, and the
    refinement with every evaluation it made.
    """

    method: str
    sparsity: float
    allocation: dict[str, float] = field(default_factory=dict)
    achieved: float | None = None
    val: Metrics | None = None
    test: Metrics | None = None
    error: str | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "allocation": self.allocation,
            "achieved": self.achieved,
            "val": self.val.to_dict() if self.val else None,
            "test": self.test.to_dict() if self.test else None,
            "error": self.error,
            "details": self.details,
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
    """The per-target sparsities ``method`` gives at global ``sparsity``.

    For ``ours`` this is the budget pick alone (the start candidate from the scan), before
    the val-selected start and refinement that :func:`compare` adds.
    """
    if method != "ours":
        return allocate(method, model, targets, sparsity)
    _check_curves(targets, curves)
    picked = BudgetPicker(target_sparsity=sparsity).pick(curves).allocation
    return {t.name: picked.get(t.name, 0.0) for t in targets}


def _check_curves(targets: Sequence[Target], curves: Curves | None) -> None:
    if curves is None:
        raise UsageError("method 'ours' needs a scan: run prunescope scan first and pass --scan")
    missing = {t.name for t in targets} - set(curves.curves)
    if missing:
        raise UsageError(f"the scan has no curve for {sorted(missing)[0]}: it belongs to another model or target set")


class _ValCache:
    """Val metrics of allocations, measured once each (keyed by removed counts)."""

    def __init__(self, model: nn.Module, targets: Sequence[Target], scores: Scores, evaluator: Evaluator) -> None:
        self.model, self.targets, self.scores, self.evaluator = model, targets, scores, evaluator
        self.known: dict[tuple[int, ...], Metrics] = {}
        self.evaluations = 0

    def __call__(self, allocation: Mapping[str, float]) -> Metrics:
        key = tuple(removed_count(allocation.get(t.name, 0.0), t.numel) for t in self.targets)
        if key not in self.known:
            with applied(self.model, self.targets, compute_masks(self.scores, dict(allocation))):
                self.known[key] = self.evaluator.evaluate()
            self.evaluations += 1
        return self.known[key]


def _ours(
    model: nn.Module,
    targets: Sequence[Target],
    sparsity: float,
    curves: Curves | None,
    val: _ValCache,
    *,
    refiner: Refiner | None,
    starts: Sequence[str],
    metric: str,
) -> tuple[dict[str, float], dict]:
    """``ours`` at ``sparsity``: the best val candidate among the budget pick and ``starts``, refined on val."""
    _check_curves(targets, curves)
    candidates: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for name in ("budget", *starts):
        try:
            candidates[name] = (
                allocation_for("ours", model, targets, sparsity, curves)
                if name == "budget"
                else allocate(name, model, targets, sparsity)
            )
        except UsageError as error:
            errors[name] = str(error)
    if not candidates:
        raise UsageError(f"no candidate allocation reaches {sparsity:g}: " + "; ".join(errors.values()))
    before = val.evaluations
    values = {name: val(allocation).get(metric) for name, allocation in candidates.items()}
    start = max(values, key=values.get)  # the first of equals: budget, then the order of starts
    details: dict = {
        "candidates": values,
        "candidate_errors": errors,
        "start": start,
        "metric": metric,
        "candidate_evaluations": val.evaluations - before,
    }
    allocation = candidates[start]
    if refiner is not None:
        numels = {t.name: t.numel for t in targets}
        refined = refiner.refine(allocation, numels, lambda a: val(a).get(metric), start_value=values[start])
        allocation = refined.allocation
        details["refined"] = refined.to_dict()
    return allocation, details


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
    refiner: Refiner | None = DEFAULT_REFINER,
    starts: Sequence[str] = ALLOCATIONS,
    batch_size: int = 1024,
) -> Comparison:
    """Evaluate every method at every global sparsity on val, then each once on test.

    ``ours`` (see the module docstring) starts from the best on val of the budget pick
    and the baselines in ``starts``, then is refined on val by ``refiner`` (default
    :data:`DEFAULT_REFINER`, a :class:`~prunescope.pick.refine.PairwiseRefiner` of at most
    40 evaluations per sparsity; None: no refinement). ``refiner=None, starts=()`` gives
    the budget pick alone. The metric ``ours`` maximises is the scan's (``curves.metric``).
    ``batch_size``: examples per forward pass of the evaluations.
    """
    unknown = [m for m in (*methods, *starts) if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown allocation {unknown[0]!r}: use one of {', '.join(METHODS)}")
    if "ours" in starts:
        raise UsageError("starts are baseline allocations; 'ours' is always a candidate")
    levels = [check_sparsity(s) for s in sparsities]
    device = resolve_device(device)
    model.to(device).eval()
    targets = find_targets(model, include, exclude)
    scores = compute_scores(model, targets, criterion, data=data.train)
    val = _ValCache(model, targets, scores, Evaluator(model, data.val, device=device, batch_size=batch_size))
    metric = curves.metric if curves is not None else "accuracy"
    rows = []
    for sparsity in levels:
        # Baselines first, so that ours reuses their val evaluations; rows keep the order of methods.
        done: dict[str, ComparisonRow] = {}
        for method in sorted(methods, key=lambda m: m == "ours"):
            row = ComparisonRow(method=method, sparsity=sparsity)
            try:
                if method == "ours":
                    row.allocation, row.details = _ours(
                        model, targets, sparsity, curves, val, refiner=refiner, starts=starts, metric=metric
                    )
                else:
                    row.allocation = allocation_for(method, model, targets, sparsity, curves)
            except UsageError as error:
                row.error = str(error)
            else:
                row.achieved = global_sparsity(row.allocation, targets)
                row.val = val(row.allocation)
            done[method] = row
            if on_row is not None:
                on_row(row)
        rows += [done[method] for method in methods]
    dense_test = None
    if test:
        test_evaluator = Evaluator(model, data.test, device=device, batch_size=batch_size)
        dense_test = test_evaluator.evaluate()
        for row in rows:
            if row.error is None:
                with applied(model, targets, compute_masks(scores, row.allocation)):
                    row.test = test_evaluator.evaluate()
    return Comparison(criterion=criterion, dense_val=val({}), dense_test=dense_test, rows=rows)
