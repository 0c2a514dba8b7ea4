"""The scan on :mod:`prunescope.trials.executors`: who evaluates its queued points.

The runner hands a round's points to ``run(study, points, on_done)``: the points no trial
holds are queued (by this process or any other sharing the study), the workers evaluate
queued trials, and ``run`` returns once every one of ``points`` is finished, wherever it
ran, calling ``on_done(point, measurement)`` for each as it finishes. A point whose worker
died is queued again while we wait (see :func:`prunescope.trials.queue.plan`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from prunescope.scan.study import Evaluate, Measurement, Point, ScanStudy, StudySpec
from prunescope.trials.executors import POLL_SECONDS, Local, make_executor
from prunescope.trials.executors import Executor as Workers

OnDone = Callable[[Point, Measurement], None]


class Executor(Protocol):
    def run(self, study: ScanStudy, points: Sequence[Point], on_done: OnDone) -> None:
        """Have every one of ``points`` finished in ``study``; call ``on_done`` for each."""
        ...


def settle_points(workers: Workers, study: ScanStudy, points: Sequence[Point], on_done: OnDone) -> None:
    """Queue ``points`` and let ``workers`` evaluate until all are finished (see the module's docstring).

    Finished points are collected at every settle (after each trial in this process);
    planning, which takes the study's lock and reads every trial, at most every
    :data:`~prunescope.trials.executors.POLL_SECONDS`.
    """
    pending = set(points)
    next_plan = 0.0

    def settle() -> bool:
        nonlocal next_plan
        finished = study.finished()
        for point in sorted(pending & finished.keys()):
            pending.discard(point)
            on_done(point, finished[point])
        if pending and time.monotonic() >= next_plan:
            study.enqueue(sorted(pending))
            next_plan = time.monotonic() + POLL_SECONDS
        return not pending

    workers.run(settle)


class InProcess:
    """Evaluate in this process (any storage, in memory included)."""

    def __init__(self, evaluate: Evaluate) -> None:
        self.evaluate = evaluate

    def run(self, study: ScanStudy, points: Sequence[Point], on_done: OnDone) -> None:
        settle_points(Local(lambda limit: study.run_queued(self.evaluate, limit)), study, points, on_done)


class ScanDrain:
    """A worker's drain of the scan's study: opens the study once, then evaluates queued trials.

    Picklable (the evaluation carries the model); a worker gets its own copy.
    """

    def __init__(self, spec: StudySpec, evaluate: Evaluate) -> None:
        self.spec = spec
        self.evaluate = evaluate
        self.study: ScanStudy | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "study": None}

    def __call__(self, limit: int | None) -> int:
        if self.study is None:
            self.study = self.spec.attach()
        return self.study.run_queued(self.evaluate, limit)


class Pooled:
    """Evaluate on the workers of a :mod:`prunescope.trials.executors` executor."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers

    def run(self, study: ScanStudy, points: Sequence[Point], on_done: OnDone) -> None:
        settle_points(self.workers, study, points, on_done)


@contextlib.contextmanager
def executor(
    evaluate: Evaluate,
    spec: StudySpec,
    kind: str,
    workers: int,
    *,
    ray_address: str | None = None,
    gpus_per_worker: float = 0.0,
) -> Iterator[Executor]:
    """The scan's executor of ``kind`` (``local``, ``processes``, ``ray``), its workers stopped on exit."""
    if kind == "local" and workers == 1:
        yield InProcess(evaluate)
        return
    pool = make_executor(
        kind, ScanDrain(spec, evaluate), workers, ray_address=ray_address, gpus_per_worker=gpus_per_worker
    )
    try:
        yield Pooled(pool)
    finally:
        pool.close()
