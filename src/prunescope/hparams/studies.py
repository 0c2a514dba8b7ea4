"""Where a hyperparameter study's trials live: Optuna studies in one storage, resumable and shared.

- :func:`open_storage`: a journal file (the default, in the output directory) or any Optuna
  storage URL (``sqlite:///…``, ``postgresql://…``); one that cannot be opened is a one-line
  UsageError.
- :func:`open_study`: load or create a study and check its identity (the search space and
  what it trains); a stored study with another identity is refused, naming the difference.
- :func:`enqueue` / :func:`drain`: the grid's fixed points as queued trials, taken with
  ``ask`` / ``tell`` by any number of processes (Optuna gives each queued trial to exactly one
  taker). Finished points are never queued again, so a killed grid resumes where it stopped.
- :func:`in_workers`: run one job in this process or in ``workers`` spawned processes.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from prunescope.errors import UsageError

JOURNAL = "hparams.journal"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(storage: str | os.PathLike | None) -> BaseStorage:
    """A journal file path, a database URL (contains ``://``) or None (in memory, no resume)."""
    if storage is None:
        return InMemoryStorage()
    where = os.fspath(storage)
    try:
        if "://" in where:
            return optuna.storages.get_storage(where)
        Path(where).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(where))
    except Exception as error:  # unknown dialect, missing driver, no server, unwritable path: the user's to fix
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"cannot open study storage {where}: {reason}") from None


def open_study(
    storage: BaseStorage, name: str, identity: Mapping[str, Any], *, sampler=None, pruner=None
) -> optuna.Study:
    """Load study ``name`` or create it; refuse, untouched, one whose stored identity differs.

    ``identity`` (JSON-like values; ``space`` is the search space's :meth:`Space.to_dict`) is
    stored in the study's user attributes when it is created.
    """
    try:
        # load first: create_study(load_if_exists=True) appends to a journal even when the study exists.
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    stored = study.user_attrs
    if not stored and study.trials:
        raise UsageError(f"study {name!r} in this storage is not a prunescope hparams study; use another --out")
    for key, value in identity.items():
        if key in stored and stored[key] != value:
            raise UsageError(f"study {name!r} was started with another {key}: {_difference(key, stored[key], value)}; "
                             "use another --out (or --storage) to start afresh")
    for key, value in identity.items():
        if key not in stored:
            study.set_user_attr(key, value)
    return study


def _difference(key: str, stored: Any, given: Any) -> str:
    if isinstance(stored, Mapping) and isinstance(given, Mapping):
        for name in sorted(set(stored) | set(given), key=str):
            if name not in given:
                return f"{name} was {stored[name]!r}, now absent"
            if name not in stored:
                return f"{name} is new ({given[name]!r})"
            if stored[name] != given[name]:
                return f"{name} was {stored[name]!r}, now {given[name]!r}"
    return f"was {stored!r}, now {given!r}"


def finished(study: optuna.Study, states: tuple[TrialState, ...] = DONE) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=states)


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def enqueue(study: optuna.Study, points: Iterable[Mapping[str, Any]]) -> int:
    """Queue ``points`` (fixed params) not yet finished nor queued; return how many were queued.

    A trial left RUNNING by a killed process is queued again (call this before starting workers).
    """
    present = {_key(t.params) for t in finished(study, (TrialState.COMPLETE,))}
    present |= {_key(t.system_attrs["fixed_params"]) for t in finished(study, (TrialState.WAITING,))}
    queued = 0
    for point in points:
        if _key(point) not in present:
            study.enqueue_trial(dict(point), user_attrs={"queued": True})
            present.add(_key(point))
            queued += 1
    return queued


Objective = Callable[[optuna.Trial], float]


def drain(study: optuna.Study, objective: Objective, on_done: Callable[[], None] | None = None) -> None:
    """Take queued trials one by one and tell their values until the queue is empty."""
    while finished(study, (TrialState.WAITING,)):
        trial = study.ask()
        if "queued" not in trial.user_attrs:
            # Another worker took the last queued trial between our look and our ask: ask made a
            # fresh trial, which must not stay RUNNING.
            study.tell(trial, state=TrialState.FAIL)
            return
        try:
            value = objective(trial)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, value)
        if on_done is not None:
            on_done()


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def in_workers(job: Callable[[], None], workers: int) -> None:
    """Run ``job`` here (``workers == 1``) or in ``workers`` spawned processes at once (it must be picklable).

    The processes share nothing but the study storage the job opens; a worker's error is raised here.
    """
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if workers == 1:
        job()
        return
    context = multiprocessing.get_context("spawn")
    threads = max(1, torch.get_num_threads() // workers)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                                initargs=(threads,)) as pool:
        for future in [pool.submit(job) for _ in range(workers)]:
            future.result()
