"""A PostgreSQL server of its own, on loopback in a temporary directory (tests and benchmarks).

Uses the server binaries of /usr/lib/postgresql/*/bin (apt-get install postgresql).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

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


@contextlib.contextmanager
def local_server() -> Iterator[str]:
    """Start a server, yield the URL of its ``postgres`` database, stop it and delete its files."""
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


def create_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url`` (psycopg); its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + f"/{name}"
