"""Threat: a client holds HTTP connections without finishing a request (slowloris).

uvicorn's h11 protocol times out only an idle connection after an answer: a connection that sends
nothing, a request head sent a byte at a time, or a body that stops half-way is kept as long as the
client likes, so a few hundred sockets hold the server's descriptors and tasks. mxd closes a connection
whose request head is not complete `http_header_timeout` seconds after it began, or that stays silent
that long while it owes a body, and an idle kept-alive connection after `http_keepalive_timeout`.
Measured here with raw sockets against a daemon whose timeouts are 1 s.
"""
from __future__ import annotations

import select
import socket
import time

import pytest

from tests.support.daemon import MxdProcess

LIMIT = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("http-timeouts") / "data",
                      env={"MXD_HTTP_HEADER_TIMEOUT": str(LIMIT), "MXD_HTTP_KEEPALIVE_TIMEOUT": str(LIMIT)})
    proc.init()
    proc.start()
    yield proc
    proc.stop()


def _connect(proc: MxdProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proc.http_port), timeout=10)


def _closed_after(sock: socket.socket, most: float, drip: bytes = b"", every: float = 0.2) -> tuple[float, bytes]:
    """Seconds until the server closes `sock` (sending `drip` every `every` s meanwhile) and what it said;
    fails when the connection is still open after `most` seconds."""
    started, said = time.monotonic(), b""
    while time.monotonic() - started < most:
        ready, _, _ = select.select([sock], [], [], every)
        if ready:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return time.monotonic() - started, said
            said += chunk
        elif drip:
            try:
                sock.sendall(drip)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started, said
    pytest.fail(f"the connection is still open after {most} s (server said {said[:80]!r})")


def test_a_silent_connection_is_closed(server):
    with _connect(server) as sock:
        took, said = _closed_after(sock, LIMIT + 3)
    assert LIMIT - 0.3 < took and said == b""


def test_a_request_head_sent_slowly_is_cut_off(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        took, said = _closed_after(sock, LIMIT + 3, drip=b"X-A: b\r\n")       # a header every 0.2 s, forever
    assert took < LIMIT + 1.5 and said.startswith(b"HTTP/1.1 408 ")


def test_a_stalled_body_is_cut_off(server):
    with _connect(server) as sock:
        sock.sendall(b"POST /api/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + server.admin_token.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":")
        took, _ = _closed_after(sock, LIMIT + 3)
    assert took < LIMIT + 1.5


def test_an_idle_kept_alive_connection_is_closed(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        took, said = _closed_after(sock, LIMIT + 3)
    assert said.startswith(b"HTTP/1.1 200 ") and took < LIMIT + 1.5


def test_a_slow_but_steady_body_is_served(server):
    """The pause allowed is between chunks, not for the whole body: a slow uploader is not cut off."""
    body = b'{"name": "slow", "scopes": ["read"]}'
    with _connect(server) as sock:
        sock.sendall(b"POST /api/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + server.admin_token.encode()
                     + b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n")
        for i in range(0, len(body), 4):              # 9 chunks, 0.4 s apart: 3.6 s in all
            time.sleep(0.4)
            sock.sendall(body[i:i + 4])
        _, said = _closed_after(sock, 10)
    assert said.startswith(b"HTTP/1.1 201 "), said[:200]
