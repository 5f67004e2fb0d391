"""A mailbox's policy through every door: GET/PUT/DELETE on /api and /v1, who may read and change it, the
audit trail, the CLI, and its outbound allow-list in the one send preflight (API, /v1, SMTP submission at
RCPT), refusing or holding a recipient outside the list."""
from __future__ import annotations

import json
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd import mailpolicy
from mxd.store.models import Organization
from tests.support import mcpclient
from tests.support.asgi import InProcessApi, in_process_api
from tests.support.daemon import wait_for
from tests.support.sink import DOMAIN, World, platform_world
from tests.support.smtp import insecure_tls

DEFAULT = {"outbound": {"allow": [], "otherwise": "refuse"},
           "inbound": {"allow_senders": [], "block_senders": [], "require_authenticated": False,
                       "blocked_attachments": "default", "max_message_size": None}}
AGENT = "agent@example.test"
PATH = f"/api/mailboxes/{AGENT}/policy"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcessApi]:
    """The API in process serving example.test (ready for outbound) and partner.test, with agent@ and
    peer@example.test, and a mailbox of another organisation (other@example.test, org_other)."""
    with in_process_api(tmp_path / "data", domains=["example.test"]) as api:
        for box in (AGENT, "peer@example.test"):
            assert api.api("POST", "/api/mailboxes", json={"address": box}).status_code == 201
        assert api.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        api.db.write_sync(lambda: Organization.create(id="org_other", name="Other", slug="other",
                                                      owner_email="owner@other.example"))
        r = api.api("POST", "/api/mailboxes", json={"address": "other@example.test", "org_id": "org_other"})
        assert r.status_code == 201, r.text
        yield api


def _error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return r.json()["error"]


# ---------------------------------------------------------------- the document: read, merge, reset
def test_default_policy_is_the_empty_document(app):
    r = app.api("GET", PATH)
    assert r.status_code == 200 and r.json() == DEFAULT
    assert DEFAULT == mailpolicy.EMPTY


def test_put_merges_and_delete_goes_back_to_the_default(app):
    r = app.api("PUT", PATH, json={"outbound": {"allow": ["Partner.TEST", "bob@Example.com"], "otherwise": "hold"}})
    assert r.status_code == 200, r.text
    assert r.json()["outbound"] == {"allow": ["partner.test", "bob@example.com"], "otherwise": "hold"}
    r = app.api("PUT", PATH, json={"inbound": {"require_authenticated": True, "max_message_size": 100000}})
    assert r.status_code == 200, r.text
    merged = r.json()
    assert merged["outbound"] == {"allow": ["partner.test", "bob@example.com"], "otherwise": "hold"}
    assert merged["inbound"]["require_authenticated"] is True and merged["inbound"]["max_message_size"] == 100000
    assert merged["inbound"]["blocked_attachments"] == "default"
    assert app.api("GET", PATH).json() == merged
    r = app.api("PUT", PATH, json={"outbound": {"otherwise": "refuse"}})
    assert r.json()["outbound"] == {"allow": ["partner.test", "bob@example.com"], "otherwise": "refuse"}
    r = app.api("DELETE", PATH)
    assert r.status_code == 200 and r.json() == DEFAULT
    assert app.api("GET", PATH).json() == DEFAULT
    assert app.api("GET", "/api/mailboxes/peer@example.test/policy").json() == DEFAULT     # each its own


@pytest.mark.parametrize("body, field", [
    ({"outbound": {"allow": ["ok.test"]}, "outbond": {}}, "outbond"),
    ({"outbound": {"allowed": ["ok.test"]}}, "outbound.allowed"),
    ({"inbound": {"max_size": 10}}, "inbound.max_size"),
    ({"outbound": {"allow": ["not an address@@x"]}}, "outbound.allow"),
    ({"outbound": {"allow": "partner.test"}}, "outbound.allow"),
    ({"inbound": {"block_senders": ["bad..domain"]}}, "inbound.block_senders"),
    ({"outbound": {"otherwise": "bounce"}}, "outbound.otherwise"),
    ({"inbound": {"max_message_size": 0}}, "inbound.max_message_size"),
    ({"inbound": {"max_message_size": "10MB"}}, "inbound.max_message_size"),
    ({"inbound": {"max_message_size": True}}, "inbound.max_message_size"),
    ({"inbound": {"require_authenticated": "yes"}}, "inbound.require_authenticated"),
    ({"inbound": {"blocked_attachments": ["../exe"]}}, "inbound.blocked_attachments"),
    ({"outbound": []}, "outbound"),
])
def test_invalid_policy_names_the_field_and_changes_nothing(app, body, field):
    app.api("PUT", PATH, json={"outbound": {"allow": ["keep.test"]}})
    err = _error(app.api("PUT", PATH, json=body), 422, "invalid_policy")
    assert err["message"].startswith(f"{field}:"), err
    assert err["fix"]
    assert app.api("GET", PATH).json()["outbound"]["allow"] == ["keep.test"]


def test_a_body_that_is_no_object_is_refused(app):
    assert app.api("PUT", PATH, content=b"[1, 2]", headers={"Content-Type": "application/json"}).status_code == 400
    assert app.api("PUT", PATH, content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                     st.text(max_size=40), st.sampled_from(["default", "hold", "refuse", "*.x.test", "a@b.test",
                                                             "exe", "x@@y", "*.", "\u0430pple.test"]))
_KEYS = st.sampled_from(["outbound", "inbound", "allow", "otherwise", "allow_senders", "block_senders",
                         "require_authenticated", "blocked_attachments", "max_message_size", "other"])
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                       st.dictionaries(_KEYS, inner, max_size=5)), max_leaves=20)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(_KEYS, _JSON, max_size=4))
def test_hostile_bodies_get_a_clear_answer_and_leave_a_valid_policy(app, body):
    r = app.api("PUT", PATH, json=body)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        assert r.json()["error"]["code"] == "invalid_policy"
    stored = app.api("GET", PATH).json()
    assert mailpolicy.normalise(stored) == stored          # whatever came in, what is kept is a valid document


# ---------------------------------------------------------------- who may read and change it
def test_another_organisations_mailbox_does_not_exist_for_it(app):
    r = app.api("POST", "/api/tokens", json={"name": "other-admin", "scopes": ["admin"], "org_id": "org_other"})
    other_admin = r.json()["token"]
    _error(app.api("GET", PATH, other_admin), 404, "not_found")
    _error(app.api("PUT", PATH, other_admin, json={"outbound": {"allow": []}}), 404, "not_found")
    _error(app.api("DELETE", PATH, other_admin), 404, "not_found")
    # its own organisation's admin may change its own mailbox's policy; the operator's may read it
    own = "/api/mailboxes/other@example.test/policy"
    r = app.api("PUT", own, other_admin, json={"outbound": {"allow": ["partner.test"]}})
    assert r.status_code == 200 and r.json()["outbound"]["allow"] == ["partner.test"]
    assert app.api("GET", own).json()["outbound"]["allow"] == ["partner.test"]


def test_a_mailbox_token_reads_its_policy_but_cannot_change_it(app):
    mine = app.token(["read", "send", "draft", "search"], mailboxes=[AGENT])
    app.api("PUT", PATH, json={"outbound": {"allow": ["partner.test"]}})
    r = app.api("GET", PATH, mine)
    assert r.status_code == 200 and r.json()["outbound"]["allow"] == ["partner.test"]
    _error(app.api("PUT", PATH, mine, json={"outbound": {"allow": []}}), 403, "forbidden")
    _error(app.api("DELETE", PATH, mine), 403, "forbidden")
    assert app.api("GET", PATH).json()["outbound"]["allow"] == ["partner.test"]
    _error(app.api("GET", "/api/mailboxes/peer@example.test/policy", mine), 404, "not_found")
    sender_only = app.token(["send"], mailboxes=[AGENT])
    _error(app.api("GET", PATH, sender_only), 403, "forbidden")
    org_reader = app.token(["read"])                   # the operator's organisation, every mailbox, not admin
    assert app.api("GET", PATH, org_reader).status_code == 200
    _error(app.api("PUT", PATH, org_reader, json={}), 403, "forbidden")


def test_changes_are_audited(app):
    app.api("PUT", PATH, json={"outbound": {"allow": ["partner.test"], "otherwise": "hold"}})
    app.api("DELETE", PATH)
    mine = app.token(["read"], mailboxes=[AGENT])
    app.api("PUT", PATH, mine, json={"outbound": {"allow": []}})
    rows = app.api("GET", "/api/audit", params={"action": "*"}).json()["data"]
    policy_rows = [r for r in rows if r["action"].endswith("/api/mailboxes/{mailbox}/policy")]
    assert [(r["action"], r["result"]) for r in policy_rows] == [
        ("PUT /api/mailboxes/{mailbox}/policy", "denied"),
        ("DELETE /api/mailboxes/{mailbox}/policy", "ok"),
        ("PUT /api/mailboxes/{mailbox}/policy", "ok")]
    assert policy_rows[2]["mailbox"] == AGENT
    assert policy_rows[2]["detail"]["changed"] == ["outbound.allow", "outbound.otherwise"]


# ---------------------------------------------------------------- /v1: mailboxes by id
def test_v1_names_the_mailbox_by_id(app):
    box_id = app.api("GET", f"/api/mailboxes/{AGENT}").json()["id"]
    path = f"/v1/mailboxes/{box_id}/policy"
    assert app.api("GET", path).json() == DEFAULT
    r = app.api("PUT", path, json={"inbound": {"block_senders": ["spam.example"]}})
    assert r.status_code == 200 and r.json()["inbound"]["block_senders"] == ["spam.example"]
    assert app.api("GET", PATH).json()["inbound"]["block_senders"] == ["spam.example"]     # one policy, two doors
    r = app.api("PUT", f"/api/v1/mailboxes/{box_id}/policy", json={"outbound": {"allow": ["partner.test"]}})
    assert r.json()["inbound"]["block_senders"] == ["spam.example"]
    err = _error(app.api("PUT", path, json={"inbound": {"max_message_size": -1}}), 422, "invalid_policy")
    assert err["message"].startswith("inbound.max_message_size:")
    _error(app.api("GET", f"/v1/mailboxes/{AGENT}/policy"), 404, "not_found")     # /v1 takes ids only
    other_id = app.api("GET", "/api/mailboxes/other@example.test").json()["id"]
    mine = app.token(["read", "send"], mailboxes=[AGENT])
    _error(app.api("GET", f"/v1/mailboxes/{other_id}/policy", mine), 404, "not_found")
    _error(app.api("PUT", path, mine, json={}), 403, "forbidden")
    assert app.api("DELETE", path).json() == DEFAULT
    rows = app.api("GET", "/api/audit", params={"action": "*"}).json()["data"]
    assert "DELETE /v1/mailboxes/{mailbox_id}/policy" in [r["action"] for r in rows]


# ---------------------------------------------------------------- the outbound rule in the send preflight
def _send(app: InProcessApi, to: list[str] | str, token: str | None = None):
    return app.api("POST", "/api/send", token, json={"from": AGENT, "to": to, "subject": "policy", "text": "hi"})


def test_send_outside_the_allow_list_is_refused_naming_the_recipient(app):
    app.api("PUT", PATH, json={"outbound": {"allow": ["partner.test", "bob@other.test"]}})
    err = _error(_send(app, ["ann@partner.test", "eve@elsewhere.test"]), 403, "recipient_not_allowed")
    assert "eve@elsewhere.test" in err["message"] and "ann@partner.test" not in err["message"]
    assert err["fix"]
    _error(_send(app, "alice@other.test"), 403, "recipient_not_allowed")        # an address, not its domain
    _error(_send(app, "peer@example.test"), 403, "recipient_not_allowed")       # local recipients too
    assert app.api("GET", "/api/queue").json()["data"] == []
    r = _send(app, ["ann@partner.test", "BOB@other.test"])
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    app.api("PUT", PATH, json={"outbound": {"allow": ["*.partner.test", "peer@example.test"]}})
    _error(_send(app, "ann@notpartner.test"), 403, "recipient_not_allowed")     # *.domain: it and its subdomains
    assert _send(app, "ann@eu.partner.test").status_code == 202
    assert _send(app, "ann@partner.test").status_code == 202
    r = _send(app, "peer@example.test")
    assert r.status_code == 202 and r.json()["recipients"][0]["status"] == "delivered"
    app.api("DELETE", PATH)
    assert _send(app, "eve@elsewhere.test").status_code == 202                   # the default: anyone


def test_v1_send_meets_the_same_rule(app):
    box_id = app.api("GET", f"/api/mailboxes/{AGENT}").json()["id"]
    app.api("PUT", f"/v1/mailboxes/{box_id}/policy", json={"outbound": {"allow": ["partner.test"]}})
    r = app.api("POST", "/v1/messages", json={"mailbox_id": box_id, "to": "eve@elsewhere.test", "subject": "s",
                                              "body_text": "t"})
    err = _error(r, 403, "recipient_not_allowed")
    assert "eve@elsewhere.test" in err["message"]
    r = app.api("POST", "/v1/messages", json={"mailbox_id": box_id, "to": "ann@partner.test", "subject": "s",
                                              "body_text": "t"})
    assert r.status_code == 201 and r.json()["status"] == "queued", r.text


def test_hold_parks_the_message_with_the_policy_as_reason(app):
    app.api("PUT", PATH, json={"outbound": {"allow": ["partner.test"], "otherwise": "hold"}})
    r = _send(app, ["ann@partner.test", "eve@elsewhere.test"])
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "held"
    assert body["hold_reason"] == "mailbox policy: eve@elsewhere.test not in outbound.allow"
    held = app.api("GET", "/api/queue", params={"status": "held"}).json()["data"]
    assert sorted(e["recipient"] for e in held) == ["ann@partner.test", "eve@elsewhere.test"]
    assert {e["hold_reason"] for e in held} == {body["hold_reason"]}
    # a local recipient cannot wait in the queue: outside the list it is refused even under "hold"
    err = _error(_send(app, "peer@example.test"), 403, "recipient_not_allowed")
    assert "cannot be held" in err["message"]
    r = _send(app, "ann@partner.test")
    assert r.json()["status"] == "queued"


def test_a_policy_change_is_in_force_for_the_next_send(app):
    assert _send(app, "eve@elsewhere.test").status_code == 202
    app.api("PUT", PATH, json={"outbound": {"allow": ["partner.test"]}})
    _error(_send(app, "eve@elsewhere.test"), 403, "recipient_not_allowed")
    app.api("PUT", PATH, json={"outbound": {"allow": []}})
    assert _send(app, "eve@elsewhere.test").status_code == 202


# ---------------------------------------------------------------- a running daemon: SMTP submission, release, CLI
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    w = platform_world(tmp_path_factory.mktemp("mpol") / "data", signup=False)
    try:
        assert w.mxd.api("POST", "/api/mailboxes", json={"address": f"agent@{DOMAIN}"}).status_code == 201
        yield w
    finally:
        w.stop()


def _submission(world: World, token: str) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", world.mxd.submission_port, timeout=10)
    s.starttls(context=insecure_tls())
    s.login(f"agent@{DOMAIN}", token)
    return s


def test_submission_refuses_a_recipient_at_rcpt(world):
    proc = world.mxd
    path = f"/api/mailboxes/agent@{DOMAIN}/policy"
    r = proc.api("PUT", path, json={"outbound": {"allow": ["ok@example.com"], "otherwise": "refuse"}})
    assert r.status_code == 200, r.text
    token = proc.token(["send"], mailboxes=[f"agent@{DOMAIN}"])
    s = _submission(world, token)
    try:
        assert s.docmd("MAIL", f"FROM:<agent@{DOMAIN}>")[0] == 250
        code, text = s.docmd("RCPT", "TO:<no@example.com>")
        assert code == 550 and text.startswith(b"5.7.1") and b"recipient_not_allowed" in text, text
        assert b"no@example.com" in text
        assert s.docmd("RCPT", "TO:<ok@example.com>")[0] == 250
        s.rset()
        message = (f"From: agent@{DOMAIN}\r\nTo: ok@example.com\r\nSubject: allowed by policy\r\n\r\nhi\r\n")
        s.sendmail(f"agent@{DOMAIN}", ["ok@example.com"], message)
    finally:
        s.quit()
    world.sink.wait("ok@example.com", "allowed by policy")
    assert world.sink.find("no@example.com") == []
    proc.api("DELETE", path)


def test_held_by_policy_then_released_reaches_the_recipient(world):
    proc = world.mxd
    path = f"/api/mailboxes/agent@{DOMAIN}/policy"
    assert proc.api("PUT", path, json={"outbound": {"allow": ["example.org"], "otherwise": "hold"}}).status_code == 200
    token = proc.token(["send"], mailboxes=[f"agent@{DOMAIN}"])
    s = _submission(world, token)          # under "hold" RCPT accepts; the preflight holds at DATA
    try:
        s.sendmail(f"agent@{DOMAIN}", ["later@example.com"],
                   f"From: agent@{DOMAIN}\r\nTo: later@example.com\r\nSubject: held by policy\r\n\r\nhi\r\n")
    finally:
        s.quit()

    def held() -> list[dict] | None:
        rows = [e for e in proc.api("GET", "/api/queue", params={"status": "held"}).json()["data"]
                if e["recipient"] == "later@example.com"]
        return rows or None
    [entry] = wait_for(held)
    assert entry["hold_reason"] == "mailbox policy: later@example.com not in outbound.allow"
    assert world.sink.find("later@example.com") == []
    r = proc.api("POST", f"/api/queue/{entry['id']}/release")
    assert r.status_code == 200, r.text
    world.sink.wait("later@example.com", "held by policy")
    proc.api("DELETE", path)


async def test_mcp_send_meets_the_same_rule(world):
    proc = world.mxd
    path = f"/api/mailboxes/agent@{DOMAIN}/policy"
    assert proc.api("PUT", path, json={"outbound": {"allow": ["example.org"]}}).status_code == 200
    token = proc.token(["read", "send"], mailboxes=[f"agent@{DOMAIN}"])
    try:
        async with mcpclient.session(proc, token) as s:
            r = await s.call_tool("send_message", {"from_address": f"agent@{DOMAIN}", "to": ["no@example.com"],
                                                   "subject": "over mcp", "text": "hi"})
            assert r.is_error and r.structured_content["error"]["code"] == "recipient_not_allowed", r.content
            assert "no@example.com" in r.structured_content["error"]["message"]
            r = await s.call_tool("send_message", {"from_address": f"agent@{DOMAIN}", "to": ["yes@example.org"],
                                                   "subject": "over mcp", "text": "hi"})
            assert not r.is_error and r.structured_content["status"] == "queued", r.content
    finally:
        proc.api("DELETE", path)
    world.sink.wait("yes@example.org", "over mcp")


def _mxd(world: World, *args: str, stdin: str | None = None, token: str | None = None) -> subprocess.CompletedProcess:
    env = dict(world.mxd.env, MXD_URL=world.mxd.url(""), MXD_TOKEN=token or world.mxd.admin_token)
    return subprocess.run([sys.executable, "-m", "mxd.cli", *args], env=env, capture_output=True, text=True,
                          input=stdin, timeout=60)


def test_cli_round_trip(world):
    box = f"agent@{DOMAIN}"
    out = _mxd(world, "mailbox", "policy", box, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == DEFAULT
    out = _mxd(world, "mailbox", "policy", box, "--allow-to", "partner.test", "--allow-to", "bob@example.com",
               "--otherwise", "hold", "--require-authenticated", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["outbound"] == {"allow": ["partner.test", "bob@example.com"], "otherwise": "hold"}
    assert doc["inbound"]["require_authenticated"] is True
    out = _mxd(world, "mailboxes", "policy", box, "--set", "-",
               stdin=json.dumps({"inbound": {"max_message_size": 5000, "blocked_attachments": ["exe"]}}))
    assert out.returncode == 0, out.stderr
    assert "outbound.allow                  partner.test, bob@example.com" in out.stdout
    assert "inbound.max_message_size        5000" in out.stdout
    out = _mxd(world, "mailbox", "policy", box, "--no-require-authenticated", "--allow-to", "", "--json")
    doc = json.loads(out.stdout)
    assert doc["outbound"]["allow"] == [] and doc["inbound"]["require_authenticated"] is False
    assert doc["inbound"]["blocked_attachments"] == ["exe"]
    out = _mxd(world, "mailbox", "policy", box, "--set", "-", stdin='{"outbound": {"allow": ["x@@y"]}}')
    assert out.returncode == 1 and "error: invalid_policy: outbound.allow:" in out.stderr
    reader = world.mxd.token(["read"], mailboxes=[box])
    out = _mxd(world, "mailbox", "policy", box, "--reset", token=reader)
    assert out.returncode == 1 and "error: forbidden:" in out.stderr
    out = _mxd(world, "mailbox", "policy", box, "--reset", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == DEFAULT
