"""Sending end to end: mxd on 127.0.0.1 delivers to a second mxd on 127.0.0.2 through a real DNS server.

Covers the HTTP send path, replies that stay in the thread, idempotency, SMTP
submission on 587 and 465 with its security rules, and the receiver's
Authentication-Results (both DKIM signatures, SPF, DMARC).
"""
from __future__ import annotations

import base64
import contextlib
import json
import smtplib
import socket
import sqlite3
import time
from typing import Iterator

import httpx
import pytest

from tests.support.daemon import MxdProcess, free_port, wait_for
from tests.support.dnsserver import SENDING_DOMAIN, DNSServer
from tests.support.smtp import insecure_tls


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("out")
    mx_port = free_port("127.0.0.2")
    dns = DNSServer({
        **SENDING_DOMAIN,
        "peer.test": {"MX": [(10, "mx.peer.test")]},
        "mx.peer.test": {"A": ["127.0.0.2"]},
    })
    dns.start()
    common = {"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2", "MXD_OUTBOUND_MX_PORT": str(mx_port)}
    sender = MxdProcess(base / "a", domains=["example.test"], env=common)
    sender.mx_port = mx_port                                  # both MXes on one port, different addresses
    sender.env["MXD_MX_LISTEN"] = f"127.0.0.1:{mx_port}"
    out = sender.init()
    for rec in out["dns_records"]:
        if rec["type"] == "TXT" and "._domainkey." in rec["name"]:
            dns.set(rec["name"], "TXT", [rec["value"]])
    receiver = MxdProcess(base / "b", domains=["peer.test"], host="127.0.0.2", hostname="mx.peer.test",
                          env=dict(common))
    receiver.mx_port = mx_port
    receiver.env["MXD_MX_LISTEN"] = f"127.0.0.2:{mx_port}"
    receiver.init()
    sender.start()
    receiver.start()
    for address in ("agent@example.test", "other@example.test"):
        assert sender.api("POST", "/api/mailboxes", json={"address": address}).status_code == 201
    assert receiver.api("POST", "/api/mailboxes", json={"address": "bob@peer.test"}).status_code == 201
    yield sender, receiver, dns
    sender.stop()
    receiver.stop()
    dns.stop()


def _ready(sender: MxdProcess, ready: bool = True) -> None:
    assert sender.api("PUT", "/api/domains/example.test/readiness", json={"ready": ready}).status_code == 200


def _received(receiver: MxdProcess, subject: str, count: int = 1) -> list[dict]:
    def find():
        found = [m for m in receiver.messages("bob@peer.test") if m["subject"] == subject]
        return found if len(found) >= count else None
    return wait_for(find) or []


def test_domain_not_ready_is_a_hard_stop(world):
    sender, _, _ = world
    _ready(sender, False)
    r = sender.api("POST", "/api/send", json={"from": "agent@example.test", "to": "bob@peer.test",
                                              "subject": "x", "text": "x"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "domain_not_ready" and err["hard_stop"] is True and "readiness" in err["fix"]
    db = sqlite3.connect(f"file:{sender.data_dir / 'mxd.db'}?mode=ro", uri=True)
    [(data,)] = db.execute("SELECT data FROM event WHERE type = 'message.blocked'").fetchall()
    db.close()
    assert json.loads(data)["code"] == "domain_not_ready" and json.loads(data)["recipients"] == ["bob@peer.test"]
    _ready(sender)


def test_send_reaches_the_other_mxd_signed_and_aligned(world):
    sender, receiver, _ = world
    _ready(sender)
    r = sender.api("POST", "/api/send", json={
        "from": "agent@example.test", "to": ["Bob <bob@peer.test>"], "subject": "hello peer",
        "text": "plain body", "html": "<p>html body</p>",
        "attachments": [{"filename": "a.txt", "content_type": "text/plain",
                         "content": base64.b64encode(b"attached bytes").decode()}]})
    assert r.status_code == 202, r.text
    sent = r.json()
    assert sent["id"].startswith("msg_") and sent["status"] == "queued"
    [got] = _received(receiver, "hello peer")
    detail = receiver.api("GET", f"/api/messages/{got['id']}").json()
    assert [d["result"] for d in detail["auth"]["dkim"]] == ["pass", "pass"]
    assert {d["domain"] for d in detail["auth"]["dkim"]} == {"example.test"}
    assert detail["auth"]["spf"] == "pass" and detail["auth"]["dmarc"] == "pass"
    assert "header.a=rsa-sha256" in detail["authentication_results"]
    assert "header.a=ed25519-sha256" in detail["authentication_results"]
    assert detail["text"].strip() == "plain body" and "html body" in detail["html"]
    assert [a["filename"] for a in detail["attachments"]] == ["a.txt"]
    assert detail["envelope"]["mail_from"].startswith("bounces+q_")
    mine = wait_for(lambda: (lambda d: d if d["delivery"][0]["status"] == "delivered" else None)(
        sender.api("GET", f"/api/messages/{sent['id']}").json()))
    assert mine["direction"] == "out"
    assert mine["delivery"][0]["last_reply"].startswith("250 2.0.0 OK queued as inb_")


def test_reply_stays_in_the_thread_on_both_sides(world):
    sender, receiver, _ = world
    first = sender.api("POST", "/api/send", json={"from": "agent@example.test", "to": "bob@peer.test",
                                                  "subject": "thread me", "text": "one"}).json()
    [got] = _received(receiver, "thread me")
    token = receiver.token(["read", "send"], ["bob@peer.test"])
    assert receiver.api("PUT", "/api/domains/peer.test/readiness", json={"ready": True}).status_code == 200
    r = receiver.api("POST", f"/api/messages/{got['id']}/reply", token=token, json={"text": "two"})
    assert r.status_code == 202, r.text

    def replied():
        return [m for m in sender.messages("agent@example.test") if m["subject"] == "Re: thread me"]
    # peer.test publishes no keys in the test zone, so its signatures do not verify; delivery still works.
    [reply] = wait_for(replied)
    assert reply["thread_id"] == first["thread_id"]
    parent = sender.api("GET", f"/api/messages/{reply['id']}").json()
    assert parent["in_reply_to"] == [first["message_id"]]


def test_idempotency_key_replays_and_conflicts(world):
    sender, receiver, _ = world
    body = {"from": "agent@example.test", "to": "bob@peer.test", "subject": "once only", "text": "x"}
    headers = {"Idempotency-Key": "key-123"}
    a = sender.api("POST", "/api/send", json=body, headers=dict(headers))
    b = sender.api("POST", "/api/send", json=body, headers=dict(headers))
    assert a.status_code == 202 and b.status_code == 200
    assert a.json()["id"] == b.json()["id"] and b.json()["idempotent_replay"] is True
    c = sender.api("POST", "/api/send", json=dict(body, text="different"), headers=dict(headers))
    assert c.status_code == 409 and c.json()["error"]["code"] == "idempotency_conflict"
    time.sleep(1.0)
    assert len(_received(receiver, "once only")) == 1


@pytest.mark.parametrize("field, value", [
    ("subject", "hi\r\nBcc: victim@peer.test"),
    ("from_name", "Agent\nX-Evil: 1"),
    ("headers", {"X-Tag": "a\r\nBcc: victim@peer.test"}),
    ("headers", {"X-Tag\r\nBcc": "v"}),
    ("to", ["bob@peer.test\r\nRCPT TO:<victim@peer.test>"]),
])
def test_header_injection_through_the_api_is_refused(world, field, value):
    sender, _, _ = world
    body = {"from": "agent@example.test", "to": "bob@peer.test", "subject": "s", "text": "t", field: value}
    r = sender.api("POST", "/api/send", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("header_injection", "invalid_address")


def test_send_scope_and_mailbox_are_enforced(world):
    sender, _, _ = world
    read_only = sender.token(["read", "search", "draft"], ["agent@example.test"])
    r = sender.api("POST", "/api/send", token=read_only, json={"from": "agent@example.test", "to": "bob@peer.test",
                                                               "subject": "s", "text": "t"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    agent = sender.token(["send"], ["agent@example.test"])
    r = sender.api("POST", "/api/send", token=agent, json={"from": "other@example.test", "to": "bob@peer.test",
                                                           "subject": "s", "text": "t"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "sender_not_allowed"


def test_suppressed_recipient_is_refused(world):
    sender, _, _ = world
    assert sender.api("POST", "/api/suppressions", json={"address": "gone@peer.test"}).status_code == 201
    r = sender.api("POST", "/api/send", json={"from": "agent@example.test", "to": "gone@peer.test",
                                              "subject": "s", "text": "t"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "recipient_suppressed"
    assert sender.api("DELETE", "/api/suppressions/gone@peer.test").status_code == 204


def test_local_recipient_is_delivered_without_smtp(world):
    sender, _, _ = world
    r = sender.api("POST", "/api/send", json={"from": "agent@example.test", "to": "other@example.test",
                                              "subject": "inside", "text": "local"})
    assert r.status_code == 202
    assert r.json()["recipients"] == [{"address": "other@example.test", "status": "delivered", "queue_id": None}]
    got = wait_for(lambda: [m for m in sender.messages("other@example.test") if m["subject"] == "inside"])
    assert got and got[0]["from"]["address"] == "agent@example.test"


def test_drafts_create_get_send(world):
    sender, receiver, _ = world
    token = sender.token(["draft", "send", "read"], ["agent@example.test"])
    r = sender.api("POST", "/api/drafts", token=token, json={"from": "agent@example.test", "to": "bob@peer.test",
                                                             "subject": "drafted", "text": "later"})
    assert r.status_code == 201, r.text
    draft = r.json()
    assert draft["id"].startswith("drf_")
    assert sender.api("GET", f"/api/drafts/{draft['id']}", token=token).json()["subject"] == "drafted"
    listed = sender.api("GET", "/api/drafts", token=token).json()["data"]
    assert draft["id"] in [d["id"] for d in listed]
    r = sender.api("POST", f"/api/drafts/{draft['id']}/send", token=token)
    assert r.status_code == 202, r.text
    assert sender.api("POST", f"/api/drafts/{draft['id']}/send", token=token).status_code == 409
    assert len(_received(receiver, "drafted")) == 1


# ---------------------------------------------------------------- SMTP submission
def _submission_message(subject: str, sender: str = "agent@example.test") -> bytes:
    return (f"From: {sender}\r\nTo: bob@peer.test\r\nSubject: {subject}\r\n\r\nsubmitted body\r\n").encode()


@contextlib.contextmanager
def _logged_in(sender: MxdProcess, token: str) -> Iterator[smtplib.SMTP]:
    """A submission session on 587: STARTTLS, then AUTH as agent@example.test with `token`."""
    with smtplib.SMTP("127.0.0.1", sender.submission_port, timeout=10) as s:
        s.starttls(context=insecure_tls())
        s.login("agent@example.test", token)
        yield s


def test_submission_587_requires_starttls_before_auth(world):
    sender, _, _ = world
    with smtplib.SMTP("127.0.0.1", sender.submission_port, timeout=10) as s:
        s.ehlo("agent.test")
        assert "auth" not in s.esmtp_features
        code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0agent@example.test\0x").decode())
        assert code == 530
        code, _ = s.docmd("MAIL", "FROM:<agent@example.test>")
        assert code == 530


def test_submission_587_sends_with_a_send_token(world):
    sender, receiver, _ = world
    token = sender.token(["send"], ["agent@example.test"])
    with _logged_in(sender, token) as s:
        s.sendmail("agent@example.test", ["bob@peer.test"], _submission_message("via 587"))
    [got] = _received(receiver, "via 587")
    detail = receiver.api("GET", f"/api/messages/{got['id']}").json()
    assert [d["result"] for d in detail["auth"]["dkim"]] == ["pass", "pass"]


def test_submission_files_the_sent_copy_and_delivers_local_and_remote(world):
    """The 250 names the message; the sent copy (signed: its raw form starts with both DKIM-Signature
    fields), the local recipient's copy and the remote one all follow."""
    sender, receiver, _ = world
    token = sender.token(["send"], ["agent@example.test"])
    message = (b"From: agent@example.test\r\nTo: bob@peer.test, other@example.test\r\n"
               b"Subject: both ways\r\nMessage-ID: <both-ways@example.test>\r\n\r\nto both\r\n")
    with _logged_in(sender, token) as s:
        s.mail("agent@example.test")
        s.rcpt("bob@peer.test")
        s.rcpt("other@example.test")
        code, reply = s.data(message)
    assert code == 250
    message_id = reply.decode().split()[-1]
    assert message_id.startswith("msg_")
    copy = wait_for(lambda: (lambda r: r.json() if r.status_code == 200 else None)(
        sender.api("GET", f"/api/messages/{message_id}")))
    assert copy and copy["subject"] == "both ways" and copy["direction"] == "out"
    assert [d["recipient"] for d in copy["delivery"]] == ["bob@peer.test"]     # remote ones are queued
    raw = sender.api("GET", f"/api/messages/{message_id}/raw").content
    assert raw.startswith(b"DKIM-Signature:") and raw.count(b"DKIM-Signature:") == 2
    assert raw.endswith(b"to both\r\n")
    assert wait_for(lambda: [m for m in sender.messages("other@example.test") if m["subject"] == "both ways"])
    [got] = _received(receiver, "both ways")
    detail = receiver.api("GET", f"/api/messages/{got['id']}").json()
    assert [d["result"] for d in detail["auth"]["dkim"]] == ["pass", "pass"]


def test_submission_refuses_a_message_that_cannot_be_signed(world):
    """A header that cannot be parsed is refused at DATA, before any 250; the session goes on."""
    sender, receiver, _ = world
    token = sender.token(["send"], ["agent@example.test"])
    with _logged_in(sender, token) as s:
        with pytest.raises(smtplib.SMTPDataError) as err:
            s.sendmail("agent@example.test", ["bob@peer.test"],
                       b"From: agent@example.test\r\nnot a header line\r\nSubject: broken\r\n\r\nbody\r\n")
        assert err.value.smtp_code >= 500
        s.sendmail("agent@example.test", ["bob@peer.test"], _submission_message("after the broken one"))
    assert len(_received(receiver, "after the broken one")) == 1


@pytest.mark.parametrize("separator", [b"\r", b"\n", b"\r\n"])
def test_submission_refuses_a_second_from_hidden_behind_a_bare_line_end(world, separator):
    """The From check reads the message as it will be stored and signed: a bare CR or LF becomes a line
    end there, so a second From written after one must be checked too (other@ is not the token's)."""
    sender, receiver, _ = world
    token = sender.token(["send"], ["agent@example.test"])
    with _logged_in(sender, token) as s:
        with pytest.raises(smtplib.SMTPDataError) as err:
            s.sendmail("agent@example.test", ["bob@peer.test"],
                       b"From: agent@example.test" + separator + b"From: other@example.test\r\n"
                       b"Subject: hidden from\r\n\r\nbody\r\n")
        assert err.value.smtp_code == 550 and b"sender_not_allowed" in err.value.smtp_error


def test_submission_465_implicit_tls(world):
    sender, receiver, _ = world
    token = sender.token(["send"], ["agent@example.test"])
    with smtplib.SMTP_SSL("127.0.0.1", sender.submissions_port, timeout=10, context=insecure_tls()) as s:
        s.login("agent@example.test", token)
        s.sendmail("agent@example.test", ["bob@peer.test"], _submission_message("via 465"))
    assert len(_received(receiver, "via 465")) == 1


@pytest.mark.parametrize("case", ["wrong_token", "read_only", "other_mailbox"])
def test_submission_refuses_bad_credentials(world, case):
    sender, _, _ = world
    good = sender.token(["send"], ["agent@example.test"])
    read_only = sender.token(["read"], ["agent@example.test"])
    with smtplib.SMTP("127.0.0.1", sender.submission_port, timeout=10) as s:
        s.starttls(context=insecure_tls())
        if case == "wrong_token":
            with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                s.login("agent@example.test", "mxd_not_a_token")
            assert err.value.smtp_code == 535
        elif case == "read_only":
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.login("agent@example.test", read_only)
        else:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.login("other@example.test", good)


def test_submission_refuses_sending_as_another_mailbox(world):
    sender, _, _ = world
    token = sender.token(["send"], ["agent@example.test"])
    with _logged_in(sender, token) as s:
        code, msg = s.docmd("MAIL", "FROM:<other@example.test>")
        assert code == 550 and b"5.7.1" in msg
        s.rset()
        with pytest.raises(smtplib.SMTPDataError) as err:
            s.sendmail("agent@example.test", ["bob@peer.test"],
                       _submission_message("forged from", sender="other@example.test"))
        assert err.value.smtp_code == 550


def test_queue_api_lists_entries(world):
    sender, _, _ = world
    body = sender.api("GET", "/api/queue", params={"limit": 5}).json()
    assert body["data"] and {"id", "recipient", "status", "attempts", "last_reply"} <= set(body["data"][0])
    assert httpx.get(sender.url("/api/queue")).status_code == 401


def test_large_attachment_is_accepted_and_oversized_bodies_are_refused(world):
    sender, _, _ = world
    _ready(sender)
    blob = bytes(range(256)) * (6 * 1024 * 1024 // 256)        # 6 MB: 8 MB of base64 in the JSON body
    r = sender.api("POST", "/api/send", json={
        "from": "agent@example.test", "to": ["other@example.test"], "subject": "big", "text": "see attached",
        "attachments": [{"filename": "blob.bin", "content": base64.b64encode(blob).decode()}]}, timeout=120)
    assert r.status_code == 202, r.text
    # a body declared larger than any send may be is refused before it is read
    with socket.create_connection(("127.0.0.1", sender.http_port), timeout=30) as sock:
        sock.sendall(b"POST /api/send HTTP/1.1\r\nHost: mxd\r\nAuthorization: Bearer " + sender.admin_token.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 41943040\r\n\r\n{}")
        answer = b""
        while b"}}" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ") and b"payload_too_large" in answer

    # a streamed (chunked) body over the limit of a directory call is cut off at the limit
    def chunks():
        yield b'{"address": "'
        for _ in range(2048):
            yield b"a" * 1024
        yield b'@example.test"}'
    r = sender.api("POST", "/api/mailboxes", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
