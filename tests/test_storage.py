"""A storage path that is not an Optuna journal is refused before Optuna touches it (issue 25)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from prunescope.errors import UsageError
from prunescope.trials.storage import JOURNAL_OPS, HeartbeatJournalStorage, open_storage

RECORD = {"op_code": 0, "worker_id": "w-1", "study_name": "scan", "directions": [2]}


def _line(record: object) -> bytes:
    return json.dumps(record).encode() + b"\n"


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        (b"hi\n", "line 1 is not JSON"),
        (bytes(range(256)) * 4, "is not JSON"),
        (b"\xff\xfe\n", "line 1 is not JSON"),
        (_line({"worker_id": "w-1", "study_id": 0}), "line 1 is not a journal record"),  # no op_code
        (_line({**RECORD, "op_code": 11}), "line 1 is not a journal record"),  # beyond DISCARD_TRIALS
        (_line({**RECORD, "op_code": True}), "line 1 is not a journal record"),  # a bool, not an op code
        (_line({**RECORD, "op_code": 1.0}), "line 1 is not a journal record"),
        (_line({**RECORD, "worker_id": 7}), "line 1 is not a journal record"),
        (_line([RECORD]), "line 1 is not a journal record"),
        (_line(RECORD) + b"x = 1\n", "line 2 is not JSON"),
        (_line(RECORD) + b"[" * 100_000 + b"]" * 100_000 + b"\n", "line 2 is not JSON"),  # nested too deeply
    ],
)
def test_a_file_that_is_not_a_journal_is_refused_and_left_unchanged(tmp_path: Path, content: bytes, fault: str):
    path = tmp_path / "afile"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="is not an Optuna journal") as refused:
        open_storage(path)
    message = str(refused.value)
    assert fault in message and "\n" not in message and str(path) in message
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no lock file either


def test_a_directory_or_device_is_refused(tmp_path: Path):
    with pytest.raises(UsageError, match="not a regular file"):
        open_storage(tmp_path)
    with pytest.raises(UsageError, match="not a regular file"):
        open_storage("/dev/null")


def test_a_real_journal_is_accepted_even_after_a_killed_writer(tmp_path: Path):
    path = tmp_path / "study.journal"
    study = optuna.create_study(storage=open_storage(path), study_name="s")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    written = path.read_bytes()
    assert len(written.splitlines()) > 3
    # A writer killed mid-append leaves an unterminated last line: still a journal.
    path.write_bytes(written + b'{"op_code": 4, "worker_id": "w')
    again = optuna.load_study(study_name="s", storage=open_storage(path))
    assert len(again.trials) == 3
    assert path.read_bytes().startswith(written)


def test_an_empty_file_or_a_new_path_is_a_fresh_journal(tmp_path: Path):
    empty = tmp_path / "empty.journal"
    empty.touch()
    optuna.create_study(storage=open_storage(empty), study_name="s")
    assert json.loads(empty.read_text().splitlines()[0])["op_code"] == 0
    fresh = tmp_path / "sub" / "new.journal"
    optuna.create_study(storage=open_storage(fresh), study_name="s")
    assert fresh.is_file()


def test_the_op_codes_accepted_are_optunas():
    from optuna.storages.journal._storage import JournalOperation  # private: checked here, not imported by prunescope

    assert set(JOURNAL_OPS) == {op.value for op in JournalOperation}


def test_a_journal_is_synced_to_disk_when_a_trial_finishes_not_after_every_record(tmp_path: Path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    storage = HeartbeatJournalStorage(str(tmp_path / "study.journal"), heartbeat_interval=10, grace_period=60)
    study = optuna.create_study(storage=storage, study_name="scan")
    assert len(synced) == 1  # the study's creation
    trial = study.ask()
    trial.set_user_attr("worker", {"host": "h", "pid": 1})
    storage.record_heartbeat(trial._trial_id)
    assert len(synced) == 1  # claiming a trial and tagging it are written, not synced
    plain = JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
    reread = optuna.load_study(study_name="scan", storage=plain)
    assert reread.trials[0].user_attrs["worker"] == {"host": "h", "pid": 1}  # and read by others at once
    study.tell(trial, 0.5)
    assert len(synced) == 2  # the finished trial, with every record before it
