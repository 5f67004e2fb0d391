"""Outbound MTA-STS end to end: a real mxd sends through its queue to recipient domains on loopback whose
MX hosts are SMTP sinks with STARTTLS (a certificate valid for the MX name, or one for a wrong name)
and whose policies come from a real HTTPS server trusted through outbound_tls_ca_file."""
from __future__ import annotations

import ssl
from pathlib import Path
from typing import Iterator

import pytest
import trustme

from tests.support.daemon import MxdProcess, wait_for
from tests.support.dnsserver import SENDING_DOMAIN, DNSServer
from tests.support.peers.https_policy import ConnectionCounter, PolicyServer, policy_text
from tests.support.sink import MailSink

MX_PORT = 26225                 # every test MX listens on this port, each on its own address
BAD_MX = "127.0.0.23"           # a certificate for another name
GOOD_MX = "127.0.0.24"          # a certificate valid for the MX names it serves
SILENT_MX = "127.0.0.25"        # an MX that must never be contacted
POLICY_IP = "127.0.0.26"        # the policy hosts (HTTPS on 443)
PLAIN_MX = "127.0.0.27"         # no STARTTLS at all

SCENARIOS = {                   # domain: (its MX hosts as (preference, name, address), the policy served)
    "enforce-bad": ([(10, "mx", BAD_MX)], policy_text("enforce", "mx.enforce-bad.sts.test")),
    "enforce-good": ([(10, "mx", GOOD_MX)], policy_text("enforce", "*.enforce-good.sts.test")),
    "unnamed": ([(10, "mx", SILENT_MX), (20, "mx2", GOOD_MX)], policy_text("enforce", "mx2.unnamed.sts.test")),
    "testing": ([(10, "mx", BAD_MX)], policy_text("testing", "mx.testing.sts.test")),
    "malformed": ([(10, "mx", BAD_MX)], "version: STSv1\nmode: enforce\nmx: mx.malformed.sts.test\n"),
    "sticky": ([(10, "mx", GOOD_MX)], policy_text("enforce", "mx.sticky.sts.test")),
    "notls": ([(10, "mx", PLAIN_MX)], policy_text("enforce", "mx.notls.sts.test")),
}


def _zone() -> dict:
    zone: dict = dict(SENDING_DOMAIN)
    for name, (hosts, _) in SCENARIOS.items():
        domain = f"{name}.sts.test"
        zone[domain] = {"MX": [(pref, f"{label}.{domain}") for pref, label, _ in hosts]}
        for _, label, ip in hosts:
            zone[f"{label}.{domain}"] = {"A": [ip]}
        zone[f"_mta-sts.{domain}"] = {"TXT": ["v=STSv1; id=20261203;"]}
        zone[f"mta-sts.{domain}"] = {"A": [POLICY_IP]}
    return zone


def _server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


class World:
    def __init__(self, base: Path) -> None:
        ca = trustme.CA()
        ca_file = base / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        self.dns = DNSServer(_zone())
        self.dns.start()
        self.bad = MailSink(BAD_MX, MX_PORT, _server_context(ca.issue_cert("wrong.sts.test"))).start()
        good_names = [f"{label}.{name}.sts.test" for name, (hosts, _) in SCENARIOS.items()
                      for _, label, ip in hosts if ip == GOOD_MX]
        self.good = MailSink(GOOD_MX, MX_PORT, _server_context(ca.issue_cert(*good_names))).start()
        self.silent = ConnectionCounter(SILENT_MX, MX_PORT)
        self.plain = MailSink(PLAIN_MX, MX_PORT).start()
        self.policies = PolicyServer(POLICY_IP, ca, [f"mta-sts.{name}.sts.test" for name in SCENARIOS]).start()
        for name, (_, text) in SCENARIOS.items():
            self.policies.serve(f"mta-sts.{name}.sts.test", text)
        self.mxd = MxdProcess(base / "mxd", domains=["example.test"], env={
            "MXD_DNS_NAMESERVERS": self.dns.nameserver, "MXD_DNS_TIMEOUT": "2", "MXD_OUTBOUND_MX_PORT": str(MX_PORT),
            "MXD_OUTBOUND_TLS_CA_FILE": str(ca_file), "MXD_OUTBOUND_DANE": "false"})
        (base / "mxd").mkdir()
        self.mxd.init()
        self.mxd.start()
        assert self.mxd.api("POST", "/api/mailboxes", json={"address": "agent@example.test"}).status_code == 201
        r = self.mxd.api("PUT", "/api/domains/example.test/readiness", json={"ready": True})
        assert r.status_code == 200, r.text

    def stop(self) -> None:
        self.mxd.stop()
        for peer in (self.policies, self.silent, self.plain, self.good, self.bad):
            peer.stop()
        self.dns.stop()

    def send(self, to: str, subject: str) -> dict:
        """Send one message; its queue entry once the first attempt is over (delivered or deferred)."""
        r = self.mxd.api("POST", "/api/send", json={"from": "agent@example.test", "to": to, "subject": subject,
                                                    "text": "hello"})
        assert r.status_code == 202, r.text
        message_id = r.json()["id"]

        def attempted() -> dict | None:
            [row] = self.mxd.api("GET", f"/api/messages/{message_id}").json()["delivery"]
            return row if row["attempts"] > 0 or row["status"] in ("delivered", "failed") else None
        row = wait_for(attempted, timeout=45)
        assert row, f"no delivery attempt for {to}"
        return self.entry(row["queue_id"])

    def entry(self, queue_id: str) -> dict:
        """The queue entry as the API shows it (GET /api/queue/{id}, else found in GET /api/queue)."""
        r = self.mxd.api("GET", f"/api/queue/{queue_id}")
        if r.status_code == 200:
            return r.json()
        cursor = None
        while True:
            page = self.mxd.api("GET", "/api/queue", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, page.text
            for item in page.json()["data"]:
                if item["id"] == queue_id:
                    return item
            cursor = page.json()["next_cursor"]
            assert cursor, f"queue entry {queue_id} not listed"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("sts"))
    try:
        yield w
    finally:
        w.stop()


def test_enforce_with_a_wrong_certificate_defers_and_sends_nothing(world: World) -> None:
    entry = world.send("bob@enforce-bad.sts.test", "enforce bad")
    assert entry["status"] == "deferred"
    assert entry["last_reply"].startswith("451 4.7.5 MTA-STS (enforce): ")
    assert "mx.enforce-bad.sts.test" in entry["last_reply"]
    tls = entry["tls"]
    assert (tls["policy"], tls["mode"], tls["host"]) == ("mta-sts", "enforce", "mx.enforce-bad.sts.test")
    assert "certificate" in tls["detail"].lower()
    assert world.bad.find("bob@enforce-bad.sts.test") == []
    assert world.bad.plaintext == 0                   # nothing in clear, ever


def test_enforce_without_starttls_defers_and_sends_nothing_in_clear(world: World) -> None:
    entry = world.send("bob@notls.sts.test", "no starttls")
    assert entry["status"] == "deferred", entry
    assert entry["last_reply"].startswith("451 4.7.5 MTA-STS (enforce): ") and "STARTTLS" in entry["last_reply"]
    assert (entry["tls"]["policy"], entry["tls"]["mode"]) == ("mta-sts", "enforce")
    assert world.plain.messages == [] and world.plain.plaintext == 0     # not even MAIL FROM


def test_enforce_with_a_valid_certificate_delivers_over_tls(world: World) -> None:
    entry = world.send("bob@enforce-good.sts.test", "enforce good")
    assert entry["status"] == "delivered", entry
    assert (entry["tls"]["policy"], entry["tls"]["mode"]) == ("mta-sts", "enforce")
    [msg] = world.good.wait("bob@enforce-good.sts.test", "enforce good")
    assert world.good.tls_flags[world.good.messages.index(next(m for m in world.good.messages if m[1] is msg))]
    assert world.good.plaintext == 0


def test_mx_not_named_by_the_policy_is_never_contacted(world: World) -> None:
    entry = world.send("bob@unnamed.sts.test", "unnamed mx")
    assert entry["status"] == "delivered", entry
    assert entry["tls"]["host"] == "mx2.unnamed.sts.test"
    world.good.wait("bob@unnamed.sts.test", "unnamed mx")
    assert world.silent.count == 0                    # the preferred MX, which the policy does not name


def test_testing_mode_delivers_and_notes_what_would_have_failed(world: World) -> None:
    entry = world.send("bob@testing.sts.test", "testing mode")
    assert entry["status"] == "delivered", entry
    tls = entry["tls"]
    assert (tls["policy"], tls["mode"]) == ("mta-sts", "testing")
    assert tls["detail"].startswith("would have failed: ") and "not valid for that name" in tls["detail"]
    world.bad.wait("bob@testing.sts.test", "testing mode")
    assert world.bad.plaintext == 0                   # delivered over (unauthenticated) TLS


def test_malformed_policy_means_no_policy_with_the_reason(world: World) -> None:
    entry = world.send("bob@malformed.sts.test", "malformed policy")
    assert entry["status"] == "delivered", entry
    tls = entry["tls"]
    assert tls["policy"] == "opportunistic"
    assert "MTA-STS policy of malformed.sts.test is invalid" in tls["detail"]
    world.bad.wait("bob@malformed.sts.test", "malformed policy")


def test_cached_policy_survives_a_restart(world: World) -> None:
    entry = world.send("bob@sticky.sts.test", "sticky one")
    assert entry["status"] == "delivered" and entry["tls"]["mode"] == "enforce", entry
    fetched = world.policies.fetches("mta-sts.sticky.sts.test")
    assert fetched == 1
    # the policy host and the TXT record go away; the MX name now leads to a host with a wrong certificate
    world.policies.forget("mta-sts.sticky.sts.test")
    world.dns.set("_mta-sts.sticky.sts.test", "TXT", None)
    world.dns.set("mx.sticky.sts.test", "A", [BAD_MX])
    world.mxd.stop()
    world.mxd.start()
    entry = world.send("bob@sticky.sts.test", "sticky two")
    assert entry["status"] == "deferred", entry
    assert (entry["tls"]["policy"], entry["tls"]["mode"]) == ("mta-sts", "enforce")
    assert world.bad.find("bob@sticky.sts.test") == [] and world.bad.plaintext == 0
    assert world.policies.fetches("mta-sts.sticky.sts.test") == fetched
