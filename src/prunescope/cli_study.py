"""CLI pieces for shared studies: the options of commands that open one, and ``prunescope status``.

Every command that opens a study (``scan``, ``hparams``, ``regimes``) takes ``--storage``
and ``--study-name`` (one database, many studies; ``hparams`` names its studies by stage)
and, where it evaluates, ``--executor``, ``--workers``, ``--ray-address``,
``--gpus-per-worker``, ``--heartbeat-interval`` and ``--grace-period``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from prunescope.report import listing_table
from prunescope.trials.executors import EXECUTORS
from prunescope.trials.status import load_status

StudyName = Annotated[str, typer.Option(help="Name of the study in --storage (one database holds many).")]
Storage = Annotated[
    str | None,
    typer.Option(help="Optuna storage: postgresql://user@host/db (shared by machines) or a journal file "
                      "(default: OUT/study.journal).", show_default=False),
]
ExecutorKind = Annotated[
    str | None,
    typer.Option("--executor", help=f"Who evaluates: {', '.join(EXECUTORS)} (default: local for one worker, "
                                    "else processes).", show_default=False),
]
Workers = Annotated[int, typer.Option(help="Workers evaluating in parallel (processes or Ray actors).")]
RayAddress = Annotated[
    str | None,
    typer.Option(help="Ray cluster to join with --executor ray (auto: the running one; default: start a local one).",
                 show_default=False),
]
GpusPerWorker = Annotated[float, typer.Option(help="GPU share of each Ray worker (0.25: four per GPU).")]
HeartbeatInterval = Annotated[int, typer.Option(help="Seconds between heartbeats of a running trial.")]
GracePeriod = Annotated[
    int, typer.Option(help="Seconds without a heartbeat after which a trial's worker counts as dead and its "
                           "point is evaluated again (a worker gone from this host: at once).")
]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def status_command(
    storage: Annotated[str, typer.Option(help="The study's storage: a database URL or a journal file.")],
    study_name: StudyName = "scan",
) -> None:
    """Where a shared study stands: trials done / running / failed / waiting, throughput, ETA."""
    status = load_status(storage, study_name)
    pace = "" if status.per_minute is None else f"{status.per_minute:.1f}"
    console = Console()
    console.print(listing_table(
        f"study {status.name!r}",
        ["done", "running", "waiting", "failed", "retried points", "trials / min", "ETA of the queue"],
        [[str(status.done), str(status.running), str(status.waiting), str(status.failed), str(status.retried), pace,
          _duration(status.eta_seconds)]],
    ))
    console.print(f"{status.points_done} points finished; failed counts every failed attempt (a dead worker's trial "
                  "is failed, then its point queued again); a study that plans as it goes queues more later.")
