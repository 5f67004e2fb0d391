"""Outbound DANE end to end: a real mxd resolving through unbound (validating, trusting one signed zone served by
nsd) delivers to STARTTLS sinks on loopback whose certificates are, or are not, the ones the TLSA records name.

dane.test is signed; each recipient domain in it has one MX host, a sink of its own on 127.0.3.x (one port
for all, MXD_OUTBOUND_MX_PORT). plain.test is not signed. A deferred entry is not retried within a test.
"""
from __future__ import annotations

import hashlib
import ssl
from typing import Any, Iterator

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support.daemon import MxdProcess, start_daemon, wait_for
from tests.support.peers.dnssec import DnssecPeer, skip_unless_available
from tests.support.sink import MailSink

SENDER = "agent@example.test"
MX_PORT = 26325
UNLIMITED = {"MXD_DAILY_SEND_CAP": "100000", "MXD_RATE_PER_MAILBOX_PER_MINUTE": "100000",
             "MXD_RATE_PER_DOMAIN_PER_MINUTE": "100000", "MXD_RATE_PER_RECIPIENT_PER_HOUR": "100000"}
# recipient domain -> (MX host, its address, whether its sink offers STARTTLS)
HOSTS = {"ee.dane.test": ("mx-ee.dane.test", "127.0.3.1", True),
         "bad.dane.test": ("mx-bad.dane.test", "127.0.3.2", True),
         "ta.dane.test": ("mx-ta.dane.test", "127.0.3.3", True),
         "odd.dane.test": ("mx-odd.dane.test", "127.0.3.4", True),
         "oddclear.dane.test": ("mx-oddclear.dane.test", "127.0.3.5", False),
         "bogus.dane.test": ("mx-bogus.dane.test", "127.0.3.6", True),
         "plain.test": ("mx.plain.test", "127.0.3.7", True)}


def _spki_sha256(pem: bytes) -> str:
    key = x509.load_pem_x509_certificate(pem).public_key()
    return hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _cert_sha256(pem: bytes) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()


class World:
    def __init__(self, mxd: MxdProcess, sinks: dict[str, MailSink]) -> None:
        self.mxd, self.sinks = mxd, sinks

    def send(self, domain: str, subject: str, headers: dict[str, str] | None = None) -> str:
        r = self.mxd.api("POST", "/api/send", json={"from": SENDER, "to": f"bob@{domain}", "subject": subject,
                                                   "text": f"body of {subject}", **({"headers": headers} if headers else {})})
        assert r.status_code == 202, r.text
        return r.json()["recipients"][0]["queue_id"]

    def entry(self, queue_id: str, status: str, timeout: float = 30.0) -> dict:
        """The queue entry once its status is `status` (the API's /api/queue row, with "tls")."""
        last: dict[str, Any] = {}

        def check() -> dict | None:
            nonlocal last
            rows = self.mxd.api("GET", "/api/queue", params={"limit": 500}).json()["data"]
            last = next((row for row in rows if row["id"] == queue_id), {})
            return last if last.get("status") == status else None
        row = wait_for(check, timeout)
        assert row, f"queue entry not {status} after {timeout}s: {last}"
        return row


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    skip_unless_available()
    base = tmp_path_factory.mktemp("dane")
    root = trustme.CA()
    inter = root.create_child_ca()
    stranger = trustme.CA().issue_cert("mx-bad.dane.test")
    leaves = {host: inter.issue_cert(host) for host, _, _ in HOSTS.values()}
    ee_pem = leaves["mx-ee.dane.test"].cert_chain_pems[0].bytes()
    records = [f"{d}. MX 10 {host}." for d, (host, _, _) in HOSTS.items() if d.endswith("dane.test")]
    records += [f"{host}. A {ip}" for d, (host, ip, _) in HOSTS.items() if d.endswith("dane.test")]
    tlsa = lambda host, rdata: f"_{MX_PORT}._tcp.{host}. TLSA {rdata}"  # noqa: E731
    records += [
        tlsa("mx-ee.dane.test", f"3 1 1 {_spki_sha256(ee_pem)}"),
        # the right certificate's key under the wrong usage, and another key: no match
        tlsa("mx-bad.dane.test", f"3 1 1 {_spki_sha256(stranger.cert_chain_pems[0].bytes())}"),
        tlsa("mx-ta.dane.test", f"2 0 1 {_cert_sha256(inter.cert_pem.bytes())}"),
        # unknown usage, PKIX-EE, unknown selector, unknown matching type: secure but none usable
        *[tlsa(h, r) for h in ("mx-odd.dane.test", "mx-oddclear.dane.test")
          for r in (f"4 1 1 {'aa' * 32}", f"1 1 1 {'aa' * 32}", f"3 7 1 {'aa' * 32}", f"3 1 9 {'aa' * 32}")],
        tlsa("mx-bogus.dane.test", f"3 1 1 {_spki_sha256(leaves['mx-bogus.dane.test'].cert_chain_pems[0].bytes())}"),
    ]
    dns = DnssecPeer(base / "dns", 26353 + 10, 26354 + 10)
    dns.zone("dane.test", records, tamper=[(f"_{MX_PORT}._tcp.mx-bogus.dane.test", "TLSA")])
    dns.zone("plain.test", ["plain.test. MX 10 mx.plain.test.", "mx.plain.test. A 127.0.3.7",
                            # an unsigned zone's TLSA records are not trusted: this one would not match
                            f"_{MX_PORT}._tcp.mx.plain.test. TLSA 3 1 1 {'00' * 32}"], signed=False)
    dns.zone("example.test", ["example.test. MX 10 mx.example.test.", "mx.example.test. A 127.0.0.1",
                              'example.test. TXT "v=spf1 ip4:127.0.0.0/8 -all"'], signed=False)
    dns.start()
    sinks: dict[str, MailSink] = {}
    mxd = None
    try:
        for domain, (host, ip, starttls) in HOSTS.items():
            ctx = None
            if starttls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                leaves[host].configure_cert(ctx)     # the leaf and the intermediate
            sinks[domain] = MailSink(ip, MX_PORT, tls_context=ctx).start()
        mxd = start_daemon(base / "mxd", mailboxes=[SENDER], ready=["example.test"], env={
            "MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2", "MXD_OUTBOUND_MX_PORT": str(MX_PORT),
            "MXD_RETRY_SCHEDULE": "10m", "MXD_QUEUE_LIFETIME": "1h", "MXD_DELAY_WARNING": "0", **UNLIMITED})
        yield World(mxd, sinks)
    finally:
        if mxd is not None:
            mxd.stop()
        for sink in sinks.values():
            sink.stop()
        dns.stop()


def _delivered_over_tls(world: World, domain: str, subject: str) -> dict:
    queue_id = world.send(domain, subject)
    row = world.entry(queue_id, "delivered")
    sink = world.sinks[domain]
    assert sink.wait(f"bob@{domain}", subject)
    assert sink.tls_flags == [True] and sink.plaintext == 0
    return row


def test_matching_dane_ee_delivers(world: World) -> None:
    row = _delivered_over_tls(world, "ee.dane.test", "dane-ee")
    assert row["tls"]["policy"] == "dane" and row["tls"]["host"] == "mx-ee.dane.test"
    assert f"_{MX_PORT}._tcp.mx-ee.dane.test" in row["tls"]["detail"]


def test_dane_ta_with_a_chain_delivers(world: World) -> None:
    row = _delivered_over_tls(world, "ta.dane.test", "dane-ta")
    assert row["tls"]["policy"] == "dane"


def test_mismatching_tlsa_defers_and_never_sends_in_clear(world: World) -> None:
    queue_id = world.send("bad.dane.test", "dane-mismatch")
    row = world.entry(queue_id, "deferred")
    assert "DANE" in row["last_reply"] and "TLSA" in row["last_reply"], row
    assert row["tls"]["policy"] == "dane" and row["last_host"] == "mx-bad.dane.test"
    assert "TLSA" in row["tls"]["detail"]
    sink = world.sinks["bad.dane.test"]
    assert not sink.find("bob@bad.dane.test", "dane-mismatch") and sink.plaintext == 0   # ended before MAIL


def test_tls_required_no_is_delivered_despite_a_mismatch(world: World) -> None:
    """RFC 8689 5: a message that says "TLS-Required: No" (as TLS reports do, RFC 8460 5.3) is delivered
    although the host fails its DANE policy: over STARTTLS when offered, the policy not enforced."""
    queue_id = world.send("bad.dane.test", "dane-optional", headers={"TLS-Required": "No"})
    row = world.entry(queue_id, "delivered")
    assert row["tls"]["policy"] == "opportunistic" and "RFC 8689" in row["tls"]["detail"], row
    sink = world.sinks["bad.dane.test"]
    [msg] = sink.wait("bob@bad.dane.test", "dane-optional")
    assert msg["TLS-Required"] == "No" and sink.plaintext == 0


def test_secure_tlsa_without_usable_records_still_requires_tls(world: World) -> None:
    # RFC 7672 2.2: TLS without authentication, but TLS: delivered over TLS to a host offering it ...
    row = _delivered_over_tls(world, "odd.dane.test", "dane-unusable")
    assert row["tls"]["policy"] == "dane" and "none usable" in row["tls"]["detail"]
    # ... and never in clear to one that does not
    queue_id = world.send("oddclear.dane.test", "dane-unusable-clear")
    row = world.entry(queue_id, "deferred")
    assert "DANE" in row["last_reply"] and "STARTTLS" in row["last_reply"], row
    assert world.sinks["oddclear.dane.test"].messages == [] and world.sinks["oddclear.dane.test"].plaintext == 0


def test_bogus_tlsa_defers_without_connecting(world: World) -> None:
    queue_id = world.send("bogus.dane.test", "dane-bogus")
    row = world.entry(queue_id, "deferred")
    assert "DANE" in row["last_reply"] and "DNSSEC" in row["last_reply"], row
    assert row["tls"]["policy"] == "dane"
    sink = world.sinks["bogus.dane.test"]
    assert sink.messages == [] and sink.plaintext == 0


def test_unsigned_zone_falls_back_to_opportunistic_tls(world: World) -> None:
    row = _delivered_over_tls(world, "plain.test", "unsigned")
    assert row["tls"]["policy"] == "opportunistic"
