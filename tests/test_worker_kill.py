"""A worker of the ``processes`` executor killed (kill -9) at a random moment never hangs the scan:
the parent sees the death, another worker evaluates the lost point, and the scan exits 0 with
every point of its grid evaluated once and measured as an uninterrupted scan measures it.

The scan is the CLI's (``prunescope scan --strategy grid --executor processes --workers 2``
on the digits MLP, a journal ``--storage``) in a subprocess; its workers are found as its
children in ``/proc``. Each run starts three Python processes that import torch (10-20 s on two
busy cores): three seeds run by default, all ten with ``-m slow``. The pieces it rests on are
tested in this process: a trial whose worker died before naming itself is failed after a
heartbeat interval, a killed writer leaves the journal unlocked, and workers that keep dying end
the run with a one-line error.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from shared_scan import states_by_point, wait_for_study

from prunescope.cli import main
from prunescope.errors import PrunescopeError
from prunescope.scan.strategy import SCONCE_LEVELS
from prunescope.trials import executors
from prunescope.trials.queue import Place, plan
from prunescope.trials.storage import FlockJournalLock

pytestmark = [
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes in /proc"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed"),
]

SRC = Path(__file__).resolve().parents[1] / "src"
RUNS = 10  # kills at random moments
DEFAULT_RUNS = 3  # of them in the default suite; the others are slow
TIMEOUT = 180  # seconds: a scan still running then has hung (an uninterrupted one takes 10-20 s)
# One heartbeat a second: a trial whose worker died before naming itself is seen after 1 s, not 10.
# The grace period stays long: only deaths on this host are meant to be seen here.
HEARTBEAT = ["--heartbeat-interval", "1", "--grace-period", "60"]


def scan_argv(checkpoint: Path, out: Path) -> list[str]:
    return ["scan", "--checkpoint", str(checkpoint), "--strategy", "grid", "--device", "cpu", "--out", str(out)]


@pytest.fixture(scope="module")
def reference(dense, tmp_path_factory) -> dict:
    """The curves of an uninterrupted scan in this process (one torch thread, as each worker has)."""
    out = tmp_path_factory.mktemp("reference")
    with pytest.raises(SystemExit) as done:
        main(scan_argv(dense, out))
    assert (done.value.code or 0) == 0
    return json.loads((out / "scan.json").read_text())["curves"]


def workers(parent: int) -> list[int]:
    """The live worker processes spawned by ``parent`` (its resource tracker and reaped-to-be zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        if ppid == parent and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def wait_until(condition, scan: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert scan.poll() is None, f"the scan exited before {what}: {scan.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"no {what} after {TIMEOUT} s"
        time.sleep(0.005)


def kill_a_worker(scan: subprocess.Popen, journal: Path, rng: random.Random, points: int) -> int:
    """Kill -9 one of the two workers at a random moment; its pid.

    Half the runs kill within 2 s of both workers' start, mostly while they boot (import torch,
    read the drain from the parent); the others once ``k`` points are complete (``k`` drawn from
    1 to ``points - 4``: work is left), a random moment of up to 50 ms later (a trial lasts tens).
    """
    wait_until(lambda: len(workers(scan.pid)) == 2, scan, "two workers")
    after = rng.choice([0, rng.randint(1, points - 4)])
    if after:
        study = wait_for_study(journal, "scan", [scan])
        wait_until(lambda: len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= after, scan,
                   f"{after} complete trials")
    time.sleep(rng.uniform(0, 0.05) if after else rng.uniform(0, 2))
    alive = workers(scan.pid)
    assert alive, "no worker left to kill: the scan finished its points first"
    victim = rng.choice(alive)
    os.kill(victim, signal.SIGKILL)
    return victim


@pytest.mark.parametrize(
    "seed", [pytest.param(seed, marks=() if seed < DEFAULT_RUNS else pytest.mark.slow) for seed in range(RUNS)]
)
def test_a_scan_whose_worker_is_killed_at_a_random_moment_finishes_every_point_once(
    seed, dense, reference, tmp_path
):
    points = 1 + len(reference["curves"]) * len(SCONCE_LEVELS)  # the dense model and every grid level of each layer
    journal, out = tmp_path / "study.journal", tmp_path / "out"
    # Two threads for the scan: one per worker, as in the reference.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "2"}
    argv = [*scan_argv(dense, out), "--executor", "processes", "--workers", "2", "--storage", str(journal), *HEARTBEAT]
    scan = subprocess.Popen([sys.executable, "-m", "prunescope", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        kill_a_worker(scan, journal, random.Random(seed), points)
        _, err = scan.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the scan hung: still running {TIMEOUT} s after a worker was killed")
    finally:
        if scan.poll() is None:  # hung: stop it and its workers before failing
            os.killpg(scan.pid, signal.SIGKILL)
            scan.communicate()
    assert scan.returncode == 0, err[-2000:]
    curves = json.loads((out / "scan.json").read_text())["curves"]
    for name, curve in curves["curves"].items():
        assert [p["sparsity"] for p in curve["points"]] == list(SCONCE_LEVELS), name  # each level once, none lost
    assert curves["evaluations"] == points
    assert {**curves, "reused": 0} == {**reference, "reused": 0}
    states = states_by_point(optuna.load_study(study_name="scan", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))))
    assert len(states) == points
    assert all(count[TrialState.COMPLETE] == 1 and not count[TrialState.RUNNING] + count[TrialState.WAITING]
               for count in states.values()), states


def test_a_trial_whose_worker_died_before_naming_itself_is_failed_after_a_heartbeat_interval(tmp_path):
    place = Place(str(tmp_path / "study.journal"), "s", heartbeat_interval=1, grace_period=60)
    study = optuna.create_study(storage=place.storage(), study_name=place.name)
    plan(study, place, [{"x": 1}])
    study.ask()  # RUNNING, and no worker named: as a worker killed right after taking it leaves it
    assert plan(study, place, [{"x": 1}]) == 0  # it may still name itself
    time.sleep(1.5)
    assert plan(study, place, [{"x": 1}]) == 1  # a heartbeat interval later: failed, its point queued again
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]


def _hold(path: str, held) -> None:
    lock = FlockJournalLock(path)
    lock.acquire()
    held.send(True)
    time.sleep(600)


def test_a_writer_killed_while_it_holds_the_journal_lock_leaves_it_free(tmp_path):
    path = str(tmp_path / "study.journal.write.lock")
    ours, theirs = multiprocessing.Pipe()
    holder = multiprocessing.get_context("fork").Process(target=_hold, args=(path, theirs), daemon=True)
    holder.start()
    try:
        assert ours.recv()
        with open(path) as handle:
            with pytest.raises(BlockingIOError):
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by the writer
            os.kill(holder.pid, signal.SIGKILL)
            holder.join()
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free at once: no 30 s wait for a stale symlink
    finally:
        holder.kill()
        holder.join()


def _die(limit: int | None) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


@pytest.mark.slow  # two spawned processes importing torch, one after the other
def test_workers_that_keep_dying_end_the_run_with_a_one_line_error(monkeypatch):
    monkeypatch.setattr(executors, "REPLACEMENTS_PER_WORKER", 1)
    pool = executors.Processes(_die, 1)
    try:
        with pytest.raises(PrunescopeError, match=r"^2 worker processes died \(exit codes like -9\)$"):
            pool.run(lambda: False)
    finally:
        pool.close()
