"""Threat: anyone who can write to mxd's MX forges bounces to fail other people's mail and blacklist addresses.

Every outgoing message carries a VERP return path that names its queue entry, so a bounce that
arrives after the remote MX said 250 can fail that entry and suppress a dead address. Whoever
receives one message sees its return path. Before: the queue ids were sequential within a
millisecond, so a recipient could work out its neighbours' return paths from its own; any message
to such an address (a forged DSN from any sender, a vacation auto-reply, a person's reply) failed
the entry and put the recipient on a server-wide suppression list, stopping every tenant's mail to
it; and a return path whose entry was gone, or that was made up, fell back to plus-addressing and
landed in whatever mailbox is called bounces@.

Now: a return path is bounces+<id>.<tag>@domain with an HMAC tag under a server secret, and queue
ids are random within their millisecond; a return path with a bad tag or a gone entry is refused
at RCPT (550 5.1.1); only a null-sender multipart/report (report-type=delivery-status) saying
"Action: failed" for that entry's recipient changes the entry, and anything else sent to a return
path is filed in the sender's mailbox as mail; suppressions belong to the sending organisation.
"""
from __future__ import annotations

import email
import email.policy
import re
import smtplib
import time
from typing import Any

import httpx
import pytest

from tests.support.daemon import wait_for
from tests.support.mail import dsn as _dsn
from tests.support.sink import DOMAIN, MailSink, World, platform_world

OPERATOR_BOX = f"ops@{DOMAIN}"
VICTIM = "victim@example.com"
_BASE32 = "0123456789abcdefghjkmnpqrstvwxyz"


class EnvelopeSink(MailSink):
    """The recipients' MX: also keeps each message's envelope sender (the return path mxd used)."""

    def __init__(self, sink: MailSink) -> None:
        self.__dict__.update(sink.__dict__)
        self.return_paths: list[tuple[list[str], str, str]] = []       # (rcpts, mail_from, subject)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(([r.lower() for r in envelope.rcpt_tos], msg))
            self.return_paths.append(([r.lower() for r in envelope.rcpt_tos], envelope.mail_from, str(msg["subject"])))
        return "250 2.0.0 OK"

    def return_path(self, rcpt: str, subject: str) -> str:
        def find() -> str | None:
            with self.lock:
                for rcpts, mail_from, subj in self.return_paths:
                    if rcpt.lower() in rcpts and subj == subject:
                        return mail_from
            return None
        found = wait_for(find, 30)
        assert found, f"no message to {rcpt} with subject {subject!r}"
        return found


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Any:
    w = platform_world(tmp_path_factory.mktemp("forged-bounces") / "data", signup=False,
                       env={"MXD_DAILY_SEND_CAP": "10000", "MXD_RATE_PER_RECIPIENT_PER_HOUR": "10000"})
    sink = EnvelopeSink(w.sink)
    sink.controller.handler = sink
    w = World(w.mxd, w.dns, sink)
    assert w.mxd.api("POST", "/api/mailboxes", json={"address": OPERATOR_BOX}).status_code == 201
    yield w
    w.stop()


def _sql(w: World, statement: str, *args: Any) -> list[tuple]:
    return w.mxd.sql(statement, args)


def _org(w: World, org_id: str) -> tuple[str, str]:
    """An organisation with an agent mailbox on the shared domain: (its admin key, the mailbox id)."""
    _sql(w, 'INSERT INTO "organization" ("id", "name", "slug", "owner_email", "created_at", "code_attempts") '
         "VALUES (?, ?, ?, 'owner@example.org', ?, 0)", org_id, org_id, org_id.replace("_", "-"), time.time())
    r = w.mxd.api("POST", "/api/tokens", json={"name": f"{org_id} admin", "scopes": ["admin"], "org_id": org_id})
    assert r.status_code == 201, r.text
    key = r.json()["token"]
    slug = org_id.replace("_", "-")
    r = httpx.post(w.mxd.url("/v1/agents"), json={"name": slug, "slug": slug}, timeout=30,
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    r = httpx.post(w.mxd.url(f"/v1/agents/{r.json()['id']}/mailboxes"), json={"local_part": f"{slug}-bot"},
                   timeout=30, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    return key, r.json()["id"]


def _send(w: World, to: list[str], subject: str, key: str | None = None, mailbox_id: str | None = None) -> str:
    """Send from the operator's mailbox (or an organisation's agent mailbox); returns the message id."""
    if key is None:
        r = w.mxd.api("POST", "/api/send", json={"from": OPERATOR_BOX, "to": to, "subject": subject, "text": "hi"})
        assert r.status_code == 202, r.text
    else:
        r = httpx.post(w.mxd.url("/v1/messages"), timeout=30, headers={"Authorization": f"Bearer {key}"},
                       json={"mailbox_id": mailbox_id, "to": to, "subject": subject, "body_text": "hi"})
        assert r.status_code == 201, r.text
    return r.json()["id"]


def _entries(w: World, message_id: str, status: str = "delivered") -> dict[str, dict]:
    """The message's queue entries by recipient, once all of them reach `status`."""
    def done() -> dict[str, dict] | None:
        rows = w.mxd.api("GET", f"/api/messages/{message_id}").json()["delivery"]
        return {r["recipient"]: r for r in rows} if rows and all(r["status"] == status for r in rows) else None
    found = wait_for(done, 30)
    assert found, w.mxd.api("GET", f"/api/messages/{message_id}").json()["delivery"]
    return found


def _rcpt(w: World, mail_from: str, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP(w.mxd.host, w.mxd.mx_port, timeout=10) as s:
        s.ehlo("mx.example.com")
        s.mail(mail_from)
        return s.rcpt(rcpt)


def _deliver(w: World, mail_from: str, rcpt: str, data: bytes) -> None:
    with smtplib.SMTP(w.mxd.host, w.mxd.mx_port, timeout=10) as s:
        s.ehlo("mx.example.com")
        assert s.sendmail(mail_from, [rcpt], data) == {}


def _suppressed(w: World) -> list[dict]:
    r = w.mxd.api("GET", "/api/suppressions", params={"limit": 500})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def _value(entry_id: str) -> int:
    return int("".join(f"{_BASE32.index(ch):05b}" for ch in entry_id[2:]), 2)


# ---------------------------------------------------------------- guessing a neighbour's return path
def test_return_paths_are_tagged_and_not_derivable_from_a_neighbours(world):
    rcpts = [f"n{i}@example.com" for i in range(6)]
    message_id = _send(world, rcpts, "neighbours")
    entries = _entries(world, message_id)
    paths = {r: world.sink.return_path(r, "neighbours") for r in rcpts}
    for rcpt, path in paths.items():
        assert re.fullmatch(rf"bounces\+{entries[rcpt]['queue_id']}\.[0-9a-z]{{16}}@{re.escape(DOMAIN)}", path), path
    # Ids made in one millisecond are not a counter: nothing about one says what the next one is.
    values = sorted(_value(e["queue_id"]) for e in entries.values())
    assert all(b - a > 1 for a, b in zip(values, values[1:])), values

    mine, theirs = paths["n0@example.com"], paths["n1@example.com"]
    their_id = entries["n1@example.com"]["queue_id"]
    my_tag = mine.split("@")[0].rsplit(".", 1)[1]
    for forged in (f"bounces+{their_id}@{DOMAIN}",                      # the old, untagged form
                   f"bounces+{their_id}.{my_tag}@{DOMAIN}",             # my tag on their id
                   f"bounces+{their_id}.{'0' * 16}@{DOMAIN}"):
        code, reply = _rcpt(world, "", forged)
        assert (code, reply[:5]) == (550, b"5.1.1"), (forged, code, reply)
    assert _rcpt(world, "", theirs)[0] == 250                          # the real one still takes its bounce


def test_a_return_path_that_names_no_entry_is_refused_not_plus_addressed(world):
    made = world.mxd.api("POST", "/api/mailboxes", json={"address": f"bounces@{DOMAIN}"}).status_code == 201
    message_id = _send(world, ["stale@example.com"], "stale")
    entry = _entries(world, message_id)["stale@example.com"]
    path = world.sink.return_path("stale@example.com", "stale")
    _sql(world, 'DELETE FROM "queue_entry" WHERE "id" = ?', entry["queue_id"])           # gone from the queue
    for address in (path, f"bounces+q_{'0' * 24}@{DOMAIN}", f"bounces+anything@{DOMAIN}", f"BOUNCES+x.y@{DOMAIN}"):
        code, reply = _rcpt(world, "", address)
        assert (code, reply[:5]) == (550, b"5.1.1"), (address, code, reply)
    # Nor by the other ways in: a local send, an injected message.
    r = world.mxd.api("POST", "/api/send", json={"from": OPERATOR_BOX, "to": f"bounces+anything@{DOMAIN}",
                                                 "subject": "local", "text": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_recipient", r.text
    r = world.mxd.api("POST", "/api/inbound/simulate", json={"to": path, "subject": "injected", "text": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_recipient", r.text
    if made:
        time.sleep(0.5)
        assert world.mxd.messages(f"bounces@{DOMAIN}") == []


# ---------------------------------------------------------------- what may change a queue entry
def test_only_a_null_sender_delivery_report_that_fails_the_recipient_changes_anything(world):
    message_id = _send(world, ["kept@example.com"], "kept")
    queue_id = _entries(world, message_id)["kept@example.com"]["queue_id"]
    path = world.sink.return_path("kept@example.com", "kept")
    before = len(world.mxd.messages(OPERATOR_BOX))

    auto_reply = (f"From: kept@example.com\r\nTo: {path}\r\nSubject: Out of office\r\n"
                  "Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n").encode()
    not_a_report = _dsn(path, "kept@example.com").replace(b"multipart/report; report-type=delivery-status",
                                                          b"multipart/mixed")
    _deliver(world, "", path, auto_reply)                                            # a vacation notice
    _deliver(world, "kept@example.com", path, b"Subject: Re: kept\r\n\r\nThanks!\r\n")   # a person's reply
    _deliver(world, "attacker@example.org", path, _dsn(path, "kept@example.com"))    # a DSN, not from <>
    _deliver(world, "", path, not_a_report)                                          # the parts, not a report
    _deliver(world, "", path, _dsn(path, "someone-else@example.com"))                # about another recipient
    _deliver(world, "", path, _dsn(path, "kept@example.com", "delayed", "4.4.1"))    # a delay notice
    # Each is filed in the sender's mailbox as mail ...
    assert len(world.mxd.wait_messages(before + 6, OPERATOR_BOX)) >= before + 6
    time.sleep(1.0)
    # ... and the entry is still delivered, the address suppressed nowhere.
    assert _entries(world, message_id)["kept@example.com"]["queue_id"] == queue_id
    assert "kept@example.com" not in {s["address"] for s in _suppressed(world)}


def test_a_real_bounce_suppresses_for_the_sending_organisation_only(world):
    key_a, box_a = _org(world, "org_alpha")
    key_b, box_b = _org(world, "org_beta")
    sent = _send(world, [VICTIM], "from alpha", key_a, box_a)
    _entries(world, sent)
    path = world.sink.return_path(VICTIM, "from alpha")
    _deliver(world, "", path, _dsn(path, VICTIM))
    row = _entries(world, sent, "failed")[VICTIM]
    assert "5.1.1" in row["last_reply"]
    r = httpx.post(world.mxd.url("/v1/messages"), timeout=30, headers={"Authorization": f"Bearer {key_a}"},
                   json={"mailbox_id": box_a, "to": [VICTIM], "subject": "again", "body_text": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "recipient_suppressed"

    # Alpha's list holds it; the operator's own mail and another organisation's still go.
    _entries(world, _send(world, [VICTIM], "from the operator"))
    _entries(world, _send(world, [VICTIM], "from beta", key_b, box_b))
    rows = [s for s in _suppressed(world) if s["address"] == VICTIM]
    assert [(s["organization_id"], s["reason"]) for s in rows] == [("org_alpha", "hard_bounce")], rows

    # The operator sees and lifts each organisation's suppressions.
    r = world.mxd.api("GET", "/api/suppressions", params={"organization_id": "org_beta"})
    assert r.status_code == 200 and r.json()["data"] == []
    r = world.mxd.api("DELETE", f"/api/suppressions/{VICTIM}", params={"organization_id": "org_alpha"})
    assert r.status_code == 204
    assert VICTIM not in {s["address"] for s in _suppressed(world)}
