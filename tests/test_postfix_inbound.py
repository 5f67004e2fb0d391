"""Postfix in front of mxd: a real MTA relays mail to mxd's MX, and mxd's refusals become Postfix bounces."""
from __future__ import annotations

import email
import email.policy
import os
import re
import smtplib
import time
from email.header import Header
from email.message import EmailMessage

import pytest

from tests.support.daemon import MxdProcess, free_port
from tests.support.peers.postfix import PostfixPeer, skip_unless_available

pytestmark = pytest.mark.slow

MAILBOX = "agent@example.test"
UTF8_SUBJECT = "Grüße aus Köln – Übersicht ✓ 日本語"
ATTACHMENT = os.urandom(48 * 1024) + bytes(range(256))


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    skip_unless_available()
    root = tmp_path_factory.mktemp("postfix-inbound")
    mxd = MxdProcess(root / "data")
    mxd.init()
    mxd.start()
    assert mxd.api("POST", "/api/mailboxes", json={"address": MAILBOX}).status_code == 201
    hop = f"127.0.0.1:{mxd.mx_port}"
    # remote.test is where bounces go (the senders below); discard them so nothing lingers in the queue.
    postfix = PostfixPeer(root / "postfix", free_port(),
                          relay_domains={"example.test": hop, "foreign.test": hop},
                          discard_domains=["remote.test"])
    try:
        postfix.start()
        yield mxd, postfix
    finally:
        postfix.stop()
        mxd.stop()


def _message(i: int) -> EmailMessage:
    m = EmailMessage()
    m["From"] = f"Sender {i} <sender{i}@remote.test>"
    m["To"] = MAILBOX
    m["Message-ID"] = f"<postfix-inbound-{i}@remote.test>"
    m["X-Seq"] = str(i)
    if i == 7:
        # RFC 2047 encoded-words on the wire (checked below), decoded by mxd.
        m["Subject"] = Header(UTF8_SUBJECT, "utf-8").encode()
    else:
        m["Subject"] = f"via postfix #{i:02d}"
    m.set_content(f"message number {i}\n")
    if i == 3:
        m.add_attachment(ATTACHMENT, maintype="application", subtype="octet-stream", filename="report.bin")
    return m


def _subject(i: int) -> str:
    return UTF8_SUBJECT if i == 7 else f"via postfix #{i:02d}"


def test_twenty_messages_relayed_once_each(peers):
    mxd, postfix = peers
    with smtplib.SMTP("127.0.0.1", postfix.listen_port, timeout=30) as s:
        for i in range(20):
            msg = _message(i)
            wire = msg.as_bytes(policy=email.policy.SMTP)
            if i == 7:
                assert b"Subject: =?utf-8?" in wire, wire[:500]
            assert s.sendmail(f"sender{i}@remote.test", [MAILBOX], wire) == {}

    sent = postfix.wait_log(r"to=<agent@example\.test>.*status=sent \(250 2\.0\.0 OK queued as inb_", 20, 60)
    assert len(sent) == 20, postfix.log()[-4000:]
    assert not re.search(r"to=<agent@example\.test>.*status=(deferred|bounced)", postfix.log())

    found = mxd.wait_messages(20, MAILBOX, timeout=60)
    time.sleep(1.0)                                   # anything extra (a duplicate) would show up now
    found = mxd.messages(MAILBOX)
    subjects = sorted(m["subject"] for m in found)
    assert subjects == sorted(_subject(i) for i in range(20)), subjects
    assert len({m["id"] for m in found}) == 20

    by_subject = {m["subject"]: m for m in found}

    # The attachment is listed and comes back byte for byte.
    detail = mxd.api("GET", f"/api/messages/{by_subject[_subject(3)]['id']}").json()
    [att] = [a for a in detail["attachments"] if a["filename"] == "report.bin"]
    assert att["size"] == len(ATTACHMENT)
    body = mxd.api("GET", att["url"])
    assert body.status_code == 200
    assert body.content == ATTACHMENT

    # Trace fields: mxd's Received on top, Postfix's right below it.
    for i in (0, 3, 7):
        mid = by_subject[_subject(i)]["id"]
        raw = mxd.api("GET", f"/api/messages/{mid}/raw")
        assert raw.status_code == 200
        parsed = email.message_from_bytes(raw.content, policy=email.policy.default)
        received = [str(h) for h in parsed.get_all("Received")]
        assert len(received) >= 2, received
        assert "(mxd)" in received[0] and "mx.example.test" in received[0], received
        assert "(Postfix)" in received[1] and "postfix.test" in received[1], received
        assert parsed["X-Seq"] == str(i)
        if i == 7:
            assert b"Subject: =?utf-8?" in raw.content
            assert str(parsed["Subject"]) == UTF8_SUBJECT


def test_foreign_domain_refused_and_bounced(peers):
    mxd, postfix = peers
    m = EmailMessage()
    m["From"] = "relay-test@remote.test"
    m["To"] = "someone@foreign.test"
    m["Subject"] = "must not be relayed"
    m.set_content("open relay check\n")
    with smtplib.SMTP("127.0.0.1", postfix.listen_port, timeout=30) as s:
        # Postfix itself accepts it (foreign.test is one of its relay domains) ...
        assert s.send_message(m, from_addr="relay-test@remote.test", to_addrs=["someone@foreign.test"]) == {}

    # ... and mxd refuses it at RCPT, so Postfix bounces it.
    bounced = postfix.wait_log(r"to=<someone@foreign\.test>.*status=bounced", 1, 30)
    assert bounced, postfix.log()[-4000:]
    assert "550 5.7.1" in bounced[0], bounced
    assert "RCPT TO" in bounced[0], bounced
    assert not re.search(r"to=<someone@foreign\.test>.*status=sent", postfix.log())

    time.sleep(1.0)
    assert not [x for x in mxd.messages() if x["subject"] == "must not be relayed"]
    # Nothing reached mxd's durable inbound table either.
    import sqlite3
    db = sqlite3.connect(f"file:{mxd.data_dir / 'mxd.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT count(*) FROM inbound WHERE instr(CAST(rcpts AS TEXT), 'foreign.test') > 0"
                          ).fetchone()[0]
    finally:
        db.close()
    assert rows == 0
