"""The /v1 dialect against a real daemon: sign-up switched off by default (the operator may still
sign organisations up), the code's attempt limit, the organisation boundary (the operator sees both),
external_id idempotency, the default domain, organisation domains, sending with metadata and
Idempotency-Key, and the /api/v1 alias."""
from __future__ import annotations

import smtplib
import sqlite3
from email.message import EmailMessage

import httpx
import pytest

from mxd.api.app import create_app
from tests.support.daemon import MxdProcess, wait_for
from tests.support.sink import DOMAIN, code_in, platform_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = platform_world(tmp_path_factory.mktemp("loftbox") / "data", signup=False)
    yield w
    w.stop()


def _post(w, path: str, body: dict, token: str | None = None, **kw) -> httpx.Response:
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(w.mxd.url(path), json=body, headers=headers, timeout=30, **kw)


def _get(w, path: str, token: str, **kw) -> httpx.Response:
    return httpx.get(w.mxd.url(path), headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw)


def _org(w, email: str, slug: str) -> str:
    """An organisation signed up by the operator and verified with the mailed code; returns its key."""
    r = _post(w, "/v1/auth/signup", {"email": email, "organization_name": slug, "slug": slug}, w.mxd.admin_token)
    assert r.status_code == 201, r.text
    code = code_in(w.sink.wait(email, "verification code")[-1])
    r = _post(w, "/v1/auth/signup/verify", {"email": email, "verification_token": code})
    assert r.status_code == 201, r.text
    assert r.json()["scopes"] == ["admin"] and r.json()["organization"]["slug"] == slug
    return r.json()["api_key"]


@pytest.fixture(scope="module")
def orgs(world):
    return _org(world, "alice@example.com", "org-a"), _org(world, "bob@example.com", "org-b")


def _agent_and_box(w, key: str, slug: str, **box) -> tuple[dict, dict]:
    r = _post(w, "/v1/agents", {"name": slug, "slug": slug, "external_id": f"test:{slug}"}, key)
    assert r.status_code == 201, r.text
    agent = r.json()
    r = _post(w, f"/v1/agents/{agent['id']}/mailboxes", dict({"local_part": slug}, **box), key)
    assert r.status_code == 201, r.text
    return agent, r.json()


# ---------------------------------------------------------------- sign-up
def test_signup_is_off_by_default_and_says_how_to_switch_it_on(world):
    r = _post(world, "/v1/auth/signup", {"email": "eve@example.com", "organization_name": "Eve", "slug": "eve"})
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "signup_disabled" and "MXD_SIGNUP_ENABLED=true" in err["fix"]
    assert world.sink.find("eve@example.com") == []
    # An organisation's key is not the operator: it cannot sign others up either.
    r = _post(world, "/v1/auth/signup", {"email": "eve@example.com", "organization_name": "Eve", "slug": "eve"},
              _org(world, "carol@example.com", "org-c"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "signup_disabled"


def test_the_code_allows_five_attempts_then_a_new_signup(world):
    email = "dave@example.com"
    body = {"email": email, "organization_name": "Dave Agents", "slug": "dave-agents"}
    assert _post(world, "/v1/auth/signup", body, world.mxd.admin_token).status_code == 201
    code = code_in(world.sink.wait(email, "verification code")[-1])
    wrong = f"{(int(code) + 1) % 10 ** 6:06d}"
    for left in (4, 3, 2, 1, 0):
        r = _post(world, "/v1/auth/signup/verify", {"email": email, "verification_token": wrong})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_code"
        assert f"({left} attempts left)" in r.json()["error"]["message"]
    r = _post(world, "/v1/auth/signup/verify", {"email": email, "verification_token": code})
    assert r.status_code == 403 and r.json()["error"]["code"] == "too_many_attempts"

    assert _post(world, "/v1/auth/signup", body, world.mxd.admin_token).status_code == 200     # a new code
    fresh = code_in(world.sink.wait(email, "verification code", count=2)[-1])
    r = _post(world, "/v1/auth/signup/verify", {"email": email, "verification_token": code})
    if code != fresh:
        assert r.status_code == 422                      # the old code died with the new one
    r = _post(world, "/v1/auth/signup/verify", {"email": email, "verification_token": fresh})
    assert r.status_code == 201 and r.json()["api_key"]
    # Verified: the key is not handed out again, and the email cannot sign up again.
    r = _post(world, "/v1/auth/signup/verify", {"email": email, "verification_token": fresh})
    assert r.status_code == 409
    assert _post(world, "/v1/auth/signup", body, world.mxd.admin_token).status_code == 409
    welcome = world.sink.wait(email, "Welcome")[0]
    assert "100 outgoing recipients" in welcome.get_body(("plain",)).get_content()


def test_signup_says_when_the_code_cannot_be_mailed(world):
    admin = world.mxd.admin_token
    assert world.mxd.api("PUT", f"/api/domains/{DOMAIN}/readiness", json={"ready": False}).status_code == 200
    try:
        body = {"email": "frank@example.com", "organization_name": "Frank", "slug": "frank"}
        r = _post(world, "/v1/auth/signup", body, admin)
        assert r.status_code == 422 and r.json()["error"]["code"] == "domain_not_ready"
        assert r.json()["error"]["message"].startswith("the verification email could not be sent")
    finally:
        assert world.mxd.api("PUT", f"/api/domains/{DOMAIN}/readiness", json={"ready": True}).status_code == 200
    assert _post(world, "/v1/auth/signup", body, admin).status_code == 200          # the same sign-up, mailed now
    assert code_in(world.sink.wait("frank@example.com", "verification code")[-1])


def test_signup_validates_and_protects_slugs(world, orgs):
    admin = world.mxd.admin_token
    r = _post(world, "/v1/auth/signup", {"email": "not an address", "organization_name": "X", "slug": "x"}, admin)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_address"
    r = _post(world, "/v1/auth/signup", {"email": "x@example.com", "organization_name": "X", "slug": "Bad Slug"}, admin)
    assert r.status_code == 400
    r = _post(world, "/v1/auth/signup", {"email": "x@example.com", "organization_name": "X", "slug": "org-a"}, admin)
    assert r.status_code == 409
    r = _post(world, "/v1/auth/signup", {"email": "x@example.com", "organization_name": "X\r\nBcc: y", "slug": "x"},
              admin)
    assert r.status_code == 400


# ---------------------------------------------------------------- the organisation boundary
def test_organisations_see_only_their_own_and_the_operator_sees_both(world, orgs):
    a, b = orgs
    agent_a, box_a = _agent_and_box(world, a, "alpha")
    agent_b, box_b = _agent_and_box(world, b, "beta")
    assert box_a["organization_id"] != box_b["organization_id"]
    r = _post(world, "/v1/messages", {"mailbox_id": box_b["id"], "to": ["someone@example.com"],
                                      "subject": "from b", "body_text": "b"}, b)
    assert r.status_code == 201, r.text
    msg_b = r.json()["id"]

    assert [x["id"] for x in _get(world, "/v1/agents", a).json()["data"]] == [agent_a["id"]]
    assert [x["id"] for x in _get(world, "/v1/mailboxes", a).json()["data"]] == [box_a["id"]]
    for path in (f"/v1/agents/{agent_b['id']}", f"/v1/agents/{agent_b['id']}/mailboxes",
                 f"/v1/mailboxes/{box_b['id']}", f"/v1/mailboxes/{box_b['id']}/inbox", f"/v1/messages/{msg_b}",
                 f"/api/messages?mailbox={box_b['address']}", f"/api/messages/{msg_b}"):
        r = _get(world, path, a)
        assert r.status_code == 404, (path, r.text)
    for path, body in ((f"/v1/agents/{agent_b['id']}/mailboxes", {"local_part": "intruder"}),
                       ("/v1/messages", {"mailbox_id": box_b["id"], "to": ["x@example.com"], "body_text": "x"}),
                       (f"/v1/mailboxes/{box_b['id']}/inbox/ack", {"message_ids": [msg_b]})):
        r = _post(world, path, body, a)
        assert r.status_code == 404, (path, r.text)
    # A mailbox name another organisation holds is a conflict, not a takeover.
    r = _post(world, f"/v1/agents/{agent_a['id']}/mailboxes", {"local_part": "beta"}, a)
    assert r.status_code == 409

    admin = world.mxd.admin_token
    everyone = {x["id"] for x in _get(world, "/v1/agents", admin).json()["data"]}
    assert {agent_a["id"], agent_b["id"]} <= everyone
    assert _get(world, f"/v1/messages/{msg_b}", admin).status_code == 200
    assert _get(world, f"/v1/mailboxes/{box_b['id']}/inbox", admin).status_code == 200
    assert _get(world, "/v1/organization", a).json()["organization"]["slug"] == "org-a"

    # The operator may set an organisation up: the agent and its mailbox then belong to it.
    org_a = box_a["organization_id"]
    r = _post(world, "/v1/agents", {"name": "Set Up", "organization_id": org_a}, admin)
    assert r.status_code == 201 and r.json()["organization_id"] == org_a
    r = _post(world, f"/v1/agents/{r.json()['id']}/mailboxes", {"local_part": "set-up"}, admin)
    assert r.status_code == 201 and r.json()["organization_id"] == org_a
    assert r.json()["id"] in {x["id"] for x in _get(world, "/v1/mailboxes", a).json()["data"]}
    assert _post(world, "/v1/agents", {"name": "X", "organization_id": "org_nope"}, admin).status_code == 404
    # An organisation cannot place objects in another one.
    r = _post(world, "/v1/agents", {"name": "Sneaky", "organization_id": box_b["organization_id"]}, a)
    assert r.status_code == 404


def test_external_id_makes_agent_setup_idempotent(world, orgs):
    a, b = orgs
    body = {"name": "Support Agent", "slug": "support-agent", "external_id": "hermes:support-agent",
            "purpose": "replies", "owner_label": "Ops", "policy_scope": "agent"}
    first = _post(world, "/v1/agents", body, a)
    assert first.status_code == 201
    again = _post(world, "/v1/agents", body, a)
    assert again.status_code == 200 and again.json() == first.json()
    found = _get(world, "/v1/agents", a, params={"external_id": "hermes:support-agent"}).json()["data"]
    assert [x["id"] for x in found] == [first.json()["id"]]
    r = _post(world, "/v1/agents", dict(body, slug="another-slug"), a)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    r = _post(world, "/v1/agents", dict(body, external_id="hermes:other"), a)        # the slug is taken
    assert r.status_code == 409
    other = _post(world, "/v1/agents", body, b)                                     # another organisation
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert _get(world, "/v1/agents", b, params={"external_id": "hermes:support-agent"}).json()["data"][0]["id"] \
        == other.json()["id"]
    # The agent's mailbox is idempotent too.
    agent_id = first.json()["id"]
    one = _post(world, f"/v1/agents/{agent_id}/mailboxes", {"local_part": "support-a"}, a)
    two = _post(world, f"/v1/agents/{agent_id}/mailboxes", {"local_part": "support-a"}, a)
    assert (one.status_code, two.status_code) == (201, 200) and one.json()["id"] == two.json()["id"]
    r = _post(world, "/v1/agents", {"slug": "no-name"}, a)
    assert r.status_code == 400


# ---------------------------------------------------------------- domains and the default domain
def test_default_domain_and_organisation_domains(world, orgs):
    a, b = orgs
    agent, box = _agent_and_box(world, a, "gamma", display_name="Gamma", retention_days=3)
    assert box["domain"] == DOMAIN and box["retention_days"] == 3 and box["display_name"] == "Gamma"
    # The MX accepts mail for the new mailbox at once.
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "x@example.org", box["address"], "straight away"
    msg.set_content("hi\n")
    with smtplib.SMTP("127.0.0.1", world.mxd.mx_port, timeout=30) as smtp:
        assert smtp.send_message(msg) == {}

    r = _post(world, "/v1/domains", {"domain": "mail.org-a.example"}, a)
    assert r.status_code == 201 and r.json()["organization_id"] == box["organization_id"]
    dom = r.json()
    assert _post(world, "/v1/domains", {"domain": "mail.org-a.example"}, a).status_code == 200
    assert _post(world, "/v1/domains", {"domain": "mail.org-a.example"}, b).status_code == 409
    assert _post(world, "/v1/domains", {"domain": DOMAIN}, a).status_code == 409     # the operator's
    assert [d["id"] for d in _get(world, "/v1/domains", a).json()["data"]] == [dom["id"]]
    assert _get(world, f"/v1/domains/{dom['id']}/dns", b).status_code == 404
    assert _post(world, f"/v1/domains/{dom['id']}/verify", {}, b).status_code == 404

    r = _post(world, f"/v1/agents/{agent['id']}/mailboxes", {"local_part": "gamma", "domain_id": dom["id"]}, a)
    assert r.status_code == 201 and r.json()["address"] == "gamma@mail.org-a.example"
    custom = r.json()
    _, box_b = _agent_and_box(world, b, "delta")
    agent_b = box_b["agent_id"]
    r = _post(world, f"/v1/agents/{agent_b}/mailboxes", {"local_part": "delta", "domain_id": dom["id"]}, b)
    assert r.status_code == 404                                           # another organisation's domain
    # Sending from an unverified domain is stopped by the one preflight.
    r = _post(world, "/v1/messages", {"mailbox_id": custom["id"], "to": ["x@example.com"], "subject": "s",
                                      "body_text": "t"}, a)
    assert r.status_code == 422 and r.json()["error"]["code"] == "domain_not_ready"


def test_registering_a_domain_does_not_capture_other_senders_mail(world, orgs):
    a, b = orgs
    r = _post(world, "/v1/domains", {"domain": "example.org"}, b)         # not B's, and not verified
    assert r.status_code == 201, r.text
    agent = _post(world, "/v1/agents", {"name": "Catcher", "external_id": "test:catcher"}, b).json()
    r = _post(world, f"/v1/agents/{agent['id']}/mailboxes", {"local_part": "target", "domain_id": r.json()["id"]}, b)
    assert r.status_code == 201 and r.json()["address"] == "target@example.org"
    catcher = r.json()
    _, box_a = _agent_and_box(world, a, "honest")
    r = _post(world, "/v1/messages", {"mailbox_id": box_a["id"], "to": ["target@example.org"], "subject": "private",
                                      "body_text": "for the real target"}, a)
    assert r.status_code == 201 and r.json()["recipients"][0]["status"] == "queued"     # out to the real MX
    world.sink.wait("target@example.org", "private")
    assert _get(world, f"/v1/mailboxes/{catcher['id']}/inbox", b).json()["data"] == []


def test_default_domain_from_config(tmp_path):
    def first_box(env: dict[str, str]) -> str:
        proc = MxdProcess(tmp_path / env.get("MXD_DEFAULT_DOMAIN", "none"), domains=["first.test", "second.test"],
                          env=env)
        proc.init()
        proc.start()
        try:
            agent = proc.api("POST", "/v1/agents", json={"name": "A"}).json()
            r = proc.api("POST", f"/v1/agents/{agent['id']}/mailboxes", json={"local_part": "a"})
            assert r.status_code == 201, r.text
            return r.json()["address"]
        finally:
            proc.stop()
    assert first_box({}) == "a@first.test"
    assert first_box({"MXD_DEFAULT_DOMAIN": "second.test"}) == "a@second.test"


# ---------------------------------------------------------------- sending
def test_send_metadata_idempotency_and_reply(world, orgs):
    a, _ = orgs
    _, box = _agent_and_box(world, a, "epsilon", display_name="Epsilon Bot")
    body = {"mailbox_id": box["id"], "to": ["friend@example.com"], "subject": "Hello",
            "body_text": "text", "body_html": "<p>html</p>", "metadata": {"ticket_id": "t-1"}}
    first = _post(world, "/v1/messages", body, a, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and first.json()["metadata"] == {"ticket_id": "t-1"}
    replay = _post(world, "/v1/messages", body, a, headers={"Idempotency-Key": "k-1"})
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    assert replay.json()["idempotent_replay"] is True
    changed = _post(world, "/v1/messages", dict(body, subject="Other"), a, headers={"Idempotency-Key": "k-1"})
    assert changed.status_code == 409
    [mail] = world.sink.wait("friend@example.com", "Hello")
    assert str(mail["From"]) == f"Epsilon Bot <{box['address']}>" and "t-1" not in mail.as_string()
    assert mail.get_body(("html",)).get_content().strip() == "<p>html</p>"

    db = sqlite3.connect(f"file:{world.mxd.data_dir / 'mxd.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT detail FROM audit WHERE action = 'POST /v1/messages' AND mailbox = ?",
                          (box["address"],)).fetchall()
    finally:
        db.close()
    assert rows and all('"ticket_id":"t-1"' in d for (d,) in rows)

    for bad in ({"metadata": {"n": 1}}, {"metadata": ["x"]}, {"metadata": {f"k{i}": "v" for i in range(21)}},
                {"mailbox_id": None}):
        r = _post(world, "/v1/messages", dict(body, **bad), a)
        assert r.status_code == 400, bad

    # Attachments: a body well over the 1 MB of other JSON calls is still a send.
    import base64
    blob = bytes(range(256)) * 6000
    r = _post(world, "/v1/messages", {"mailbox_id": box["id"], "to": ["files@example.com"], "subject": "Report",
                                      "body_text": "attached", "attachments": [
                                          {"filename": "r.bin", "content": base64.b64encode(blob).decode()}]}, a)
    assert r.status_code == 201, r.text
    [got] = world.sink.wait("files@example.com", "Report")
    assert [p.get_content() for p in got.iter_attachments()] == [blob]

    # A customer writes in; the agent replies by id and the reply stays in the thread.
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "Pat <pat@example.org>", box["address"], "Question"
    msg["Message-ID"] = "<question-1@example.org>"
    msg.set_content("?\n")
    with smtplib.SMTP("127.0.0.1", world.mxd.mx_port, timeout=30) as smtp:
        smtp.send_message(msg)
    inbox = wait_for(lambda: _get(world, f"/v1/mailboxes/{box['id']}/inbox", a).json()["data"], timeout=60)
    r = _post(world, "/v1/messages", {"mailbox_id": box["id"], "in_reply_to": inbox[0]["id"], "body_text": "!"}, a)
    assert r.status_code == 201 and r.json()["thread_id"] == inbox[0]["thread_id"]
    [reply] = world.sink.wait("pat@example.org", "Re: Question")
    assert reply["In-Reply-To"] == "<question-1@example.org>"


# ---------------------------------------------------------------- the /api/v1 alias
def test_api_v1_alias_serves_every_v1_route(world, orgs):
    a, _ = orgs
    assert _get(world, "/api/v1/agents", a).json() == _get(world, "/v1/agents", a).json()
    r = _post(world, "/api/v1/agents", {"name": "Via Alias", "external_id": "alias:1"}, a)
    assert r.status_code == 201
    r = _post(world, f"/api/v1/agents/{r.json()['id']}/mailboxes", {"local_part": "via-alias"}, a)
    assert r.status_code == 201
    assert _get(world, f"/api/v1/mailboxes/{r.json()['id']}/inbox", a).status_code == 200
    assert httpx.get(world.mxd.url("/health"), timeout=30).json()["status"] == "ok"
    for doc in ("/api/llms.txt", "/api/install.sh", "/api/openapi.json"):
        r = httpx.get(world.mxd.url(doc), timeout=30)
        assert r.status_code == 200 and r.content == httpx.get(world.mxd.url(doc[4:]), timeout=30).content
    r = _get(world, "/api/v1/nothing-here", a)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert _get(world, "/api/messages", a).status_code == 200           # /api itself is untouched


def _endpoint_of(routes, method: str, path: str, scope: dict | None = None):
    """The endpoint the app's routes give `method path` (through Mounts), or None."""
    from starlette.routing import Match, Mount
    scope = scope or {"type": "http", "method": method, "path": path, "root_path": ""}
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            if isinstance(route, Mount):
                return _endpoint_of(route.routes, method, path, dict(scope, **child))
            return child["endpoint"]
    return None


def test_alias_serves_the_v1_routes_and_the_documents():
    """/api/v1/... is the /v1 routes again (a Mount, the path as it came), /api/v10 is not; the documents are
    served under /api too, and /api/health stays /api's own."""
    routes = create_app(None).routes
    agents = _endpoint_of(routes, "GET", "/v1/agents")
    assert agents is not None and _endpoint_of(routes, "GET", "/api/v1/agents") is agents
    assert _endpoint_of(routes, "GET", "/api/v10") is None
    assert _endpoint_of(routes, "GET", "/api/llms.txt") is _endpoint_of(routes, "GET", "/llms.txt") is not None
    assert _endpoint_of(routes, "GET", "/api/health") is not _endpoint_of(routes, "GET", "/health")


# ---------------------------------------------------------------- the store functions, without a daemon
# `db`: the shared in-process store (tests/support/store.py, through tests/conftest.py)
def test_codes_are_stored_hashed_and_expire(db):
    import time as _time

    from mxd.store import orgs as orgs_mod
    from mxd.store.models import Organization

    org, code, created = db.write_sync(orgs_mod.signup, "Owner@Example.COM", "Owner Org", None)
    assert created and org.slug == "owner-org" and org.owner_email == "owner@example.com"
    assert len(code) == 6 and code.isdigit() and code not in org.code_hash
    assert org.code_expires_at - _time.time() == pytest.approx(orgs_mod.CODE_SECONDS, abs=60)

    wrong = f"{(int(code) + 1) % 10 ** 6:06d}"
    result = db.write_sync(orgs_mod.verify, "OWNER@example.com", wrong)
    assert result.error.code == "invalid_code"
    assert db.write_sync(lambda: Organization.get_by_id(org.id).code_attempts) == 1      # committed

    db.write_sync(lambda: Organization.update(code_expires_at=_time.time() - 1).execute())
    assert db.write_sync(orgs_mod.verify, "Owner@example.com", code).error.code == "code_expired"
    _, fresh, created = db.write_sync(orgs_mod.signup, "Owner@example.com", "Owner Org", "owner-org")
    assert not created
    done = db.write_sync(orgs_mod.verify, "Owner@example.com", fresh)
    assert done.error is None and done.secret.startswith("mxd_") and done.token.org_id == org.id
    assert db.write_sync(orgs_mod.verify, "Owner@example.com", fresh).error.code == "conflict"
    assert db.write_sync(orgs_mod.verify, "nobody@example.com", fresh).error.code == "not_found"


def test_default_domain_choice(db):
    from mxd.errors import MxdError
    from mxd.store import directory
    from mxd.store import orgs as orgs_mod

    with pytest.raises(MxdError) as exc:
        db.write_sync(orgs_mod.default_domain, "")
    assert exc.value.code == "no_default_domain"
    db.write_sync(directory.create_domain, "tenant.test", "org_x")       # an organisation's domain never is
    with pytest.raises(MxdError):
        db.write_sync(orgs_mod.default_domain, "")
    db.write_sync(directory.create_domain, "one.test")
    db.write_sync(directory.create_domain, "two.test")
    assert db.write_sync(orgs_mod.default_domain, "").name == "one.test"
    assert db.write_sync(orgs_mod.default_domain, "TWO.test").name == "two.test"
    with pytest.raises(MxdError) as exc:
        db.write_sync(orgs_mod.default_domain, "three.test")
    assert exc.value.code == "no_default_domain"


# ---------------------------------------------------------------- install.sh, without a daemon
def test_install_script_never_overwrites_a_changed_skill_unless_asked(tmp_path):
    import shutil
    import subprocess

    from mxd.api import pages

    shell = shutil.which("dash") or shutil.which("sh")
    script = tmp_path / "install.sh"
    script.write_text(pages.install_script("https://mail.example.net"))
    target = tmp_path / "skills dir"
    env = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([shell, str(script), *args], env=env, capture_output=True, text=True, timeout=60)

    assert run("--target", str(target), "--check").returncode == 1          # missing: reported, nothing written
    assert not target.exists()
    assert run("--target", str(target)).returncode == 0
    skill = target / "send-loftbox-mail" / "SKILL.md"
    assert "${MXD_BASE_URL:-https://mail.example.net}/v1/messages" in skill.read_text()
    skill.write_text(skill.read_text() + "local change\n")
    out = run("--target", str(target))
    assert out.returncode == 0 and "outdated send-loftbox-mail" in out.stdout
    assert skill.read_text().endswith("local change\n")
    out = run("--target", str(target), "--check")
    assert out.returncode == 1 and "outdated send-loftbox-mail" in out.stdout
    assert out.stdout.count("installed ") == 2
    assert "updated send-loftbox-mail" in run(f"--target={target}", "--update").stdout
    assert run("--target", str(target), "--check").returncode == 0
    assert run("--agent", "vim").returncode == 2 and run("--bogus").returncode == 2
    assert run("--agent", "codex").returncode == 0
    assert (tmp_path / "home" / ".codex" / "skills" / "check-loftbox-mail" / "SKILL.md").is_file()
