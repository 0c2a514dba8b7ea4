"""The sparsity sweep practitioners run first: one-shot prune at each level, evaluate, restore.

For every requested global sparsity the allocation is applied in place (no copy of the
model; by masks, or by layer-wise reconstruction when asked), BatchNorm statistics are
re-estimated on a few training batches when asked (by default for a model with BatchNorm),
the split is evaluated and the model measured (non-zero parameters, sparse bytes,
effective MACs, latency), and the weights and statistics are restored exactly before the
next level.

With N:M ``patterns`` (:mod:`prunescope.patterns`) the levels are the patterns instead: each
prunes every target to exactly N of every M weights along its input dimension (sparsity
1 − N/M), by the criterion's scores or by reconstruction, and no allocation applies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from torch import nn

from prunescope import measure
from prunescope.criteria import compute_scores
from prunescope.data.types import Dataset
from prunescope.device import resolve_device
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator, Metrics
from prunescope.masks import check_sparsity, measured_sparsity
from prunescope.patterns import Pattern, check_widths
from prunescope.pick.allocator import Problem
from prunescope.pick.registry import weight_allocation
from prunescope.reconstruct import fallen_back, reconstructing
from prunescope.scores import default_metric
from prunescope.targets import Target, chosen_targets
from prunescope.train.batchnorm import bn_batches, recalibrating
from prunescope.units import Pruning, WeightPruning


@dataclass(frozen=True)
class SweepPoint:
    """One sparsity level: requested and measured global sparsity (fractions of the targets'
    weights), the allocation, the metrics, and ``measure``: :func:`prunescope.measure.measure_all`
    of the pruned model (parameters, bytes, MACs per sample, latency at batch 1 and 256)."""

    sparsity: float
    achieved_sparsity: float
    allocation: dict[str, float]
    metrics: Metrics
    measure: dict
    pattern: str | None = None  # "2:4" for a level pruned N:M

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SweepResult:
    criterion: str
    allocation: str
    split: str
    targets: list[Target]
    points: list[SweepPoint]
    recalibrate_bn: int = 0
    reconstruct: str | None = None
    fallback: dict[str, str] = field(default_factory=dict)
    patterns: list[str] = field(default_factory=list)
    metric: str = "accuracy"  # how the tables read the points: accuracy, or perplexity (a language model)

    @property
    def dense(self) -> SweepPoint:
        return self.points[0]

    def to_dict(self) -> dict:
        return {
            "criterion": self.criterion,
            "allocation": self.allocation,
            "split": self.split,
            "targets": [t.to_dict() for t in self.targets],
            "points": [p.to_dict() for p in self.points],
            "recalibrate_bn": self.recalibrate_bn,
            "reconstruct": self.reconstruct,
            "fallback": self.fallback,
            "patterns": self.patterns,
            "metric": self.metric,
        }


def sweep(
    model: nn.Module,
    data: Dataset,
    sparsities: Sequence[float],
    *,
    criterion: str = "magnitude",
    allocation: str = "uniform",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    split: str = "val",
    subset: int | None = None,
    device: str = "auto",
    latency_repeats: int = 30,
    recalibrate_bn: int | None = None,
    reconstruct: str | None = None,
    calibration: int | None = None,
    reconstruct_fallback: bool = False,
    on_point: Callable[[SweepPoint], None] | None = None,
    patterns: Sequence[Pattern] = (),
) -> SweepResult:
    """Evaluate ``model`` dense and one-shot pruned at each global sparsity.

    Args:
        sparsities: global sparsities in [0, 1) (fraction of the targets' weights removed).
        criterion: which weights go first within a target (see :mod:`prunescope.criteria`).
        allocation: how the global sparsity is split over targets: a baseline of :mod:`prunescope.pick.baselines`,
            ``owl`` or ``alpha`` (:data:`prunescope.pick.registry.WEIGHT_METHODS`; OWL's Wanda scores read
            ``calibration`` seeded train inputs).
        include / exclude: globs selecting the targets.
        split: ``val`` (default) or ``test``; selection should never use ``test``.
        subset: evaluate on a seeded subset of this many examples.
        recalibrate_bn: batches of 128 training examples to re-estimate BatchNorm statistics
            on at every pruned level (None: 20 for a model with BatchNorm, else 0; the dense
            level keeps its statistics).
        reconstruct: ``mask`` or ``obs`` prunes every level by layer-wise reconstruction on
            ``calibration`` seeded train inputs (:mod:`prunescope.reconstruct`; ``mask`` re-fits
            the kept weights of the criterion's masks, ``obs`` also chooses the masks); None:
            masks alone. ``reconstruct_fallback``: layers whose inputs cannot be captured are
            pruned with the criterion's masks alone (``SweepResult.fallback``) instead of refused.
        on_point: called after each level (progress bars).
        patterns: N:M patterns to evaluate instead of ``sparsities`` (which must then be empty), each
            at sparsity 1 − N/M in every target; ``allocation`` must be ``uniform``.
    """
    if patterns and (sparsities or allocation != "uniform"):
        raise UsageError("an N:M pattern fixes every layer at 1 − N/M: give --pattern without --sparsities and "
                         "--allocation")
    levels = [check_sparsity(s) for s in sparsities]
    device = resolve_device(device)
    model.to(device).eval()
    targets, _ = chosen_targets(model, data.vocabulary, include, exclude)
    for pattern in patterns:
        check_widths(targets, pattern)  # before any evaluation
    scores = compute_scores(model, targets, criterion, data=data.train)
    evaluator = Evaluator(model, data.split(split), device=device, subset=subset)
    batches = bn_batches(model, recalibrate_bn)

    def base_of(pattern: Pattern | None) -> Pruning:
        return reconstructing(WeightPruning(model, targets, scores), data.train, reconstruct, calibration,
                              fallback=reconstruct_fallback, pattern=pattern)

    def pruned_by(pattern: Pattern) -> Pruning:
        return recalibrating(base_of(pattern), data.train, batches)

    problem = Problem(model=model, targets=targets, example=data.train.x[:2], train=data.train, calibration=calibration)
    base = base_of(None)
    plain = recalibrating(base, data.train, batches)
    # (sparsity, pattern, pruning) per level: the dense model first
    runs = [(0.0, None, plain), *((s, None, plain) for s in levels), *((p.sparsity, p, pruned_by(p)) for p in patterns)]
    points = []
    for sparsity, pattern, pruning in runs:
        per_target = ({t.name: sparsity for t in targets} if pattern is not None
                      else weight_allocation(allocation, problem, sparsity))
        with pruning.applied(per_target):
            zeros = measured_sparsity(model, targets)
            point = SweepPoint(
                sparsity=sparsity,
                achieved_sparsity=sum(zeros[t.name] * t.numel for t in targets) / sum(t.numel for t in targets),
                allocation=per_target,
                metrics=evaluator.evaluate(),
                measure=measure.measure_all(model, data.input_shape, device=evaluator.device,
                                            batch_sizes=measure.LATENCY_BATCHES, repeats=latency_repeats),
                pattern=None if pattern is None else str(pattern),
            )
        points.append(point)
        if on_point is not None:
            on_point(point)
    return SweepResult(criterion=criterion, allocation=allocation, split=split, targets=targets, points=points,
                       recalibrate_bn=batches, reconstruct=reconstruct, fallback=fallen_back(base),
                       patterns=[str(p) for p in patterns], metric=default_metric(data.split(split)))
