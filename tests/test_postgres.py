"""A scan stored in a real PostgreSQL server: the storage several machines share.

The test starts its own server on loopback in a temporary directory and stops it after;
it is skipped where PostgreSQL's binaries or psycopg (the [postgres] extra) are missing, and fails
there under ``PRUNESCOPE_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import time
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState
from postgres_server import BINARIES, create_database, local_server
from services import missing
from shared_scan import uninterrupted
from test_shared_study import assert_each_point_once, assert_same_result, finish, race, run_race_with_a_victim

from prunescope.scan import scan
from prunescope.trials.queue import Place, plan

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")


@pytest.fixture(scope="module")
def postgres_url():
    if importlib.util.find_spec("psycopg") is None:
        missing("psycopg is not installed (pip install -e '.[postgres]')")
    if not BINARIES:
        missing("PostgreSQL server binaries not installed (apt-get install postgresql)")
    with local_server() as url:
        yield url


def test_two_workers_share_a_postgres_study_and_a_rerun_evaluates_nothing(tiny_model, tiny_data, postgres_url):
    curves = scan(tiny_model, tiny_data, strategy="grid", levels=(0.5, 0.9), storage=postgres_url,
                  study_name="pg-scan", workers=2, device="cpu")
    study = optuna.load_study(study_name="pg-scan", storage=postgres_url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    counts = Counter((t.params["target"], t.params["sparsity"], t.params["n"]) for t in complete)
    assert counts and max(counts.values()) == 1  # no point evaluated twice
    assert len(complete) == 1 + 3 * 2  # dense + three targets at two levels

    again = scan(tiny_model, tiny_data, strategy="grid", levels=(0.5, 0.9), storage=postgres_url,
                 study_name="pg-scan", device="cpu")
    assert again.reused == again.evaluations == curves.evaluations
    assert again.curves == curves.curves


_databases = itertools.count()


@pytest.fixture(scope="module")
def reference():
    return uninterrupted()


@pytest.fixture
def fresh_url(postgres_url):
    """A new, empty database on the test's server: no tables yet, as on a first run."""
    return create_database(postgres_url, f"fresh{next(_databases)}")


@pytest.mark.slow
def test_four_processes_on_a_fresh_postgres_database_evaluate_every_point_once(fresh_url, tmp_path, reference):
    started, results = race(fresh_url, "lenet-scan", tmp_path, processes=4)
    for process in started:
        finish(process)  # no schema-creation race, no "queued evaluations did not finish"
    study = optuna.load_study(study_name="lenet-scan", storage=fresh_url)
    states = assert_each_point_once(study, reference["evaluations"])
    assert not any(count[TrialState.FAIL] for count in states.values())
    for result in results:
        assert_same_result(result, reference)


@pytest.mark.slow
def test_a_process_killed_mid_trial_on_postgres_has_its_trial_retried(fresh_url, tmp_path, reference):
    run_race_with_a_victim(fresh_url, "lenet-scan", tmp_path, reference)


def test_one_database_holds_many_studies_and_a_dead_remote_trial_is_retried(fresh_url):
    """Two studies side by side; a trial whose worker on another host stopped beating is failed after
    the grace period and its point queued again (Optuna's heartbeat on PostgreSQL)."""
    places = [Place(fresh_url, name, heartbeat_interval=1, grace_period=2) for name in ("a", "b")]
    studies = [optuna.create_study(storage=p.storage(), study_name=p.name) for p in places]
    for place, study in zip(places, studies, strict=True):
        assert plan(study, place, [{"x": 1}]) == 1
    trial = studies[0].ask()
    trial.set_user_attr("worker", {"host": "another-machine", "pid": os.getpid()})
    studies[0]._storage.record_heartbeat(trial._trial_id)
    assert plan(studies[0], places[0], [{"x": 1}]) == 0  # alive
    time.sleep(3)
    assert plan(studies[0], places[0], [{"x": 1}]) == 1  # dead: failed and queued again
    assert [t.state for t in studies[0].trials] == [TrialState.FAIL, TrialState.WAITING]
    assert [t.state for t in studies[1].trials] == [TrialState.WAITING]  # the other study untouched
