"""Allocations side by side at matched global sparsities, one-shot (no fine-tuning).

Every method's allocation is applied with the same criterion scores, masks and
evaluator, so the only difference between rows is how the global sparsity is split over
targets. Selection reads only the val split; the test split is evaluated once per row,
after every val evaluation is done.

Every method is an allocator of :mod:`prunescope.pick.registry`, built by name with the
same settings and asked for the same problem (the compared targets, their curves, the val
measurements); ``ours`` (:mod:`prunescope.pick.ours`) is the budget pick or the best
baseline on val, refined on val. ``owl`` and ``alpha`` (OWL and AlphaPruning at their
papers' settings) and ``owl-tuned`` / ``alpha-tuned`` (their grids selected on val) are
compared when asked for. Methods that select on val run after the others, so that
they reuse the baselines' val measurements.

On a block scan (``curves.units == "block"``: one curve per block of the network) ``ours``
picks one sparsity per block (:mod:`prunescope.pick.ours`); the other rows are as on a matrix
scan (OWL and AlphaPruning are per block anyway), and every row's allocation is per matrix.

Every allocation, ``ours``'s budget pick included, is spread over the compared targets
only (after ``include`` / ``exclude``), and refinement moves weights without changing the
total, so every row removes round(s · N) of the compared targets' N weights. The removed
weights of each row are counted from its masks, and a row that lands more than one weight
away from round(s · N) is refused (its ``error`` says so) rather than printed. ``ours``'s
val metric is never below the best candidate's. ``refiner=None, starts=()`` is the budget
pick alone.

With ``granularity="channel"`` the rows remove whole channels of the coupled groups instead:
a level is the fraction of the dense MACs per sample to remove, and the methods are the
budget pick on a channel scan and the channel baselines (channel-uniform, channel-global),
each meeting that MAC budget exactly on the model's footprint; a row above it is refused.

With ``recalibrate_bn`` batches (default: 20 for a model with BatchNorm, off without), every
pruned model, of every method, in every val and test evaluation, gets its BatchNorm
statistics re-estimated on the same seeded training batches before it is evaluated, and
the dense statistics are restored bit-exactly afterwards (:class:`~prunescope.train.
batchnorm.RecalibratedPruning`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from prunescope.criteria import Scores
from prunescope.curves import Curves
from prunescope.data.types import Dataset
from prunescope.device import resolve_device
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator, Metrics, paired_gain_interval
from prunescope.masks import check_sparsity, compute_masks, removed_count
from prunescope.pick.allocator import Allocator, Problem
from prunescope.pick.baselines import ALLOCATIONS
from prunescope.pick.budget import macs_limit
from prunescope.pick.ours import DEFAULT_REFINER, LAYERWISE
from prunescope.pick.refine import Refiner
from prunescope.pick.registry import ALLOCATORS, CHANNEL_BASELINES, COMPARABLE, COMPARED, make_allocator
from prunescope.reconstruct import fallen_back, reconstructing
from prunescope.scores import default_metric
from prunescope.train.batchnorm import bn_batches, recalibrating
from prunescope.units import Pruning, Unit, Units, criterion_for, find_units

METHODS = COMPARABLE  # every method compared at a global sparsity of the weights
DEFAULT_METHODS = COMPARED  # those compared unless told: ours and the five baselines
CHANNEL_METHODS = ("budget", *CHANNEL_BASELINES)  # compared at one fraction of the dense MACs removed


@dataclass
class ComparisonRow:
    """One method at one sparsity. ``error`` says why a method cannot reach it (e.g. uniform+).

    ``details`` (``ours`` only): the candidates' val metrics, the start chosen, the
    refinement with every evaluation it made, and ``val_evaluations``, the selection effort.
    ``removed``: weights removed, counted from the row's masks.
    """

    method: str
    sparsity: float
    allocation: dict[str, float] = field(default_factory=dict)
    achieved: float | None = None
    removed: int | None = None
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
            "removed": self.removed,
            "val": self.val.to_dict() if self.val else None,
            "test": self.test.to_dict() if self.test else None,
            "error": self.error,
            "details": self.details,
        }


@dataclass
class Comparison:
    """Every row, the dense metrics, and how the rows were obtained.

    ``weights``: prunable weights of the compared targets (N). ``recalibrate_bn``: BatchNorm
    recalibration batches every pruned model got (0: none). ``val_evaluations``: joint
    evaluations on val that the whole comparison made (each allocation measured once).
    """

    criterion: str
    dense_val: Metrics
    dense_test: Metrics | None
    rows: list[ComparisonRow]
    weights: int = 0
    recalibrate_bn: int = 0
    val_evaluations: int = 0
    reconstruct: str | None = None
    fallback: dict[str, str] = field(default_factory=dict)
    granularity: str = "weight"  # weight: levels are sparsities; channel: fractions of the dense MACs removed
    metric: str = "accuracy"  # what val selects on and the tables show: accuracy, or perplexity (a language model)
    units: str = "matrix"  # the scan's units that ours / budget picked on: matrix, block (or group: channels)

    def to_dict(self) -> dict:
        return {
            "criterion": self.criterion,
            "units": self.units,
            "metric": self.metric,
            "granularity": self.granularity,
            "dense_val": self.dense_val.to_dict(),
            "dense_test": self.dense_test.to_dict() if self.dense_test else None,
            "rows": [r.to_dict() for r in self.rows],
            "weights": self.weights,
            "recalibrate_bn": self.recalibrate_bn,
            "val_evaluations": self.val_evaluations,
            "reconstruct": self.reconstruct,
            "fallback": self.fallback,
        }


class _ValCache:
    """Val metrics of allocations, measured once each (keyed by removed counts) with ``pruning``,
    with what each got on every example, for paired intervals between two of them."""

    def __init__(self, pruning: Pruning, units: Sequence[Unit], evaluator: Evaluator) -> None:
        self.pruning, self.units, self.evaluator = pruning, units, evaluator
        self.known: dict[tuple[int, ...], Metrics] = {}
        self.outcomes: dict[tuple[int, ...], np.ndarray] = {}  # per example: right, or minus a sequence's loss
        self.evaluations = 0

    def _key(self, allocation: Mapping[str, float]) -> tuple[int, ...]:
        return tuple(removed_count(allocation.get(u.name, 0.0), u.size) for u in self.units)

    def __call__(self, allocation: Mapping[str, float]) -> Metrics:
        key = self._key(allocation)
        if key not in self.known:
            with self.pruning.applied(dict(allocation)):
                self.known[key] = self.evaluator.evaluate()
            self.outcomes[key] = self.evaluator.outcomes()
            self.evaluations += 1
        return self.known[key]

    def gain_interval(self, before: Mapping[str, float], after: Mapping[str, float]) -> tuple[float, float]:
        """95% paired interval of score(after) − score(before) on the val examples (both measured)."""
        return paired_gain_interval(self.outcomes[self._key(before)], self.outcomes[self._key(after)])


@dataclass
class _Weights:
    """Rows at a global sparsity of the compared targets' weights, counted from each row's masks."""

    scores: Scores
    weights: int  # N, the compared targets' weights

    def options(self, level: float) -> dict:
        return {"target_sparsity": level}

    def account(self, row: ComparisonRow) -> None:
        masks = compute_masks(self.scores, row.allocation)
        row.removed = sum(int((~mask).sum()) for mask in masks.values())
        row.achieved = row.removed / self.weights
        wanted = removed_count(row.sparsity, self.weights)
        if abs(row.removed - wanted) > 1:
            row.error = (f"removes {row.removed} of {self.weights} weights ({row.achieved:.4%}), not {wanted} "
                         f"({row.sparsity:g}): refused, rows are compared at equal sparsity only")


@dataclass
class _Macs:
    """Rows at a fraction of the dense MACs per sample removed by whole channels, counted on the exact footprint."""

    units: Units
    dense: int  # MACs per sample of the dense model

    def options(self, level: float) -> dict:
        return {"target_macs": 1 - level}

    def account(self, row: ComparisonRow) -> None:
        footprint = self.units.footprint(row.allocation)
        row.removed = self.dense - footprint.macs
        row.achieved = row.removed / self.dense
        row.details = {**row.details, "footprint": {"params": footprint.params, "macs": footprint.macs}}
        limit = macs_limit(1 - row.sparsity, self.dense)
        if footprint.macs > limit:
            row.error = (f"keeps {footprint.macs} MACs per sample, above the budget of {limit:.0f} "
                         f"({row.sparsity:g} removed): refused, rows are compared at equal MACs only")


def compare(
    model: nn.Module,
    data: Dataset,
    sparsities: Sequence[float],
    methods: Sequence[str] | None = None,
    *,
    granularity: str = "weight",
    curves: Curves | None = None,
    criterion: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    device: str = "auto",
    test: bool = True,
    on_row: Callable[[ComparisonRow], None] | None = None,
    refiner: Refiner | None = DEFAULT_REFINER,
    starts: Sequence[str] | None = None,
    batch_size: int = 1024,
    recalibrate_bn: int | None = None,
    reconstruct: str | None = None,
    calibration: int | None = None,
    reconstruct_fallback: bool = False,
    round_to: int = 1,
) -> Comparison:
    """Evaluate every method at every level on val, then each once on test.

    ``granularity``: ``weight`` (``sparsities`` are global sparsities of the compared
    targets' weights; methods among :data:`METHODS`, default :data:`DEFAULT_METHODS`) or ``channel`` (``sparsities`` are
    fractions of the dense MACs per sample to remove; methods default to
    :data:`CHANNEL_METHODS`; kept channel counts in multiples of ``round_to``).
    ``ours`` (see the module docstring) starts from the best on val of the budget pick
    and the baselines in ``starts`` (None: uniform, uniform+, global, ERK and LAMP, and for a language
    model OWL and AlphaPruning too), then is refined on val by ``refiner`` (default
    :data:`DEFAULT_REFINER`, a :class:`~prunescope.pick.refine.PairwiseRefiner` of at most
    40 evaluations per sparsity; None: no refinement). ``refiner=None, starts=()`` gives
    the budget pick alone. The metric ``ours`` maximises is the scan's (``curves.metric``).
    ``criterion``: what ranks the elements (None: the granularity's default).
    ``batch_size``: examples per forward pass of the evaluations. ``recalibrate_bn``: BatchNorm
    recalibration batches for every pruned model (None: 20 for a model with BatchNorm, else 0).
    ``reconstruct`` (weights): ``mask`` or ``obs`` prunes every method's allocation by layer-wise
    reconstruction (:mod:`prunescope.reconstruct`) on ``calibration`` train inputs instead of
    masking alone, the same for every row; None: plain masks. ``reconstruct_fallback``: layers whose
    inputs cannot be captured are pruned with the criterion's masks alone (recorded in
    ``Comparison.fallback``) instead of refused. ``calibration`` seeded train inputs also give
    ``owl``'s Wanda scores.
    """
    criterion = criterion_for(granularity, criterion)
    if starts is None:
        starts = (*ALLOCATIONS, *(LAYERWISE if data.vocabulary is not None else ()))
    allowed = METHODS if granularity == "weight" else CHANNEL_METHODS
    methods = list((DEFAULT_METHODS if granularity == "weight" else CHANNEL_METHODS) if methods is None else methods)
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        raise UsageError(f"unknown allocation {unknown[0]!r}: use one of {', '.join(allowed)}")
    if reconstruct is not None and granularity != "weight":
        raise UsageError("--reconstruct re-fits kept weights: it applies to weight pruning, not to removed channels")
    levels = [check_sparsity(s) for s in sparsities]
    device = resolve_device(device)
    model.to(device).eval()
    units = find_units(model, data, granularity, criterion, include=include, exclude=exclude, round_to=round_to)
    if units.additive:
        ledger: _Weights | _Macs = _Weights(units.scores, sum(u.size for u in units.units))
        base = reconstructing(units, data.train, reconstruct, calibration, fallback=reconstruct_fallback)
        problem_units = {"targets": units.targets}
    else:
        ledger = _Macs(units, units.footprint({}).macs)
        base = units
        problem_units = {"pruning": units}

    def allocator(method: str, level: float) -> Allocator:
        return make_allocator(method, applicable=True, refiner=refiner, starts=starts, **ledger.options(level))

    for method in methods:
        allocator(method, 0.5)  # bad settings (an unknown start) are refused before anything is evaluated
    batches = bn_batches(model, recalibrate_bn)
    pruning = recalibrating(base, data.train, batches)
    val = _ValCache(pruning, units.units, Evaluator(model, data.val, device=device, batch_size=batch_size))
    problem = Problem(model=model, example=data.train.x[:2], curves=curves, validation=val, train=data.train,
                      calibration=calibration, **problem_units)
    rows = []
    for level in levels:
        # Methods that select on val last, so that they reuse the others' val evaluations; rows keep the
        # order of methods.
        done: dict[str, ComparisonRow] = {}
        for method in sorted(methods, key=lambda m: ALLOCATORS[m].reads == "validation"):
            row = ComparisonRow(method=method, sparsity=level)
            try:
                picked = allocator(method, level).allocate(problem)
                row.allocation, row.details = picked.allocation, picked.details
            except UsageError as error:
                row.error = str(error)
            else:
                ledger.account(row)
                if row.error is None:
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
                with pruning.applied(row.allocation):
                    row.test = test_evaluator.evaluate()
    dense_val = val({})
    return Comparison(criterion=criterion, dense_val=dense_val, dense_test=dense_test, rows=rows,
                      weights=ledger.weights if isinstance(ledger, _Weights) else 0, recalibrate_bn=batches,
                      val_evaluations=val.evaluations, reconstruct=reconstruct, fallback=fallen_back(base),
                      granularity=granularity, metric=curves.metric if curves is not None else default_metric(data.val),
                      units=curves.units if curves is not None else units.unit_kind)
