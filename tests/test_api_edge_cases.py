"""Edge cases of the HTTP doors, pinned as they have always answered: a reply or a draft keeps the fields the
caller sent as null (it does not fill them in from the parent), /api/inbound/simulate reports the first of
several faults in its body in a fixed order, /api/send sets no threading headers of the caller's, and the
404 messages keep their words."""
from __future__ import annotations

import pytest

from tests.support.daemon import running_daemon
from tests.support.tenants import org_admin_token

AGENT = "agent@example.test"
PARENT = (b"From: Alice <alice@remote.test>\r\nTo: agent@example.test\r\nCc: dave@remote.test\r\n"
          b"Subject: Hello\r\nMessage-ID: <parent-1@remote.test>\r\n\r\nHi there\r\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("edges") / "data", mailboxes=[AGENT]) as proc:
        assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        r = proc.api("POST", "/api/inbound/simulate", json={"to": [AGENT], "raw": PARENT.decode(), "wait": True})
        assert r.status_code == 202, r.text
        [message_id] = r.json()["message_ids"]
        parent = proc.api("GET", f"/api/messages/{message_id}").json()
        yield proc, parent


def _sent(proc, r) -> dict:
    assert r.status_code == 202, r.text
    return proc.api("GET", f"/api/messages/{r.json()['id']}").json()


def _addresses(field: list[dict] | None) -> list[str]:
    return [a["address"] for a in field or []]


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


# ---------------------------------------------------------------- replies
def test_a_reply_without_fields_takes_them_from_its_parent(server):
    proc, parent = server
    out = _sent(proc, proc.api("POST", f"/api/messages/{parent['id']}/reply", json={"text": "x", "reply_all": True}))
    assert _addresses(out["to"]) == ["alice@remote.test"] and _addresses(out["cc"]) == ["dave@remote.test"]
    assert out["subject"] == "Re: Hello" and out["in_reply_to"] == ["parent-1@remote.test"]


@pytest.mark.parametrize("path", ["messages", "threads"])
def test_a_reply_keeps_to_and_subject_given_as_null(server, path):
    proc, parent = server
    target = parent["id"] if path == "messages" else parent["thread_id"]
    out = _sent(proc, proc.api("POST", f"/api/{path}/{target}/reply",
                               json={"to": None, "subject": None, "cc": ["carol@remote.test"], "text": "x"}))
    assert _addresses(out["to"]) == [] and _addresses(out["cc"]) == ["carol@remote.test"]
    assert out["subject"] in ("", None)
    assert out["in_reply_to"] == ["parent-1@remote.test"]          # the threading headers still come


def test_a_reply_all_keeps_cc_given_as_null(server):
    proc, parent = server
    out = _sent(proc, proc.api("POST", f"/api/messages/{parent['id']}/reply",
                               json={"cc": None, "reply_all": True, "text": "x"}))
    assert _addresses(out["to"]) == ["alice@remote.test"] and _addresses(out["cc"]) == []


def test_a_reply_with_from_null_is_refused_not_sent_from_the_parents_mailbox(server):
    proc, parent = server
    err = _error(proc.api("POST", f"/api/messages/{parent['id']}/reply", json={"from": None, "text": "x"}), 400)
    assert err["code"] == "bad_request" and err["message"] == "from must be the address of a mailbox on this server"


def test_a_reply_with_every_recipient_null_is_refused(server):
    proc, parent = server
    r = proc.api("POST", f"/api/messages/{parent['id']}/reply", json={"to": None, "text": "x"})
    assert r.status_code == 400, r.text
    plain = proc.api("POST", "/api/send", json={"from": AGENT, "subject": "s", "text": "x"})
    assert r.json()["error"]["code"] == plain.json()["error"]["code"]


# ---------------------------------------------------------------- drafts
def test_a_draft_stores_and_shows_fields_given_as_null(server):
    proc, _ = server
    r = proc.api("POST", "/api/drafts", json={"from": AGENT, "to": ["x@remote.test"], "subject": None,
                                              "html": None, "text": "t"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["subject"] is None and made["html"] is None and "subject" in made and "html" in made
    shown = proc.api("GET", f"/api/drafts/{made['id']}").json()
    assert {k: shown[k] for k in ("from", "to", "subject", "html", "text")} == \
        {"from": AGENT, "to": ["x@remote.test"], "subject": None, "html": None, "text": "t"}
    assert "cc" not in shown                        # a field not given is not shown
    listed = proc.api("GET", "/api/drafts").json()["data"]
    assert [d for d in listed if d["id"] == made["id"]][0]["subject"] is None


def test_a_thread_draft_keeps_to_given_as_null(server):
    proc, parent = server
    r = proc.api("POST", f"/api/threads/{parent['thread_id']}/drafts", json={"to": None, "text": "later"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["to"] is None and made["subject"] == "Re: Hello" and made["from"] == AGENT
    assert made["in_reply_to"] == "parent-1@remote.test" and made["thread_id"] == parent["thread_id"]
    filled = proc.api("POST", f"/api/threads/{parent['thread_id']}/drafts", json={"text": "later"}).json()
    assert filled["to"] == ["alice@remote.test"]


def test_a_thread_draft_with_from_null_is_refused(server):
    proc, parent = server
    err = _error(proc.api("POST", f"/api/threads/{parent['thread_id']}/drafts", json={"from": None, "text": "x"}),
                 400)
    assert err["message"] == "from must be the address of a mailbox on this server"


# ---------------------------------------------------------------- /api/send
def test_send_sets_no_threading_headers_of_the_callers(server):
    proc, _ = server
    out = _sent(proc, proc.api("POST", "/api/send", json={
        "from": AGENT, "to": "x@remote.test", "subject": "s", "text": "t",
        "in_reply_to": "<other@remote.test>", "references": ["<other@remote.test>"]}))
    assert out["in_reply_to"] in ([], None) and out["references"] in ([], None)


# ---------------------------------------------------------------- /api/inbound/simulate: which fault first
@pytest.mark.parametrize("body, code, message", [
    # no recipients comes before a bad sender
    ({"from": 5}, "bad_request", "body must name the recipients"),
    ({"from": {"address": 5}, "raw": 5}, "bad_request", "body must name the recipients"),
    # a bad sender before a bad raw or a bad subject
    ({"to": [AGENT], "from": 5, "raw": 5}, "bad_request", "from must be an address"),
    ({"to": [AGENT], "from": ["x"], "subject": 5}, "bad_request", "from must be an address"),
    # recipients nobody serves before a bad raw or a bad subject
    ({"to": ["nobody@example.test"], "raw": 5}, "unknown_recipient", "no recipient is served here"),
    ({"to": ["nobody@example.test"], "subject": 5}, "unknown_recipient", "no recipient is served here"),
    ({"to": ["x@elsewhere.test"], "text": 5}, "domain_not_served", "no recipient is served here"),
    # a bad raw before a bad subject (which raw does not use)
    ({"to": [AGENT], "raw": 5, "subject": 5}, "bad_request", "raw must be a string"),
    ({"to": [AGENT], "subject": 5, "text": 6}, "bad_request", "subject must be a string"),
    ({"to": [AGENT], "text": 6, "html": 7}, "bad_request", "text must be a string"),
])
def test_simulate_reports_the_first_fault_in_the_old_order(server, body, code, message):
    proc, _ = server
    r = proc.api("POST", "/api/inbound/simulate", json=body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"].startswith(message), err


def test_simulate_with_raw_ignores_the_compose_fields(server):
    proc, _ = server
    r = proc.api("POST", "/api/inbound/simulate", json={"to": [AGENT], "raw": PARENT.decode(), "subject": 5,
                                                        "text": ["x"], "html": {}})
    assert r.status_code == 202, r.text


# ---------------------------------------------------------------- 404 words
def test_v1_message_lookup_says_message_not_found(server):
    proc, _ = server
    err = _error(proc.api("GET", "/v1/messages/msg_nope"), 404)
    assert err["code"] == "not_found" and err["message"] == "message not found"
    err = _error(proc.api("GET", "/api/messages/msg_nope"), 404)
    assert err["message"] == "message 'msg_nope' not found"


# ---------------------------------------------------------------- /v1: naming another organisation
def test_v1_naming_another_organisation_says_omit_organization_id(server):
    proc, _ = server
    token = org_admin_token(proc, "org_edges")
    for path, body in (("/v1/agents", {"name": "bot", "organization_id": "org_elsewhere"}),
                       ("/v1/domains", {"domain": "edges.test", "organization_id": "org_elsewhere"})):
        err = _error(proc.api("POST", path, token=token, json=body), 404)
        assert err["code"] == "not_found" and err["message"] == "organisation 'org_elsewhere' not found"
        assert err["fix"] == "Omit organization_id."
    err = _error(proc.api("POST", "/v1/agents", json={"name": "bot", "organization_id": "org_none"}), 404)
    assert err["message"] == "organisation 'org_none' not found"                 # the operator: no such one
