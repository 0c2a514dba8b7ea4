"""``prunescope status``: where a shared study (a scan, an hparams or regimes study) stands.

The options that open a study (``--storage``, ``--study-name``, ``--executor``, …) are in
:mod:`prunescope.cli.options`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from prunescope.cli.options import StudyName
from prunescope.report.tables import listing_table
from prunescope.trials.status import load_status


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
