"""Tokens and the directory over HTTP: the API in process (tests/support/asgi.py), no daemon, no SMTP.
The read API on delivered mail is in tests/test_api.py, against a real daemon."""
from __future__ import annotations

import sqlite3

import pytest

from tests.support.asgi import in_process_api


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """mxd init --domain example.test, then mailboxes agent@ and other@, as tests/test_api.py's daemon."""
    with in_process_api(tmp_path_factory.mktemp("api") / "data", domains=["example.test"]) as app:
        for address in ("agent@example.test", "other@example.test"):
            assert app.api("POST", "/api/mailboxes", json={"address": address}).status_code == 201
        yield app


def test_health_needs_no_token(server):
    r = server.get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_missing_and_bad_tokens_are_401_with_fix(server):
    r = server.get("/api/messages")
    assert r.status_code == 401
    assert {"code", "message", "fix", "hard_stop"} <= set(r.json()["error"])
    assert r.json()["error"]["code"] == "unauthorized"
    assert server.api("GET", "/api/messages", token="mxd_wrong").status_code == 401


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
