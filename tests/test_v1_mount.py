"""The /v1 dialect mounted at /v1 and /api/v1 (Starlette Mounts, no path rewriting), without a daemon: the same
answers either way, the audit action named by the /v1 route whichever way the request came in, a mount's own
root a plain 404, and the operations listed once in the OpenAPI document."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

import mxd.api.http as http
from mxd.api import openapi
from mxd.api.app import create_app


@pytest.fixture
def client_and_rows(monkeypatch):
    rows: list[tuple[str, str]] = []

    async def record(c, principal, ip, action, *, target, mailbox, result, detail):
        rows.append((action, result))
    monkeypatch.setattr(http, "record_audit", record)
    with TestClient(create_app(None), raise_server_exceptions=False, follow_redirects=False) as client:
        yield client, rows


@pytest.mark.parametrize("method,path,status,action", [
    ("POST", "/v1/agents", 401, "POST /v1/agents"),
    ("POST", "/v1/mailboxes/mbx_x/inbox/ack", 401, "POST /v1/mailboxes/{mailbox_id}/inbox/ack"),
    ("DELETE", "/v1/webhooks/wh_x", 401, "DELETE /v1/webhooks/{id}"),
    ("DELETE", "/v1/agents", 405, "DELETE /v1/agents"),
    ("POST", "/v1/nothing-here", 404, "POST /v1/nothing-here"),
    ("GET", "/v1/organization", 401, "GET /v1/organization"),
])
def test_both_mounts_answer_alike_and_audit_the_v1_route(client_and_rows, method, path, status, action):
    client, rows = client_and_rows
    direct = client.request(method, path)
    alias = client.request(method, "/api" + path)
    assert direct.status_code == alias.status_code == status
    assert direct.json() == alias.json() and direct.json()["error"]["code"]
    assert [a for a, _ in rows] == [action, action]


@pytest.mark.parametrize("path", ["/v1", "/v1/", "/api/v1", "/api/v1/", "/api/v10", "/api/v1x/agents", "/v1/health"])
def test_a_mount_root_and_near_misses_are_plain_404s(client_and_rows, path):
    client, _ = client_and_rows
    r = client.get(path)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_mounted_operations_are_documented_once_under_v1():
    routes = create_app(None).routes
    walked = openapi.app_routes(routes)
    documented = openapi.documented_routes(routes)
    v1 = {k for k in openapi.BY_KEY if k[1].startswith("/v1/")}
    assert len(v1) == 28 and v1 <= documented
    assert {(m, "/api" + p) for m, p in v1} <= walked
    assert not any(p.startswith("/api/v1/") for _, p in documented)
    assert ("GET", "/api/llms.txt") not in walked          # the /api copies of the documents are not listed
