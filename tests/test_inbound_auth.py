"""Authentication-Results on inbound mail, end to end: a real DNS server on loopback, DKIM-signed mail over SMTP."""
from __future__ import annotations

import smtplib
import time

import pytest

from tests.support.daemon import MxdProcess, running_daemon
from tests.support.dnsserver import DNSServer
from tests.support.mail import dkim_sign as _sign
from tests.support.mail import published_keys


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("auth")
    zone = {
        "remote.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"], "A": ["127.0.0.1"]},
        "_dmarc.remote.test": {"TXT": ["v=DMARC1; p=reject; adkim=s; aspf=r"]},
        "strict.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
        "_dmarc.strict.test": {"TXT": ["v=DMARC1; p=reject"]},
    }
    signing = published_keys(base / "dkim", zone)
    with DNSServer(zone) as dns, running_daemon(base / "data", mailboxes=["agent@example.test"],
                                                env={"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2",
                                                     # forged p=reject mail is kept (quarantined), not refused
                                                     "MXD_DMARC_REJECT": "false"}) as proc:
        yield proc, signing


def _deliver(proc: MxdProcess, mail_from: str, data: bytes, subject: str) -> dict:
    with smtplib.SMTP("127.0.0.1", proc.mx_port) as s:
        s.sendmail(mail_from, ["agent@example.test"], data)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = proc.api("GET", "/api/messages", params={"mailbox": "agent@example.test", "limit": 500,
                                                          "include": "quarantined"}).json()["data"]
        for m in listed:                   # the forged ones are kept in the quarantine
            if m["subject"] == subject:
                return proc.api("GET", f"/api/messages/{m['id']}", params={"include": "quarantined"}).json()
        time.sleep(0.1)
    raise AssertionError("message not processed")


def test_signed_aligned_mail_passes_everything(world):
    proc, signing = world
    body = (b"From: Alice <alice@remote.test>\r\nTo: agent@example.test\r\nSubject: signed hello\r\n"
            b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <s1@remote.test>\r\n\r\nsigned body\r\n")
    detail = _deliver(proc, "alice@remote.test", _sign(body, signing), "signed hello")
    ar = detail["authentication_results"]
    assert ar.startswith("mx.example.test;")
    assert "spf=pass" in ar and "smtp.mailfrom=" in ar
    assert ar.count("dkim=pass") == 2
    assert "header.a=rsa-sha256" in ar and "header.a=ed25519-sha256" in ar
    assert "dmarc=pass" in ar and "header.from=remote.test" in ar
    assert detail["auth"]["spf"] == "pass" and detail["auth"]["dmarc"] == "pass"
    assert [d["result"] for d in detail["auth"]["dkim"]] == ["pass", "pass"]
    raw = proc.api("GET", f"/api/messages/{detail['id']}/raw").content
    assert raw.startswith(b"Authentication-Results: mx.example.test;")


def test_tampered_signature_fails_dkim(world):
    proc, signing = world
    body = (b"From: alice@remote.test\r\nTo: agent@example.test\r\nSubject: tampered\r\n\r\noriginal\r\n")
    signed = _sign(body, signing).replace(b"original", b"changed!")
    detail = _deliver(proc, "alice@remote.test", signed, "tampered")
    assert [d["result"] for d in detail["auth"]["dkim"]] == ["fail", "fail"]
    # SPF still aligns (relaxed), so DMARC passes on SPF alone.
    assert detail["auth"]["spf"] == "pass" and detail["auth"]["dmarc"] == "pass"


def test_forged_sender_fails_spf_and_dmarc(world):
    proc, _ = world
    body = b"From: ceo@strict.test\r\nTo: agent@example.test\r\nSubject: forged\r\n\r\npay now\r\n"
    detail = _deliver(proc, "ceo@strict.test", body, "forged")
    assert detail["auth"]["spf"] == "fail"
    assert detail["auth"]["dmarc"] == "fail" and detail["auth"]["dmarc_policy"] == "reject"
    assert "dkim=none" in detail["authentication_results"]
    assert [q["code"] for q in detail["quarantine"]] == ["dmarc_reject"] and detail["trust"]["verdict"] == "suspicious"


def test_unknown_domain_gives_none(world):
    proc, _ = world
    body = b"From: x@unknown.test\r\nTo: agent@example.test\r\nSubject: nobody knows\r\n\r\nhi\r\n"
    detail = _deliver(proc, "x@unknown.test", body, "nobody knows")
    assert detail["auth"]["spf"] == "none" and detail["auth"]["dmarc"] == "none"
