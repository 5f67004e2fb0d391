"""PostgreSQL for tests: the machine's cluster, started if needed, and a fresh database per name."""
from __future__ import annotations

import shutil
import subprocess
from contextlib import contextmanager
from typing import Iterator

import pytest


def psql(sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["su", "postgres", "-c", f"psql -q -v ON_ERROR_STOP=1 -c \"{sql}\""],
                          capture_output=True, text=True, timeout=60)


@contextmanager
def fresh_database(name: str) -> Iterator[str]:
    """A new, empty database `name` owned by a role of the same name; its URL. Skips without PostgreSQL."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("su") is None:
        pytest.skip("PostgreSQL (pg_ctlcluster) is not installed")
    pytest.importorskip("psycopg2")
    status = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True)
    if not status.stdout.strip():
        pytest.skip("no PostgreSQL cluster on this machine")
    version, cluster = status.stdout.split()[:2]
    started = subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "start"],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode in (0, 2), started.stderr          # 2: already running
    psql(f"DROP DATABASE IF EXISTS {name}")
    psql(f"DROP ROLE IF EXISTS {name}")
    assert psql(f"CREATE ROLE {name} WITH LOGIN PASSWORD '{name}'").returncode == 0
    assert psql(f"CREATE DATABASE {name} OWNER {name}").returncode == 0
    try:
        yield f"postgresql://{name}:{name}@127.0.0.1/{name}"
    finally:
        psql(f"DROP DATABASE IF EXISTS {name}")
