"""Idempotent planning of a shared study's points, and the loop that evaluates queued trials.

A *point* is the params of one evaluation (``{"target": "fc1", "sparsity": 0.5, "n": 600}``
for a scan, ``{"job": "cell T=4 d=0.1"}`` for a regime study, ``{"slot": 3}`` for the
fourth trial of a search whose sampler chooses its params); it is queued with
``enqueue_trial`` and read back from the trial's fixed params, so a trial that died before
its params were suggested still names its point. A point is *finished* when a trial of it
is COMPLETE, or PRUNED (stopped early by the study's pruner).
"""

from __future__ import annotations

import contextlib
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
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
RUN_ATTR = "run"  # user attribute of an evaluated trial: the run (see run_tag) whose worker evaluated it

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

Params = Mapping[str, Any]
Key = tuple[tuple[str, Any], ...]
Objective = Callable[[optuna.Trial], float]
Check = Callable[[optuna.Study], None]


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

    def open(
        self, check: Check | None = None, *, sampler: BaseSampler | None = None, pruner: BasePruner | None = None
    ) -> optuna.Study:
        """Load the study or create it, then ``check(study)`` (refuse another identity, record ours).

        Under the planning lock: two processes on a fresh storage do not both create it, nor
        interleave their checks. ``check`` refuses by raising, before writing anything.
        """
        storage = self.storage()
        with self.lock():
            try:
                # load_study first: create_study(load_if_exists=True) appends to a journal even when the study exists.
                study = optuna.load_study(study_name=self.name, storage=storage, sampler=sampler, pruner=pruner)
            except KeyError:
                study = optuna.create_study(
                    storage=storage, study_name=self.name, direction="maximize", sampler=sampler, pruner=pruner,
                    load_if_exists=True,
                )
            if check is not None:
                check(study)
        return study


def finished(study: optuna.Study) -> dict[Key, FrozenTrial]:
    """The finished trial (COMPLETE or PRUNED) of every finished point."""
    return {
        key(params): trial
        for trial in study.get_trials(deepcopy=False, states=FINISHED)
        if (params := point_of(trial)) is not None
    }


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
    """Queue every point of ``points`` that no trial holds (WAITING, RUNNING or finished) anywhere.

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
            if any(states[state] for state in (TrialState.WAITING, TrialState.RUNNING, *FINISHED)):
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


def run_tag() -> dict[str, str | int]:
    """A new run's tag: this process and a random id, so that two runs in one process differ too.

    A run (one scan, say) hands its tag to all of its workers (this process, spawned processes,
    Ray actors), which record it in each trial they evaluate (:data:`RUN_ATTR`): the run then
    tells what it evaluated itself from what other processes sharing the study did.
    """
    return {**worker_tag(), "id": uuid.uuid4().hex}


@contextlib.contextmanager
def optuna_verbosity(level: int) -> Iterator[None]:
    """Optuna's log level set to ``level`` (``optuna.logging.WARNING``…) for a ``with`` block, then restored."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


class _Empty(Exception):
    """The queue emptied between our look and Optuna's ask."""


class _Queued:
    """``objective`` for queued trials only: a fresh trial (the queue emptied between our look
    and Optuna's ask) is failed at once, with no params (failed, not pruned: samplers learn from
    pruned trials, and one without params would empty their search space); a queued one is
    tagged with this worker and the run it works for (``run``: a :func:`run_tag`), then evaluated."""

    def __init__(self, objective: Objective, run: Params | None = None) -> None:
        self.objective = objective
        self.run = run
        self.ran = False

    def __call__(self, trial: optuna.Trial) -> float:
        if PLANNED_ATTR not in trial.user_attrs:
            raise _Empty("the queue was empty")
        trial.set_user_attr(WORKER_ATTR, worker_tag())
        if self.run is not None:
            trial.set_user_attr(RUN_ATTR, dict(self.run))
        self.ran = True
        return self.objective(trial)


def run_queued(study: optuna.Study, objective: Objective, limit: int | None = None, run: Params | None = None) -> int:
    """Evaluate queued trials of ``study`` with ``objective`` until none waits (or ``limit`` ran).

    Through ``study.optimize``: each trial runs with its heartbeat, and one whose objective
    raises is marked FAIL before the error is re-raised here. A trial declared dead while it
    ran (its heartbeat was late) has been failed and queued again by another process: our
    result is dropped. ``run``: the :func:`run_tag` recorded in each trial. Returns how many
    trials were evaluated.
    """
    ran = 0
    # A failing trial is logged by Optuna with its traceback; the error itself reaches the caller.
    with optuna_verbosity(optuna.logging.ERROR):
        while (limit is None or ran < limit) and study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            queued = _Queued(objective, run)
            with contextlib.suppress(UpdateFinishedTrialError):
                study.optimize(queued, n_trials=1, catch=(_Empty,))
            ran += queued.ran
    return ran


class Drain:
    """A worker's drain of one shared study (see :mod:`prunescope.trials.executors`).

    ``drain(limit)`` evaluates up to ``limit`` queued trials with ``objective`` (None: until
    none waits). ``study``: the study as opened in this process, used as it is (an
    in-memory one too) by the ``local`` executor; a pickled copy (a worker's) drops it and
    loads the study from ``place`` once, with the same sampler and pruner. ``run``: the
    :func:`run_tag` of the run these workers evaluate for, recorded in each trial.
    """

    def __init__(
        self, place: Place, objective: Objective, study: optuna.Study | None = None, run: Params | None = None
    ) -> None:
        self.place = place
        self.objective = objective
        self.run = run
        self.study = study
        self.sampler = None if study is None else study.sampler
        self.pruner = None if study is None else study.pruner

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "study": None}

    def __call__(self, limit: int | None) -> int:
        if self.study is None:
            self.study = optuna.load_study(
                study_name=self.place.name, storage=self.place.storage(), sampler=self.sampler, pruner=self.pruner
            )
        return run_queued(self.study, self.objective, limit, self.run)
