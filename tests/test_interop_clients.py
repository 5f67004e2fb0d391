"""SMTP clients that pipeline differently, each against a real mxd: every message acknowledged once and stored once.

The MX: swaks step by step, swaks with PIPELINING, swaks speaking through a pipe to a relay that cuts what it
sends into 5-byte TCP segments and half-closes when swaks is done (as `nc -N` would), smtplib (several
messages in one session, no pipelining), and aiosmtplib (which pipelines MAIL, RCPT and DATA) over STARTTLS.
Submission: port 587 with STARTTLS and port 465 with implicit TLS, each with swaks, smtplib and aiosmtplib.
Postfix as a sender is covered by tests/test_postfix_inbound.py, Exim by tests/test_interop_exim.py.
"""
from __future__ import annotations

import asyncio
import email.policy
import re
import shutil
import smtplib
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage

import aiosmtplib
import pytest

from tests.support.daemon import MxdProcess, wait_for
from tests.support.smtp import insecure_tls

pytestmark = pytest.mark.slow

MAILBOX = "agent@example.test"
LOCAL_RCPT = "other@example.test"
SENDER = "sender@remote.test"
QUEUED = re.compile(r"^2\.0\.0 OK queued as inb_\w+$")

# swaks --pipe runs this as its "server": stdin/stdout <-> TCP, in 5-byte segments, half-closing at the end.
RELAY = r"""
import os, socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def down():
    while data := s.recv(65536):
        os.write(1, data)
t = threading.Thread(target=down)
t.start()
while data := os.read(0, 65536):
    for i in range(0, len(data), 5):
        s.sendall(data[i:i + 5])
s.shutdown(socket.SHUT_WR)
t.join()
"""


@pytest.fixture(scope="module")
def mxd(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("interop-clients") / "data")
    proc.init()
    proc.start()
    try:
        for address in (MAILBOX, LOCAL_RCPT):
            assert proc.api("POST", "/api/mailboxes", json={"address": address}).status_code == 201
        assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        proc.send_token = proc.token(["send"], [MAILBOX], name="submission")
        yield proc
    finally:
        proc.stop()


def _subject(name: str) -> str:
    return f"{name} {uuid.uuid4().hex[:8]}"


def _message(subject: str, sender: str = SENDER, to: str = MAILBOX) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = f"<{uuid.uuid4().hex}@{sender.split('@')[1]}>"
    m.set_content("a body line\n" * 30 + ".\n..leading dots survive\n")
    return m.as_bytes(policy=email.policy.SMTP)


def _copies(mxd: MxdProcess, subjects: list[str], mailbox: str = MAILBOX) -> dict[str, int]:
    """How many copies of each subject `mailbox` holds, once each arrived and a moment passed without more."""
    def count() -> dict[str, int]:
        found = [m["subject"] for m in mxd.messages(mailbox)]
        return {subject: found.count(subject) for subject in subjects}
    wait_for(lambda: all(count().values()), timeout=15, every=0.05)
    time.sleep(0.3)                                  # a second copy would show up now
    return count()


def _swaks(*args: str) -> str:
    out = subprocess.run(["swaks", "--timeout", "15", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _replies(transcript: str, code: str) -> list[str]:
    """The server replies with `code` in a swaks transcript (`<-` in clear, `<~` inside TLS)."""
    return re.findall(rf"^<[-~]\s+({code}[ -].*)$", transcript, re.M)


needs_swaks = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed (see tests/run.sh)")


# ---------------------------------------------------------------- the MX
@needs_swaks
@pytest.mark.parametrize("mode", ["lockstep", "pipeline", "pipe-relay"])
def test_swaks_to_the_mx(mxd, mode):
    subject = _subject(f"swaks {mode}")
    args = ["--to", MAILBOX, "--from", SENDER, "--header", f"Subject: {subject}", "--body", "swaks body"]
    if mode == "pipe-relay":
        args += ["--pipe", f"{sys.executable} -c '{RELAY}' 127.0.0.1 {mxd.mx_port}", "--pipeline"]
    else:
        args += ["--server", f"127.0.0.1:{mxd.mx_port}"] + (["--pipeline"] if mode == "pipeline" else [])
    transcript = _swaks(*args)
    if mode != "lockstep":
        assert re.search(r"^ -> MAIL FROM:.*\n -> RCPT TO:.*\n -> DATA$", transcript, re.M), transcript
    assert [r for r in _replies(transcript, "250") if "queued as" in r] and \
        len([r for r in _replies(transcript, "250") if "queued as" in r]) == 1, transcript
    assert len(_replies(transcript, "221")) == 1, transcript
    assert _copies(mxd, [subject]) == {subject: 1}
    [stored] = [m for m in mxd.messages(MAILBOX) if m["subject"] == subject]
    assert mxd.api("GET", f"/api/messages/{stored['id']}").json()["text"].strip() == "swaks body"


def test_smtplib_several_messages_in_one_session(mxd):
    subjects = [_subject(f"smtplib #{i}") for i in range(3)]
    with smtplib.SMTP("127.0.0.1", mxd.mx_port, timeout=15) as s:
        s.ehlo("client.remote.test")
        assert "pipelining" in s.esmtp_features
        for subject in subjects:
            s.mail(SENDER)
            s.rcpt(MAILBOX)
            code, reply = s.data(_message(subject))
            assert code == 250 and QUEUED.match(reply.decode()), reply
        assert s.quit()[0] == 221
    assert _copies(mxd, subjects) == dict.fromkeys(subjects, 1)


def test_aiosmtplib_pipelines_over_starttls(mxd):
    subjects = [_subject(f"aiosmtplib #{i}") for i in range(3)]

    async def send() -> list[tuple[dict, str]]:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=mxd.mx_port, timeout=15, start_tls=True,
                                 tls_context=insecure_tls())
        async with client:
            await client.ehlo()                      # the EHLO after STARTTLS
            assert client.supports_extension("pipelining") and client.is_connected
            results = [await client.sendmail(SENDER, [MAILBOX], _message(subject)) for subject in subjects]
            quit_reply = await client.quit()
        assert quit_reply.code == 221
        return results
    for errors, reply in asyncio.run(send()):
        assert errors == {} and QUEUED.match(reply), reply
    assert _copies(mxd, subjects) == dict.fromkeys(subjects, 1)


# ---------------------------------------------------------------- submission (587 STARTTLS, 465 TLS)
def _submitted(mxd: MxdProcess, subject: str) -> None:
    """One sent copy in the sender's mailbox, one delivered copy in the local recipient's."""
    assert _copies(mxd, [subject], LOCAL_RCPT) == {subject: 1}
    sent = [m for m in mxd.messages(MAILBOX) if m["subject"] == subject]
    assert len(sent) == 1 and sent[0]["direction"] == "out", sent


@needs_swaks
@pytest.mark.parametrize("port", ["587", "465"])
def test_swaks_submission(mxd, port):
    subject = _subject(f"swaks submission {port}")
    tls = ["--tls"] if port == "587" else ["--tls-on-connect"]
    where = mxd.submission_port if port == "587" else mxd.submissions_port
    transcript = _swaks("--server", f"127.0.0.1:{where}", *tls, "--pipeline", "--auth", "PLAIN",
                        "--auth-user", MAILBOX, "--auth-password", mxd.send_token, "--from", MAILBOX,
                        "--to", LOCAL_RCPT, "--header", f"Subject: {subject}", "--body", "submitted by swaks")
    assert len(_replies(transcript, "235")) == 1, transcript
    queued = [r for r in _replies(transcript, "250") if re.search(r"\bmsg_\w+", r)]
    assert len(queued) == 1, transcript
    assert len(_replies(transcript, "221")) == 1, transcript
    _submitted(mxd, subject)


@pytest.mark.parametrize("port", ["587", "465"])
def test_smtplib_submission(mxd, port):
    subject = _subject(f"smtplib submission {port}")
    if port == "587":
        s = smtplib.SMTP("127.0.0.1", mxd.submission_port, timeout=15)
        s.starttls(context=insecure_tls())
    else:
        s = smtplib.SMTP_SSL("127.0.0.1", mxd.submissions_port, timeout=15, context=insecure_tls())
    with s:
        s.login(MAILBOX, mxd.send_token)
        s.mail(MAILBOX)
        s.rcpt(LOCAL_RCPT)
        code, reply = s.data(_message(subject, sender=MAILBOX, to=LOCAL_RCPT))
        assert code == 250 and re.search(rb"\bmsg_\w+", reply), reply
    _submitted(mxd, subject)


@pytest.mark.parametrize("port", ["587", "465"])
def test_aiosmtplib_submission(mxd, port):
    subject = _subject(f"aiosmtplib submission {port}")

    async def send() -> tuple[dict, str]:
        if port == "587":
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=mxd.submission_port, timeout=15, start_tls=True,
                                     tls_context=insecure_tls())
        else:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=mxd.submissions_port, timeout=15, use_tls=True,
                                     tls_context=insecure_tls())
        async with client:
            await client.login(MAILBOX, mxd.send_token)
            result = await client.sendmail(MAILBOX, [LOCAL_RCPT], _message(subject, sender=MAILBOX, to=LOCAL_RCPT))
            assert (await client.quit()).code == 221
        return result
    errors, reply = asyncio.run(send())
    assert errors == {} and re.search(r"\bmsg_\w+", reply), reply
    _submitted(mxd, subject)
