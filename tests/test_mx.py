"""The inbound MX end to end: real daemon, real sockets, smtplib, swaks and a raw client."""
from __future__ import annotations

import shutil
import smtplib
import subprocess
import time
from email.message import EmailMessage

import pytest

from mxd import smtpcodes as codes
from tests.support.daemon import MxdProcess
from tests.support.smtp import RawSMTP


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("mx") / "data", domains=["example.test", "other.test"],
                      env={"MXD_MAX_MESSAGE_SIZE": "200000", "MXD_MAX_RECIPIENTS": "5"})
    proc.init()
    proc.start()
    for address in ("agent@example.test", "bob@example.test", "sales1@example.test", "sales2@example.test"):
        assert proc.api("POST", "/api/mailboxes", json={"address": address}).status_code == 201
    assert proc.api("POST", "/api/aliases", json={"address": "sales@example.test",
                                                   "targets": ["sales1@example.test", "sales2@example.test"]}
                    ).status_code == 201
    assert proc.api("POST", "/api/mailboxes", json={"address": "catch@other.test"}).status_code == 201
    assert proc.api("PUT", "/api/catchalls/other.test", json={"target": "catch@other.test"}).status_code == 200
    yield proc
    proc.stop()


def _msg(subject: str, to: str = "agent@example.test", body: str = "hello there", **headers: str) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Sender <sender@remote.test>"
    m["To"] = to
    m["Subject"] = subject
    for k, v in headers.items():
        m[k.replace("_", "-")] = v
    m.set_content(body)
    return m


def _send(server: MxdProcess, msg: EmailMessage, rcpts: list[str] | None = None) -> dict:
    with smtplib.SMTP("127.0.0.1", server.mx_port, timeout=10) as s:
        return s.send_message(msg, from_addr="sender@remote.test", to_addrs=rcpts or [msg["To"]])


def _find(server: MxdProcess, subject: str, mailbox: str = "agent@example.test", count: int = 1,
          timeout: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in server.messages(mailbox) if m["subject"] == subject]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_ehlo_advertises_extensions(server):
    c = RawSMTP("127.0.0.1", server.mx_port)
    assert c.banner.startswith("220 mx.example.test")
    ehlo = c.cmd("EHLO client.test")
    for ext in ("SIZE 200000", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS"):
        assert f"250-{ext}" in ehlo or f"250 {ext}" in ehlo, ehlo
    c.close()


def test_the_mx_offers_no_auth_even_over_tls(server):
    c = RawSMTP("127.0.0.1", server.mx_port)
    c.cmd("EHLO client.test")
    assert c.cmd("STARTTLS").startswith("220")
    c.starttls()
    ehlo = c.cmd("EHLO client.test")
    assert "AUTH" not in ehlo, ehlo
    assert c.cmd("AUTH PLAIN AGFAYg==").startswith("502 5.5.1")
    c.close()


def test_smtplib_delivers_and_api_reads_it(server):
    _send(server, _msg("smtplib hello", body="the body text\n"))
    [summary] = _find(server, "smtplib hello")
    assert summary["from"] == {"name": "Sender", "address": "sender@remote.test"}
    assert summary["to"] == [{"name": "", "address": "agent@example.test"}]
    detail = server.api("GET", f"/api/messages/{summary['id']}").json()
    assert detail["text"].strip() == "the body text"
    assert detail["thread_id"].startswith("thr_")
    assert detail["envelope"] == {"mail_from": "sender@remote.test", "rcpt_to": "agent@example.test"}
    assert detail["parse_errors"] == []
    assert "mx.example.test" in detail["authentication_results"]
    raw = server.api("GET", f"/api/messages/{summary['id']}/raw")
    assert raw.headers["content-type"].startswith("message/rfc822")
    assert raw.content.startswith(b"Authentication-Results: mx.example.test")
    assert b"Received: from " in raw.content and b"by mx.example.test (mxd) with ESMTP id inb_" in raw.content
    assert b"Subject: smtplib hello\r\n" in raw.content


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
def test_swaks_delivers(server):
    out = subprocess.run(["swaks", "--server", f"127.0.0.1:{server.mx_port}", "--to", "agent@example.test",
                          "--from", "swaks@remote.test", "--header", "Subject: via swaks", "--body", "swaks body"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 OK queued as inb_" in out.stdout
    [m] = _find(server, "via swaks")
    assert server.api("GET", f"/api/messages/{m['id']}").json()["text"].strip() == "swaks body"


def test_plus_alias_and_catchall_routing(server):
    _send(server, _msg("plus tag", to="Agent+Orders@example.test"))
    [m] = _find(server, "plus tag")
    assert m["plus_tag"] == "Orders"
    _send(server, _msg("to alias", to="sales@example.test"))
    assert len(_find(server, "to alias", "sales1@example.test")) == 1
    assert len(_find(server, "to alias", "sales2@example.test")) == 1
    _send(server, _msg("to catchall", to="whoever@other.test"))
    assert len(_find(server, "to catchall", "catch@other.test")) == 1
    _send(server, _msg("to postmaster", to="abuse@example.test"))
    assert len(_find(server, "to postmaster", "postmaster@example.test")) == 1


@pytest.mark.parametrize("rcpt, expected", [
    ("<nobody@example.test>", codes.UNKNOWN_USER),
    ("<victim@foreign.test>", codes.RELAY_DENIED),
    ("<victim%foreign.test@example.test>", codes.RELAY_DENIED),
    ("<@example.test:victim@foreign.test>", codes.RELAY_DENIED),
    ("<@foreign.test:agent@example.test>", codes.RELAY_DENIED),
    ('<"victim@foreign.test"@example.test>', codes.RELAY_DENIED),
    ("<victim!foreign.test@example.test>", codes.RELAY_DENIED),
    ("<agent@[127.0.0.1]>", codes.RELAY_DENIED),
    ("<AGENT@Example.TEST>", codes.RECIPIENT_OK),
    ("<agent@example.test.>", "553 5.1.3 Error: malformed address"),
])
def test_rcpt_checks_and_no_relay(server, rcpt, expected):
    c = RawSMTP("127.0.0.1", server.mx_port)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<s@remote.test>").startswith("250")
    assert c.cmd(f"RCPT TO:{rcpt}") == expected
    c.cmd("QUIT")
    c.close()


def test_relay_attempt_stores_nothing(server):
    before = len(server.messages())
    c = RawSMTP("127.0.0.1", server.mx_port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<s@remote.test>")
    assert c.cmd("RCPT TO:<victim@foreign.test>") == codes.RELAY_DENIED
    assert c.cmd("DATA").startswith("503")
    c.close()
    time.sleep(0.3)
    assert len(server.messages()) == before


SMUGGLING = [b"\n.\n", b"\r.\r", b"\r\n.\r", b"\n.\r\n", b"\r.\r\n"]


@pytest.mark.parametrize("ending", SMUGGLING, ids=[repr(e) for e in SMUGGLING])
def test_smtp_smuggling_is_not_a_second_message(server, ending):
    subject = f"smuggle {SMUGGLING.index(ending)}"
    c = RawSMTP("127.0.0.1", server.mx_port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<s@remote.test>")
    c.cmd("RCPT TO:<agent@example.test>")
    assert c.cmd("DATA").startswith("354")
    smuggled = (b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nevil\r\n")
    c.send(f"Subject: {subject}\r\n\r\nfirst part".encode() + ending + smuggled + b".\r\n")
    reply = c.reply()
    assert reply.startswith("250 2.0.0 OK queued as"), reply
    c.cmd("QUIT")
    c.close()
    [m] = _find(server, subject)
    raw = server.api("GET", f"/api/messages/{m['id']}/raw").content
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert b"MAIL FROM:<admin@example.test>" in body           # kept as text of the one message
    assert b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b"")
    time.sleep(0.3)
    assert [x for x in server.messages("bob@example.test") if x["subject"] == "smuggled"] == []


def test_starttls_command_injection_discarded(server):
    c = RawSMTP("127.0.0.1", server.mx_port)
    c.cmd("EHLO client.test")
    c.send("STARTTLS\r\nMAIL FROM:<injected@remote.test>\r\n")
    assert c.reply().startswith("220")
    c.starttls()
    # The injected MAIL must not survive the upgrade: RCPT now finds no transaction (or no EHLO).
    assert c.cmd("RCPT TO:<agent@example.test>").startswith("503")
    ehlo = c.cmd("EHLO client.test")
    assert "STARTTLS" not in ehlo
    assert c.cmd("MAIL FROM:<s@remote.test>").startswith("250")
    assert c.cmd("RCPT TO:<agent@example.test>").startswith("250")
    assert c.cmd("DATA").startswith("354")
    c.send(b"Subject: over tls\r\n\r\nsecret\r\n.\r\n")
    assert c.reply().startswith("250")
    c.close()
    [m] = _find(server, "over tls")
    raw = server.api("GET", f"/api/messages/{m['id']}/raw").content
    assert b"with ESMTPS id" in raw


def test_oversized_message_and_lines(server):
    c = RawSMTP("127.0.0.1", server.mx_port)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<s@remote.test> SIZE=300000").startswith("552")
    assert c.cmd("MAIL FROM:<s@remote.test>").startswith("250")
    c.cmd("RCPT TO:<agent@example.test>")
    c.cmd("DATA")
    c.send(b"Subject: too big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 250 + b".\r\n")
    assert c.reply().startswith("552")
    assert c.cmd("MAIL FROM:<s@remote.test>").startswith("250")
    c.cmd("RCPT TO:<agent@example.test>")
    c.cmd("DATA")
    c.send(b"Subject: long line\r\n\r\n" + b"y" * 1200 + b"\r\n.\r\n")
    assert c.reply().startswith("500")
    assert c.cmd("MAIL FROM:<" + "a" * 600 + "@remote.test>").startswith("500")
    c.close()
    time.sleep(0.3)
    assert _find(server, "too big", timeout=0) == [] and _find(server, "long line", timeout=0) == []


def test_recipient_limit(server):
    c = RawSMTP("127.0.0.1", server.mx_port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<s@remote.test>")
    replies = [c.cmd("RCPT TO:<agent@example.test>") for _ in range(6)]
    assert replies[:5] == [codes.RECIPIENT_OK] * 5
    assert replies[5] == codes.TOO_MANY_RECIPIENTS
    c.close()


def test_error_budget_closes_session(server):
    c = RawSMTP("127.0.0.1", server.mx_port)
    c.cmd("EHLO client.test")
    replies = [c.cmd("RCPT TO:<x@example.test>") for _ in range(10)]
    assert all(r.startswith("503") for r in replies)
    assert c.reply() == codes.TOO_MANY_ERRORS
    assert c.closed()


def test_bare_line_endings_are_normalised(server):
    c = RawSMTP("127.0.0.1", server.mx_port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<s@remote.test>")
    c.cmd("RCPT TO:<agent@example.test>")
    c.cmd("DATA")
    c.send(b"Subject: bare endings\r\n\r\nline one\nline two\rline three\x00\r\n.\r\n")
    assert c.reply().startswith("250")
    c.close()
    [m] = _find(server, "bare endings")
    raw = server.api("GET", f"/api/messages/{m['id']}/raw").content
    assert raw.endswith(b"\r\n\r\nline one\r\nline two\r\nline three\r\n")


def test_broken_mime_is_kept_raw_and_flagged(server):
    c = RawSMTP("127.0.0.1", server.mx_port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<s@remote.test>")
    c.cmd("RCPT TO:<agent@example.test>")
    c.cmd("DATA")
    body = (b"Subject: broken mime\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"zzz\"\r\n\r\n"
            b"--zzz\r\nContent-Type: text/plain; charset=no-such-charset\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"!!!not base64!!!\r\n")
    c.send(body + b".\r\n")
    assert c.reply().startswith("250")
    c.close()
    [m] = _find(server, "broken mime")
    detail = server.api("GET", f"/api/messages/{m['id']}").json()
    assert detail["parse_errors"], detail
    raw = server.api("GET", f"/api/messages/{m['id']}/raw").content
    assert raw.endswith(body)


def test_reply_before_parent_share_a_thread(server):
    reply = _msg("Re: planning", body="reply", Message_ID="<r1@remote.test>", In_Reply_To="<p1@remote.test>",
                 References="<p1@remote.test>")
    _send(server, reply)
    _find(server, "Re: planning")
    _send(server, _msg("planning", body="parent", Message_ID="<p1@remote.test>"))
    [parent] = _find(server, "planning")
    [child] = _find(server, "Re: planning")
    assert parent["thread_id"] == child["thread_id"]
    thread = server.api("GET", f"/api/threads/{parent['thread_id']}").json()
    assert thread["message_count"] == 2 and thread["subject"] == "planning"
    assert [m["subject"] for m in thread["messages"]] == ["Re: planning", "planning"] or \
        {m["subject"] for m in thread["messages"]} == {"planning", "Re: planning"}


def test_multiple_recipients_one_transaction(server):
    msg = _msg("two boxes")
    _send(server, msg, rcpts=["agent@example.test", "bob@example.test"])
    assert len(_find(server, "two boxes", "agent@example.test")) == 1
    assert len(_find(server, "two boxes", "bob@example.test")) == 1


def test_search_finds_body_words(server):
    _send(server, _msg("quarterly numbers", body="the zanzibar invoice is attached"))
    _find(server, "quarterly numbers")
    r = server.api("GET", "/api/messages/search", params={"q": "zanzibar"})
    assert r.status_code == 200
    assert [m["subject"] for m in r.json()["data"]] == ["quarterly numbers"]
    r = server.api("GET", "/api/messages/search", params={"q": 'subject:quarterly "NOT" AND OR ( *'})
    assert r.status_code == 200


def test_per_ip_connection_limit(tmp_path):
    proc = MxdProcess(tmp_path / "data", env={"MXD_MAX_CONNECTIONS_PER_IP": "2"})
    proc.init()
    proc.start()
    try:
        a = RawSMTP("127.0.0.1", proc.mx_port)
        b = RawSMTP("127.0.0.1", proc.mx_port)
        c = RawSMTP("127.0.0.1", proc.mx_port)
        assert a.banner.startswith("220") and b.banner.startswith("220")
        assert c.banner == codes.TOO_MANY_CONNECTIONS
        a.cmd("QUIT")
        a.close()
        time.sleep(0.2)
        d = RawSMTP("127.0.0.1", proc.mx_port)
        assert d.banner.startswith("220")
        for x in (b, c, d):
            x.close()
    finally:
        proc.stop()


def test_reject_mode_refuses_bare_line_endings(tmp_path):
    proc = MxdProcess(tmp_path / "data", env={"MXD_DATA_LINE_ENDINGS": "reject"})
    proc.init()
    proc.start()
    try:
        proc.api("POST", "/api/mailboxes", json={"address": "agent@example.test"})
        c = RawSMTP("127.0.0.1", proc.mx_port)
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<s@remote.test>")
        c.cmd("RCPT TO:<agent@example.test>")
        c.cmd("DATA")
        c.send(b"Subject: bare\r\n\r\nline\nline\r\n.\r\n")
        assert c.reply() == codes.BAD_LINE_ENDINGS
        c.close()
    finally:
        proc.stop()


def test_sigterm_finishes_open_transaction(tmp_path):
    proc = MxdProcess(tmp_path / "data")
    proc.init()
    proc.start()
    proc.api("POST", "/api/mailboxes", json={"address": "agent@example.test"})
    idle = RawSMTP("127.0.0.1", proc.mx_port)
    busy = RawSMTP("127.0.0.1", proc.mx_port)
    busy.cmd("EHLO client.test")
    busy.cmd("MAIL FROM:<s@remote.test>")
    busy.cmd("RCPT TO:<agent@example.test>")
    proc.proc.send_signal(15)
    time.sleep(0.5)
    assert idle.reply() == codes.SHUTTING_DOWN
    assert busy.cmd("DATA").startswith("354")
    busy.send(b"Subject: during shutdown\r\n\r\nbody\r\n.\r\n")
    assert busy.reply().startswith("250")
    busy.close()
    assert proc.proc.wait(20) == 0
    proc.stop()
    proc.start()
    try:
        assert [m["subject"] for m in proc.wait_messages(1, "agent@example.test")] == ["during shutdown"]
    finally:
        proc.stop()


def test_dot_stuffing_and_pipelined_commands_after_data(server):
    c = RawSMTP("127.0.0.1", server.mx_port)
    c.cmd("EHLO client.test")
    # The whole transaction and the next one in one write (RFC 2920 PIPELINING).
    c.send(b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<agent@example.test>\r\nDATA\r\n")
    assert [c.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
    c.send(b"Subject: dots\r\n\r\n..leading dot\r\n..\r\nend.\r\n.\r\n"
           b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<agent@example.test>\r\nDATA\r\n")
    assert [c.reply()[:3] for _ in range(4)] == ["250", "250", "250", "354"]
    c.send(b".\r\n")                                  # an empty message is still a message
    assert c.reply().startswith("250")
    assert c.cmd("QUIT").startswith("221")
    c.close()
    [m] = _find(server, "dots")
    raw = server.api("GET", f"/api/messages/{m['id']}/raw").content
    assert raw.endswith(b"Subject: dots\r\n\r\n.leading dot\r\n.\r\nend.\r\n")
