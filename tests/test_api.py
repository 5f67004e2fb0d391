"""The read API over HTTP against a real daemon: directory, messages, threads, tokens and scopes."""
from __future__ import annotations

import smtplib
import sqlite3
from email.message import EmailMessage

import httpx
import pytest

from tests.support.daemon import MxdProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("api") / "data", domains=["example.test"])
    proc.init()
    proc.start()
    for address in ("agent@example.test", "other@example.test"):
        assert proc.api("POST", "/api/mailboxes", json={"address": address}).status_code == 201
    with smtplib.SMTP("127.0.0.1", proc.mx_port) as s:
        for i in range(7):
            for box in ("agent", "other"):
                m = EmailMessage()
                m["From"], m["To"], m["Subject"] = "x@remote.test", f"{box}@example.test", f"{box} note {i}"
                m.set_content(f"body {i} for {box} pelican")
                s.send_message(m)
    assert len(proc.wait_messages(14)) == 14
    yield proc
    proc.stop()


def test_health_needs_no_token(server):
    r = httpx.get(server.url("/api/health"))
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_missing_and_bad_tokens_are_401_with_fix(server):
    r = httpx.get(server.url("/api/messages"))
    assert r.status_code == 401
    assert {"code", "message", "fix", "hard_stop"} <= set(r.json()["error"])
    assert r.json()["error"]["code"] == "unauthorized"
    assert server.api("GET", "/api/messages", token="mxd_wrong").status_code == 401


def test_pagination_walks_every_message_once(server):
    seen, cursor = [], None
    while True:
        params = {"limit": 3, "mailbox": "agent@example.test"}
        if cursor:
            params["cursor"] = cursor
        body = server.api("GET", "/api/messages", params=params).json()
        seen += [m["id"] for m in body["data"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 7 == len(set(seen))
    assert seen == sorted(seen, reverse=True)
    assert server.api("GET", "/api/messages", params={"limit": 0}).status_code == 400
    assert server.api("GET", "/api/messages", params={"limit": "x"}).status_code == 400


def test_scoped_token_sees_only_its_mailbox(server):
    token = server.token(["read", "search"], ["agent@example.test"])
    mine = server.api("GET", "/api/messages", token=token, params={"limit": 100}).json()["data"]
    assert {m["mailbox"] for m in mine} == {"agent@example.test"} and len(mine) == 7
    assert server.api("GET", "/api/messages", token=token, params={"mailbox": "other@example.test"}).status_code == 404
    theirs = server.api("GET", "/api/messages", params={"mailbox": "other@example.test"}).json()["data"][0]
    assert server.api("GET", f"/api/messages/{theirs['id']}", token=token).status_code == 404
    assert server.api("GET", f"/api/messages/{theirs['id']}/raw", token=token).status_code == 404
    assert server.api("GET", f"/api/threads/{theirs['thread_id']}", token=token).status_code == 404
    found = server.api("GET", "/api/messages/search", token=token, params={"q": "pelican"}).json()["data"]
    assert len(found) == 7 and {m["mailbox"] for m in found} == {"agent@example.test"}
    boxes = server.api("GET", "/api/mailboxes", token=token).json()["data"]
    assert [b["address"] for b in boxes] == ["agent@example.test"]
    assert server.api("GET", "/api/mailboxes/other@example.test", token=token).status_code == 404


def test_read_scope_does_not_grant_search_or_admin(server):
    token = server.token(["read"])
    assert server.api("GET", "/api/messages", token=token).status_code == 200
    r = server.api("GET", "/api/messages/search", token=token, params={"q": "pelican"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert server.api("POST", "/api/mailboxes", token=token, json={"address": "x@example.test"}).status_code == 403
    assert server.api("POST", "/api/tokens", token=token, json={"name": "x", "scopes": ["admin"]}).status_code == 403


def test_tokens_are_hashed_listed_without_secret_and_revocable(server):
    r = server.api("POST", "/api/tokens", json={"name": "lister", "scopes": ["read"]})
    body = r.json()
    secret, token_id = body["token"], body["id"]
    assert token_id.startswith("tok_") and secret.startswith("mxd_")
    db = sqlite3.connect(f"file:{server.data_dir / 'mxd.db'}?mode=ro", uri=True)
    dump = "\n".join(db.iterdump())
    db.close()
    assert secret not in dump
    listed = server.api("GET", "/api/tokens").json()["data"]
    assert any(t["id"] == token_id for t in listed)
    assert all("token" not in t and secret not in str(t) for t in listed)
    assert server.api("GET", "/api/messages", token=secret).status_code == 200
    assert server.api("DELETE", f"/api/tokens/{token_id}").status_code == 204
    assert server.api("GET", "/api/messages", token=secret).status_code == 401


@pytest.mark.parametrize("body", [
    {"name": "x", "scopes": ["read", "root"]},
    {"name": "x", "scopes": "read"},
    {"name": "", "scopes": ["read"]},
    {"name": "x", "scopes": ["read"], "mailboxes": ["not an address"]},
])
def test_bad_token_requests_are_400(server, body):
    r = server.api("POST", "/api/tokens", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("bad_request", "invalid_address")


@pytest.mark.parametrize("content", [b"{", b"[1,2]", b"\xff\xfe", b'"str"', b"null"])
def test_hostile_bodies_get_clear_errors(server, content):
    r = server.api("POST", "/api/mailboxes", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] in ("invalid_json", "bad_request")


def test_directory_crud(server):
    assert server.api("POST", "/api/mailboxes", json={"address": "x@nowhere.test"}).json()["error"]["code"] \
        == "domain_not_served"
    assert server.api("POST", "/api/mailboxes", json={"address": "bad address"}).status_code == 400
    r = server.api("POST", "/api/domains", json={"domain": "new.test"})
    assert r.status_code == 201 and r.json()["id"].startswith("dom_")
    assert server.api("POST", "/api/domains", json={"domain": "new.test"}).status_code == 200
    assert server.api("GET", "/api/mailboxes/postmaster@new.test").status_code == 200
    r = server.api("POST", "/api/mailboxes", json={"address": "Box@New.Test", "display_name": "Box"})
    assert r.status_code == 201 and r.json()["address"] == "box@new.test"
    assert server.api("POST", "/api/aliases", json={"address": "team@new.test", "targets": ["box@new.test"]}
                      ).status_code == 201
    aliases = server.api("GET", "/api/aliases").json()["data"]
    assert {"address": "team@new.test", "targets": ["box@new.test"]} in aliases
    assert server.api("DELETE", "/api/aliases/team@new.test").status_code == 204
    assert server.api("DELETE", "/api/aliases/team@new.test").status_code == 404
    assert server.api("PUT", "/api/catchalls/new.test", json={"target": "box@new.test"}).json() == \
        {"domain": "new.test", "target": "box@new.test"}
    r = server.api("PUT", "/api/domains/new.test/readiness", json={"ready": True})
    assert r.status_code == 200 and r.json()["ready"] is True and r.json()["ready_source"] == "operator"
    assert server.api("DELETE", "/api/mailboxes/box@new.test").status_code == 204
    assert server.api("GET", "/api/catchalls/new.test").json()["target"] is None
    assert server.api("DELETE", "/api/domains/new.test").status_code == 204
    assert server.api("GET", "/api/domains/new.test").status_code == 404


def test_new_mailbox_receives_without_restart(server):
    assert server.api("POST", "/api/mailboxes", json={"address": "fresh@example.test"}).status_code == 201
    with smtplib.SMTP("127.0.0.1", server.mx_port) as s:
        s.sendmail("x@remote.test", ["fresh@example.test"], b"Subject: fresh\r\n\r\nhi\r\n")
    assert len(server.wait_messages(1, "fresh@example.test")) == 1


def test_threads_list_and_unknown_routes(server):
    body = server.api("GET", "/api/threads", params={"mailbox": "agent@example.test", "limit": 100}).json()
    assert len(body["data"]) == 7 and body["next_cursor"] is None
    r = server.api("GET", "/api/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert server.api("GET", "/api/messages/msg_doesnotexist").status_code == 404
