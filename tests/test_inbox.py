"""Inbox polling over /v1: mail delivered over SMTP is polled oldest first, acknowledged by id, and
across restarts (a clean stop and a SIGKILL) nothing acknowledged comes back and nothing
unacknowledged is skipped. Acks only reach the mailbox's own messages."""
from __future__ import annotations

import httpx
import pytest

from tests.support.daemon import MxdProcess, wait_for

pytestmark = pytest.mark.slow

DOMAIN = "example.test"


@pytest.fixture
def daemon(tmp_path):
    proc = MxdProcess(tmp_path / "data", domains=[DOMAIN])
    proc.init()
    proc.start()
    yield proc
    proc.stop()


def _v1(proc: MxdProcess, method: str, path: str, token: str | None = None, **kw) -> httpx.Response:
    return proc.api(method, path, token, **kw)


def _mailbox(proc: MxdProcess, agent_slug: str) -> dict:
    r = _v1(proc, "POST", "/v1/agents", json={"name": agent_slug.title(), "slug": agent_slug,
                                               "external_id": f"test:{agent_slug}"})
    assert r.status_code == 201, r.text
    r = _v1(proc, "POST", f"/v1/agents/{r.json()['id']}/mailboxes", json={"local_part": agent_slug})
    assert r.status_code == 201, r.text
    return r.json()


def _deliver(proc: MxdProcess, to: str, subject: str) -> str:
    """One message over SMTP to the daemon's MX; returns its id once stored."""
    proc.send_inbound("sender@elsewhere.test", to, subject, f"body of {subject}\n")
    found = wait_for(lambda: [m for m in proc.messages(to) if m["subject"] == subject], timeout=60)
    assert found, subject
    return found[0]["id"]


def _poll(proc: MxdProcess, box: dict, limit: int = 100, token: str | None = None) -> dict:
    r = _v1(proc, "GET", f"/v1/mailboxes/{box['id']}/inbox", token, params={"limit": limit})
    assert r.status_code == 200, r.text
    return r.json()


def _ack(proc: MxdProcess, box: dict, ids: list[str], token: str | None = None) -> dict:
    r = _v1(proc, "POST", f"/v1/mailboxes/{box['id']}/inbox/ack", token, json={"message_ids": ids})
    assert r.status_code == 200, r.text
    return r.json()


def test_ack_survives_restarts_and_nothing_unacknowledged_is_skipped(daemon):
    box, other = _mailbox(daemon, "poller"), _mailbox(daemon, "bystander")
    ids = [_deliver(daemon, box["address"], f"m{i}") for i in range(6)]
    foreign = _deliver(daemon, other["address"], "not yours")
    assert ids == sorted(ids)

    first = _poll(daemon, box, limit=3)
    assert [m["id"] for m in first["data"]] == ids[:3] and first["has_more"] is True and first["count"] == 3
    assert [m["subject"] for m in first["data"]] == ["m0", "m1", "m2"]
    assert first["data"][0]["text"] == "body of m0\n" and first["data"][0]["from"]["address"] == "sender@elsewhere.test"

    answer = _ack(daemon, box, [ids[0], ids[2], foreign, "msg_doesnotexist"])
    assert answer["acknowledged"] == sorted([ids[0], ids[2]])
    assert sorted(answer["not_found"]) == sorted([foreign, "msg_doesnotexist"])
    assert [m["id"] for m in _poll(daemon, box)["data"]] == [ids[1], ids[3], ids[4], ids[5]]
    assert [m["id"] for m in _poll(daemon, other)["data"]] == [foreign]      # the foreign ack changed nothing

    daemon.stop()                                              # a clean restart
    daemon.start()
    assert [m["id"] for m in _poll(daemon, box)["data"]] == [ids[1], ids[3], ids[4], ids[5]]

    assert _ack(daemon, box, [ids[3], ids[0]])["acknowledged"] == sorted([ids[0], ids[3]])   # acking twice is fine
    later = _deliver(daemon, box["address"], "after restart")
    daemon.kill9()                                             # the ack was committed before its answer
    daemon.start()
    polled = _poll(daemon, box)
    assert [m["id"] for m in polled["data"]] == [ids[1], ids[4], ids[5], later] and polled["has_more"] is False

    # The message itself stays readable after acknowledgement.
    r = _v1(daemon, "GET", f"/v1/messages/{ids[0]}")
    assert r.status_code == 200 and r.json()["acknowledged"] is True and r.json()["subject"] == "m0"


def test_inbox_scopes_and_limits(daemon):
    box, other = _mailbox(daemon, "scoped"), _mailbox(daemon, "neighbour")
    mid = _deliver(daemon, box["address"], "hello")
    reader = daemon.token(["read"], mailboxes=[box["address"]])
    sender_only = daemon.token(["send"], mailboxes=[box["address"]])

    assert [m["id"] for m in _poll(daemon, box, token=reader)["data"]] == [mid]
    r = _v1(daemon, "GET", f"/v1/mailboxes/{other['id']}/inbox", reader)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = _v1(daemon, "POST", f"/v1/mailboxes/{other['id']}/inbox/ack", reader, json={"message_ids": [mid]})
    assert r.status_code == 404
    r = _v1(daemon, "GET", f"/v1/mailboxes/{box['id']}/inbox", sender_only)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"

    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}):
        assert _v1(daemon, "GET", f"/v1/mailboxes/{box['id']}/inbox", reader, params=bad).status_code == 400
    for body in ({}, {"message_ids": []}, {"message_ids": "msg_x"}, {"message_ids": [1]}):
        r = _v1(daemon, "POST", f"/v1/mailboxes/{box['id']}/inbox/ack", reader, json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"

    assert _ack(daemon, box, [mid], token=reader) == {"mailbox_id": box["id"], "acknowledged": [mid], "not_found": []}
    assert _poll(daemon, box, token=reader)["data"] == []


def test_sent_mail_is_not_in_the_inbox(daemon):
    box = _mailbox(daemon, "talker")
    assert daemon.api("PUT", f"/api/domains/{DOMAIN}/readiness", json={"ready": True}).status_code == 200
    peer = _mailbox(daemon, "listener")
    r = _v1(daemon, "POST", "/v1/messages", json={"mailbox_id": box["id"], "to": [peer["address"]],
                                                   "subject": "local", "body_text": "hi"})
    assert r.status_code == 201, r.text
    # The recipient (a local mailbox) gets it as inbound mail; the sender's copy is outbound, never polled.
    assert wait_for(lambda: _poll(daemon, peer)["data"], timeout=60)
    assert _poll(daemon, box)["data"] == []
    [got] = _poll(daemon, peer)["data"]
    assert got["subject"] == "local" and got["from"]["address"] == box["address"]
