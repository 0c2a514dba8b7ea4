"""The hyperparameter and regime studies on the shared executors: a ``processes`` run gives the
trials of a ``local`` one, each point evaluated once, and an hparams study killed mid-trial
(kill -9) resumes without evaluating a finished point again.

Study processes are ``tests/shared_hparams.py`` (helpers to watch them: ``tests/shared_scan.py``).
Every test here starts processes that import torch: tens of seconds each on two busy
cores, so all are marked ``slow`` (``.ci/run`` runs them). Runs use one torch thread, as
the workers of two processes on two cores do, so that both give bit-identical trainings.
"""

from __future__ import annotations

import json
import os
import signal
import time

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState
from shared_hparams import GRIDS, launch, tables
from shared_scan import load, running, wait_for_study

from prunescope.hparams.studies import JOURNAL
from prunescope.regimes.study import RegimeSettings
from prunescope.regimes.study import study as regime_study
from prunescope.trials.queue import Key, key, point_of
from prunescope.trials.storage import open_storage

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")]

POINTS = {"dense-search": 4, GRIDS[0]: 8, GRIDS[1]: 8}  # the tiny study's planned points per study


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny hparams study run by the local executor, in this process."""
    return tables(tmp_path_factory.mktemp("local") / "out")


def finish(process, timeout: float = 600) -> None:
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-2000:]


def by_point(study) -> dict[Key, list[FrozenTrial]]:
    """Every planned point's trials (the failed stand-ins of an empty queue left out)."""
    found: dict[Key, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False):
        if (params := point_of(trial)) is not None:
            found.setdefault(key(params), []).append(trial)
    return found


def assert_each_point_once(study, points: int) -> dict[Key, list[FrozenTrial]]:
    """``points`` planned points, each with exactly one COMPLETE trial and none waiting or running."""
    found = by_point(study)
    assert len(found) == points
    for trials in found.values():
        states = [t.state for t in trials]
        assert states.count(TrialState.COMPLETE) == 1, states
        assert TrialState.WAITING not in states and TrialState.RUNNING not in states, states
    return found


def evaluators(found: dict[Key, list[FrozenTrial]]) -> set[int]:
    """The processes that ran the COMPLETE trials."""
    return {t.user_attrs["worker"]["pid"] for trials in found.values() for t in trials
            if t.state == TrialState.COMPLETE}


def test_hparams_study_on_processes_gives_the_local_trials(tmp_path, reference):
    out = tmp_path / "out"
    assert tables(out, "processes", 2) == reference
    for name, points in POINTS.items():
        found = assert_each_point_once(load(out / JOURNAL, name), points)
        assert os.getpid() not in evaluators(found)  # trained by the workers, not here


def test_regime_study_on_processes_gives_the_local_results_each_job_once(tmp_path):
    settings = RegimeSettings(limit_train=300, values=(1, 4), densities=(0.5,), finetune_epochs=1, epochs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = regime_study(settings, tmp_path / "local")
        shared = regime_study(settings, tmp_path / "processes", executor_kind="processes", workers=2)
    finally:
        torch.set_num_threads(threads)
    assert shared == local
    found = assert_each_point_once(load(tmp_path / "processes" / "study.journal", "regimes"), 4)  # 2 dense, 2 cells
    assert os.getpid() not in evaluators(found)


def _gone(pids: set[int], timeout: float = 60) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = set()
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.add(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_hparams_study_killed_mid_trial_resumes_without_evaluating_a_finished_point_again(tmp_path, reference):
    out = tmp_path / "out"
    journal = out / JOURNAL
    first = launch(out, slow=0.5, executor="processes", workers=2)
    grid = wait_for_study(journal, GRIDS[0], [first])
    deadline = time.time() + 300
    while running(grid) is None or len(grid.get_trials(states=(TrialState.COMPLETE,))) < 2:
        assert first.poll() is None and time.time() < deadline, "the study never got into its first grid"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    workers = {t.user_attrs["worker"]["pid"] for t in grid.get_trials(states=(TrialState.RUNNING,))}
    assert workers and first.pid not in workers
    assert _gone(workers), "the workers of a killed study kept running"
    started = set(optuna.get_all_study_names(open_storage(journal)))
    before = {name: by_point(load(journal, name)) for name in POINTS if name in started}
    completed = {name: {point: t._trial_id for point, trials in found.items() for t in trials
                        if t.state == TrialState.COMPLETE} for name, found in before.items()}
    killed = {name: [point for point, trials in found.items() if any(t.state == TrialState.RUNNING for t in trials)]
              for name, found in before.items()}
    assert len(completed["dense-search"]) == 4 and len(completed[GRIDS[0]]) >= 2
    assert killed[GRIDS[0]]  # trials the kill interrupted

    finish(launch(out, executor="processes", workers=2))
    assert json.loads((out / "tables.json").read_text()) == reference
    for name, points in POINTS.items():
        found = assert_each_point_once(load(journal, name), points)
        for point, trial_id in completed.get(name, {}).items():  # finished before the kill: never evaluated again
            assert [t._trial_id for t in found[point] if t.state == TrialState.COMPLETE] == [trial_id]
            assert len(found[point]) == 1
        for point in killed.get(name, []):  # interrupted: failed once, then finished by a retry
            assert [t.state for t in found[point]].count(TrialState.FAIL) == 1
