"""The regime study's jobs as Optuna trials: resumable, and shared by any executor's workers.

Every job (train one dense model, measure one cell) is one trial whose only param is
``job``, its key; its result is the trial's ``result`` user attribute (JSON). Jobs are
points of a :class:`~prunescope.trials.points.QueuedStudy`: queued under the study's
planning lock (:func:`~prunescope.trials.queue.plan`, so two processes planning at once
queue each job once) and run by the workers of any :mod:`prunescope.trials` executor
(``local``, ``processes``, ``ray``). A rerun finds every finished job in the study and
queues only the others; a job whose worker died is queued again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from prunescope.errors import UsageError
from prunescope.trials.points import QueuedStudy
from prunescope.trials.queue import Place

Job = Callable[[str], dict[str, Any]]
"""``job(key) -> result``: run the job named ``key`` and return its JSON-like result."""
JOB = "job"  # the one param of a job's trial


@dataclass(frozen=True)
class JobObjective:
    """A job's trial: run the job its ``job`` param names (one of ``keys``), record its result.

    Picklable when ``job`` is (a module-level function or a partial of one), for workers.
    """

    keys: tuple[str, ...]
    job: Job

    def __call__(self, trial: optuna.Trial) -> float:
        key = trial.suggest_categorical(JOB, self.keys)
        start = time.perf_counter()
        result = self.job(key)
        trial.set_user_attr("result", result)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        return 0.0


def open_jobs(place: Place, identity: dict[str, Any]) -> optuna.Study:
    """The study at ``place``, created if new; one made with another ``identity`` is refused, untouched."""

    def check(study: optuna.Study) -> None:
        stored = study.user_attrs.get("identity")
        if stored is not None and stored != identity:
            changed = sorted(k for k in identity.keys() | stored.keys() if identity.get(k) != stored.get(k))
            raise UsageError(f"{place.where()} holds a regime study with other settings ({', '.join(changed)}); "
                             "use another --out (or --storage) to start afresh")
        if stored is None:
            study.set_user_attr("identity", identity)

    return place.open(check)


def results(jobs: QueuedStudy) -> dict[str, dict[str, Any]]:
    """``{key: result}`` of every finished job."""
    return {dict(point)[JOB]: trial.user_attrs["result"] for point, trial in jobs.finished().items()}


def run_jobs(jobs: QueuedStudy, keys: Sequence[str],
             on_done: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Have the jobs ``keys`` finished (queued, run by the study's workers); ``{key: result}`` of all of them.

    ``on_done(key)`` is called as each finishes.
    """
    report = None if on_done is None else lambda point, _: on_done(dict(point)[JOB])
    done = jobs.run([{JOB: key} for key in keys], report)
    return {dict(point)[JOB]: trial.user_attrs["result"] for point, trial in done.items()}


def study_path(out: str | os.PathLike[str]) -> str:
    """Where the regime study's journal lives in ``out`` (the default storage)."""
    return os.fspath(Path(out) / "study.journal")
