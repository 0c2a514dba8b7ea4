"""Where a shared study stands: trials done, running, failed and waiting, throughput and ETA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from prunescope.errors import UsageError
from prunescope.trials.queue import census, point_of
from prunescope.trials.storage import is_url, open_storage

THROUGHPUT_WINDOW = 100  # the throughput is measured over the last this many finished trials


@dataclass(frozen=True)
class Status:
    """Counts of a study's queued trials and its recent pace.

    done / running / waiting / failed: trials in each state (failed: every failed attempt,
    retried or not); points_done: points with a finished trial; retried: failed points
    since finished. per_minute: trials finished per minute over the last
    :data:`THROUGHPUT_WINDOW` (None before two); eta_seconds: the queue (waiting +
    running) at that pace (None when unknown). A study that plans as it goes (an adaptive
    scan) queues more later: the ETA is that of the points queued now.
    """

    name: str
    done: int
    running: int
    waiting: int
    failed: int
    points_done: int
    retried: int
    per_minute: float | None
    eta_seconds: float | None


def study_status(study: optuna.Study) -> Status:
    """The :class:`Status` of ``study``."""
    trials = [t for t in study.get_trials(deepcopy=False) if point_of(t) is not None]
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    points = census(study).values()
    finished = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete), key=lambda t: t.datetime_complete
    )[-THROUGHPUT_WINDOW:]
    per_minute = None
    if len(finished) >= 2:
        start = min(t.datetime_start for t in finished if t.datetime_start)
        span = (finished[-1].datetime_complete - start).total_seconds()
        per_minute = 60 * len(finished) / span if span > 0 else None
    queue = count[TrialState.WAITING] + count[TrialState.RUNNING]
    return Status(
        name=study.study_name,
        done=count[TrialState.COMPLETE],
        running=count[TrialState.RUNNING],
        waiting=count[TrialState.WAITING],
        failed=count[TrialState.FAIL],
        points_done=sum(1 for states in points if states[TrialState.COMPLETE]),
        retried=sum(1 for states in points if states[TrialState.COMPLETE] and states[TrialState.FAIL]),
        per_minute=per_minute,
        eta_seconds=60 * queue / per_minute if per_minute else (0.0 if not queue else None),
    )


def load_status(location: str, name: str) -> Status:
    """The status of study ``name`` at ``location`` (a database URL or a journal file); read only."""
    if not is_url(location) and not Path(location).is_file():
        raise UsageError(f"no study journal at {location}: give a scan's journal file (OUT/study.journal) or a URL")
    storage = open_storage(location)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise UsageError(f"no study {name!r} in {location} (studies there: {names}); pass --study-name") from None
    return study_status(study)
