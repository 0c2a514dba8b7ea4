"""The scan on :mod:`prunescope.trials.executors`: who evaluates its queued points.

The runner hands a round's points to ``run(study, points, on_done)``: the points no trial
holds are queued (by this process or any other sharing the study), the workers evaluate
queued trials, and ``run`` returns once every one of ``points`` is finished, wherever it
ran, calling ``on_done(point, measurement)`` for each as it finishes. A point whose worker
died is queued again while we wait (see :func:`prunescope.trials.queue.plan`). A private
(in-memory) study has no queue nor trials: :class:`InProcess` evaluates its points one by one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from prunescope.scan.study import Evaluate, Measurement, Point, ScanObjective, ScanStudy
from prunescope.trials.executors import Executor as Workers
from prunescope.trials.executors import Local, make_executor, settle_points
from prunescope.trials.queue import Drain

OnDone = Callable[[Point, Measurement], None]


class Executor(Protocol):
    def run(self, study: ScanStudy, points: Sequence[Point], on_done: OnDone) -> None:
        """Have every one of ``points`` finished in ``study``; call ``on_done`` for each."""
        ...


class InProcess:
    """Evaluate in this process (any storage, in memory included).

    A private (in-memory) study is evaluated point by point without trials: no other process
    can hold or read its points, so the queue and the trials, which cost as much as a small
    model's evaluation per point, would serve nobody.
    """

    def __init__(self, evaluate: Evaluate) -> None:
        self.evaluate = evaluate

    def run(self, study: ScanStudy, points: Sequence[Point], on_done: OnDone) -> None:
        objective = ScanObjective(study.spec, self.evaluate)
        if study.spec.private:
            for point in points:
                on_done(point, objective.measure(point))
            return
        drain = Drain(study.spec.place, objective, study.study, study.run)
        settle_points(Local(drain), points, study.finished, study.enqueue, on_done)


class Pooled:
    """Evaluate on the workers of a :mod:`prunescope.trials.executors` executor."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers

    def run(self, study: ScanStudy, points: Sequence[Point], on_done: OnDone) -> None:
        settle_points(self.workers, points, study.finished, study.enqueue, on_done)


@contextlib.contextmanager
def executor(
    evaluate: Evaluate,
    study: ScanStudy,
    kind: str,
    workers: int,
    *,
    ray_address: str | None = None,
    gpus_per_worker: float = 0.0,
) -> Iterator[Executor]:
    """The executor of ``kind`` (``local``, ``processes``, ``ray``) for ``study``, its workers stopped on exit."""
    if kind == "local" and workers == 1:
        yield InProcess(evaluate)
        return
    # Each worker loads the study from its place (the drain is pickled without it).
    pool = make_executor(
        kind, Drain(study.spec.place, ScanObjective(study.spec, evaluate), run=study.run), workers,
        ray_address=ray_address, gpus_per_worker=gpus_per_worker,
    )
    try:
        yield Pooled(pool)
    finally:
        pool.close()
