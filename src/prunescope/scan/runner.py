"""The scan loop: plan points per target, settle each on a large enough subset, evaluate in rounds.

A round asks every target's planner for its next sparsities (only once all of that
target's points are settled, since planning needs their results), collects every
evaluation they need, takes the finished ones from the study and has the executor run the
rest, possibly in parallel. Rounds repeat until every planner is done.

A point is *settled* once its decision, "is the drop from dense at most ``tolerance``?",
is clear of noise: ``tolerance`` lies outside the confidence interval of the drop (see
:func:`drop_interval`). The drop is measured against the dense model on the same ``n``
examples, as an estimate of the drop on the whole split (the split the picks are verified
on): on the whole split the interval has no width and every point is settled. When the
evaluation counted the examples the pruned model lost and gained against the dense one
(accuracy on a subset) the interval is the paired one, much tighter than the point's own
interval where the two models mostly agree.

A point within noise climbs the :class:`Ladder` of subset sizes (first, 2·first, … up to
its top): straight to the smallest size on which its interval, at the rates measured so
far, would clear ``tolerance``. When not even the top size would (the point sits on the
tolerance line, within what that size can resolve) it stops where it is, *unresolved*: it
keeps its measurement and interval, and the planner is told, so that it stops bisecting
where the crossing lies inside the noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from prunescope.curves import CurvePoint
from prunescope.errors import PrunescopeError
from prunescope.evaluate import paired_drop_interval, population_correction
from prunescope.scan.executors import Executor
from prunescope.scan.strategy import Planner
from prunescope.scan.study import DENSE, Measurement, Point, ScanStudy

OnTrial = Callable[[int, int], None]


@dataclass(frozen=True)
class Ladder:
    """Subset sizes (examples) a point may climb while its decision is within noise: first, 2·first, …, top.

    ``top``: the largest size (None: ``full``, the whole split; never below ``first`` nor above ``full``).
    """

    first: int
    full: int
    top: int | None = None

    @property
    def last(self) -> int:
        """The top rung."""
        return max(self.first, min(self.full if self.top is None else self.top, self.full))

    def next(self, n: int) -> int | None:
        return None if n >= self.last else min(2 * n, self.last)

    def above(self, n: int) -> list[int]:
        """The rungs above ``n``, smallest first."""
        rungs = []
        while (n := self.next(n)) is not None:
            rungs.append(n)
        return rungs


def drop_interval(
    measured: Measurement, dense: Measurement, n: int, full: int, *, at: int | None = None
) -> tuple[float, float]:
    """95% interval of the drop on all ``full`` examples, from a point and the dense model measured on ``n``.

    With the paired counts: :func:`paired_drop_interval`. Without: the point's own interval
    ``(low, high)`` turned into one of ``dense.value - value``, with the finite-population
    correction. ``at``: the interval expected on ``at`` examples instead, if the rates
    measured on ``n`` held (the pseudo-counts and the width's ``1/sqrt(n)`` scale).
    """
    at = n if at is None else at
    if measured.lost is not None and measured.gained is not None:
        return paired_drop_interval(measured.lost * at / n, measured.gained * at / n, at, full)
    drop = dense.value - measured.value
    scale = math.sqrt(n / at) * population_correction(at, full)
    return drop - scale * (measured.high - measured.value), drop + scale * (measured.value - measured.low)


@dataclass(frozen=True)
class ScanOutcome:
    """Settled points per target (sorted by sparsity), the dense reference per subset size, and costs.

    evaluations: evaluations the curves rest on (run now + reused); examples: sum of their n.
    evaluated_here: of those, how many this scan's workers evaluated (the others: other processes).
    unresolved: per target, the sparsities whose decision stayed within noise on the top rung.
    measured: every evaluation the curves rest on, with its per-example results where kept.
    """

    points: dict[str, list[CurvePoint]]
    dense: dict[int, CurvePoint]
    evaluations: int
    reused: int
    evaluated_here: int
    examples: int
    unresolved: dict[str, list[float]]
    measured: dict[Point, Measurement]


def curve_point(point: Point, measured: Measurement) -> CurvePoint:
    """The curve point of one evaluation, with the paired interval of its drop where the counts are known.

    The interval is :func:`paired_drop_interval` without finite-population correction: it
    bounds the drop on unseen data, which is what a picker judging the pessimistic end reads.
    """
    at = measured.at(point)
    if measured.lost is None or measured.gained is None:
        return at
    low, high = paired_drop_interval(measured.lost, measured.gained, point.n)
    return replace(at, drop_low=low, drop_high=high)


class Runner:
    """Run one scan's rounds until every target's planner is done.

    Args:
        study: where evaluations are recorded and looked up (finished ones are reused).
        planner: chooses each target's sparsities from the drops measured so far (one for all,
            or one per target name).
        targets: names of the targets to scan.
        tolerance: allowed drop from dense (fraction of the metric).
        ladder: subset sizes for settling a point.
        executor: evaluates queued points.
        on_trial: ``on_trial(done, planned)`` after every evaluation, run or reused.
    """

    def __init__(
        self,
        study: ScanStudy,
        planner: Planner | Mapping[str, Planner],
        targets: Sequence[str],
        *,
        tolerance: float,
        ladder: Ladder,
        executor: Executor,
        on_trial: OnTrial | None = None,
    ) -> None:
        self.study = study
        self.planner = planner
        self.targets = list(targets)
        self.tolerance = tolerance
        self.ladder = ladder
        self.executor = executor
        self.on_trial = on_trial
        self.results: dict[Point, Measurement] = {}
        self.used: dict[Point, None] = {}  # evaluations this scan rests on, in the order first needed
        self.asked: dict[str, list[float]] = {name: [] for name in self.targets}
        self.settled: dict[str, dict[float, CurvePoint]] = {name: {} for name in self.targets}
        self.unresolved: dict[str, set[float]] = {name: set() for name in self.targets}
        self.final: set[tuple[str, float]] = set()  # points settled on their last rung: results never change
        self.reused = 0
        self.done = 0

    def run(self) -> ScanOutcome:
        self.results = self.study.finished()
        while missing := self._plan():
            self.executor.run(self.study, sorted(missing), self._record)
            if lost := len(missing - self.results.keys()):
                # Taken from the queue by a process that did not finish them; without this the loop would spin.
                raise PrunescopeError(f"{lost} queued evaluations did not finish; run the scan again to resume")
        dense = {p.n: self.results[p].at(p) for p in self.used if p.target == DENSE}
        return ScanOutcome(
            points={name: [self.settled[name][s] for s in sorted(self.asked[name])] for name in self.targets},
            dense=dict(sorted(dense.items())),
            evaluations=len(self.used),
            reused=self.reused,
            evaluated_here=self.study.evaluated_here(self.used),
            examples=sum(p.n for p in self.used),
            unresolved={name: sorted(self.unresolved[name]) for name in self.targets},
            measured={p: self.results[p] for p in self.used},
        )

    def _plan(self) -> set[Point]:
        """Every evaluation the next round needs (empty when the scan is complete)."""
        missing = self._need(Point(DENSE, 0.0, self.ladder.first))
        for name in self.targets:
            missing |= self._plan_target(name)
        return missing

    def _plan_target(self, name: str) -> set[Point]:
        asked = self.asked[name]
        while True:
            missing: set[Point] = set()
            for sparsity in asked:
                missing |= self._settle(name, sparsity)
            if missing:
                return missing
            drops = {s: self.results[Point(DENSE, 0.0, p.n)].value - p.value for s, p in self.settled[name].items()}
            planner = self.planner[name] if isinstance(self.planner, Mapping) else self.planner
            new = [s for s in planner.ask(drops, frozenset(self.unresolved[name])) if s not in asked]
            if not new:
                return set()
            asked.extend(new)

    def _settle(self, name: str, sparsity: float) -> set[Point]:
        """Evaluations still needed to settle ``name`` at ``sparsity``; records the point once settled."""
        if (name, sparsity) in self.final:
            return set()
        n: int | None = self.ladder.first
        while n is not None:
            point, dense = Point(name, sparsity, n), Point(DENSE, 0.0, n)
            missing = self._need(point) | self._need(dense)
            if missing:
                return missing
            measured = self.results[point]
            self.settled[name][sparsity] = curve_point(point, measured)
            n = self._climb(measured, self.results[dense], n)
            if n is None and self._undecided(measured, self.results[dense], point.n):
                self.unresolved[name].add(sparsity)
        self.final.add((name, sparsity))
        return set()

    def _undecided(self, measured: Measurement, dense: Measurement, n: int, at: int | None = None) -> bool:
        low, high = drop_interval(measured, dense, n, self.ladder.full, at=at)
        return low < self.tolerance < high

    def _climb(self, measured: Measurement, dense: Measurement, n: int) -> int | None:
        """The subset size to measure a point on next: None when it is decided, or when no rung would decide it."""
        if not self._undecided(measured, dense, n):
            return None
        return next((m for m in self.ladder.above(n) if not self._undecided(measured, dense, n, m)), None)

    def _need(self, point: Point) -> set[Point]:
        """Mark ``point`` as used by this scan; ``{point}`` if it still has to be evaluated."""
        if point not in self.used:
            self.used[point] = None
            if point in self.results:
                self.reused += 1
                self._progress()
        return set() if point in self.results else {point}

    def _record(self, point: Point, measured: Measurement) -> None:
        self.results[point] = measured
        if point in self.used:
            self._progress()

    def _progress(self) -> None:
        self.done += 1
        if self.on_trial is not None:
            self.on_trial(self.done, len(self.used))
