"""A client that stops sending is still owed its replies (RFC 5321): raw byte sequences of real clients.

Exim pipelines QUIT behind the final dot of DATA and then half-closes its socket (over TLS it sends
close_notify first). mxd must answer 250 for DATA once the message is durable, then 221, then close;
a message cut off in the middle of DATA is neither stored nor acknowledged; a message whose 250 was
lost and that the client sends again is not stored twice. Both listeners, plain, STARTTLS and
implicit TLS.
"""
from __future__ import annotations

import socket
import sqlite3
import ssl
import struct
import time
from pathlib import Path

import pytest

from tests.support.daemon import MxdProcess, wait_for
from tests.support.smtp import insecure_tls

pytestmark = pytest.mark.slow


class Conn:
    """A raw client over TCP, optionally TLS through memory BIOs so that it can half-close TLS
    (close_notify, then a TCP FIN) and go on reading, as Exim does."""

    def __init__(self, port: int, *, implicit_tls: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls: ssl.SSLObject | None = None
        self.buf = b""
        if implicit_tls:
            self._handshake()

    # ------------------------------------------------------------ transport
    def _handshake(self) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = insecure_tls().wrap_bio(self.incoming, self.outgoing, server_hostname="mx.example.test")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                assert data, "closed during the TLS handshake"
                self.incoming.write(data)
        self._flush()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.sendall(data)
        else:
            self.tls.write(data)
            self._flush()

    def _recv(self) -> bytes:
        """Some bytes from the server, b"" once it has closed."""
        if self.tls is None:
            return self.sock.recv(65536)
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    return b""
                self.incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    def half_close(self) -> None:
        """Stop sending: close_notify over TLS, then the TCP FIN."""
        if self.tls is not None:
            try:
                self.tls.unwrap()
            except ssl.SSLWantReadError:
                pass
            self._flush()
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Vanish: close with a TCP RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    # ------------------------------------------------------------ SMTP
    def reply(self) -> str:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self._recv()
                if not chunk:
                    raise ConnectionError(f"closed; partial {self.buf!r}, replies so far {lines}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    def cmd(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def rest(self) -> list[str]:
        """Every reply line until the server closes."""
        while True:
            chunk = self._recv()
            if not chunk:
                break
            self.buf += chunk
        return [line.decode() for line in self.buf.split(b"\r\n") if line]

    def starttls(self) -> None:
        assert self.cmd("STARTTLS").startswith("220")
        self._handshake()

    def close(self) -> None:
        self.sock.close()


def message(subject: str, sender: str = "a@exim.test", to: str = "agent@example.test",
            message_id: str | None = None) -> bytes:
    mid = message_id or f"<{subject.replace(' ', '-')}.{time.monotonic_ns()}@exim.test>"
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
            f"Date: Thu, 03 Dec 2026 08:00:00 +0000\r\n\r\nbody of {subject}\r\n").encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> MxdProcess:
    proc = MxdProcess(tmp_path_factory.mktemp("halfclose") / "data")
    proc.init()
    proc.start()
    assert proc.api("POST", "/api/mailboxes", json={"address": "agent@example.test"}).status_code == 201
    assert proc.api("POST", "/api/mailboxes", json={"address": "bob@example.test"}).status_code == 201
    assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
    proc.send_token = proc.token(["send"], ["agent@example.test"])
    yield proc
    proc.stop()


def copies(server: MxdProcess, subject: str, mailbox: str = "agent@example.test") -> int:
    return sum(1 for m in server.messages(mailbox) if m["subject"] == subject)


def stored_once(server: MxdProcess, subject: str, mailbox: str = "agent@example.test") -> float:
    """Seconds until the message was filed; fails unless exactly one copy is there."""
    start = time.monotonic()
    assert wait_for(lambda: copies(server, subject, mailbox) >= 1, timeout=20), f"{subject} never arrived"
    took = time.monotonic() - start
    time.sleep(0.5)
    assert copies(server, subject, mailbox) == 1
    return took


def exim_transaction(conn: Conn, data: bytes, rcpt: str = "agent@example.test") -> list[str]:
    """Exim's byte sequence: EHLO, MAIL+RCPT+DATA pipelined, the message with QUIT behind the dot,
    then a half-close; returns every reply after the 354."""
    assert conn.cmd("EHLO exim.test").startswith("250")
    conn.send(f"MAIL FROM:<a@exim.test> SIZE={len(data)}\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
    assert conn.reply().startswith("250 2.1.0")
    assert conn.reply().startswith("250 2.1.5")
    assert conn.reply().startswith("354")
    conn.send(data + b".\r\nQUIT\r\n")
    conn.half_close()
    return conn.rest()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_mx_answers_data_and_quit_after_a_half_close(server, tls):
    conn = Conn(server.mx_port)
    assert conn.reply().startswith("220")
    if tls:
        assert conn.cmd("EHLO exim.test").startswith("250")
        conn.starttls()
    subject = f"exim half-close {'tls' if tls else 'plain'}"
    replies = exim_transaction(conn, message(subject))
    conn.close()
    assert len(replies) == 2, replies
    assert replies[0].startswith("250 2.0.0 OK queued as inb_")
    assert replies[1].startswith("221")
    # the commit woke the pipeline (its fallback poll is 5 s)
    assert stored_once(server, subject) < 4.0


def _submission(server: MxdProcess, implicit: bool) -> Conn:
    conn = Conn(server.submissions_port if implicit else server.submission_port, implicit_tls=implicit)
    assert conn.reply().startswith("220")
    assert conn.cmd("EHLO client.test").startswith("250")
    if not implicit:
        conn.starttls()
        assert conn.cmd("EHLO client.test").startswith("250")
    import base64
    plain = base64.b64encode(b"\0agent@example.test\0" + server.send_token.encode()).decode()
    assert conn.cmd(f"AUTH PLAIN {plain}").startswith("235")
    return conn


@pytest.mark.parametrize("implicit", [False, True], ids=["587-starttls", "465-implicit"])
def test_submission_answers_data_and_quit_after_a_tls_half_close(server, implicit):
    conn = _submission(server, implicit)
    subject = f"submission half-close {'465' if implicit else '587'}"
    data = message(subject, sender="agent@example.test", to="bob@example.test")
    conn.send(b"MAIL FROM:<agent@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert conn.reply().startswith("250")
    assert conn.reply().startswith("250")
    assert conn.reply().startswith("354")
    conn.send(data + b".\r\nQUIT\r\n")
    conn.half_close()
    replies = conn.rest()
    conn.close()
    assert len(replies) == 2, replies
    assert replies[0].startswith("250 2.0.0 OK queued as msg_")
    assert replies[1].startswith("221")
    stored_once(server, subject, "bob@example.test")


def test_rset_mail_rcpt_data_in_one_packet(server):
    conn = Conn(server.mx_port)
    assert conn.reply().startswith("220")
    assert conn.cmd("EHLO pipeliner.test").startswith("250")
    subject = "one packet"
    conn.send(b"RSET\r\nMAIL FROM:<a@pipeliner.test>\r\nRCPT TO:<agent@example.test>\r\nDATA\r\n")
    assert [conn.reply()[:3] for _ in range(4)] == ["250", "250", "250", "354"]
    conn.send(message(subject) + b".\r\nRSET\r\nMAIL FROM:<b@pipeliner.test>\r\nRCPT TO:<nobody@example.test>\r\n"
              b"QUIT\r\n")
    conn.half_close()
    replies = conn.rest()
    conn.close()
    assert [r[:3] for r in replies] == ["250", "250", "250", "550", "221"], replies
    stored_once(server, subject)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_half_close_in_the_middle_of_data_stores_nothing(server, tls):
    conn = Conn(server.mx_port)
    assert conn.reply().startswith("220")
    assert conn.cmd("EHLO cut.test").startswith("250")
    if tls:
        conn.starttls()
        assert conn.cmd("EHLO cut.test").startswith("250")
    subject = f"cut in the middle {tls}"
    conn.send(b"MAIL FROM:<a@cut.test>\r\nRCPT TO:<agent@example.test>\r\nDATA\r\n")
    assert [conn.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
    conn.send(message(subject)[:-10])
    conn.half_close()
    replies = conn.rest()           # the server closes without acknowledging anything
    conn.close()
    assert replies == []
    # a complete message sent afterwards is filed, and the cut one never is
    after = f"after the cut {tls}"
    conn = Conn(server.mx_port)
    conn.reply()
    assert exim_transaction(conn, message(after))[0].startswith("250")
    conn.close()
    stored_once(server, after)
    assert copies(server, subject) == 0


def _events(server: MxdProcess, type_: str) -> list[tuple]:
    with sqlite3.connect(Path(server.data_dir) / "mxd.db") as db:
        return db.execute('SELECT "data" FROM "event" WHERE "type" = ?', (type_,)).fetchall()


def test_a_retry_after_a_lost_reply_is_not_stored_twice(server):
    subject = "lost reply"
    data = message(subject, message_id="<lost-reply.1@exim.test>")
    conn = Conn(server.mx_port)
    conn.reply()
    assert conn.cmd("EHLO exim.test").startswith("250")
    conn.send(b"MAIL FROM:<a@exim.test>\r\nRCPT TO:<agent@example.test>\r\nDATA\r\n")
    assert [conn.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
    conn.send(data + b".\r\n")
    conn.reset()                    # gone before the 250: the commit still completes
    assert wait_for(lambda: copies(server, subject) == 1, timeout=20)
    assert wait_for(lambda: _events(server, "inbound.unacknowledged"), timeout=10), "no inbound.unacknowledged event"
    # the sender retries: 250 with the first copy's id, nothing stored again
    first = _events(server, "inbound.unacknowledged")[0][0]
    conn = Conn(server.mx_port)
    conn.reply()
    replies = exim_transaction(conn, data)
    conn.close()
    assert replies[0].startswith("250 2.0.0 OK queued as inb_")
    assert replies[0].split()[-1] in first
    time.sleep(1.0)
    assert copies(server, subject) == 1
    # the same Message-ID to another recipient, or from another sender, is another transmission
    conn = Conn(server.mx_port)
    conn.reply()
    assert exim_transaction(conn, data, rcpt="bob@example.test")[0].startswith("250")
    conn.close()
    stored_once(server, subject, "bob@example.test")


def test_a_submission_sent_again_is_not_sent_twice(server):
    """An agent whose 250 was lost sends the same message again: the first acceptance stands."""
    subject = "submitted twice"
    data = message(subject, sender="agent@example.test", to="bob@example.test",
                   message_id="<submitted-twice.1@agent.test>")
    ids = []
    for _ in range(2):
        conn = _submission(server, implicit=False)
        conn.send(b"MAIL FROM:<agent@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        assert [conn.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
        conn.send(data + b".\r\n")
        reply = conn.reply()
        assert reply.startswith("250 2.0.0 OK queued as msg_"), reply
        ids.append(reply.split()[-1])
        conn.close()
    assert ids[0] == ids[1]
    stored_once(server, subject, "bob@example.test")
    assert copies(server, subject) == 1            # one sent copy in the sender's mailbox
