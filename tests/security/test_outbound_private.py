"""Threat: whoever controls a recipient domain's DNS points its MX at loopback or at the LAN (directly, or
through an IPv6 form that carries such an IPv4 address, like 6to4), and mxd's delivery worker then opens
SMTP sessions to services on the mail host or its network: a relay that trusts local clients, mxd's own
listeners, an internal host that is not meant to be reachable from outside.

mxd refuses every non-public MX address (550 5.4.4, the message fails and bounces) unless the operator
sets outbound_allow_private; a smart host the operator configured is always used. The test daemon
allows private MXes by default (every test peer is on loopback), so these tests turn it off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.daemon import MxdProcess, free_port, wait_for
from tests.support.dnsserver import DNSServer
from tests.support.sink import MailSink

SENDER = "agent@example.test"
SINK_IP = "127.0.0.45"
ZONE = {
    "loop.test": {"MX": [(10, "mx.loop.test")]},
    "mx.loop.test": {"A": [SINK_IP]},
    "tunnel.test": {"MX": [(10, "mx.tunnel.test")]},
    "mx.tunnel.test": {"AAAA": ["2002:7f00:2d::1"]},          # 6to4 of 127.0.0.45
    "lan.test": {"A": ["10.9.8.7"]},                          # the implicit MX, on a private network
}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[MxdProcess, MailSink]]:
    sink = MailSink(SINK_IP, free_port(SINK_IP)).start()
    dns = DNSServer(ZONE)
    dns.start()
    proc = MxdProcess(tmp_path / "data", domains=["example.test"], env={
        "MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2", "MXD_OUTBOUND_MX_PORT": str(sink.port),
        "MXD_OUTBOUND_ALLOW_PRIVATE": "false", "MXD_RETRY_SCHEDULE": "1s", "MXD_DELAY_WARNING": "0"})
    proc.init()
    try:
        proc.start()
        assert proc.api("POST", "/api/mailboxes", json={"address": SENDER}).status_code == 201
        assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        yield proc, sink
    finally:
        proc.stop()
        dns.stop()
        sink.stop()


def _outcome(proc: MxdProcess, to: str) -> dict:
    r = proc.api("POST", "/api/send", json={"from": SENDER, "to": to, "subject": "probe", "text": "hello"})
    assert r.status_code == 202, r.text
    message_id = r.json()["id"]

    def done() -> dict | None:
        rows = proc.api("GET", f"/api/messages/{message_id}").json()["delivery"]
        return rows[0] if rows and rows[0]["status"] in ("failed", "delivered", "sent") else None
    row = wait_for(done, 60)
    assert row, "no outcome in time"
    return row


@pytest.mark.parametrize("to, why", [("bob@loop.test", f"{SINK_IP} (loopback)"),
                                     ("bob@tunnel.test", "6to4 of 127.0.0.45, loopback"),
                                     ("bob@lan.test", "10.9.8.7 (private)")])
def test_non_public_mx_is_refused(world, to: str, why: str) -> None:
    proc, sink = world
    row = _outcome(proc, to)
    assert row["status"] == "failed"
    assert row["last_reply"].startswith("550 5.4.4 no public address for ")
    assert why in row["last_reply"] and "outbound_allow_private" in row["last_reply"]
    assert sink.messages == []                           # nothing ever reached the loopback listener


def test_allowed_when_the_operator_says_so(tmp_path: Path) -> None:
    sink = MailSink(SINK_IP, free_port(SINK_IP)).start()
    dns = DNSServer(ZONE)
    dns.start()
    proc = MxdProcess(tmp_path / "data", domains=["example.test"], env={
        "MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2", "MXD_OUTBOUND_MX_PORT": str(sink.port),
        "MXD_OUTBOUND_ALLOW_PRIVATE": "true"})
    proc.init()
    try:
        proc.start()
        assert proc.api("POST", "/api/mailboxes", json={"address": SENDER}).status_code == 201
        assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        assert _outcome(proc, "bob@loop.test")["status"] == "delivered"
        assert len(sink.find("bob@loop.test")) == 1
    finally:
        proc.stop()
        dns.stop()
        sink.stop()


def test_the_smart_host_is_the_operators_choice(tmp_path: Path) -> None:
    """A smart host on loopback (a local relay) is used even with outbound_allow_private off."""
    sink = MailSink(SINK_IP, free_port(SINK_IP)).start()
    proc = MxdProcess(tmp_path / "data", domains=["example.test"], env={
        "MXD_SMART_HOST": f"{SINK_IP}:{sink.port}", "MXD_SMART_HOST_TLS": "none",
        "MXD_OUTBOUND_ALLOW_PRIVATE": "false"})
    proc.init()
    try:
        proc.start()
        assert proc.api("POST", "/api/mailboxes", json={"address": SENDER}).status_code == 201
        assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        assert _outcome(proc, "bob@lan.test")["status"] == "sent"            # the relay took it
        assert len(sink.find("bob@lan.test")) == 1
    finally:
        proc.stop()
        sink.stop()
