"""A study of known points, evaluated on any executor: what the hyperparameter and regime studies run on.

The caller opens the study (:meth:`~prunescope.trials.queue.Place.open`, which checks its
identity) and gives its objective; :meth:`QueuedStudy.run` then has a list of points
finished: it queues those that no trial holds (:func:`~prunescope.trials.queue.plan`),
starts the executor the :class:`Execution` names (only when some point is still to
evaluate) and returns once every point has a finished trial, wherever it ran. Any number
of processes (on any number of machines) running the same study share its points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

import optuna
from optuna.trial import FrozenTrial

from prunescope.trials.executors import Executor, executor_kind, make_executor, settle_points
from prunescope.trials.queue import Drain, Key, Objective, Params, Place, finished, key, plan
from prunescope.trials.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, check_heartbeat

OnDone = Callable[[Key, FrozenTrial], None]


@dataclass(frozen=True)
class Execution:
    """Who evaluates a study's queued trials, and how their death is noticed.

    kind: ``local``, ``processes`` or ``ray`` (None: ``local`` for one worker, else
    ``processes``; see :mod:`prunescope.trials.executors`); workers: how many;
    ray_address / gpus_per_worker: for Ray. heartbeat_interval / grace_period: seconds
    (see :mod:`prunescope.trials.storage`).
    """

    kind: str | None = None
    workers: int = 1
    ray_address: str | None = None
    gpus_per_worker: float = 0.0
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = GRACE_PERIOD

    def check(self, shared: bool = True) -> None:
        """Refuse, with a one-line UsageError, what cannot run (``shared``: the study is not in memory)."""
        executor_kind(self.kind, self.workers, shared=shared, gpus_per_worker=self.gpus_per_worker)
        check_heartbeat(self.heartbeat_interval, self.grace_period)

    def place(self, location: str | None, name: str) -> Place:
        """Study ``name`` at ``location`` (None: in memory), its dead workers found with this execution's
        heartbeats; refused if this execution cannot run there."""
        self.check(location is not None)
        return Place(location, name, self.heartbeat_interval, self.grace_period)

    def start(self, drain: Drain) -> Executor:
        """The executor of this execution, running ``drain`` on its workers."""
        return make_executor(
            self.kind, drain, self.workers, ray_address=self.ray_address, gpus_per_worker=self.gpus_per_worker
        )


LOCAL = Execution()  # this process, one worker: the default of every study


class QueuedStudy:
    """One opened study whose points are evaluated by ``objective`` on the executor of ``execution``.

    The executor is started when a point first needs evaluating and stays for later calls of
    :meth:`run` until :meth:`close` (or the end of a ``with`` block).
    """

    def __init__(self, study: optuna.Study, place: Place, objective: Objective, execution: Execution) -> None:
        self.study = study
        self.place = place
        self.objective = objective
        self.execution = execution
        self.workers: Executor | None = None

    def finished(self) -> dict[Key, FrozenTrial]:
        """The finished trial of every finished point (see :func:`~prunescope.trials.queue.finished`)."""
        return finished(self.study)

    def run(self, points: Sequence[Params], on_done: OnDone | None = None) -> dict[Key, FrozenTrial]:
        """Have every one of ``points`` finished; their trials, by :func:`~prunescope.trials.queue.key`.

        ``on_done(key, trial)`` is called for each point finished while we wait (not for
        those finished before).
        """
        keys = [key(point) for point in points]
        done = self.finished()
        pending = [k for k in keys if k not in done]
        if pending:
            if self.workers is None:
                self.workers = self.execution.start(Drain(self.place, self.objective, self.study))
            settle_points(self.workers, pending, self.finished, self._enqueue, on_done)
            done = self.finished()
        return {k: done[k] for k in keys}

    def _enqueue(self, pending: list[Key]) -> int:
        return plan(self.study, self.place, [dict(k) for k in pending])

    def close(self) -> None:
        """Stop the workers (each finishes the trial it is evaluating)."""
        if self.workers is not None:
            self.workers.close()
            self.workers = None

    def __enter__(self) -> QueuedStudy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
