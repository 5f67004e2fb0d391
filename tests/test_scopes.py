"""The scope matrix: every route of the app, called with a token of each single scope (and with none, a bad
one, and an organisation's admin token), is allowed or denied exactly as its entry in mxd/api/openapi.py says.

Also: a token limited to mailbox A sees nothing of mailbox B, read never implies send, and an organisation's
token sees none of the operator's objects.
"""
from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from mxd.api import openapi
from mxd.api.app import create_app
from mxd.store import tokens
from tests.support.daemon import MxdProcess, wait_for

pytestmark = pytest.mark.slow

KINDS = ("none", "bad") + tokens.SCOPES + ("org_admin",)
ROUTES = sorted(openapi.documented_routes(create_app(None).routes), key=lambda k: (k[1], k[0]))
MISSING = {"id": "zz_missing", "att": "att_missing", "agent_id": "agt_missing", "domain_id": "dom_missing",
           "mailbox_id": "mbx_missing", "message_id": "msg_missing", "webhook_id": "whk_missing",
           "domain": "missing.test", "mailbox": "missing@example.test", "alias": "missing@example.test",
           "address": "missing@example.org"}


def _send_inbound(proc: MxdProcess, to: str, subject: str) -> None:
    proc.send_inbound("someone@remote.test", to, subject, f"{subject}: pelican")


class World:
    """A daemon with the operator's objects, a token per scope and an organisation's admin token."""

    def __init__(self, proc: MxdProcess) -> None:
        self.proc = proc
        self.tokens: dict[str, str | None] = {"none": None, "bad": "mxd_not_a_real_token"}
        self.values: dict[str, str] = {}
        self.ids: dict[str, str] = {}

    def call(self, method: str, path: str, kind: str, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        secret = self.tokens[kind]
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        return httpx.request(method, self.proc.url(path), headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    proc = MxdProcess(tmp_path_factory.mktemp("scopes") / "data", env={"MXD_SIGNUP_ENABLED": "true"})
    proc.init()
    proc.start()
    w = World(proc)
    try:
        assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        for box in ("agent", "other", "owner"):
            assert proc.api("POST", "/api/mailboxes", json={"address": f"{box}@example.test"}).status_code == 201
        _send_inbound(proc, "agent@example.test", "agent note")
        _send_inbound(proc, "other@example.test", "other note")
        assert len(proc.wait_messages(2)) >= 2
        for scope in tokens.SCOPES:
            w.tokens[scope] = proc.token([scope], name=f"only-{scope}")
        w.tokens["org_admin"] = _organisation_key(proc)
        _record_ids(w)
    except BaseException:
        proc.stop()
        raise
    yield w
    proc.stop()


def _organisation_key(proc: MxdProcess) -> str:
    """An organisation's first key, through the real sign-up: the code arrives in owner@example.test."""
    r = httpx.post(proc.url("/v1/auth/signup"), timeout=60,
                   json={"email": "owner@example.test", "organization_name": "Tenant", "slug": "tenant"})
    assert r.status_code == 201, r.text

    def code() -> str | None:
        for m in proc.messages("owner@example.test"):
            found = re.search(r"verification code: (\d{6})", m["subject"] or "")
            if found:
                return found.group(1)
        return None
    found = wait_for(code, timeout=60)
    assert found, "the verification code never arrived"
    r = httpx.post(proc.url("/v1/auth/signup/verify"), timeout=60,
                   json={"email": "owner@example.test", "verification_token": found})
    assert r.status_code == 201, r.text
    return r.json()["api_key"]


def _record_ids(w: World) -> None:
    proc = w.proc
    msgs = {m["mailbox"]: m for m in proc.messages() if m["direction"] == "in"}
    agent_msg, other_msg = msgs["agent@example.test"], msgs["other@example.test"]
    boxes = {b["address"]: b for b in proc.api("GET", "/api/mailboxes").json()["data"]}
    domain = proc.api("GET", "/api/domains/example.test").json()
    draft = proc.api("POST", "/api/drafts", json={"from": "agent@example.test", "to": ["x@example.org"],
                                                  "subject": "draft", "text": "draft"})
    assert draft.status_code == 201, draft.text
    agent = proc.api("POST", "/v1/agents", json={"name": "Support", "slug": "support", "external_id": "t:support"})
    assert agent.status_code in (200, 201), agent.text
    w.ids = {"agent_msg": agent_msg["id"], "agent_thread": agent_msg["thread_id"], "other_msg": other_msg["id"],
             "other_thread": other_msg["thread_id"], "agent_box": boxes["agent@example.test"]["id"],
             "other_box": boxes["other@example.test"]["id"], "draft": draft.json()["id"],
             "domain": domain["id"], "agent": agent.json()["id"]}
    w.values = {"domain": "example.test", "mailbox": "agent@example.test", "agent_id": w.ids["agent"],
                "domain_id": w.ids["domain"], "mailbox_id": w.ids["agent_box"], "message_id": w.ids["agent_msg"]}


def _path(w: World, method: str, path: str) -> str:
    """The route's path with real objects where that is harmless, ids that do not exist where the call
    would destroy something: either way the scope check runs first and decides 403 or not."""
    def value(match: re.Match) -> str:
        name = match.group(1)
        if method == "DELETE":
            return MISSING.get(name, "zz_missing")
        if name == "id":
            for prefix, key in (("/api/messages/", "agent_msg"), ("/api/threads/", "agent_thread"),
                                ("/api/drafts/", "draft")):
                if path.startswith(prefix):
                    return w.ids[key]
            return MISSING["id"]
        return w.values.get(name, MISSING.get(name, "zz_missing"))
    return re.sub(r"{([^}]+)}", value, path)


def expected(op: openapi.Op, kind: str) -> str:
    """'allowed', 'denied' (403) or 'unauthorized' (401) for a caller of this kind."""
    if op.scope is openapi.PUBLIC:
        return "allowed"
    if kind in ("none", "bad"):
        return "unauthorized"
    if kind == "org_admin":
        return "denied" if op.operator else "allowed"
    if op.scope == openapi.ANY or kind == "admin" or kind == op.scope:
        return "allowed"
    return "denied"


def _request(w: World, op: openapi.Op, kind: str) -> httpx.Response:
    kwargs: dict[str, Any] = {}
    if op.example is not None:
        kwargs["json"] = op.example
    elif op.body is not None:
        kwargs["json"] = {}
    if op.query and "q" in op.query:
        kwargs["params"] = {"q": "pelican"}
    return w.call(op.method, _path(w, op.method, op.path), kind, **kwargs)


def _outcome(r: httpx.Response) -> str:
    """A 403 other than `forbidden` (sender_not_allowed, signup_disabled, ...) comes after the scope check."""
    if r.status_code == 401:
        return "unauthorized"
    if r.status_code == 403 and r.json()["error"]["code"] == "forbidden":
        return "denied"
    return "allowed"


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_route_allows_exactly_its_scope(world: World, route: tuple[str, str]) -> None:
    op = openapi.BY_KEY.get(route)
    assert op is not None, f"{route} has no entry (scope, schemas) in mxd/api/openapi.py OPS"
    wrong = []
    for kind in KINDS:
        if op.scope is openapi.PUBLIC and kind == "bad":
            continue                  # a public route may refuse a presented bad credential (401) or ignore it
        r = _request(world, op, kind)
        want, got = expected(op, kind), _outcome(r)
        if want != got:
            wrong.append(f"{kind}: expected {want}, got {r.status_code} {r.text[:200]}")
        elif got == "unauthorized":
            assert r.json()["error"]["code"] == "unauthorized", r.text
    assert wrong == [], f"{op.method} {op.path} (scope {op.scope}, operator={op.operator}): " + "; ".join(wrong)


def test_every_scope_appears_in_the_table() -> None:
    used = {op.scope for op in openapi.OPS}
    assert set(tokens.SCOPES) <= used, set(tokens.SCOPES) - used


# ---------------------------------------------------------------- mailbox limits, read vs send, organisations
def test_token_limited_to_a_mailbox_gets_404_for_the_others(world: World) -> None:
    proc, ids = world.proc, world.ids
    limited = proc.token(["read", "search", "draft", "send"], ["agent@example.test"], name="agent-only")
    world.tokens["limited"] = limited

    def get(path: str, **kw: Any) -> httpx.Response:
        return world.call("GET", path, "limited", **kw)
    assert get(f"/api/messages/{ids['agent_msg']}").status_code == 200
    for path in (f"/api/messages/{ids['other_msg']}", f"/api/messages/{ids['other_msg']}/raw",
                 f"/api/threads/{ids['other_thread']}", "/api/mailboxes/other@example.test",
                 f"/v1/mailboxes/{ids['other_box']}", f"/v1/messages/{ids['other_msg']}",
                 f"/v1/mailboxes/{ids['other_box']}/inbox"):
        if _served(path):
            r = get(path)
            assert r.status_code == 404, (path, r.text)
            assert r.json()["error"]["code"] == "not_found"
    assert get("/api/messages", params={"mailbox": "other@example.test"}).status_code == 404
    listed = get("/api/messages", params={"limit": 500}).json()["data"]
    assert listed and {m["mailbox"] for m in listed} == {"agent@example.test"}
    found = get("/api/messages/search", params={"q": "pelican"}).json()["data"]
    assert found and {m["mailbox"] for m in found} == {"agent@example.test"}
    assert [b["address"] for b in get("/api/mailboxes").json()["data"]] == ["agent@example.test"]
    r = world.call("POST", f"/api/messages/{ids['other_msg']}/reply", "limited", json={"text": "hi"})
    assert r.status_code == 404, r.text
    r = world.call("POST", "/api/send", "limited", json={"from": "other@example.test", "to": ["x@example.org"],
                                                        "subject": "s", "text": "t"})
    assert r.status_code in (403, 404) and r.json()["error"]["code"] in ("sender_not_allowed", "not_found"), r.text


def _served(path: str) -> bool:
    """Whether a concrete path matches a GET route of the table (routes still being added are skipped)."""
    for op in openapi.OPS:
        if op.method == "GET" and re.fullmatch(re.sub(r"{[^}]+}", r"[^/]+", op.path), path):
            return True
    return False


def test_read_never_implies_send(world: World) -> None:
    ids = world.ids
    to = ["never@example.org"]
    attempts = [("POST", "/api/send", {"from": "agent@example.test", "to": to, "subject": "s", "text": "t"}),
                ("POST", f"/api/messages/{ids['agent_msg']}/reply", {"text": "t", "to": to}),
                ("POST", f"/api/threads/{ids['agent_thread']}/reply", {"text": "t", "to": to}),
                ("POST", f"/api/drafts/{ids['draft']}/send", None)]
    if ("POST", "/v1/messages") in openapi.BY_KEY:
        attempts.append(("POST", "/v1/messages", {"mailbox_id": ids["agent_box"], "to": to, "subject": "s",
                                                  "body_text": "t"}))
    reader = world.proc.token(["read", "search", "draft", "audit"], name="everything-but-send")
    world.tokens["reader"] = reader
    for method, path, payload in attempts:
        r = world.call(method, path, "reader", json=payload)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == "forbidden" and "'send'" in r.json()["error"]["message"]
    assert world.call("GET", f"/api/drafts/{ids['draft']}", "reader").status_code == 200
    queued = world.proc.api("GET", "/api/queue", params={"limit": 500}).json()["data"]
    assert not [e for e in queued if e["recipient"] == "never@example.org"]       # nothing went out


def test_organisation_token_sees_none_of_the_operators_objects(world: World) -> None:
    ids = world.ids

    def get(path: str, **kw: Any) -> httpx.Response:
        return world.call("GET", path, "org_admin", **kw)
    assert get("/api/messages", params={"limit": 500}).json()["data"] == []
    assert get("/api/threads", params={"limit": 500}).json()["data"] == []
    assert get("/api/mailboxes").json()["data"] == []
    assert get("/api/drafts").json()["data"] == []
    assert get("/api/messages/search", params={"q": "pelican"}).json()["data"] == []
    for path in (f"/api/messages/{ids['agent_msg']}", f"/api/threads/{ids['agent_thread']}",
                 f"/api/drafts/{ids['draft']}", "/api/mailboxes/agent@example.test",
                 f"/v1/mailboxes/{ids['agent_box']}", f"/v1/agents/{ids['agent']}",
                 f"/v1/messages/{ids['agent_msg']}"):
        if _served(path):
            r = get(path)
            assert r.status_code == 404, (path, r.text)
    r = world.call("POST", "/api/send", "org_admin", json={"from": "agent@example.test", "to": ["x@example.org"],
                                                          "subject": "s", "text": "t"})
    assert r.status_code in (403, 404), r.text
    for path in ("/api/queue", "/api/suppressions"):
        assert get(path).status_code == 403, path
    assert get("/api/aliases").json()["data"] == []
    own = get("/api/tokens").json()["data"]
    assert own and len({t["org_id"] for t in own}) == 1 and own[0]["org_id"] is not None
