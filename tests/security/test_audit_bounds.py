"""Threat: anyone fills the audit table.

Every mutating call and every refused token use is an audit row, written by the one writer. Before any
token is checked, an unauthenticated client could make mxd write one row per request with a 2,000-character
target (a POST to a path that does not even exist; a forged X-Forwarded-For made each one another
client), and the table was never pruned: a cheap way to fill
the disk and slow every write. Rows from callers without a valid token now keep a short target and the
client's address, and each address gets a small budget a minute (then one row saying that rows were
dropped); /mcp refusals share it. The retention sweep removes rows older than `audit_retention_days`.
"""
from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest

from mxd.store import audit
from tests.support.daemon import MxdProcess, wait_for

DAY = 86400.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("audit-bounds") / "data", env={"MXD_AUDIT_RETENTION_DAYS": "30"})
    proc.init()
    proc.start()
    yield proc
    proc.stop()


def _db(proc: MxdProcess, write: bool = False) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{proc.data_dir / 'mxd.db'}?mode={'rw' if write else 'ro'}", uri=True, timeout=30)


def _anonymous_rows(proc: MxdProcess) -> list[tuple[str, str, dict]]:
    db = _db(proc)
    try:
        rows = db.execute("SELECT action, target, detail FROM audit WHERE actor = 'anonymous' ORDER BY id").fetchall()
    finally:
        db.close()
    return [(a, t, json.loads(d)) for a, t, d in rows]


def test_one_anonymous_client_writes_a_bounded_number_of_short_rows(server):
    long_path = "/nope/" + "x" * 2000
    with httpx.Client(timeout=30) as http:
        for i in range(audit.ANONYMOUS_PER_IP + 30):   # a new X-Forwarded-For each time changes nothing
            r = http.post(server.url(f"{long_path}{i}"), content=b"{}", headers={"X-Forwarded-For": f"203.0.113.{i}"})
            assert r.status_code in (404, 405)
        for _ in range(5):          # refused at /mcp: the same client, the same budget
            assert http.post(server.url("/mcp"), json={"jsonrpc": "2.0", "id": 1, "method": "ping"}).status_code == 401
    rows = wait_for(lambda: (lambda r: r if len(r) > audit.ANONYMOUS_PER_IP else None)(_anonymous_rows(server)),
                    timeout=20) or _anonymous_rows(server)
    time.sleep(1)                   # rows are written after the answers: let any late one land
    rows = _anonymous_rows(server)
    assert len(rows) == audit.ANONYMOUS_PER_IP + 1
    assert max(len(target) for _, target, _ in rows) <= audit.ANONYMOUS_TARGET
    assert all(detail["ip"] == "127.0.0.1" for _, _, detail in rows)
    assert rows[-1][0] == "audit.rate_limited" and rows[-1][2]["most_per_minute"] == audit.ANONYMOUS_PER_IP
    assert not any(action == "mcp" for action, _, _ in rows)

    # A caller with a token is not affected: its rows are still written.
    assert server.api("POST", "/api/mailboxes", json={"address": "kept@example.test"}).status_code == 201
    db = _db(server)
    try:
        assert wait_for(lambda: db.execute("SELECT COUNT(*) FROM audit WHERE action = 'POST /api/mailboxes'")
                        .fetchone()[0], timeout=10) == 1
    finally:
        db.close()


def test_old_audit_rows_are_removed_by_the_retention_sweep(server):
    now = time.time()
    db = _db(server, write=True)
    try:
        with db:
            for ident, age in (("aud_0000old", 40), ("aud_0000mid", 29), ("aud_0000new", 1)):
                db.execute("INSERT INTO audit (id, at, actor, org_id, action, target, mailbox, result, detail) "
                           "VALUES (?, ?, 'system', NULL, 'test.row', '', NULL, 'ok', '{}')", (ident, now - age * DAY))
    finally:
        db.close()
    r = server.api("POST", "/api/retention/run", json={})
    assert r.status_code == 200, r.text
    assert r.json()["audit_rows"] == 1
    db = _db(server)
    try:
        left = [row[0] for row in db.execute("SELECT id FROM audit WHERE action = 'test.row' ORDER BY id")]
    finally:
        db.close()
    assert left == ["aud_0000mid", "aud_0000new"]
