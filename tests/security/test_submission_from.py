"""Threat: a client logged in to SMTP submission with a send token for one mailbox writes a header
that mxd's From check reads one way and the stored, signed and displayed message another
(white space before a colon, an mbox "From " line), so its mail goes out DKIM-signed as the
domain's CEO. And: one submitted From field built to make a regular expression backtrack holds
the store's single writer, so every other client's 250s and API writes wait behind it.

Both run against a real daemon over real sockets."""
from __future__ import annotations

import smtplib
import threading
import time

import pytest

from tests.support.daemon import MxdProcess, wait_for
from tests.support.smtp import insecure_tls


@pytest.fixture(scope="module")
def mxd(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("sec") / "data", domains=["sec.test"], hostname="mx.sec.test")
    proc.init()
    proc.start()
    for address in ("alice@sec.test", "ceo@sec.test", "bob@sec.test"):
        assert proc.api("POST", "/api/mailboxes", json={"address": address}).status_code == 201
    assert proc.api("PUT", "/api/domains/sec.test/readiness", json={"ready": True}).status_code == 200
    proc.alice_token = proc.token(["send"], ["alice@sec.test"], name="alice")
    yield proc
    proc.stop()


def _session(mxd: MxdProcess) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", mxd.submission_port, timeout=60)
    s.starttls(context=insecure_tls())
    s.login("alice@sec.test", mxd.alice_token)
    return s


def _submit(mxd: MxdProcess, header: bytes, subject: str) -> tuple[int, bytes]:
    message = header + b"To: bob@sec.test\r\nSubject: " + subject.encode() + b"\r\n\r\nwire the money\r\n"
    with _session(mxd) as s:
        s.mail("alice@sec.test")
        s.rcpt("bob@sec.test")
        return s.data(message)


def _subjects(mxd: MxdProcess, mailbox: str) -> list[str]:
    return [m["subject"] for m in mxd.messages(mailbox)]


def test_everyday_submission_is_delivered(mxd):
    code, _ = _submit(mxd, b"From: Alice <alice@sec.test>\r\n", "plain")
    assert code == 250
    assert wait_for(lambda: "plain" in _subjects(mxd, "bob@sec.test"))


@pytest.mark.parametrize("header", [
    b"From : ceo@sec.test\r\nFrom: alice@sec.test\r\n",                 # the audit's payload
    b"From\t: ceo@sec.test\r\nFrom: alice@sec.test\r\n",
    b"From: alice@sec.test\r\nFrom ceo@sec.test Mon Dec  1 00:00:00 2026\r\nFrom: ceo@sec.test\r\n",
    b"From: alice@sec.test\r\nFrom ceo@sec.test Mon Dec  1 00:00:00 2026\r\n",
    b"From ceo@sec.test Mon Dec  1 00:00:00 2026\r\nFrom: alice@sec.test\r\n",
    b" folded: first\r\nFrom: alice@sec.test\r\n",
    b"From: alice@sec.test\r\nSender : ceo@sec.test\r\n",
], ids=["space-colon", "tab-colon", "mbox-line-then-from", "mbox-line", "mbox-first-line", "folded-first",
        "space-colon-other-field"])
def test_a_header_read_two_ways_is_refused(mxd, header):
    subject = f"impersonation {hash(header)}"
    code, reply = _submit(mxd, header, subject)
    assert code == 554, reply
    assert b"ambiguous_header" in reply
    time.sleep(0.5)                 # anything accepted would be filed by now
    assert subject not in _subjects(mxd, "bob@sec.test")
    assert subject not in _subjects(mxd, "alice@sec.test")


def test_a_backtracking_from_field_is_answered_at_once_and_stalls_no_writer(mxd):
    """`From: a` + 56 folded lines of 990 spaces + ` <`: quadratic for a backtracking matcher (seconds
    per message, in the writer thread). It is refused at once, and another client's writes go on."""
    payload = b"From: a" + b"".join(b"\r\n" + b" " * 990 for _ in range(56)) + b" <\r\n"
    answers: list[tuple[int, float]] = []
    started = threading.Event()

    def attack() -> None:
        with _session(mxd) as s:
            started.set()
            for _ in range(3):
                t0 = time.monotonic()
                s.mail("alice@sec.test")
                s.rcpt("bob@sec.test")
                code, _ = s.data(payload + b"To: bob@sec.test\r\nSubject: slow\r\n\r\nbody\r\n")
                answers.append((code, time.monotonic() - t0))
                s.rset()

    attacker = threading.Thread(target=attack)
    attacker.start()
    started.wait(30)
    writes = []
    n = 0
    while attacker.is_alive() or n < 3:
        n += 1
        t0 = time.monotonic()
        r = mxd.api("POST", "/api/mailboxes", json={"address": f"writer{n}@sec.test"})
        writes.append(time.monotonic() - t0)
        assert r.status_code == 201, r.text
        if n > 200:
            break
    attacker.join(60)
    assert max(writes) < 2.0, writes
    assert len(answers) == 3 and max(t for _, t in answers) < 2.0, answers
    assert [code for code, _ in answers] == [554, 554, 554]
