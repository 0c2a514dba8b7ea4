"""Idempotent planning of a shared study's points, and the loop that evaluates queued trials.

A *point* is the params of one evaluation (``{"target": "fc1", "sparsity": 0.5, "n": 600}``
for a scan); it is queued with ``enqueue_trial`` and read back from the trial's fixed
params, so a trial that died before its params were suggested still names its point.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from prunescope.errors import PrunescopeError
from prunescope.trials.storage import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    WORKER_ATTR,
    is_url,
    open_storage,
    planning_lock,
    worker_tag,
)

MAX_RETRIES = 3  # a point whose trials failed more often than this is an error, not retried again
PLANNED_ATTR = "planned_by"  # user attribute of every queued trial: the process that queued it

Params = Mapping[str, Any]
Key = tuple[tuple[str, Any], ...]
Objective = Callable[[optuna.Trial], float]


def key(params: Params) -> Key:
    """A point's identity: its params, sorted by name."""
    return tuple(sorted(params.items()))


def point_of(trial: FrozenTrial) -> Params | None:
    """The point ``trial`` was queued for (None for a trial not queued by :func:`plan`)."""
    return trial.system_attrs.get("fixed_params") if PLANNED_ATTR in trial.user_attrs else None


@dataclass(frozen=True)
class Place:
    """Where a shared study lives and how its dead workers are found; picklable, for workers.

    location: a journal file path, a database URL or None (in memory); name: the study's name.
    heartbeat_interval / grace_period: seconds (see :mod:`prunescope.trials.storage`).
    max_retries: how often a point whose trial failed (worker died, evaluation raised) is queued again.
    """

    location: str | None
    name: str
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = GRACE_PERIOD
    max_retries: int = MAX_RETRIES

    def storage(self) -> BaseStorage:
        return open_storage(self.location, heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The study's planning lock (see :func:`~prunescope.trials.storage.planning_lock`)."""
        return planning_lock(self.location, self.name)

    def where(self) -> str:
        """How a message names this study."""
        return f"study {self.name!r} in {self.location}" if is_url(self.location) else f"study in {self.location}"


def census(study: optuna.Study) -> dict[Key, Counter[TrialState]]:
    """Per point, how many of its trials are in each state."""
    counts: dict[Key, Counter[TrialState]] = {}
    for trial in study.get_trials(deepcopy=False):
        if (params := point_of(trial)) is not None:
            counts.setdefault(key(params), Counter())[trial.state] += 1
    return counts


def fail_dead(study: optuna.Study) -> None:
    """Mark FAIL every RUNNING trial whose worker is dead (see :mod:`~prunescope.trials.storage`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def plan(study: optuna.Study, place: Place, points: Iterable[Params], user_attrs: Params | None = None) -> int:
    """Queue every point of ``points`` that no trial holds (WAITING, RUNNING or COMPLETE) anywhere.

    Under the study's planning lock, so that no two processes queue one point: trials of
    dead workers are failed first, and a point with only failed trials is queued again (its
    retry) unless it failed more than ``place.max_retries`` times, which raises.
    ``user_attrs`` go to every queued trial. Returns how many points were queued.
    """
    queued = 0
    with place.lock():
        fail_dead(study)
        counts = census(study)
        for params in points:
            states = counts.get(key(params), Counter())
            if states[TrialState.WAITING] or states[TrialState.RUNNING] or states[TrialState.COMPLETE]:
                continue
            if states[TrialState.FAIL] > place.max_retries:
                raise PrunescopeError(
                    f"{dict(params)} failed {states[TrialState.FAIL]} times in {place.where()} (its evaluation "
                    "raised or its workers died); fix the cause and run again"
                )
            attrs = {**(user_attrs or {}), PLANNED_ATTR: worker_tag()}
            study.enqueue_trial(dict(params), user_attrs=attrs)
            queued += 1
    return queued


@contextlib.contextmanager
def optuna_verbosity(level: int) -> Iterator[None]:
    """Optuna's log level set to ``level`` (``optuna.logging.WARNING``…) for a ``with`` block, then restored."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


class _Queued:
    """``objective`` for queued trials only: a fresh trial (the queue emptied between our look
    and Optuna's ask) is pruned at once; a queued one is tagged with this worker, then evaluated."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.ran = False

    def __call__(self, trial: optuna.Trial) -> float:
        if PLANNED_ATTR not in trial.user_attrs:
            raise optuna.TrialPruned("the queue was empty")
        trial.set_user_attr(WORKER_ATTR, worker_tag())
        self.ran = True
        return self.objective(trial)


def run_queued(study: optuna.Study, objective: Objective, limit: int | None = None) -> int:
    """Evaluate queued trials of ``study`` with ``objective`` until none waits (or ``limit`` ran).

    Through ``study.optimize``: each trial runs with its heartbeat, and one whose objective
    raises is marked FAIL before the error is re-raised here. A trial declared dead while it
    ran (its heartbeat was late) has been failed and queued again by another process: our
    result is dropped. Returns how many trials were evaluated.
    """
    ran = 0
    # A failing trial is logged by Optuna with its traceback; the error itself reaches the caller.
    with optuna_verbosity(optuna.logging.ERROR):
        while (limit is None or ran < limit) and study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            queued = _Queued(objective)
            with contextlib.suppress(UpdateFinishedTrialError):
                study.optimize(queued, n_trials=1)
            ran += queued.ran
    return ran
