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

import contextlib
import logging
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
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


def _work(threads: int, control: Connection) -> None:
    """A worker process: read the pickled drain from ``control``, then evaluate queued trials until
    ``control`` has a message (stop) or ends (parent gone).

    An error is sent back on ``control`` as ``(is_usage_error, message)`` before the worker exits.
    """
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    torch.set_num_threads(threads)
    try:
        evaluate = pickle.loads(control.recv_bytes())
        ran = 1
        while not control.poll(0 if ran else POLL_SECONDS):  # nothing queued: look again in a moment
            ran = evaluate(1)
    except BaseException as error:
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            control.send((isinstance(error, UsageError), str(error) or type(error).__name__))
        raise SystemExit(1) from None


def _report(control: Connection) -> tuple[bool, str] | None:
    """The error a worker sent on ``control``; None when it sent none (killed: its end just closed)."""
    try:
        return control.recv() if control.poll() else None
    except (EOFError, OSError):  # ended, or cut off mid-message by the kill
        return None


class Processes:
    """``workers`` spawned processes evaluating queued trials; a dead one is replaced.

    Each worker has a pipe of its own to this process, and nothing else shared with it: a
    worker killed at any moment can leave no lock held here (a shared queue or event can),
    its death is seen at once (its process sentinel and its pipe end), and its trial is
    failed and queued again by ``settle``.

    The drain goes down that pipe once the process runs, not with the process's start: a
    spawned child killed before it read its start data leaves ``Process.start`` writing
    to it forever (this process holds the other end of that pipe), whereas ours ends with
    the child. It is sent with plain pickle, not multiprocessing's: torch's reducer would
    move the model's tensors into memory shared by every worker, and each worker masks
    them in place.
    """

    def __init__(self, drain: Drain, workers: int) -> None:
        self.workers = workers
        self.context = multiprocessing.get_context("spawn")
        self.drain = pickle.dumps(drain)
        self.threads = _threads(workers)
        self.replaced = 0
        started = [self._start() for _ in range(workers)]
        self.processes = [process for process, _ in started]
        self.controls = [control for _, control in started]
        for control in self.controls:  # after every start: the workers boot meanwhile, side by side
            self._send_drain(control)

    def _start(self) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        control, remote = self.context.Pipe()
        process = self.context.Process(target=_work, args=(self.threads, remote), daemon=True)
        process.start()
        remote.close()  # the worker holds the only other end: its death ends the pipe
        return process, control

    def _send_drain(self, control: Connection) -> None:
        """Send the drain to a started worker (returns once it has read it, or died: :meth:`_watch` sees to that)."""
        with contextlib.suppress(OSError):
            control.send_bytes(self.drain)

    def _watch(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a worker to report an error or die: raise its error, or replace it."""
        handles = [*self.controls, *(process.sentinel for process in self.processes)]
        ready = set(wait(handles, timeout))
        for i, (process, control) in enumerate(zip(self.processes, self.controls, strict=True)):
            if control not in ready and process.sentinel not in ready:
                continue
            report = _report(control)
            if report is not None:
                usage, message = report
                raise (UsageError if usage else PrunescopeError)(message)
            process.join()  # its pipe ended: it has exited (reaped now, so that its trial is seen as dead)
            control.close()
            self.replaced += 1
            if self.replaced > REPLACEMENTS_PER_WORKER * self.workers:
                raise PrunescopeError(f"{self.replaced} worker processes died (exit codes like {process.exitcode})")
            log.warning("worker %d (pid %d) died with exit code %s; starting another", i, process.pid, process.exitcode)
            self.processes[i], self.controls[i] = self._start()
            self._send_drain(self.controls[i])

    def run(self, settle: Settle) -> None:
        """Wait until ``settle()`` returns True, replacing every worker process that dies meanwhile."""
        while not settle():
            self._watch(POLL_SECONDS)

    def close(self) -> None:
        """Stop the workers: each finishes the trial it is evaluating, then exits."""
        for control in self.controls:
            with contextlib.suppress(OSError):  # a worker that died meanwhile
                control.send(None)
        for process, control in zip(self.processes, self.controls, strict=True):
            process.join()
            control.close()


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
