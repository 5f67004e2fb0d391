"""Postfix as the sending MTA in front of mxd's defences: mail failing DMARC at a p=reject domain is
refused 550 5.7.1 before the 250 (Postfix bounces it, nothing is stored in mxd), p=quarantine and
passing mail are accepted. Postfix connects from its own loopback address (smtp_bind_address), which
is not a trusted network here."""
from __future__ import annotations

import json
import re
import smtplib
from email.message import EmailMessage

import pytest

from tests.support.daemon import MxdProcess, free_port, wait_for
from tests.support.dnsserver import DNSServer
from tests.support.peers.postfix import PostfixPeer, skip_unless_available

pytestmark = pytest.mark.slow

MAILBOX = "agent@example.test"
ZONE = {
    # Postfix relays from 127.0.0.44: the pass domain allows it, the others do not.
    "pass.test": {"TXT": ["v=spf1 ip4:127.0.0.44 -all"]},
    "_dmarc.pass.test": {"TXT": ["v=DMARC1; p=reject"]},
    "reject.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.reject.test": {"TXT": ["v=DMARC1; p=reject"]},
    "quar.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.quar.test": {"TXT": ["v=DMARC1; p=quarantine"]},
}


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    skip_unless_available()
    root = tmp_path_factory.mktemp("defences-postfix")
    with DNSServer(ZONE) as dns:
        mxd = MxdProcess(root / "data", env={"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2",
                                             "MXD_TRUSTED_NETWORKS": "127.0.0.1/32"})
        mxd.init()
        mxd.start(timeout=60)
        try:
            assert mxd.api("POST", "/api/mailboxes", json={"address": MAILBOX}).status_code == 201
            postfix = PostfixPeer(root / "postfix", free_port(), relay_domains={"example.test": f"127.0.0.1:{mxd.mx_port}"},
                                  discard_domains=["pass.test", "reject.test", "quar.test"],
                                  extra={"smtp_bind_address": "127.0.0.44"})
            postfix.start()
            try:
                yield mxd, postfix
            finally:
                postfix.stop()
        finally:
            mxd.stop()


def _submit(postfix: PostfixPeer, author: str, subject: str) -> None:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = author, MAILBOX, subject
    m["Message-ID"] = f"<{subject.replace(' ', '-')}@{author.split('@')[1]}>"
    m.set_content("hello\n")
    with smtplib.SMTP("127.0.0.1", postfix.listen_port, timeout=30) as s:
        s.send_message(m)


def _stored(mxd: MxdProcess, subject: str) -> list[tuple]:
    return mxd.sql("SELECT id, checks FROM inbound WHERE CAST(data AS TEXT) LIKE ?", (f"%{subject}%",))


def test_dmarc_reject_bounced_by_postfix_with_5_7_1(peers):
    mxd, postfix = peers
    _submit(postfix, "ceo@reject.test", "forged through postfix")
    bounced = postfix.wait_log(r"to=<agent@example\.test>.*status=bounced", 1, 60)
    assert bounced, postfix.log()[-4000:]
    assert "550 5.7.1" in bounced[0] and "reject.test" in bounced[0] and "DMARC" in bounced[0], bounced
    assert "end of data" in bounced[0].lower() or "DATA" in bounced[0], bounced   # refused at DATA, before the 250
    assert _stored(mxd, "forged through postfix") == []


def test_quarantine_and_pass_accepted_through_postfix(peers):
    mxd, postfix = peers
    _submit(postfix, "ceo@quar.test", "doubtful through postfix")
    _submit(postfix, "alice@pass.test", "honest through postfix")
    sent = postfix.wait_log(r"to=<agent@example\.test>.*status=sent \(250 2\.0\.0 OK queued as inb_", 2, 60)
    assert len(sent) >= 2, postfix.log()[-4000:]
    (_, doubtful), = _stored(mxd, "doubtful through postfix")
    assert [q["code"] for q in json.loads(doubtful)["quarantine"]] == ["dmarc_quarantine"]
    (_, honest), = _stored(mxd, "honest through postfix")
    checks = json.loads(honest)
    assert checks["auth"]["dmarc"] == "pass" and checks["quarantine"] == []
    assert wait_for(lambda: [m for m in mxd.messages(MAILBOX) if m["subject"] == "honest through postfix"])
    assert not re.search(r"to=<agent@example\.test>.*status=deferred", postfix.log())
