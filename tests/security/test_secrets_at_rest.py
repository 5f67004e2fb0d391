"""Threat: someone who can read files on the mail host but is not mxd's user (another local account, a
backup job, a support bundle), or who gets a copy of the store or of its logs, reads every message and
every secret. With a data directory that already exists as 0755 and the usual umask 022, SQLite made
mxd.db (all mail, and webhook secrets in clear) 0644; at DEBUG, peewee logged every query's parameters.

mxd makes the store, its WAL and shared-memory files, and every file holding a secret 0600 whatever the
umask; webhook signing secrets (which Standard Webhooks needs in clear to sign) are stored sealed under
a key in DATA_DIR/secrets.key, rows from an older mxd are sealed at start; no SQL parameter is logged.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.daemon import MxdProcess, wait_for
from tests.test_webhooks import Receiver, create_hook, send

MARKER = "paramcanary7731"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MxdProcess, Receiver]]:
    data = tmp_path_factory.mktemp("rest") / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)                       # an existing, world-readable data directory
    old_umask = os.umask(0o022)                 # the daemon inherits it
    receiver = Receiver().start()
    proc = MxdProcess(data, env={"MXD_WEBHOOK_ALLOW_PRIVATE": "true", "MXD_LOG_LEVEL": "DEBUG"})
    try:
        proc.init()
        proc.start()
        assert proc.api("POST", "/api/mailboxes", json={"address": "agent@example.test"}).status_code == 201
        yield proc, receiver
    finally:
        proc.stop()
        receiver.stop()
        os.umask(old_umask)


def _row(proc: MxdProcess, hook_id: str) -> tuple[str, str | None]:
    db = sqlite3.connect(proc.data_dir / "mxd.db", timeout=30)
    try:
        return db.execute('SELECT "secret", "previous_secret" FROM "webhook" WHERE "id" = ?', (hook_id,)).fetchone()
    finally:
        db.close()


def _store_bytes(proc: MxdProcess) -> bytes:
    return b"".join(p.read_bytes() for p in proc.data_dir.glob("mxd.db*"))


def _delivered(proc: MxdProcess, receiver: Receiver, path: str, subject: str) -> dict:
    send(proc, "agent@example.test", subject)
    got = wait_for(lambda: [r for r in receiver.got(path) if r["payload"]["data"].get("subject") == subject], 30)
    assert got, f"no webhook for {subject!r}"
    return got[0]


def test_webhook_secrets_are_sealed_and_still_sign(world) -> None:
    proc, receiver = world
    hook = create_hook(proc, receiver.url(f"/sealed?{MARKER}"))
    secret = hook["secret"]
    stored, _ = _row(proc, hook["id"])
    assert stored.startswith("sealed:v1:") and secret not in stored
    receiver.secrets[f"/sealed?{MARKER}"] = [secret]
    assert _delivered(proc, receiver, f"/sealed?{MARKER}", "sealed one")["verified"] == [0]
    assert secret.encode() not in _store_bytes(proc)
    rotated = proc.api("POST", f"/api/webhooks/{hook['id']}/rotate").json()["secret"]
    current, previous = _row(proc, hook["id"])
    assert current.startswith("sealed:v1:") and previous == stored and rotated not in current


def test_secrets_stored_in_clear_by_an_older_mxd_are_sealed_at_start(world) -> None:
    proc, receiver = world
    hook = create_hook(proc, receiver.url("/legacy"))
    proc.stop()
    plain = hook["secret"]
    db = sqlite3.connect(proc.data_dir / "mxd.db", timeout=30)
    db.execute('UPDATE "webhook" SET "secret" = ? WHERE "id" = ?', (plain, hook["id"]))
    db.commit()
    db.close()
    proc.start()
    assert wait_for(lambda: _row(proc, hook["id"])[0].startswith("sealed:v1:"), 20)
    receiver.secrets["/legacy"] = [plain]                 # the receiver's secret did not change
    assert _delivered(proc, receiver, "/legacy", "after sealing")["verified"] == [0]


def test_no_sql_parameter_is_logged(world) -> None:
    proc, receiver = world
    hook = create_hook(proc, receiver.url(f"/logged?{MARKER}"))
    time.sleep(0.5)
    log = (proc.data_dir / "mxd.log").read_text(errors="replace")
    assert 'INSERT INTO "webhook"' in log                 # DEBUG is on: the queries are there
    assert MARKER not in log and hook["secret"] not in log and "sealed:v1:" not in log


def test_the_store_and_every_secret_file_are_private(world) -> None:
    proc, _ = world
    send(proc, "agent@example.test", "something to write")       # the WAL and shm files exist
    modes = {name: stat.filemode((proc.data_dir / name).stat().st_mode)
             for name in ("mxd.db", "mxd.db-wal", "mxd.db-shm")}
    assert modes == {"mxd.db": "-rw-------", "mxd.db-wal": "-rw-------", "mxd.db-shm": "-rw-------"}
    assert {"secrets.key", "mxd.toml"} <= {p.name for p in proc.data_dir.iterdir()}
    public = {proc.data_dir / "tls" / "cert.pem", proc.data_dir / "mxd.log"}   # the log is the test's own file
    loose = [f"{p.relative_to(proc.data_dir)} {stat.filemode(p.stat().st_mode)}" for p in proc.data_dir.rglob("*")
             if p.is_file() and p not in public and p.stat().st_mode & 0o077]
    assert loose == []


def test_an_older_loose_store_is_tightened(tmp_path: Path) -> None:
    from mxd.db import private_files
    path = tmp_path / "mxd.db"
    for name in ("mxd.db", "mxd.db-wal", "mxd.db-shm"):
        (tmp_path / name).write_bytes(b"")
        os.chmod(tmp_path / name, 0o644)
    private_files(str(path))
    assert {oct(os.stat(tmp_path / n).st_mode & 0o777) for n in ("mxd.db", "mxd.db-wal", "mxd.db-shm")} == {"0o600"}
