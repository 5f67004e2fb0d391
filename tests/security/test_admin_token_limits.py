"""Threat: a token that looks limited to one mailbox is a full administrator.

`{"scopes": ["admin"], "mailboxes": ["alice@..."]}` was accepted, and `admin` made every check pass: the
token read every mailbox and the queue while `/api/bootstrap` showed the mailbox limit, so whoever
handed it to an agent believed it was confined. The same held for an organisation's admin key. The
admin scope now cannot be limited to mailboxes (creating such a token is refused), and a row from before
that rule is what it claimed to be: the scopes `admin` implied, kept to its mailboxes, never an admin.
"""
from __future__ import annotations

import smtplib

import pytest

from tests.security.tenant_world import SHARED, start

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = start(tmp_path_factory.mktemp("admin-limits") / "data")
    for local in ("alice", "bob"):
        assert w.mxd.api("POST", "/api/mailboxes", json={"address": f"{local}@{SHARED}"}).status_code == 201
    for local in ("alice", "bob"):                  # one message in each mailbox
        with smtplib.SMTP("127.0.0.1", w.mxd.mx_port, timeout=30) as s:
            s.sendmail("x@remote.test", [f"{local}@{SHARED}"], f"Subject: for {local}\r\n\r\nhi\r\n".encode())
    assert len(w.mxd.wait_messages(2)) >= 2
    yield w
    w.stop()


def test_an_admin_token_cannot_be_limited_to_mailboxes(world):
    r = world.mxd.api("POST", "/api/tokens", json={"name": "x", "scopes": ["admin"], "mailboxes": [f"alice@{SHARED}"]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "admin_with_mailboxes" and "read" in err["fix"]
    r = world.mxd.api("POST", "/api/tokens", json={"name": "x", "scopes": ["read", "admin"], "mailboxes": []})
    assert r.status_code == 400 and r.json()["error"]["code"] == "admin_with_mailboxes"
    # The organisation's admin key cannot make one either.
    org = world.organisation("org_limits")
    assert world.agent_mailbox(org, "limits-bot").status_code == 201
    r = world.call("POST", "/api/tokens", org, json={"name": "x", "scopes": ["admin"],
                                                      "mailboxes": [f"limits-bot@{SHARED}"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "admin_with_mailboxes"
    # What the limited token is for still works.
    r = world.mxd.api("POST", "/api/tokens", json={"name": "x", "scopes": ["read", "send"],
                                                   "mailboxes": [f"alice@{SHARED}"]})
    assert r.status_code == 201


def test_an_existing_admin_token_with_mailboxes_is_held_to_them(world):
    token = world.legacy_token(["admin"], [f"alice@{SHARED}"])
    boot = world.call("GET", "/api/bootstrap", token).json()["principal"]
    assert boot["operator"] is False and "admin" not in boot["scopes"] and boot["mailboxes"] == [f"alice@{SHARED}"]
    assert {m["mailbox"] for m in world.mxd.messages(token=token)} == {f"alice@{SHARED}"}
    for path in (f"/api/messages?mailbox=bob@{SHARED}", f"/api/mailboxes/bob@{SHARED}",
                 f"/api/threads?mailbox=bob@{SHARED}"):
        assert world.call("GET", path, token).status_code == 404, path
    bob_msg = next(m for m in world.mxd.messages(f"bob@{SHARED}"))
    assert world.call("GET", f"/api/messages/{bob_msg['id']}", token).status_code == 404
    for method, path in (("GET", "/api/queue"), ("GET", "/api/tokens"), ("GET", "/api/suppressions"),
                         ("GET", "/api/webhooks"), ("POST", "/api/tokens"), ("DELETE", f"/api/mailboxes/bob@{SHARED}")):
        r = world.call(method, path, token, json={"name": "y", "scopes": ["admin"]} if method == "POST" else None)
        assert r.status_code in (403, 404), (method, path, r.text)
    assert world.mxd.api("GET", f"/api/mailboxes/bob@{SHARED}").status_code == 200
    # An organisation's admin key with mailboxes likewise sees only those of its organisation's mailboxes.
    world.organisation("org_legacy")
    for local in ("legacy-one", "legacy-two"):
        r = world.mxd.api("POST", "/api/mailboxes", json={"address": f"{local}@{SHARED}", "org_id": "org_legacy"})
        assert r.status_code == 201, r.text
    token = world.legacy_token(["admin"], [f"legacy-one@{SHARED}"], org_id="org_legacy")
    assert [b["address"] for b in world.call("GET", "/api/mailboxes", token).json()["data"]] == [f"legacy-one@{SHARED}"]
    assert world.call("GET", f"/api/mailboxes/legacy-two@{SHARED}", token).status_code == 404
    assert world.call("GET", "/api/tokens", token).status_code == 403
    assert world.call("GET", "/api/queue", token).status_code in (403, 404)
