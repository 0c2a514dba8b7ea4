"""A scan stored in a real PostgreSQL server: the storage several machines share.

The test starts its own server on loopback in a temporary directory and stops it after;
it is skipped where PostgreSQL's binaries or psycopg (the [postgres] extra) are missing, and fails
there under ``PRUNESCOPE_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from collections import Counter

import optuna
import pytest
from services import missing

from prunescope.scan import scan

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    # initdb refuses to run as root; the Debian package creates the postgres user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@pytest.fixture(scope="module")
def postgres_url():
    if importlib.util.find_spec("psycopg") is None:
        missing("psycopg is not installed (pip install -e '.[postgres]')")
    if not BINARIES:
        missing("PostgreSQL server binaries not installed (apt-get install postgresql)")
    bin_dir = BINARIES[-1]
    # Directly under /tmp: pytest's own temporary folders are private to root, the server user cannot enter them.
    data = tempfile.mkdtemp(prefix="prunescope-pg-")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    port = _free_port()
    subprocess.run(_as_server_user([f"{bin_dir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    # -l: the server must not inherit our pipes, or run() would wait for it to exit.
    log = os.path.join(data, "server.log")
    subprocess.run(_as_server_user([f"{bin_dir}/pg_ctl", "-D", str(data), "-o", options, "-l", log, "-w", "start"]),
                   check=True, capture_output=True, timeout=60)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_server_user([f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


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
