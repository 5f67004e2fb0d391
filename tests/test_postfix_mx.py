"""mxd delivers to Postfix acting as the recipient's MX; the delivered file is checked by independent verifiers.

The sender mxd (example.test, on 127.0.0.1) finds postfix.test's MX through a
real DNS server on loopback and delivers to a private Postfix on
127.0.0.3:<MXD_OUTBOUND_MX_PORT>, the final destination for postfix.test with
virtual mailbox delivery to a Maildir. The file Postfix wrote is then checked:
both DKIM signatures (RSA-2048 and Ed25519) with dkimpy through mxd.authn and
with OpenDKIM's `opendkim-testmsg`, and SPF/DMARC for the envelope Postfix
recorded (Return-Path) and the client it recorded (Received).
"""
from __future__ import annotations

import email
import email.policy
import re
import time
from typing import Iterator

import pytest

from mxd.authn import authenticate
from mxd.authn.dkim import verify
from mxd.resolver import make_resolver
from tests.support.daemon import MxdProcess, free_port
from tests.support.dnsserver import SENDING_DOMAIN, DNSServer
from tests.support.peers.postfix import PostfixPeer, skip_unless_available

try:        # the opendkim-testmsg runner (a DNS server on 127.0.0.53:53 and `unshare -m`); it reads `zone` below
    from tests.test_dkimsign import opendkim  # noqa: F401
    HAVE_OPENDKIM_HELPER = True
except ImportError:                           # pragma: no cover
    HAVE_OPENDKIM_HELPER = False

pytestmark = pytest.mark.slow

SENDER = "agent@example.test"
RECIPIENT = "alice@postfix.test"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[tuple[MxdProcess, PostfixPeer, DNSServer]]:
    skip_unless_available()
    root = tmp_path_factory.mktemp("postfix-mx")
    mx_port = free_port("127.0.0.3")
    dns = DNSServer({
        **SENDING_DOMAIN,
        "postfix.test": {"MX": [(10, "mx.postfix.test")]},
        "mx.postfix.test": {"A": ["127.0.0.3"]},
    }).start()
    mxd = MxdProcess(root / "mxd", domains=["example.test"],
                     env={"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2",
                          "MXD_OUTBOUND_MX_PORT": str(mx_port), "MXD_RETRY_SCHEDULE": "1s"})
    out = mxd.init()
    for rec in out["dns_records"]:
        if rec["type"] == "TXT" and "._domainkey." in rec["name"]:
            dns.set(rec["name"], "TXT", [rec["value"]])
    postfix = PostfixPeer(root / "postfix", mx_port, listen_host="127.0.0.3", hostname="mx.postfix.test",
                          virtual_mailboxes={"postfix.test": ["alice"]})
    try:
        postfix.start()
        mxd.start()
        assert mxd.api("POST", "/api/mailboxes", json={"address": SENDER}).status_code == 201
        assert mxd.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        yield mxd, postfix, dns
    finally:
        mxd.stop()
        postfix.stop()
        dns.stop()


@pytest.fixture(scope="module")
def zone(world) -> dict:
    """The DKIM key records, for the opendkim fixture's own DNS server on 127.0.0.53:53."""
    _, _, dns = world
    return {name: dict(entry) for name, entry in dns._zone.items() if "._domainkey." in name}


@pytest.fixture(scope="module")
def delivered(world) -> bytes:
    """Send once through the API; the file Postfix wrote into alice's Maildir, with CRLF line ends."""
    mxd, postfix, _ = world
    r = mxd.api("POST", "/api/send", json={
        "from": SENDER, "from_name": "Agent Smith", "to": RECIPIENT, "subject": "Grüße via Postfix",
        "text": "plain body, with trailing spaces   \nand a second line\n", "html": "<p>html body</p>"})
    assert r.status_code == 202, r.text
    sent = r.json()
    deadline = time.monotonic() + 30
    row: dict = {}
    while time.monotonic() < deadline:
        row = mxd.api("GET", f"/api/messages/{sent['id']}").json()["delivery"][0]
        if row["status"] != "queued" and row["status"] != "deferred":
            break
        time.sleep(0.1)
    assert row["status"] == "delivered", (row, postfix.log()[-3000:])
    assert row["last_host"] == "mx.postfix.test" and row["last_reply"].startswith("250 2.0.0")
    log = postfix.wait_log(r"to=<alice@postfix\.test>.*status=sent \(delivered to maildir\)", 1, 30)
    assert log, postfix.log()[-3000:]
    files = postfix.delivered(RECIPIENT)
    assert len(files) == 1, files
    raw = files[0].read_bytes()
    assert b"\r\n" not in raw                                  # Maildir files hold LF line ends
    return re.sub(rb"\r?\n", b"\r\n", raw)                    # as they were on the wire


def test_postfix_stored_the_message(delivered):
    msg = email.message_from_bytes(delivered, policy=email.policy.default)
    assert msg["Delivered-To"] == RECIPIENT
    assert re.fullmatch(r"<bounces\+q_[0-9a-z]+\.[0-9a-z]{16}@example\.test>", msg["Return-Path"]), msg["Return-Path"]
    assert msg["Subject"] == "Grüße via Postfix" and msg["From"].addresses[0].addr_spec == SENDER
    assert msg.get_body(("plain",)).get_content().startswith("plain body")
    # Postfix's own trace field on top: the client it saw (mxd), by its EHLO name and address
    received = msg.get_all("Received")[0]
    assert "from mx.example.test" in received and "[127.0.0.1]" in received and "by mx.postfix.test" in received


def test_both_dkim_signatures_verify_with_dkimpy(world, delivered):
    _, _, dns = world
    results = verify(delivered, make_resolver([dns.nameserver], timeout=2, cache_size=0))
    assert [r.result for r in results] == ["pass", "pass"], results
    assert [r.algorithm for r in results] == ["rsa-sha256", "ed25519-sha256"]
    assert {r.domain for r in results} == {"example.test"}


def test_spf_and_dmarc_pass_for_what_postfix_recorded(world, delivered):
    _, _, dns = world
    msg = email.message_from_bytes(delivered, policy=email.policy.compat32)
    mail_from = msg["Return-Path"].strip().strip("<>")
    m = re.search(r"from (\S+) \(\S+ \[([0-9.]+)\]\)", msg.get_all("Received")[0])
    assert m, msg.get_all("Received")[0]
    helo, ip = m.groups()
    assert ip == "127.0.0.1"
    res = authenticate(delivered, ip=ip, helo=helo, mail_from=mail_from,
                       resolver=make_resolver([dns.nameserver], timeout=2, cache_size=0),
                       authserv_id="postfix.test")
    assert res.spf == "pass" and res.spf_domain == "example.test", res
    assert res.dmarc == "pass" and res.from_domain == "example.test", res
    assert [d.result for d in res.dkim] == ["pass", "pass"]
    assert res.header_value.startswith("postfix.test;") and "dmarc=pass" in res.header_value


def _signatures(raw: bytes) -> list[bytes]:
    return re.findall(rb"^DKIM-Signature:.*?\r\n(?![ \t])", raw, re.S | re.M)


@pytest.mark.skipif(not HAVE_OPENDKIM_HELPER, reason="tests.test_dkimsign's opendkim helper is not importable")
def test_opendkim_verifies_each_signature(delivered, opendkim):
    sigs = _signatures(delivered)
    assert len(sigs) == 2
    # opendkim-testmsg exits 0 when any one signature passes, so each is checked alone
    for name, keep in (("rsa", sigs[0]), ("ed25519", sigs[1])):
        alone = delivered
        for other in sigs:
            if other is not keep:
                alone = alone.replace(other, b"", 1)
        r = opendkim(alone, f"postfix-{name}.eml")
        assert r.returncode == 0, (name, r.stdout, r.stderr)
    tampered = delivered.replace(b"plain body", b"plain bodY", 1)
    assert tampered != delivered
    r = opendkim(tampered, "postfix-tampered.eml")
    assert r.returncode != 0 and "Bad signature" in r.stderr, (r.stdout, r.stderr)
