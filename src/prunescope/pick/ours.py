"""``ours``: the budget pick or the best baseline, whichever is best on val, refined on val.

At global sparsity s (fraction of the problem's targets' weights):

1. candidates: the budget picker's allocation on the curves of the problem's targets
   (:class:`~prunescope.pick.budget.BudgetPicker` with ``target_sparsity=s``, spread over
   those targets only, however many more the scan covered) and the allocations of the
   baselines in ``starts`` (uniform, uniform+, global, ERK, LAMP by default; OWL and AlphaPruning
   with their published settings may be added, as for language models), each measured jointly on
   val through the problem's ``validation`` (a cache: what was measured once is reused);
2. start from the candidate with the best val metric (ties: the budget pick, then the
   order of ``starts``);
3. refine it on val at constant global sparsity with ``refiner`` (by default
   :data:`DEFAULT_REFINER`, a :class:`~prunescope.pick.refine.PairwiseRefiner`: greedy moves of
   removed weights between pairs of targets, each an actual joint evaluation, at most 40);
   with the accuracy metric a move counts only when the paired 95% interval of its val gain
   (same examples, ``validation.gain_interval``) lies above zero.

On a block scan (``curves.units == "block"``: one curve per block of the network) the budget
pick is one sparsity per block, spread over each block's matrices by count
(:func:`prunescope.blocks.spread`), and when it is the start the refiner moves removed weights
between whole blocks (each move spread the same way); the other starts are refined between
matrices as on a matrix scan.

Every candidate removes round(s · N) weights (±1 per target from rounding) and refinement
moves weights without changing the total. The metric maximised is the curves'. Its val
metric is never below the best candidate's. ``refiner=None, starts=()`` is the budget pick alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from prunescope.blocks import block_units, spread
from prunescope.curves import Curves
from prunescope.errors import UsageError
from prunescope.pick.allocator import Pick, Problem
from prunescope.pick.alpha import AlphaPruning
from prunescope.pick.baselines import ALLOCATIONS, allocate
from prunescope.pick.budget import BudgetPicker
from prunescope.pick.owl import OWL
from prunescope.pick.refine import PairwiseRefiner, Refiner
from prunescope.targets import Target

DEFAULT_REFINER = PairwiseRefiner()  # stateless: one instance serves every call
LAYERWISE = {"owl": OWL, "alpha": AlphaPruning}  # layer-wise starts, at their published settings
STARTS = (*ALLOCATIONS, *LAYERWISE)


def scan_units(curves: Curves, targets: Sequence[Target]) -> dict[str, list[Target]]:
    """``{unit: its targets}``: the scan's units among ``targets`` (blocks of a block scan, else each target
    alone); a one-line UsageError when the scan has no curve for one of them or groups them otherwise."""
    grouped = block_units(targets) if curves.units == "block" else {t.name: [t] for t in targets}
    for unit, members in grouped.items():
        if unit not in curves.curves:
            raise UsageError(f"the scan has no curve for {unit}: it belongs to another model or target set")
        if curves.units == "block" and curves.members.get(unit) != [t.name for t in members]:
            raise UsageError(f"the scan's block {unit} holds other matrices than the compared ones: scan with the "
                             "same --include / --exclude")
    return grouped


def budget_start(curves: Curves, targets: Sequence[Target], sparsity: float) -> dict[str, float]:
    """The budget pick at global ``sparsity`` of ``targets``' weights, on their units' curves only (others stay
    dense): ``{unit: sparsity}`` over :func:`scan_units` (the targets, or a block scan's blocks)."""
    grouped = scan_units(curves, targets)
    compared = replace(curves, curves={unit: curves.curves[unit] for unit in grouped})
    picked = BudgetPicker(target_sparsity=sparsity).pick(compared).allocation
    return {unit: picked.get(unit, 0.0) for unit in grouped}


@dataclass(frozen=True)
class Ours:
    """``ours`` at ``target_sparsity`` (see the module docstring); reads curves and the val metric."""

    target_sparsity: float
    refiner: Refiner | None = field(default_factory=lambda: DEFAULT_REFINER)
    starts: Sequence[str] = ALLOCATIONS
    name: str = "ours"

    def __post_init__(self) -> None:
        unknown = [s for s in self.starts if s not in STARTS]
        if unknown:
            raise UsageError(f"starts are baseline allocations ({', '.join(STARTS)}), got {unknown[0]!r}")

    def allocate(self, problem: Problem) -> Pick:
        curves = problem.needs_curves("method 'ours'")
        val = problem.needs_validation("method 'ours'")
        sparsity, targets, metric = self.target_sparsity, problem.targets, curves.metric
        candidates: dict[str, dict[str, float]] = {}
        errors: dict[str, str] = {}
        units: dict[str, float] = {}  # the budget pick over the scan's units (blocks of a block scan)
        for name in ("budget", *self.starts):
            try:
                if name == "budget":
                    grouped = scan_units(curves, targets)
                    units = budget_start(curves, targets, sparsity)
                    candidates[name] = spread(units, grouped) if curves.units == "block" else units
                elif name in LAYERWISE:
                    candidates[name] = LAYERWISE[name](target_sparsity=sparsity).allocate(problem).allocation
                else:
                    candidates[name] = allocate(name, problem.model, targets, sparsity, example=problem.example)
            except UsageError as error:
                errors[name] = str(error)
        if not candidates:
            raise UsageError(f"no candidate allocation reaches {sparsity:g}: " + "; ".join(errors.values()))
        before = val.evaluations
        values = {name: val(allocation).score(metric) for name, allocation in candidates.items()}
        start = max(values, key=values.get)  # the first of equals: budget, then the order of starts
        details: dict = {
            "candidates": values,
            "candidate_errors": errors,
            "start": start,
            "metric": metric,
            "candidate_evaluations": val.evaluations - before,
            "units": curves.units,
        }
        if curves.units == "block" and units:
            details["budget_blocks"] = units
        allocation = candidates[start]
        refinement = 0
        if self.refiner is not None:
            # A block scan's budget start moves weights between whole blocks; anything else between targets.
            by_block = start == "budget" and curves.units == "block"
            grouped = scan_units(curves, targets) if by_block else {t.name: [t] for t in targets}

            def targets_of(a: dict[str, float]) -> dict[str, float]:
                return spread(a, grouped) if by_block else a

            numels = {unit: sum(t.numel for t in members) for unit, members in grouped.items()}
            # Moves must win beyond the val noise: the paired interval of the gain on the same val examples
            # (accuracy: right / wrong per example; perplexity: each sequence's loss). Macro-F1 has none.
            noise = ((lambda a, b: val.gain_interval(targets_of(a), targets_of(b)))
                     if metric in ("accuracy", "perplexity") else None)
            refined = self.refiner.refine(units if by_block else allocation, numels,
                                          lambda a: val(targets_of(a)).score(metric),
                                          start_value=values[start], noise=noise)
            allocation = targets_of(refined.allocation)
            details["refined"] = refined.to_dict()
            refinement = refined.evaluations
        # Selection effort: every allocation ours looked at on val (a baseline's row counts even when reused).
        details["val_evaluations"] = {"candidates": len(candidates), "refinement": refinement,
                                      "total": len(candidates) + refinement}
        decided_by = dict.fromkeys(allocation, self.name)
        return Pick(allocation, None, decided_by, details)
