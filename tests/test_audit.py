"""GET /api/audit against a real daemon: mutating calls, sends with their preflight decision (held, queued,
refused with its code) and refused token uses are rows with actor, action, target, result and time; the
filters work; the `audit` scope is needed; an organisation's token sees only its organisation's rows."""
from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timedelta

import httpx
import pytest

from tests.support.daemon import MxdProcess, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("audit") / "data", domains=["example.test", "unready.test"],
                      env={"MXD_HOLD_RULES": "@held.test"})
    proc.init()
    proc.start()
    yield proc
    proc.stop()


def _audit(proc: MxdProcess, token: str | None = None, **params) -> list[dict]:
    r = proc.api("GET", "/api/audit", token=token, params=params)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def _wait_rows(proc: MxdProcess, count: int, **params) -> list[dict]:
    """Audit rows are written right after the response goes out: wait for them."""
    return wait_for(lambda: (lambda rows: rows if len(rows) >= count else None)(_audit(proc, **params)),
                    timeout=30) or _audit(proc, **params)


def _token_id(proc: MxdProcess, name: str) -> str:
    return next(t["id"] for t in proc.api("GET", "/api/tokens").json()["data"] if t["name"] == name)


def _admin_id(proc: MxdProcess) -> str:
    return _token_id(proc, "admin")


def test_mutating_calls_sends_and_refusals_are_recorded(server):
    proc = server
    started = time.time()
    assert proc.api("POST", "/api/mailboxes", json={"address": "agent@example.test"}).status_code == 201
    assert proc.api("POST", "/api/mailboxes", json={"address": "agent@unready.test"}).status_code == 201
    assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
    sender = proc.token(["send"], ["agent@example.test", "agent@unready.test"], name="sender")

    held = proc.api("POST", "/api/send", token=sender, json={"from": "agent@example.test", "to": ["x@held.test"],
                                                             "subject": "s", "text": "t"})
    assert held.status_code == 202 and held.json()["status"] == "held"
    queued = proc.api("POST", "/api/send", token=sender, json={"from": "agent@example.test",
                                                               "to": ["x@remote.test"], "subject": "s", "text": "t"})
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    refused = proc.api("POST", "/api/send", token=sender, json={"from": "agent@unready.test",
                                                                "to": ["x@remote.test"], "subject": "s", "text": "t"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "domain_not_ready"

    assert httpx.get(proc.url("/api/messages"), headers={"Authorization": "Bearer mxd_forged"}).status_code == 401
    reader = proc.token(["read"], name="reader")
    assert proc.api("POST", "/api/tokens", token=reader, json={"name": "x", "scopes": ["admin"]}).status_code == 403

    admin_id, sender_id, reader_id = _admin_id(proc), _token_id(proc, "sender"), _token_id(proc, "reader")

    # The mutating call: who, what, on what, how it went, when.
    rows = [r for r in _wait_rows(proc, 2, action="POST /api/mailboxes") if r["detail"].get("status") == 201]
    assert [(r["actor"], r["target"], r["result"], r["mailbox"]) for r in rows] == [
        (admin_id, "/api/mailboxes", "ok", "agent@unready.test"), (admin_id, "/api/mailboxes", "ok", "agent@example.test")]
    created = rows[1]
    at = datetime.fromisoformat(created["at"].replace("Z", "+00:00")).timestamp()
    assert started - 5 < at < time.time() + 5
    [override] = _wait_rows(proc, 1, action="PUT /api/domains/{domain}/readiness")
    assert override["target"] == "/api/domains/example.test/readiness" and override["detail"]["override"] is True

    # Each send with its preflight decision; the refused one with its error code.
    sends = _wait_rows(proc, 3, action="send", actor=sender_id)
    assert [s["result"] for s in sends] == ["domain_not_ready", "queued", "held"]      # newest first
    assert [s["mailbox"] for s in sends] == ["agent@unready.test", "agent@example.test", "agent@example.test"]
    assert sends[2]["target"] == held.json()["id"] and sends[1]["target"] == queued.json()["id"]
    assert sends[2]["detail"]["hold_reason"] == "operator rule @held.test"
    calls = _wait_rows(proc, 3, action="POST /api/send")
    assert [c["result"] for c in calls] == ["domain_not_ready", "ok", "ok"]

    # Refused token uses.
    [anon] = _wait_rows(proc, 1, actor="anonymous")
    assert (anon["action"], anon["target"], anon["result"]) == ("GET /api/messages", "/api/messages", "denied")
    [denied] = _wait_rows(proc, 1, actor=reader_id)
    assert (denied["action"], denied["result"], denied["detail"]["status"]) == ("POST /api/tokens", "denied", 403)


def test_filters(server):
    proc = server
    proc.api("POST", "/api/mailboxes", json={"address": "filter@example.test"})
    rows = _wait_rows(proc, 1, mailbox="agent@example.test")
    assert rows and {r["mailbox"] for r in rows} == {"agent@example.test"}
    prefixed = _audit(proc, action="POST /api/*")
    assert prefixed and all(r["action"].startswith("POST /api/") for r in prefixed)
    assert {r["action"] for r in _audit(proc, action="POST /api/mailboxes")} == {"POST /api/mailboxes"}
    denied = _audit(proc, result="denied")
    assert denied and {r["result"] for r in denied} == {"denied"}
    newest = _audit(proc, limit=1)[0]
    at = datetime.fromisoformat(newest["at"].replace("Z", "+00:00"))
    assert _audit(proc, since=(at + timedelta(seconds=1)).isoformat()) == []
    assert newest["id"] in [r["id"] for r in _audit(proc, since=str(at.timestamp() - 1))]
    assert newest["id"] not in [r["id"] for r in _audit(proc, until=(at - timedelta(seconds=1))
                                                          .strftime("%Y-%m-%dT%H:%M:%SZ"))]
    assert proc.api("GET", "/api/audit", params={"since": "yesterday"}).status_code == 400

    # limit + cursor walk every row once, newest first
    everything = _audit(proc, limit=1000)
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = proc.api("GET", "/api/audit", params=params).json()
        seen += [r["id"] for r in body["data"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen[:len(everything)] == [r["id"] for r in everything][:len(seen)]
    assert len(set(seen)) == len(seen) >= len(everything)


def test_audit_scope_is_needed(server):
    proc = server
    r = proc.api("GET", "/api/audit", token=proc.token(["read", "search", "send"], name="no-audit"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    auditor = proc.token(["audit"], name="auditor")
    assert len(_audit(proc, token=auditor, limit=5)) == 5
    limited = proc.token(["audit"], ["agent@example.test"], name="limited-auditor")
    assert proc.api("GET", "/api/audit", token=limited).status_code == 400
    rows = _audit(proc, token=limited, mailbox="agent@example.test")
    assert rows and {r["mailbox"] for r in rows} == {"agent@example.test"}
    assert proc.api("GET", "/api/audit", token=limited, params={"mailbox": "filter@example.test"}).status_code == 404


def test_an_organisation_sees_only_its_own_rows(server):
    proc = server
    con = sqlite3.connect(proc.data_dir / "mxd.db", timeout=60)
    try:
        con.execute('INSERT INTO "organization" ("id", "name", "slug", "owner_email", "created_at", "code_attempts") '
                    "VALUES ('org_audit', 'Audit Org', 'audit-org', 'owner@remote.test', ?, 0)", (time.time(),))
        con.commit()
    finally:
        con.close()
    r = proc.api("POST", "/api/tokens", json={"name": "org-admin", "scopes": ["admin"], "org_id": "org_audit"})
    assert r.status_code == 201 and r.json()["org_id"] == "org_audit"
    org = r.json()["token"]
    assert proc.api("POST", "/api/domains", token=org, json={"domain": "orgaudit.test"}).status_code == 201
    rows = _wait_rows(proc, 1, token=None, action="POST /api/domains")
    mine = wait_for(lambda: _audit(proc, token=org), timeout=30)
    assert mine and {r["org_id"] for r in mine} == {"org_audit"}
    assert [r["target"] for r in mine if r["action"] == "POST /api/domains"] == ["/api/domains"]
    assert any(r["org_id"] == "org_audit" for r in rows)                     # the operator sees it too
    assert any(r["org_id"] is None for r in _audit(proc, limit=500))          # and its own rows
