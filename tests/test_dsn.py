"""mxd.delivery.dsn: the reports mxd writes (read back with the stdlib) and the reports it reads."""
from __future__ import annotations

import email
import email.policy
import pathlib
import sysconfig
from datetime import datetime, timezone

import pytest

from mxd.delivery.dsn import FailedRecipient, build_dsn, parse_dsn

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
T1 = datetime(2024, 3, 1, 12, 5, tzinfo=timezone.utc)
UNTIL = datetime(2024, 3, 6, 12, 0, tzinfo=timezone.utc)
ORIGINAL = (b"From: Agent <agent@example.com>\r\nTo: bob@example.org, carol@example.net\r\nSubject: Plan\r\n"
            b"Message-ID: <orig-1@example.com>\r\nMIME-Version: 1.0\r\n\r\nthe body text\r\n")
EMAIL_DATA = pathlib.Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"

FAILED = FailedRecipient("bob@example.org", "5.1.1", "failed", "smtp; 550 5.1.1 <bob@example.org>: User unknown",
                         "mx.example.org", T1)
DELAYED = FailedRecipient("carol@example.net", "4.7.1", "delayed", "smtp; 451 4.7.1 Greylisted, try later",
                          "mx.example.net", T1, UNTIL)


def _dsn(recipients=(FAILED, DELAYED), **kw) -> bytes:
    args = dict(reporting_mta="mx.example.com", original_envelope_id="msg_01abc", original_message=ORIGINAL,
                original_mail_from="agent@example.com", recipients=list(recipients), to_addr="agent@example.com",
                from_addr="MAILER-DAEMON@mx.example.com", arrival=T0, now=T1)
    args.update(kw)
    return build_dsn(**args)


def _read(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_structure_and_top_level_headers() -> None:
    raw = _dsn()
    assert b"\n" not in raw.replace(b"\r\n", b"") and raw.endswith(b"\r\n")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    msg = _read(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.com>"
    assert msg["To"] == "agent@example.com"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Date"] == "Fri, 01 Mar 2024 12:05:00 +0000"
    assert (msg["In-Reply-To"], msg["References"]) == ("<orig-1@example.com>", "<orig-1@example.com>")
    assert msg["Message-ID"].endswith("@mx.example.com>")
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert msg.defects == [] and all(p.defects == [] for p in parts)


def test_delivery_status_fields() -> None:
    status = _read(_dsn()).get_payload()[1]
    per_message, bob, carol = status.get_payload()
    assert per_message.items() == [("Original-Envelope-Id", "msg_01abc"), ("Reporting-MTA", "dns; mx.example.com"),
                                   ("Arrival-Date", "Fri, 01 Mar 2024 12:00:00 +0000")]
    assert bob.items() == [("Final-Recipient", "rfc822; bob@example.org"), ("Action", "failed"), ("Status", "5.1.1"),
                           ("Remote-MTA", "dns; mx.example.org"),
                           ("Diagnostic-Code", "smtp; 550 5.1.1 <bob@example.org>: User unknown"),
                           ("Last-Attempt-Date", "Fri, 01 Mar 2024 12:05:00 +0000")]
    assert carol.items() == [("Final-Recipient", "rfc822; carol@example.net"), ("Action", "delayed"),
                             ("Status", "4.7.1"), ("Remote-MTA", "dns; mx.example.net"),
                             ("Diagnostic-Code", "smtp; 451 4.7.1 Greylisted, try later"),
                             ("Last-Attempt-Date", "Fri, 01 Mar 2024 12:05:00 +0000"),
                             ("Will-Retry-Until", "Wed, 06 Mar 2024 12:00:00 +0000")]


def test_human_part_and_original_headers() -> None:
    human, _, original = _read(_dsn()).get_payload()
    text = human.get_content().replace("\r\n", "\n")
    assert "This is the mail system at mx.example.com." in text
    assert "<bob@example.org>: delivery failed (5.1.1)\n    Host mx.example.org said: 550 5.1.1 <bob@example.org>: User unknown" in text
    assert "<carol@example.net>: delivery delayed (4.7.1)" in text
    assert "mxd will keep trying until Wed, 06 Mar 2024 12:00:00 +0000." in text
    assert "Message-ID <orig-1@example.com>" in text
    assert original.get_payload(decode=True) == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert b"the body text" not in _dsn()


def test_full_original_as_message_rfc822() -> None:
    msg = _read(_dsn(headers_only=False))
    original = msg.get_payload()[2]
    assert original.get_content_type() == "message/rfc822"
    inner = original.get_payload(0)
    assert (inner["Subject"], inner["Message-ID"]) == ("Plan", "<orig-1@example.com>")
    assert inner.get_content().strip() == "the body text"


def test_delayed_only() -> None:
    msg = _read(_dsn([DELAYED]))
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    text = msg.get_payload()[0].get_content().replace("\r\n", "\n")
    assert "you do not need to send it again" in text and "given up" not in text


def test_diagnostic_without_type_and_long_lines_fold() -> None:
    long = FailedRecipient("bob@example.org", "5.4.4", "failed", "no MX host of example.org has an address " * 8,
                           None, None)
    raw = _dsn([long])
    assert max(len(line) for line in raw.split(b"\r\n") if line.startswith((b"Diagnostic", b" "))) <= 998
    status = _read(raw).get_payload()[1].get_payload()[1]
    assert status["Diagnostic-Code"].startswith("X-mxd; no MX host of example.org has an address")
    assert "Remote-MTA" not in status and "Last-Attempt-Date" not in status
    assert parse_dsn(raw)[0]["diagnostic"] == "X-mxd; " + long.diagnostic.strip()


def test_utf8_recipient_uses_global_types() -> None:
    r = FailedRecipient("zoë@exämple.org", "5.1.1", "failed", "smtp; 550 5.1.1 unknown", "mx.example.org", T1)
    raw = _dsn([r])
    msg = _read(raw)
    assert msg.get_param("report-type") == "global-delivery-status"
    assert [p.get_content_type() for p in msg.get_payload()] == [
        "text/plain", "message/global-delivery-status", "message/global-headers"]
    assert "Final-Recipient: utf-8; zoë@exämple.org".encode() in raw
    assert parse_dsn(raw)[0]["final_recipient"] == "zoë@exämple.org"


def test_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        _dsn(from_addr="MAILER-DAEMON@x\r\nBcc: evil@example.org")
    with pytest.raises(ValueError):
        _dsn([FailedRecipient("b@example.org", "550", "failed", "", None, None)])
    with pytest.raises(ValueError):
        _dsn([FailedRecipient("b@example.org", "5.0.0", "bounced", "", None, None)])
    with pytest.raises(ValueError):
        _dsn([])


def test_remote_text_is_sanitised() -> None:
    r = FailedRecipient("bob@example.org", "5.7.1", "failed", "smtp; 550 5.7.1 refusé\r\nX-Evil: 1", "mx", T1)
    raw = _dsn([r])
    assert b"\r\nX-Evil" not in raw
    assert parse_dsn(raw)[0]["diagnostic"] == "smtp; 550 5.7.1 refus? X-Evil: 1"


# --- reading -------------------------------------------------------------------------

def test_parse_round_trip() -> None:
    assert parse_dsn(_dsn()) == [
        {"final_recipient": "bob@example.org", "original_recipient": None, "action": "failed", "status": "5.1.1",
         "diagnostic": "smtp; 550 5.1.1 <bob@example.org>: User unknown", "remote_mta": "mx.example.org",
         "reporting_mta": "mx.example.com", "original_envelope_id": "msg_01abc",
         "original_message_id": "orig-1@example.com"},
        {"final_recipient": "carol@example.net", "original_recipient": None, "action": "delayed", "status": "4.7.1",
         "diagnostic": "smtp; 451 4.7.1 Greylisted, try later", "remote_mta": "mx.example.net",
         "reporting_mta": "mx.example.com", "original_envelope_id": "msg_01abc",
         "original_message_id": "orig-1@example.com"}]
    assert parse_dsn(_dsn(headers_only=False))[0]["original_message_id"] == "orig-1@example.com"


def test_parse_cpython_bounce_with_comment_in_status() -> None:
    (r,) = parse_dsn((EMAIL_DATA / "msg_16.txt").read_bytes())     # lower-case field names, message/rfc822 original
    assert r == {"final_recipient": "jangel1@cougar.noc.ucla.edu", "original_recipient": "jangel1@cougar.noc.ucla.edu",
                 "action": "failed", "status": "5.0.0", "diagnostic": None, "remote_mta": None,
                 "reporting_mta": "cougar.noc.ucla.edu", "original_envelope_id": "0GK500B4HD0888@cougar.noc.ucla.edu",
                 "original_message_id": "002001c144a6$8752e060$56104586@oxy.edu"}


def test_parse_cpython_bounce_with_broken_boundary() -> None:
    # msg_25's Content-Type boundary parameter is cut short; the report is found by its part header
    (r,) = parse_dsn((EMAIL_DATA / "msg_25.txt").read_bytes())
    assert (r["final_recipient"], r["action"], r["status"], r["reporting_mta"]) == (
        "scoffman@wellpartner.com", "failed", "5.4.6", "zinfandel.lacita.com")


def test_parse_cpython_bounce_many_recipients() -> None:
    report = parse_dsn((EMAIL_DATA / "msg_43.txt").read_bytes())
    assert len(report) == 25
    assert report[0] == {
        "final_recipient": "xxxxxxx@dot.ca.gov", "original_recipient": None, "action": "failed", "status": "5.7.1",
        "diagnostic": "smtp; 550 5.7.1 Message content rejected, id=01956-02-2 - BANNED: auto__mail.python.bat",
        "remote_mta": None, "reporting_mta": "sacspam01.dot.ca.gov", "original_envelope_id": None,
        "original_message_id": "edab.7804f5cb8070@python.org"}
    assert {r["status"] for r in report} == {"5.7.1"}


def test_parse_non_reports() -> None:
    assert parse_dsn((EMAIL_DATA / "msg_05.txt").read_bytes()) == []    # multipart/report without a status part
    assert parse_dsn((EMAIL_DATA / "msg_01.txt").read_bytes()) == []
    assert parse_dsn(b"") == []
    assert parse_dsn(b"\xff\xfe garbage \x00\r\n\r\n--") == []
