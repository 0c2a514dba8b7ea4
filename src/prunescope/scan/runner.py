"""The scan loop: plan points per target, settle each on a large enough subset, evaluate in rounds.

A round asks every target's planner for its next sparsities (only once all of that
target's points are settled, since planning needs their results), collects every
evaluation they need, takes the finished ones from the study and has the executor run the
rest, possibly in parallel. Rounds repeat until every planner is done.

A point is *settled* once its decision, "is the drop from dense at most ``tolerance``?",
is clear of noise: the threshold ``dense - tolerance`` (dense measured on the same ``n``
examples) lies outside the point's interval ``(low, high)``, or ``n`` is already the
whole split. Otherwise the point is evaluated again on the next subset size of the
:class:`Ladder` (twice as many examples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prunescope.curves import CurvePoint
from prunescope.errors import PrunescopeError
from prunescope.scan.executors import Executor
from prunescope.scan.strategy import Planner
from prunescope.scan.study import DENSE, Point, ScanStudy

OnTrial = Callable[[int, int], None]


@dataclass(frozen=True)
class Ladder:
    """Subset sizes (examples) a point climbs while its decision is within noise: first, 2·first, …, full."""

    first: int
    full: int

    def next(self, n: int) -> int | None:
        return None if n >= self.full else min(2 * n, self.full)


@dataclass(frozen=True)
class ScanOutcome:
    """Settled points per target (sorted by sparsity), the dense reference per subset size, and costs.

    evaluations: evaluations the curves rest on (run now + reused); examples: sum of their n.
    """

    points: dict[str, list[CurvePoint]]
    dense: dict[int, CurvePoint]
    evaluations: int
    reused: int
    examples: int


class Runner:
    """Run one scan's rounds until every target's planner is done.

    Args:
        study: where evaluations are recorded and looked up (finished ones are reused).
        planner: chooses each target's sparsities from the drops measured so far.
        targets: names of the targets to scan.
        tolerance: allowed drop from dense (fraction of the metric).
        ladder: subset sizes for settling a point.
        executor: evaluates queued points.
        on_trial: ``on_trial(done, planned)`` after every evaluation, run or reused.
    """

    def __init__(
        self,
        study: ScanStudy,
        planner: Planner,
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
        self.results: dict[Point, CurvePoint] = {}
        self.used: dict[Point, None] = {}  # evaluations this scan rests on, in the order first needed
        self.asked: dict[str, list[float]] = {name: [] for name in self.targets}
        self.settled: dict[str, dict[float, CurvePoint]] = {name: {} for name in self.targets}
        self.reused = 0
        self.done = 0

    def run(self) -> ScanOutcome:
        self.results = self.study.finished()
        while missing := self._plan():
            self.executor.run(self.study, sorted(missing), self._record)
            if lost := len(missing - self.results.keys()):
                # Taken from the queue by a process that did not finish them; without this the loop would spin.
                raise PrunescopeError(f"{lost} queued evaluations did not finish; run the scan again to resume")
        dense = {p.n: self.results[p] for p in self.used if p.target == DENSE}
        return ScanOutcome(
            points={name: [self.settled[name][s] for s in sorted(self.asked[name])] for name in self.targets},
            dense=dict(sorted(dense.items())),
            evaluations=len(self.used),
            reused=self.reused,
            examples=sum(p.n for p in self.used),
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
            new = [s for s in self.planner.ask(drops) if s not in asked]
            if not new:
                return set()
            asked.extend(new)

    def _settle(self, name: str, sparsity: float) -> set[Point]:
        """Evaluations still needed to settle ``name`` at ``sparsity``; records the point once settled."""
        n: int | None = self.ladder.first
        while n is not None:
            point, dense = Point(name, sparsity, n), Point(DENSE, 0.0, n)
            missing = self._need(point) | self._need(dense)
            if missing:
                return missing
            measured = self.results[point]
            self.settled[name][sparsity] = measured
            threshold = self.results[dense].value - self.tolerance
            n = self.ladder.next(n) if measured.low < threshold < measured.high else None
        return set()

    def _need(self, point: Point) -> set[Point]:
        """Mark ``point`` as used by this scan; ``{point}`` if it still has to be evaluated."""
        if point not in self.used:
            self.used[point] = None
            if point in self.results:
                self.reused += 1
                self._progress()
        return set() if point in self.results else {point}

    def _record(self, point: Point, measured: CurvePoint) -> None:
        self.results[point] = measured
        if point in self.used:
            self._progress()

    def _progress(self) -> None:
        self.done += 1
        if self.on_trial is not None:
            self.on_trial(self.done, len(self.used))
