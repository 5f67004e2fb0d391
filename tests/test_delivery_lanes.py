"""Delivery lanes (mxd.delivery.scheduler): a connection kept open between messages, end to end.

Uses the world of tests/test_delivery.py (a real mxd, its DNS server, aiosmtpd peers on loopback).
"""
from __future__ import annotations

import time

from tests.support.daemon import wait_for
from tests.test_delivery import Peer, dns, events, mx_port, mxd_factory, send, wait_status  # noqa: F401 - fixtures


def test_a_connection_the_server_closed_while_idle_costs_no_retry(mxd_factory, mx_port):
    """The peer ends sessions idle for 0.5 s (aiosmtpd answers 421 and closes); mxd keeps an idle
    connection for 2 s. The next message must go out over a new connection at its first attempt,
    not be deferred because the old one was gone."""
    peer = Peer("127.0.0.9", mx_port)
    peer.controller.SMTP_kwargs["timeout"] = 0.5
    peer.start()
    try:
        m = mxd_factory()
        first = send(m, "user1@many.test", "first")
        wait_status(m, first["id"], "delivered", 30)
        assert wait_for(lambda: peer.per_connection or None, 10), "the idle session was not ended by the peer"
        time.sleep(0.5)
        second = send(m, "user2@many.test", "second")
        row = wait_status(m, second["id"], "delivered", 30)
        assert row["attempts"] == 1, row
        assert [t for t, _ in events(m, second["id"])] == ["message.queued", "message.delivered"]
        assert peer.connections == 2 and len(peer.accepted) == 2
    finally:
        peer.stop()


def test_tls_required_no_is_read_from_the_header_only() -> None:
    """RFC 8689 5: the header field, in any case, with spaces; never the body, never another value."""
    from mxd.delivery.scheduler import tls_optional
    assert tls_optional(b"Subject: report\r\nTLS-Required: No\r\n\r\nbody\r\n")
    assert tls_optional(b"DKIM-Signature: v=1\r\ntls-required:   no \r\nSubject: x\r\n\r\nbody")
    assert not tls_optional(b"Subject: report\r\n\r\nTLS-Required: No\r\n")          # in the body
    assert not tls_optional(b"Subject: report\r\nTLS-Required: Yes\r\n\r\nbody")
    assert not tls_optional(b"Subject: report\r\nX-TLS-Required: No\r\n\r\nbody")
    assert not tls_optional(b"Subject: TLS-Required: No\r\n\r\nbody")
