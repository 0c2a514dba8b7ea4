"""Progress of long commands: Rich bars on a terminal, plain timestamped lines on stderr otherwise.

In a pipe, a CI log or ``nohup … > log``, a live bar is either invisible or a mess of control
codes; a line per step (at most one per task every ``LOG_INTERVAL_S`` seconds, plus each task's
first and last step) says the same and reads well in a log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

LOG_INTERVAL_S = 10.0

Update = Callable[[str, int, "int | None"], None]  # (task, done, total or None while unknown)


class _LogLines:
    """``update(task, done, total)`` as lines on stderr, throttled per task."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def __call__(self, task: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if task in self.last and not finished and now - self.last[task] < LOG_INTERVAL_S:
            return
        self.last[task] = now
        of = f"/{total}" if total is not None else ""
        print(f"{time.strftime('%H:%M:%S')} {task}: {done}{of}", file=sys.stderr, flush=True)


@contextmanager
def progress_updates(console: Console, *, transient: bool = True) -> Iterator[Update]:
    """Yields ``update(task, done, total)``: one bar per task on a terminal, else log lines on stderr."""
    if not console.is_terminal:
        yield _LogLines()
        return
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=transient) as bars:
        tasks: dict[str, object] = {}

        def update(task: str, done: int, total: int | None) -> None:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total)
            bars.update(tasks[task], completed=done, total=total if total is not None else max(done, 1))

        yield update
