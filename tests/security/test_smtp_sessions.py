"""Threat: one client exhausts the submission listeners or guesses tokens over SMTP AUTH.

Submission (587 and 465) has the MX's connection limits (per client IP and in all, one budget for
both ports) and its idle timeout; a session gets a few failed AUTH attempts and then 421; failures
are counted per client IP (beyond the budget AUTH gets 421 at once, even with a good token) and each
one is an audit row.
"""
from __future__ import annotations

import base64
import socket
import ssl

import pytest

from tests.support.daemon import MxdProcess
from tests.support.smtp import RawSMTP, insecure_tls

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> MxdProcess:
    proc = MxdProcess(tmp_path_factory.mktemp("smtp-sessions") / "data",
                      env={"MXD_MAX_CONNECTIONS_PER_IP": "4", "MXD_MAX_AUTH_FAILURES": "3",
                           "MXD_AUTH_FAILURES_PER_IP": "5", "MXD_SMTP_TIMEOUT": "3"})
    proc.init()
    proc.start()
    assert proc.api("POST", "/api/mailboxes", json={"address": "alice@example.test"}).status_code == 201
    proc.send_token = proc.token(["send"], ["alice@example.test"])
    yield proc
    proc.stop()


def _plain(user: str, secret: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{secret}".encode()).decode()


def _implicit(port: int) -> ssl.SSLSocket:
    return insecure_tls().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                      server_hostname="mx.example.test")


def _banner(sock: socket.socket) -> bytes:
    return sock.recv(1024)


def test_submission_connections_per_ip_are_limited_across_both_ports(server):
    held = [socket.create_connection(("127.0.0.1", server.submission_port), timeout=10) for _ in range(2)]
    held += [_implicit(server.submissions_port) for _ in range(2)]
    try:
        assert all(_banner(s).startswith(b"220") for s in held)
        extra = socket.create_connection(("127.0.0.1", server.submission_port), timeout=10)
        assert _banner(extra).startswith(b"421 4.7.0")
        extra.close()
        extra = _implicit(server.submissions_port)
        assert _banner(extra).startswith(b"421 4.7.0")
        extra.close()
    finally:
        for s in held:
            s.close()


def test_an_idle_submission_session_is_closed(server):
    client = RawSMTP("127.0.0.1", server.submission_port)
    assert client.banner.startswith("220")
    client.sock.settimeout(10)
    assert client.sock.recv(1024) == b""        # closed after smtp_timeout (3 s here) of silence
    client.close()


def test_auth_failures_close_the_session_then_block_the_address(server):
    client = RawSMTP("127.0.0.1", server.submission_port)
    client.cmd("EHLO guesser.test")
    assert client.cmd("STARTTLS").startswith("220")
    client.starttls()
    client.cmd("EHLO guesser.test")
    assert client.cmd(_plain("alice@example.test", "mxd_wrong1")).startswith("535")
    assert client.cmd(_plain("alice@example.test", "mxd_wrong2")).startswith("535")
    third = client.cmd(_plain("alice@example.test", "mxd_wrong3"))
    assert third.startswith("535")
    assert client.reply().startswith("421 4.7.0")
    assert client.closed()
    client.close()
    # two more failures reach the per-address budget (5): then AUTH is refused even with a good token
    for attempt in range(2):
        client = RawSMTP("127.0.0.1", server.submission_port)
        client.cmd("EHLO guesser.test")
        assert client.cmd("STARTTLS").startswith("220")
        client.starttls()
        client.cmd("EHLO guesser.test")
        assert client.cmd(_plain("alice@example.test", f"mxd_again{attempt}")).startswith("535")
        client.close()
    client = RawSMTP("127.0.0.1", server.submission_port)
    client.cmd("EHLO guesser.test")
    assert client.cmd("STARTTLS").startswith("220")
    client.starttls()
    client.cmd("EHLO guesser.test")
    assert client.cmd(_plain("alice@example.test", server.send_token)).startswith("421 4.7.0")
    client.close()
    rows = server.api("GET", "/api/audit", params={"action": "smtp.auth"}).json()["data"]
    assert len(rows) == 5
    assert {r["result"] for r in rows} == {"denied"}
    assert {r["actor"] for r in rows} == {"anonymous"}
    assert {r["target"] for r in rows} == {"alice@example.test"}
