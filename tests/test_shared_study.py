"""Studies shared by processes: planning never repeats a point, dead workers' trials are retried,
killed scans resume, and every executor (local, processes, Ray) gives the same curves and pick.

Scan processes are ``tests/shared_scan.py`` (a small MLP on synthetic data, 13 points); the
PostgreSQL variants of the process tests are in ``test_postgres.py``. The tests that start
processes or Ray are marked ``slow`` (each starts several Python processes that import
torch: tens of seconds on two busy cores); ``.ci/run`` runs them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState
from shared_scan import LEVELS, launch, load, running, states_by_point, trained, uninterrupted, wait_for_study

from prunescope.cli import main
from prunescope.errors import PrunescopeError
from prunescope.pick.pickers import ThresholdPicker
from prunescope.scan import scan
from prunescope.trials.queue import Place, plan
from prunescope.trials.status import load_status


@pytest.fixture(scope="module")
def reference():
    return uninterrupted()


def finish(process, timeout: float = 300) -> str:
    """Wait for a scan process to exit 0; its stderr."""
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-2000:]
    return err


def assert_each_point_once(study: optuna.Study, evaluations: int) -> dict:
    """Every planned point finished exactly once; returns the states per point."""
    states = states_by_point(study)
    assert len(states) == evaluations
    assert all(count[TrialState.COMPLETE] == 1 for count in states.values()), states
    assert not any(count[TrialState.WAITING] or count[TrialState.RUNNING] for count in states.values())
    return states


def assert_same_result(result_file, reference) -> None:
    """The same curves (measured here or by another process: ``reused`` differs) and the same pick."""
    result = json.loads(result_file.read_text())
    bookkeeping = {"reused": 0, "evaluated_here": 0}
    assert {**result["curves"], **bookkeeping} == {**reference["curves"], **bookkeeping}
    assert result["pick"] == reference["pick"]


def race(storage, name, tmp_path, *, processes: int, slow: float = 0.0):
    """Start ``processes`` scans that all begin scanning at the same moment (once all are ready)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    results = [tmp_path / f"result{i}.json" for i in range(processes)]
    started = [launch(storage, name, r, gate=gate, slow=slow) for r in results]
    deadline = time.time() + 120
    while len(list(gate.glob("*.ready"))) < processes:
        assert all(p.poll() is None for p in started) and time.time() < deadline, "a scan process did not start"
        time.sleep(0.05)
    (gate / "go").touch()
    return started, results


def run_race_with_a_victim(storage, name, tmp_path, reference, slow: float = 1.0) -> None:
    """Four scans on one study; one is killed (kill -9) while it evaluates a trial; the others finish
    every point exactly once, the victim's trial among them (retried by another process)."""
    started, results = race(storage, name, tmp_path, processes=4, slow=slow)
    victim = started[0]
    study = wait_for_study(storage, name, started)
    deadline = time.time() + 120
    while (trial := running(study, victim.pid)) is None:
        assert victim.poll() is None and time.time() < deadline, "the victim never ran a trial"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for process in started[1:]:
        finish(process)
    study = load(storage, name)
    states = assert_each_point_once(study, reference["evaluations"])
    params = trial.system_attrs["fixed_params"]
    killed = (params["target"], params["sparsity"], params["n"])
    assert states[killed][TrialState.FAIL] == 1  # the killed attempt ...
    (retry,) = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.params == params]
    assert retry.user_attrs["worker"]["pid"] != victim.pid  # ... retried by another process
    for result in results[1:]:
        assert_same_result(result, reference)


@pytest.mark.slow
def test_four_processes_on_one_journal_evaluate_every_point_once(tmp_path, reference):
    journal = tmp_path / "study.journal"
    started, results = race(journal, "scan", tmp_path, processes=4)
    for process in started:
        finish(process)
    states = assert_each_point_once(load(journal, "scan"), reference["evaluations"])
    assert not any(count[TrialState.FAIL] for count in states.values())
    for result in results:
        assert_same_result(result, reference)
    # Each process counts what it evaluated itself, not the whole study (issue 25): together, each point once.
    assert sum(json.loads(r.read_text())["curves"]["evaluated_here"] for r in results) == reference["evaluations"]


@pytest.mark.slow
def test_a_process_killed_mid_trial_on_a_journal_has_its_trial_retried(tmp_path, reference):
    run_race_with_a_victim(tmp_path / "study.journal", "scan", tmp_path, reference)


@pytest.mark.slow
def test_a_scan_killed_at_a_random_moment_resumes_without_repeating_or_losing_work(tmp_path, reference):
    journal = tmp_path / "study.journal"
    first = launch(journal, "scan", tmp_path / "killed.json", slow=0.1)
    study = wait_for_study(journal, "scan", [first])
    deadline = time.time() + 120
    while running(study) is None:
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0, 0.1 * reference["evaluations"] * 0.8))
    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    done_before = {p for p, c in states_by_point(load(journal, "scan")).items() if c[TrialState.COMPLETE]}

    finish(launch(journal, "scan", tmp_path / "rerun.json"))
    study = load(journal, "scan")
    states = assert_each_point_once(study, reference["evaluations"])  # none repeated, none lost
    assert done_before <= {p for p, c in states.items() if c[TrialState.COMPLETE]}
    assert_same_result(tmp_path / "rerun.json", reference)
    rerun = json.loads((tmp_path / "rerun.json").read_text())["curves"]
    assert rerun["evaluated_here"] == reference["evaluations"] - len(done_before)  # the rest: the killed process's


@pytest.mark.slow
def test_processes_executor_replaces_a_killed_worker_and_retries_its_trial(tmp_path, reference):
    journal = tmp_path / "study.journal"
    parent = launch(journal, "scan", tmp_path / "result.json", slow=0.3, executor="processes", workers=2)
    study = wait_for_study(journal, "scan", [parent])
    deadline = time.time() + 120
    while (trial := running(study)) is None:
        assert parent.poll() is None and time.time() < deadline, "no worker ran a trial"
        time.sleep(0.05)
    worker = trial.user_attrs["worker"]["pid"]
    assert worker != parent.pid
    os.kill(worker, signal.SIGKILL)
    err = finish(parent)
    assert f"(pid {worker}) died with exit code -9; starting another" in err
    study = load(journal, "scan")
    states = assert_each_point_once(study, reference["evaluations"])
    params = trial.system_attrs["fixed_params"]
    assert states[(params["target"], params["sparsity"], params["n"])][TrialState.FAIL] == 1
    pids = {t.user_attrs["worker"]["pid"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert worker not in pids
    assert_same_result(tmp_path / "result.json", reference)
    # The scan's own workers count as the scan: everything was evaluated here.
    assert json.loads((tmp_path / "result.json").read_text())["curves"]["evaluated_here"] == reference["evaluations"]


@pytest.mark.slow
def test_ray_executor_gives_the_same_curves_and_pick_as_local(tmp_path, reference):
    ray = pytest.importorskip("ray")
    model, data = trained()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        curves = scan(model, data, strategy="grid", levels=LEVELS, device="cpu", storage=tmp_path / "study.journal",
                      executor_kind="ray", workers=2)
    finally:
        ray.shutdown()
    assert json.loads(json.dumps(curves.to_dict())) == reference["curves"]
    assert ThresholdPicker(max_drop=0.02).pick(curves).allocation == reference["pick"]
    study = load(tmp_path / "study.journal", "scan")
    assert_each_point_once(study, reference["evaluations"])
    assert len({t.user_attrs["worker"]["pid"] for t in study.get_trials(states=(TrialState.COMPLETE,))}) == 2


# Planning and dead workers, in one process -------------------------------------------------------------------


def _study(place: Place) -> optuna.Study:
    return optuna.create_study(storage=place.storage(), study_name=place.name, load_if_exists=True)


pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")

POINTS = [{"x": 1}, {"x": 2}]


def test_planning_queues_a_point_only_when_no_trial_holds_it(tmp_path):
    place = Place(str(tmp_path / "study.journal"), "s")
    study = _study(place)
    assert plan(study, place, POINTS) == 2
    assert plan(study, place, POINTS) == 0  # WAITING
    trial = study.ask()  # RUNNING
    assert plan(study, place, POINTS) == 0
    study.tell(trial, 1.0)  # COMPLETE
    assert plan(study, place, POINTS) == 0
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)  # a failed point is queued again: its retry
    assert plan(study, place, POINTS) == 1
    assert Counter(t.state for t in study.trials) == {TrialState.COMPLETE: 1, TrialState.FAIL: 1, TrialState.WAITING: 1}


def test_a_point_that_keeps_failing_is_an_error_not_an_endless_retry(tmp_path):
    place = Place(str(tmp_path / "study.journal"), "s", max_retries=1)
    study = _study(place)
    for _ in range(2):
        plan(study, place, POINTS[:1])
        study.tell(study.ask(), state=TrialState.FAIL)
    with pytest.raises(PrunescopeError, match=r"\{'x': 1\} failed 2 times"):
        plan(study, place, POINTS[:1])


def test_a_trial_whose_heartbeat_stopped_on_another_host_is_failed_after_the_grace_period(tmp_path):
    place = Place(str(tmp_path / "study.journal"), "s", heartbeat_interval=1, grace_period=2)
    study = _study(place)
    plan(study, place, POINTS[:1])
    trial = study.ask()
    trial.set_user_attr("worker", {"host": "another-machine", "pid": os.getpid()})
    study._storage.record_heartbeat(trial._trial_id)
    assert plan(study, place, POINTS[:1]) == 0  # alive: its heartbeat is fresh
    time.sleep(2.5)
    assert plan(study, place, POINTS[:1]) == 1  # dead: failed, its point queued again
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]


def test_status_counts_a_finished_shared_scan(tmp_path, capsys):
    journal = tmp_path / "study.journal"
    model, data = trained()
    curves = scan(model, data, strategy="grid", levels=LEVELS[:2], device="cpu", storage=journal, study_name="mlp")
    status = load_status(str(journal), "mlp")
    assert (status.done, status.running, status.waiting, status.failed) == (curves.evaluations, 0, 0, 0)
    assert status.eta_seconds == 0.0 and status.per_minute > 0
    with pytest.raises(SystemExit) as exit_:
        main(["status", "--storage", str(journal), "--study-name", "nope"])
    assert exit_.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no study 'nope'" in err and "studies there: mlp" in err
