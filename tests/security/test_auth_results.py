"""Threat: a sender from outside writes its own `Authentication-Results: <mxd's hostname>; dkim=pass
dmarc=pass` into the header. Mail clients, filters and agents that read the stored message trust fields
naming mxd's authserv-id as mxd's own verdict, so a forged one makes a spoofed message look verified.

RFC 8601 5: mxd removes every Authentication-Results field naming its authserv-id (compared without
regard to case, after comments, quoted or with a version, folded or not, whatever the case of the field
name) from mail taken in by the MX, before storing it; fields of other authserv-ids and the body stay,
and a DKIM signature that does not cover those fields still verifies.
"""
from __future__ import annotations

import email
import email.policy
import smtplib
import time
from typing import Iterator

import pytest

from mxd import keys
from mxd.ingest import authserv_id_of, remove_auth_results
from tests.support.daemon import MxdProcess, running_daemon
from tests.support.dnsserver import DNSServer
from tests.support.mail import dkim_sign as _sign
from tests.support.mail import published_keys

OURS = "mx.example.test"
FORGED = (
    b"Authentication-Results: mx.example.test; dkim=pass header.d=bank.test; dmarc=pass header.from=bank.test\r\n"
    b"authentication-results :\r\n\t(forged (nested)) MX.Example.TEST 1;\r\n spf=pass smtp.mailfrom=ceo@bank.test\r\n"
    b'AUTHENTICATION-RESULTS: "mx.example.test."; dmarc=pass\r\n'
)
KEPT = (
    b"Authentication-Results: relay.remote.test; spf=pass smtp.mailfrom=alice@remote.test\r\n"
    b"Authentication-Results: mx.example.test.evil.test; spf=pass\r\n"
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MxdProcess, list[keys.DkimKey]]]:
    base = tmp_path_factory.mktemp("ar")
    zone = {"remote.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"], "A": ["127.0.0.1"]},
            "_dmarc.remote.test": {"TXT": ["v=DMARC1; p=reject"]}}
    signing = published_keys(base / "dkim", zone)
    with DNSServer(zone) as dns, running_daemon(base / "data", mailboxes=["agent@example.test"], hostname=OURS,
                                                env={"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2"}) as proc:
        yield proc, signing


def _received(proc: MxdProcess, data: bytes, subject: str) -> tuple[dict, bytes]:
    with smtplib.SMTP("127.0.0.1", proc.mx_port) as s:
        s.sendmail("alice@remote.test", ["agent@example.test"], data)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for m in proc.messages("agent@example.test"):
            if m["subject"] == subject:
                detail = proc.api("GET", f"/api/messages/{m['id']}").json()
                return detail, proc.api("GET", f"/api/messages/{m['id']}/raw").content
        time.sleep(0.1)
    raise AssertionError("message not processed")


def test_forged_verdicts_are_removed_and_the_signature_still_verifies(world) -> None:
    proc, signing = world
    message = (b"From: Alice <alice@remote.test>\r\nTo: agent@example.test\r\n"
               b"Subject: forged verdict\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
               b"Message-ID: <ar1@remote.test>\r\n\r\n"
               b"Authentication-Results: mx.example.test; this line is body text\r\n")
    # added on the way, after signing, as a relay or the sender itself would: the signature does not cover them
    detail, raw = _received(proc, FORGED + KEPT + _sign(message, signing), "forged verdict")
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    ids = [authserv_id_of(str(v)) for v in parsed.get_all("Authentication-Results")]
    assert ids == [OURS, "relay.remote.test", "mx.example.test.evil.test"]     # ours (first) and the others'
    assert raw.startswith(b"Authentication-Results: mx.example.test;")
    assert KEPT in raw and b"header.d=bank.test" not in raw and b"ceo@bank.test" not in raw
    assert raw.endswith(b"\r\n\r\nAuthentication-Results: mx.example.test; this line is body text\r\n")
    assert detail["authentication_results"].count("dkim=pass") == 2        # the signature survived
    assert detail["auth"]["dmarc"] == "pass"


def test_mail_without_the_field_is_stored_as_it_came(world) -> None:
    proc, _ = world
    message = (b"From: alice@remote.test\r\nTo: agent@example.test\r\nSubject: plain\r\n"
               b"X-Note: authentication results are discussed below\r\n\r\nAuthentication-Results: in the body\r\n")
    _, raw = _received(proc, message, "plain")
    assert raw.endswith(message)


def test_a_bare_line_end_cannot_hide_a_forged_field() -> None:
    # the store normalises a bare CR or LF to CRLF, which would make this a field of its own
    data = b"X-A: 1\rAuthentication-Results: mx.example.test; dkim=pass\nSubject: s\r\n\r\nbody\r\n"
    assert remove_auth_results(data, OURS) == b"X-A: 1\r\nSubject: s\r\n\r\nbody\r\n"
    hidden = b"Authentica\0tion-Results: mx.example.test; dkim=pass\r\nSubject: s\r\n\r\nbody\r\n"
    assert remove_auth_results(hidden, OURS) == b"Subject: s\r\n\r\nbody\r\n"


def test_forged_verdicts_are_removed_from_injected_mail_too(world) -> None:
    """POST /api/inbound/simulate (and SES notifications, which share its store step) take raw mail from
    outside as well: the same fields are removed."""
    proc, _ = world
    message = (FORGED + KEPT + b"From: alice@remote.test\r\nTo: agent@example.test\r\nSubject: injected\r\n"
               b"Message-ID: <ar3@remote.test>\r\n\r\nbody\r\n")
    r = proc.api("POST", "/api/inbound/simulate", json={"to": ["agent@example.test"], "raw": message.decode(),
                                                         "wait": True})
    assert r.status_code == 202, r.text
    [message_id] = r.json()["message_ids"]
    raw = proc.api("GET", f"/api/messages/{message_id}/raw").content
    assert KEPT in raw and b"header.d=bank.test" not in raw and b"ceo@bank.test" not in raw
    assert b'"mx.example.test."' not in raw
