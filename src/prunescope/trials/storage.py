"""Where a shared study lives, a lock for planning in it, and how a dead worker's trial is found.

A location is a journal file path (the default: Optuna's journal file, synced once per finished
trial, :class:`JournalFile`), a database URL (``postgresql://…``, ``mysql://…``, ``sqlite:///…``:
Optuna's RDB storage) or None (in memory, private to this process).

Dead workers. A worker records, in its running trial, its host and process id (user
attribute ``worker``) and a heartbeat every ``heartbeat_interval`` seconds: Optuna's own
heartbeat on a database, the same mechanism written into the journal for a journal file. A
RUNNING trial is *stale* when its heartbeat is older than ``grace_period`` seconds (its
worker died or lost the storage, on any machine) or, at once, when its worker ran on this
host and that process no longer exists, or when it has run a heartbeat interval without
naming its worker (the worker died between taking the trial and tagging it: nothing else
would ever tell, on a database no heartbeat may have been written either).
``optuna.storages.fail_stale_trials`` marks stale trials FAIL;
:func:`prunescope.trials.queue.plan` then queues their points again.

Locks. Planning (look at the trials, queue the missing points) must not interleave
between processes, or two of them queue one point. :func:`planning_lock` serialises it per
study: a PostgreSQL advisory lock (or MySQL ``GET_LOCK``) held by a transaction, an
``flock`` on a file next to a journal or SQLite file. Both are released by the operating
system or the server when their holder dies. The same lock guards the creation of the
tables in a fresh database, where concurrent ``CREATE TABLE`` fails (``UniqueViolation``).
A journal's writes are serialised by an ``flock`` too (:class:`FlockJournalLock`), not by
Optuna's symlink, which outlives a killed writer and stalls every other one for 30 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import stat
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import BaseJournalFileLock, get_lock_file
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.pool import NullPool

from prunescope.errors import UsageError
from prunescope.io import parse_json

HEARTBEAT_INTERVAL = 10  # seconds between heartbeats of a running trial
GRACE_PERIOD = 60  # seconds without a heartbeat after which a running trial's worker counts as dead
WORKER_ATTR = "worker"  # user attribute of a trial: {"host": …, "pid": …} of the process running it
SCHEMA_LOCK = "prunescope:schema"  # lock name guarding table creation in a fresh database
LOCK_SUFFIX = ".plan.lock"  # next to a journal or SQLite file: the planning lock
WRITE_LOCK_SUFFIX = ".write.lock"  # next to a journal file: the lock of its appends
JOURNAL_OPS = range(11)  # optuna.storages.journal._storage.JournalOperation: CREATE_STUDY (0) … DISCARD_TRIALS (10)


def is_url(location: str | None) -> bool:
    """Whether ``location`` is a database URL rather than a journal file path."""
    return location is not None and "://" in location


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def worker_tag() -> dict[str, str | int]:
    """This process as a trial's ``worker`` attribute."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists and is not a zombie (killed, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def died_here(trial: FrozenTrial) -> bool:
    """Whether ``trial``'s worker ran on this host and is gone."""
    worker = trial.user_attrs.get(WORKER_ATTR)
    return isinstance(worker, dict) and worker.get("host") == socket.gethostname() and not _alive(worker["pid"])


def gone(trial: FrozenTrial, heartbeat_interval: int, now: float) -> bool:
    """Whether RUNNING ``trial``'s worker is known dead without waiting for the grace period: it ran
    on this host and is gone, or it has not named itself ``heartbeat_interval`` seconds after the
    start (a live worker names itself at once, right after taking the trial)."""
    start = trial.datetime_start
    unnamed = WORKER_ATTR not in trial.user_attrs and start is not None
    return died_here(trial) or (unnamed and now - start.timestamp() > heartbeat_interval)


class FlockJournalLock(BaseJournalFileLock):
    """The lock of a journal's appends: an ``flock`` on ``path``, released by the kernel when its holder dies.

    Held per thread (a worker's heartbeat thread appends too): each acquire opens the file anew,
    and two open files of one process exclude each other like two processes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.held: dict[int, contextlib.ExitStack] = {}

    def acquire(self) -> bool:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_file_lock(self.path))
            self.held[threading.get_ident()] = stack.pop_all()
        return True

    def release(self) -> None:
        self.held.pop(threading.get_ident()).close()


# Journal records after which the file is synced to disk: a study created, a trial finished (its state COMPLETE,
# PRUNED or FAIL). Everything written before is synced with them.
_CREATE_STUDY, _SET_TRIAL_STATE = 0, 6
_FINISHED = frozenset({TrialState.COMPLETE.value, TrialState.PRUNED.value, TrialState.FAIL.value})


def _durable(log: dict[str, Any]) -> bool:
    return log["op_code"] == _CREATE_STUDY or (log["op_code"] == _SET_TRIAL_STATE and log.get("state") in _FINISHED)


class JournalFile(JournalFileBackend):
    """Optuna's journal file, synced to disk (``fsync``) once per finished trial instead of after every record.

    Every record is written, and read by other processes, at once, as before: a killed process loses
    nothing it wrote. Only a crash of the machine could lose records of a trial still running (it is then
    queued again); a finished trial is on disk before the call that finishes it returns. A trial makes
    about 14 records (claim, attributes, heartbeats, result), each ``fsync`` about 5 ms on a disk: syncing
    all of them was most of a small scan's time.
    """

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if any(_durable(log) for log in logs):
            super().append_logs(logs)
            return
        lines = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        with get_lock_file(self._lock), open(self._file_path, "ab") as journal:
            journal.write(lines.encode("utf-8"))


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with heartbeats, as its RDB storage has: a trial's ``heartbeat``
    system attribute (Unix time) is renewed every ``heartbeat_interval`` seconds while it runs.
    Appends are serialised by :class:`FlockJournalLock` (every prunescope process writing the
    journal uses it; a process using Optuna's own lock would not be excluded)."""

    def __init__(self, path: str, *, heartbeat_interval: int, grace_period: int) -> None:
        super().__init__(JournalFile(path, lock_obj=FlockJournalLock(path + WRITE_LOCK_SUFFIX)))
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period

    def record_heartbeat(self, trial_id: int) -> None:
        # The trial may have been failed meanwhile (declared dead): its worker's result is dropped anyway.
        with contextlib.suppress(UpdateFinishedTrialError):
            self.set_trial_system_attr(trial_id, "heartbeat", time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [
            t._trial_id
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
            if gone(t, self.heartbeat_interval, now)
            or now - t.system_attrs.get("heartbeat", t.datetime_start.timestamp()) > self.grace_period
        ]

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> None:
        return None  # prunescope.trials.queue.plan queues a dead trial's point again, under its lock


class HeartbeatRDBStorage(RDBStorage):
    """Optuna's RDB storage with heartbeats; a trial whose worker is known gone (see :func:`gone`) is stale at once."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = set(super()._get_stale_trial_ids(study_id))
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        now = time.time()
        return sorted(stale | {t._trial_id for t in running if gone(t, self.heartbeat_interval, now)})


def check_heartbeat(heartbeat_interval: int, grace_period: int) -> None:
    """Refuse (one-line UsageError) a heartbeat that cannot tell a live worker from a dead one."""
    if heartbeat_interval < 1 or grace_period <= heartbeat_interval:
        raise UsageError(
            f"heartbeat interval must be at least 1 s and the grace period longer than it, "
            f"got {heartbeat_interval} and {grace_period}"
        )


def open_storage(
    location: str | os.PathLike[str] | None, *, heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
) -> BaseStorage:
    """The storage at ``location`` (see the module's docstring); a location that cannot be
    opened (unknown dialect, missing driver, no server, unwritable path) is a one-line UsageError."""
    if location is None:
        return InMemoryStorage()
    location = os.fspath(location)
    if not location.strip():
        raise UsageError("the storage is empty: give a database URL (postgresql://user@host/db) or a journal file")
    check_heartbeat(heartbeat_interval, grace_period)
    try:
        if is_url(location):
            # A fresh database: only one process creates the tables.
            with _database_lock(location, SCHEMA_LOCK), warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats: experimental since Optuna 2.9
                return HeartbeatRDBStorage(
                    location, heartbeat_interval=heartbeat_interval, grace_period=grace_period
                )
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        check_journal(location)
        return HeartbeatJournalStorage(location, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    except UsageError:
        raise
    # A database URL fails in many ways (unknown dialect, missing driver, no server, bad
    # path); a journal file with OSError or a corrupt log. All are the user's to fix.
    except Exception as error:
        raise UsageError(f"cannot open storage {location}: {_first_line(error)}") from None


def _journal_fault(line: bytes) -> str | None:
    """Why ``line`` (one complete line of a journal file) is not an Optuna journal record, or None."""
    try:
        record = parse_json(line.decode("utf-8"), "the line")
    except (UsageError, UnicodeDecodeError):
        return "is not JSON"
    if not isinstance(record, dict) or not isinstance(record.get("worker_id"), str):
        return "is not a journal record"
    op_code = record.get("op_code")
    if type(op_code) is not int or op_code not in JOURNAL_OPS:  # type(): True is an int to isinstance
        return "is not a journal record"
    return None


def check_journal(path: str) -> None:
    """Refuse (one-line UsageError) an existing ``path`` that is not an Optuna journal file.

    Optuna appends to any file it is given, so a mistyped ``--storage`` would grow a file of
    the user's (a system file, run as root) before failing on it. The file is only read here,
    before Optuna opens it. An empty file is a fresh journal; an unterminated last line is
    what a writer killed mid-append leaves (Optuna skips it), so it is not judged. A path
    that does not exist is fine: Optuna creates it.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise UsageError(f"cannot open storage {path}: {(error.strerror or str(error)).lower()}") from None
    hint = "give a new path or the journal of an earlier scan or study"
    if not stat.S_ISREG(mode):
        raise UsageError(f"storage {path} is not an Optuna journal (not a regular file): {hint}")
    try:
        with open(path, "rb") as journal:
            for number, line in enumerate(journal, start=1):
                fault = _journal_fault(line) if line.endswith(b"\n") else None
                if fault is not None:
                    raise UsageError(f"storage {path} is not an Optuna journal (line {number} {fault}): {hint}")
    except OSError as error:
        raise UsageError(f"cannot read storage {path}: {(error.strerror or str(error)).lower()}") from None


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by close, or by the kernel when the holder dies
        yield


def _lock_key(name: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _database_lock(url: str, name: str) -> Iterator[None]:
    parsed = sqlalchemy.engine.make_url(url)
    dialect = parsed.get_backend_name()
    if dialect == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            yield  # private to this process
            return
        with _file_lock(parsed.database + LOCK_SUFFIX):
            yield
        return
    statements = {
        "postgresql": ("SELECT pg_advisory_xact_lock(:key)", None),
        "mysql": ("SELECT GET_LOCK(:key, -1)", "SELECT RELEASE_LOCK(:key)"),
    }
    if dialect not in statements:
        raise UsageError(f"cannot open storage {url}: use a postgresql, mysql or sqlite URL, or a journal file")
    take, release = statements[dialect]
    key = _lock_key(name) if dialect == "postgresql" else name[:64]
    # A connection of its own, closed on exit: the lock ends with it, even if we die.
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(take), {"key": key})
            yield
            if release is not None:
                connection.execute(sqlalchemy.text(release), {"key": key})
    finally:
        engine.dispose()


@contextlib.contextmanager
def planning_lock(location: str | None, study_name: str) -> Iterator[None]:
    """Hold the study's planning lock (no lock for an in-memory study, private to this process)."""
    if location is None:
        yield
    elif is_url(location):
        with _database_lock(location, f"prunescope:plan:{study_name}"):
            yield
    else:
        with _file_lock(location + LOCK_SUFFIX):
            yield
