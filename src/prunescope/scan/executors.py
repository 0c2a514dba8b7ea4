"""Who drains the study's queue: this process, or a pool of spawned worker processes.

An executor's ``run(study, points, on_done)`` queues ``points`` in the study, evaluates
every queued trial, and calls ``on_done(point, measurement)`` for each of ``points`` as it
finishes; ``close()`` releases its processes. Workers share the study only: each one repeatedly takes a queued
trial with ``ask`` (Optuna gives every trial to exactly one taker) and ``tell``s its value.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import pickle
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import optuna
import torch

from prunescope.scan.study import Evaluate, Measurement, Point, ScanStudy, StudySpec

OnDone = Callable[[Point, Measurement], None]
POLL_SECONDS = 0.5  # how often the parent reads the study for finished trials while workers run


class Executor(Protocol):
    def run(self, study: ScanStudy, points: Sequence[Point], on_done: OnDone) -> None:
        """Queue ``points`` in ``study``, evaluate the queue, call ``on_done`` for each of ``points``."""
        ...

    def close(self) -> None: ...


class InProcess:
    """Evaluate queued trials one by one in this process."""

    def __init__(self, evaluate: Evaluate) -> None:
        self.evaluate = evaluate

    def run(self, study: ScanStudy, points: Sequence[Point], on_done: OnDone) -> None:
        study.enqueue(points)
        while (finished := study.run_next(self.evaluate)) is not None:
            on_done(*finished)

    def close(self) -> None:
        """Nothing to release."""


# A worker process's study and evaluation function, set once by the pool's initializer so
# that the model is unpickled once per process, not once per task.
_worker: tuple[ScanStudy, Evaluate] | None = None


def _start_worker(evaluate: bytes, spec: StudySpec, threads: int) -> None:
    global _worker
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is the parent's job
    _worker = (spec.attach(), pickle.loads(evaluate))


def _drain() -> None:
    """Evaluate queued trials until none is left."""
    assert _worker is not None, "worker not initialised"
    study, evaluate = _worker
    while study.run_next(evaluate) is not None:
        pass


class WorkerPool:
    """``workers`` spawned processes draining a persistent study; kept alive across rounds."""

    def __init__(self, evaluate: Evaluate, spec: StudySpec, workers: int) -> None:
        self.workers = workers
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            # Plain pickle, not multiprocessing's: torch's reducer would move the model's
            # tensors into memory shared by every worker, and each worker masks them in place.
            initargs=(pickle.dumps(evaluate), spec, max(1, torch.get_num_threads() // workers)),
        )

    def run(self, study: ScanStudy, points: Sequence[Point], on_done: OnDone) -> None:
        study.enqueue(points)
        pending = set(points)
        futures = [self.pool.submit(_drain) for _ in range(self.workers)]
        running = set(futures)
        while running:
            _, running = concurrent.futures.wait(running, timeout=POLL_SECONDS)
            finished = study.finished()
            for point in sorted(pending & finished.keys()):
                pending.discard(point)
                on_done(point, finished[point])
        for future in futures:
            future.result()  # a worker's error surfaces here

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def executor(evaluate: Evaluate, spec: StudySpec, workers: int) -> Iterator[Executor]:
    """An executor for ``workers`` processes (1: this one), closed on exit."""
    chosen: Executor = InProcess(evaluate) if workers == 1 else WorkerPool(evaluate, spec, workers)
    try:
        yield chosen
    finally:
        chosen.close()
