"""The regime study's jobs as Optuna trials: resumable, and shared by worker processes.

Every job (train one dense model, measure one cell) is one trial whose only param is
``job``, its key; its result is the trial's ``result`` user attribute (JSON). Jobs are
queued with ``enqueue_trial`` and taken with ``ask`` / ``tell``, so any number of processes
drain one queue without running a job twice, and a rerun finds every finished job in the
journal and queues only the others (a job killed mid-way is queued again).

The executor seam is :func:`run_jobs`: in this process, or in spawned worker processes
that attach to the same journal. (The scan's executors in :mod:`prunescope.scan.executors`
speak of scan points; when they take any job, this module's pool is the one to replace.)
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from prunescope.errors import UsageError
from prunescope.scan.study import quiet_optuna

Job = Callable[[str], dict[str, Any]]
"""``job(key) -> result``: run the job named ``key`` and return its JSON-like result."""


@dataclass(frozen=True)
class JobStudy:
    """A journal file holding one study's jobs; picklable, so that workers can attach to it."""

    path: str
    name: str
    keys: tuple[str, ...]

    def _study(self) -> optuna.Study:
        storage = JournalStorage(JournalFileBackend(self.path))
        try:
            # load_study first: create_study(load_if_exists=True) appends to a journal even when the study exists.
            return optuna.load_study(study_name=self.name, storage=storage)
        except KeyError:
            return optuna.create_study(study_name=self.name, storage=storage, load_if_exists=True)

    def open(self, identity: dict[str, Any]) -> optuna.Study:
        """The study, created if new; a study made with another ``identity`` is refused, untouched."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with quiet_optuna():
            study = self._study()
        stored = study.user_attrs.get("identity")
        if stored is not None and stored != identity:
            changed = sorted(k for k in identity.keys() | stored.keys() if identity.get(k) != stored.get(k))
            raise UsageError(f"{Path(self.path).parent} holds a study with other settings ({', '.join(changed)}); "
                             "use another --out to start afresh")
        if stored is None:
            study.set_user_attr("identity", identity)
        return study

    def finished(self, study: optuna.Study | None = None) -> dict[str, dict[str, Any]]:
        """``{key: result}`` of every finished job."""
        study = study or self._study()
        return {t.params["job"]: t.user_attrs["result"]
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.params.get("job")}

    def queue(self, study: optuna.Study, keys: Iterable[str]) -> list[str]:
        """Queue the ``keys`` neither finished nor queued; return those queued now."""
        waiting = {t.system_attrs["fixed_params"]["job"]
                   for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
        done = self.finished(study)
        new = [k for k in keys if k not in done and k not in waiting]
        for key in new:
            study.enqueue_trial({"job": key}, user_attrs={"queued": True})
        return new

    def run_next(self, study: optuna.Study, job: Job) -> str | None:
        """Take one queued job, run it and tell its result; None when the queue is empty."""
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return None
        trial = study.ask()
        if "queued" not in trial.user_attrs:  # another worker took the last queued job first
            study.tell(trial, state=TrialState.FAIL)
            return None
        key = trial.suggest_categorical("job", self.keys)
        start = time.perf_counter()
        try:
            result = job(key)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        trial.set_user_attr("result", result)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        study.tell(trial, 0.0)
        return key


def drain(spec: JobStudy, job: Job, on_done: Callable[[str], None] | None = None) -> None:
    """Run queued jobs in this process until none is left."""
    with quiet_optuna():
        study = spec._study()
        while (key := spec.run_next(study, job)) is not None:
            if on_done is not None:
                on_done(key)


def _worker(spec: JobStudy, job: bytes, threads: int) -> None:
    torch.set_num_threads(threads)
    drain(spec, pickle.loads(job))


def run_jobs(spec: JobStudy, study: optuna.Study, keys: Sequence[str], job: Job, *, workers: int = 1,
             on_done: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Queue ``keys`` and run them (``workers`` processes; 1: here); return ``{key: result}`` of all of them.

    ``job`` must be picklable when ``workers > 1`` (a module-level function or a partial of one).
    """
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    spec.queue(study, keys)
    if workers == 1:
        drain(spec, job, on_done)
    else:
        context = multiprocessing.get_context("spawn")
        threads = max(1, torch.get_num_threads() // workers)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_worker, spec, pickle.dumps(job), threads) for _ in range(workers)]
            seen = set(spec.finished(study))
            running = set(futures)
            while running:
                _, running = concurrent.futures.wait(running, timeout=0.5)
                for key in sorted(spec.finished(study).keys() & set(keys) - seen):
                    seen.add(key)
                    if on_done is not None:
                        on_done(key)
            for future in futures:
                future.result()  # a worker's error surfaces here
    finished = spec.finished(study)
    missing = [k for k in keys if k not in finished]
    if missing:
        raise UsageError(f"jobs {', '.join(missing[:3])} did not finish; rerun with the same --out to resume")
    return {k: finished[k] for k in keys}


def study_path(out: str | os.PathLike[str]) -> str:
    """Where the regime study's journal lives in ``out``."""
    return os.fspath(Path(out) / "study.journal")
