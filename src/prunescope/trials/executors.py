"""Who evaluates a shared study's queued trials: this process, N local processes, or Ray actors.

The interface is two calls, the same for every study (scan, hparams, regimes):

- ``make_executor(kind, drain, workers, …)`` starts the workers. ``drain`` is picklable:
  ``drain(limit) -> int`` opens the shared study (once per worker), evaluates up to
  ``limit`` queued trials (None: until none waits) and returns how many it evaluated
  (:class:`prunescope.trials.queue.Drain`). Workers only ever take queued trials; Optuna
  hands each to exactly one taker.
- ``executor.run(settle)`` has the workers evaluate until ``settle()``, called in this
  process every :data:`POLL_SECONDS`, returns True. ``settle`` is where the study plans:
  it queues the points it waits for that no trial holds (including those of dead workers,
  see :func:`prunescope.trials.queue.plan`), collects finished ones and says whether all
  are done. ``run`` may be called again (the workers stay); ``close()`` stops them.

Workers that die are handled per kind: ``processes`` starts a replacement (a worker that
*raised* ends the run with its error instead); ``ray`` actors are restarted by Ray
(``max_restarts``). Their RUNNING trial is failed and queued again by ``settle``. A
``processes`` worker whose parent dies (killed) exits at once: its trial is then retried by
whoever resumes the study, not finished by an orphan nobody waits for.

:func:`settle_points` is the ``settle`` every study uses: queue the points it waits for,
collect them as they finish.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import torch

from prunescope.errors import PrunescopeError, UsageError

Drain = Callable[[int | None], int]
Settle = Callable[[], bool]
EXECUTORS = ("local", "processes", "ray")
POLL_SECONDS = 0.5  # how often the waiting process settles (reads the study) while workers run
REPLACEMENTS_PER_WORKER = 10  # a worker slot whose processes keep dying is an error, not replaced forever

log = logging.getLogger("prunescope")


class Executor(Protocol):
    """Who evaluates a study's queued trials: ``local``, ``processes`` or ``ray`` (see :func:`make_executor`)."""

    workers: int

    def run(self, settle: Settle) -> None:
        """Evaluate queued trials with the workers until ``settle()`` returns True."""
        ...

    def close(self) -> None:
        """Stop the workers (each finishes the trial it is evaluating)."""
        ...


class Local:
    """Evaluate queued trials one at a time in this process; wait while other processes run ours."""

    workers = 1

    def __init__(self, drain: Drain) -> None:
        self.drain = drain

    def run(self, settle: Settle) -> None:
        """Evaluate queued trials here, one at a time, until ``settle()`` returns True."""
        while not settle():
            if not self.drain(1):
                time.sleep(POLL_SECONDS)  # nothing queued: the points we wait for run elsewhere

    def close(self) -> None:
        """Nothing to stop."""


def _threads(workers: int) -> int:
    return max(1, torch.get_num_threads() // workers)


def _exit_with_parent() -> None:
    """End this worker process as soon as its parent is gone (killed: nobody would stop it, nor wait for its trial)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)


def _work(drain: bytes, threads: int, stop: Any, errors: Any) -> None:
    """A worker process: evaluate queued trials until ``stop`` is set; an error goes to ``errors``."""
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    torch.set_num_threads(threads)
    try:
        evaluate = pickle.loads(drain)
        while not stop.is_set():
            if not evaluate(1):
                stop.wait(POLL_SECONDS)
    except BaseException as error:
        errors.put((isinstance(error, UsageError), str(error) or type(error).__name__))
        raise SystemExit(1) from None


class Processes:
    """``workers`` spawned processes evaluating queued trials; a dead one is replaced.

    The drain is sent with plain pickle, not multiprocessing's: torch's reducer would move
    the model's tensors into memory shared by every worker, and each worker masks them in place.
    """

    def __init__(self, drain: Drain, workers: int) -> None:
        self.workers = workers
        self.context = multiprocessing.get_context("spawn")
        self.stop = self.context.Event()
        self.errors = self.context.Queue()
        self.args = (pickle.dumps(drain), _threads(workers), self.stop, self.errors)
        self.replaced = 0
        self.processes = [self._start() for _ in range(workers)]

    def _start(self) -> multiprocessing.process.BaseProcess:
        process = self.context.Process(target=_work, args=self.args, daemon=True)
        process.start()
        return process

    def _supervise(self) -> None:
        """Raise a worker's error; replace a worker that died without one (killed, out of memory)."""
        for i, process in enumerate(self.processes):
            if process.is_alive():  # also reaps a dead one, so that its trial is seen as dead
                continue
            with_error = self._error()
            if with_error is not None:
                usage, message = with_error
                raise (UsageError if usage else PrunescopeError)(message)
            self.replaced += 1
            if self.replaced > REPLACEMENTS_PER_WORKER * self.workers:
                raise PrunescopeError(f"{self.replaced} worker processes died (exit codes like {process.exitcode})")
            log.warning("worker %d (pid %d) died with exit code %s; starting another", i, process.pid, process.exitcode)
            self.processes[i] = self._start()

    def _error(self) -> tuple[bool, str] | None:
        try:
            return self.errors.get(timeout=1.0)  # a dying worker's message may still be in flight
        except queue.Empty:
            return None

    def run(self, settle: Settle) -> None:
        """Wait until ``settle()`` returns True, replacing every worker process that died meanwhile."""
        self._supervise()
        while not settle():
            time.sleep(POLL_SECONDS)
            self._supervise()

    def close(self) -> None:
        """Stop the workers: each finishes the trial it is evaluating, then exits."""
        self.stop.set()
        for process in self.processes:
            process.join()


class _RayWorker:
    """A Ray actor holding one unpickled drain (the model is deserialised once per actor)."""

    def __init__(self, drain: Drain, threads: int) -> None:
        torch.set_num_threads(threads)
        self.drain = drain

    def run(self, limit: int | None) -> int:
        return self.drain(limit)


class RayExecutor:
    """``workers`` Ray actors evaluating queued trials, each with ``gpus_per_worker`` of a GPU.

    Connects to the cluster at ``address`` (``auto``: the running one; None: start a local
    one, stopped again by :meth:`close`); an already initialised Ray is used as it is. An
    actor whose process dies is restarted by Ray and its call retried.
    """

    def __init__(self, drain: Drain, workers: int, address: str | None = None, gpus_per_worker: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'prunescope[ray]'") from None
        self.ray = ray
        self.workers = workers
        self.owned = not ray.is_initialized()
        if self.owned:
            options: dict[str, Any] = {"include_dashboard": False} if address is None else {}
            try:
                ray.init(address=address, log_to_driver=False, **options)
            except (ConnectionError, ValueError, RuntimeError) as error:
                raise UsageError(f"cannot connect to Ray at {address}: {error}") from None
        actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=-1, max_task_retries=-1)(_RayWorker)
        self.shared = ray.put(drain)  # kept referenced: a restarted actor is built from it again
        self.actors = [actor.remote(self.shared, 1) for _ in range(workers)]
        self.calls: dict[Any, Any] = {}  # pending call -> actor

    def run(self, settle: Settle) -> None:
        """Keep every actor draining queued trials until ``settle()`` returns True."""
        ray = self.ray
        while not settle():
            busy = set(self.calls.values())
            for actor in self.actors:
                if actor not in busy:
                    self.calls[actor.run.remote(1)] = actor
            ready, _ = ray.wait(list(self.calls), num_returns=len(self.calls), timeout=POLL_SECONDS)
            ran = 0
            for ref in ready:
                del self.calls[ref]
                try:
                    ran += ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    raise PrunescopeError(f"a Ray worker failed: {error.cause}") from None
            if ready and not ran:
                time.sleep(POLL_SECONDS)  # nothing queued: the points we wait for run elsewhere

    def close(self) -> None:
        """Wait for the actors' trials, stop the actors, and shut down a Ray this executor started."""
        ray = self.ray
        if self.calls:
            ray.wait(list(self.calls), num_returns=len(self.calls))  # each finishes its trial
        for actor in self.actors:
            ray.kill(actor)
        if self.owned:
            ray.shutdown()


def executor_kind(kind: str | None, workers: int, *, shared: bool = True, gpus_per_worker: float = 0.0) -> str:
    """``kind`` checked for ``workers`` workers (None: ``local`` for one worker, else ``processes``).

    ``shared``: whether the study lives where other processes reach it (not in memory).
    Raises a one-line UsageError for what cannot run.
    """
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    kind = kind or ("local" if workers == 1 else "processes")
    if kind not in EXECUTORS:
        raise UsageError(f"unknown executor {kind!r}: use one of {', '.join(EXECUTORS)}")
    if kind != "local" and not shared:
        raise UsageError("several workers share a study on disk: give a storage (an --out directory or a URL)")
    if kind == "local" and workers > 1:
        raise UsageError("the local executor has one worker, this process: use --executor processes or ray")
    if gpus_per_worker < 0 or (gpus_per_worker > 1 and gpus_per_worker != int(gpus_per_worker)):
        raise UsageError(f"gpus per worker must be a fraction of one GPU or a whole number, got {gpus_per_worker:g}")
    return kind


def make_executor(
    kind: str | None, drain: Drain, workers: int, *, ray_address: str | None = None, gpus_per_worker: float = 0.0
) -> Executor:
    """An executor of ``kind`` (``local``, ``processes``, ``ray``; see :func:`executor_kind`) with ``workers``
    workers running ``drain``."""
    kind = executor_kind(kind, workers, gpus_per_worker=gpus_per_worker)
    if kind == "local":
        return Local(drain)
    if kind == "processes":
        return Processes(drain, workers)
    return RayExecutor(drain, workers, ray_address, gpus_per_worker)


P = TypeVar("P", bound=Hashable)
R = TypeVar("R")


def settle_points(
    workers: Executor,
    points: Sequence[P],
    finished: Callable[[], Mapping[P, R]],
    enqueue: Callable[[list[P]], object],
    on_done: Callable[[P, R], None] | None = None,
) -> None:
    """Have ``workers`` evaluate until every one of ``points`` is ``finished()``, wherever it ran.

    ``finished()`` reads the study's finished points; ``enqueue(pending)`` queues those no
    trial holds (:func:`prunescope.trials.queue.plan`: also those of dead workers).
    ``on_done(point, result)`` is called for each point as it is found finished, in the order
    of ``points``. Finished points are collected at every settle (after each trial in this
    process); planning, which takes the study's lock and reads every trial, at most every
    :data:`POLL_SECONDS`.
    """
    pending = list(dict.fromkeys(points))
    next_plan = 0.0

    def settle() -> bool:
        nonlocal pending, next_plan
        done = finished()
        for point in pending:
            if point in done and on_done is not None:
                on_done(point, done[point])
        pending = [point for point in pending if point not in done]
        if pending and time.monotonic() >= next_plan:
            enqueue(pending)
            next_plan = time.monotonic() + POLL_SECONDS
        return not pending

    workers.run(settle)
