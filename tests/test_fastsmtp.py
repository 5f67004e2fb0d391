"""mxd.smtpserver.fast.FastSMTP's DATA reader on a real socket: the end of data is the first <CRLF>.<CRLF>
(the DATA line's CRLF included), however the bytes are split into packets, and a command pipelined
right after the terminator is answered, not swallowed."""
from __future__ import annotations

import random
import socket
import time

import pytest
from aiosmtpd.controller import Controller

from mxd.smtpserver.fast import FastSMTP


class Recorder:
    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.contents.append(envelope.original_content)
        return "250 2.0.0 stored"


class FastController(Controller):
    def factory(self) -> FastSMTP:
        return FastSMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture(scope="module")
def server():
    handler = Recorder()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = FastController(handler, hostname="127.0.0.1", port=port, data_size_limit=10_000)
    controller.start()
    yield handler, port
    controller.stop()


def expected(stream: bytes) -> bytes:
    """What the terminator rule gives: up to the first CRLF.CRLF of CRLF + stream, leading dots removed."""
    end = (b"\r\n" + stream).index(b"\r\n.\r\n")
    body = (b"\r\n" + stream)[2:end + 2]
    return b"\r\n".join(line[1:] if line[:1] == b"." else line for line in body.split(b"\r\n"))


def _read_reply(sock: socket.socket) -> bytes:
    buf = b""
    while not (buf.endswith(b"\r\n") and len(buf.split(b"\r\n")[-2]) >= 4 and buf.split(b"\r\n")[-2][3:4] == b" "):
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def _read_lines(sock: socket.socket, count: int) -> bytes:
    """At least `count` reply lines (CRLF-ended) from `sock`."""
    replies = b""
    while replies.count(b"\r\n") < count:
        chunk = sock.recv(4096)
        assert chunk, replies
        replies += chunk
    return replies


BODIES = [
    b".\r\n",                                                  # empty message
    b"a.\r\n.\r\n",                                            # a line ending with a dot
    b"\r\n.\r\n",                                              # one empty line
    b"..leading dot\r\n...two\r\n.\r\n",                       # transparency dots
    b"x\n.\r\nmore\r\n.\r\n",                                  # a bare LF before a dot does not end it
    b"y\r.\r\nz\r\n.\r\n",                                     # nor a bare CR
    b"The quick brown fox.\r\n" * 60 + b".\r\n",               # many lines ending in a dot
    b"end .\r\n.\r.\r\n\r\n.\r\n",                             # near misses before the real end
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("split", ["whole", "bytes", "random"])
def test_data_ends_at_the_first_terminator(server, body, split) -> None:
    handler, port = server
    before = len(handler.contents)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert _read_reply(sock).startswith(b"220")
        for command, code in ((b"EHLO client.test\r\n", b"250"), (b"MAIL FROM:<a@example.org>\r\n", b"250"),
                              (b"RCPT TO:<b@example.test>\r\n", b"250"), (b"DATA\r\n", b"354")):
            sock.sendall(command)
            assert _read_reply(sock).startswith(code), command
        wire = body + b"NOOP\r\n"                               # pipelined right after the terminator
        rng = random.Random(len(body))
        if split == "whole":
            pieces = [wire]
        elif split == "bytes":
            pieces = [wire[i:i + 1] for i in range(len(wire))]
        else:
            pieces, i = [], 0
            while i < len(wire):
                n = rng.randint(1, 7)
                pieces.append(wire[i:i + n])
                i += n
        for piece in pieces:
            sock.sendall(piece)
            if split != "whole":
                time.sleep(0.0005)
        replies = _read_lines(sock, 2)
        assert replies.startswith(b"250 2.0.0 stored\r\n") and replies.split(b"\r\n")[1].startswith(b"250"), replies
        sock.sendall(b"QUIT\r\n")
    assert handler.contents[before:] == [expected(body)]


def test_too_much_data_is_drained_and_refused(server) -> None:
    handler, port = server
    before = len(handler.contents)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert _read_reply(sock).startswith(b"220")
        for command in (b"EHLO client.test\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.test>\r\n",
                        b"DATA\r\n"):
            sock.sendall(command)
            _read_reply(sock)
        sock.sendall(b"0123456789" * 3000 + b"\r\n.\r\nNOOP\r\n")
        replies = _read_lines(sock, 2)
        assert replies.startswith(b"552") and replies.split(b"\r\n")[1].startswith(b"250"), replies
    assert len(handler.contents) == before
