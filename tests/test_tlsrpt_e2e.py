"""A TLS report end to end: mxd on 127.0.0.1 delivers to a second mxd (peer.test, 127.0.0.2, STARTTLS) and to
a sink that offers no STARTTLS (plain.test, 127.0.0.3); both domains publish `_smtp._tls` with the peer's
postmaster@ as rua. A forced report run sends each domain its report; the second mxd DKIM-verifies the
report mail and its reports reader records the numbers that were sent."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tests.support.daemon import MxdProcess, wait_for
from tests.support.dnsserver import SENDING_DOMAIN, DNSServer
from tests.support.sink import MailSink

pytestmark = pytest.mark.slow
RUA = "v=TLSRPTv1; rua=mailto:postmaster@peer.test"


def _port_free_on(port: int, *hosts: str) -> bool:
    for host in hosts:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _mx_port() -> int:
    """One port free on the three loopback MX addresses (outbound_mx_port is one for every MX)."""
    for port in range(26400, 26500):
        if _port_free_on(port, "127.0.0.1", "127.0.0.2", "127.0.0.3"):
            return port
    raise RuntimeError("no free port in 26400-26499")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("tlsrpt")
    port = _mx_port()
    dns = DNSServer({
        **SENDING_DOMAIN,
        "peer.test": {"MX": [(10, "mx.peer.test")]},
        "mx.peer.test": {"A": ["127.0.0.2"]},
        "_smtp._tls.peer.test": {"TXT": [RUA]},
        "plain.test": {"MX": [(10, "mx.plain.test")]},
        "mx.plain.test": {"A": ["127.0.0.3"]},
        "_smtp._tls.plain.test": {"TXT": [RUA]},
    })
    dns.start()
    sink = MailSink("127.0.0.3", port).start()           # no tls_context: STARTTLS is not offered
    common = {"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2", "MXD_OUTBOUND_MX_PORT": str(port)}
    sender = MxdProcess(base / "a", domains=["example.test"], env=dict(common))
    sender.mx_port = port
    sender.env["MXD_MX_LISTEN"] = f"127.0.0.1:{port}"
    for rec in sender.init()["dns_records"]:
        if rec["type"] == "TXT" and "._domainkey." in rec["name"]:
            dns.set(rec["name"], "TXT", [rec["value"]])
    receiver = MxdProcess(base / "b", domains=["peer.test"], host="127.0.0.2", hostname="mx.peer.test",
                          env=dict(common))
    receiver.mx_port = port
    receiver.env["MXD_MX_LISTEN"] = f"127.0.0.2:{port}"
    receiver.init()
    try:
        sender.start()
        receiver.start()
        assert sender.api("POST", "/api/mailboxes", json={"address": "agent@example.test"}).status_code == 201
        assert sender.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        assert receiver.api("POST", "/api/mailboxes", json={"address": "bob@peer.test"}).status_code == 201
        yield sender, receiver, sink
    finally:
        sender.stop()
        receiver.stop()
        sink.stop()
        dns.stop()


def _delivered(sender: MxdProcess, message_id: str) -> bool:
    detail = sender.api("GET", f"/api/messages/{message_id}").json()
    return all(d["status"] == "delivered" for d in detail["delivery"])


def test_report_is_sent_dkim_verified_and_read_by_the_second_mxd(world):
    sender, receiver, sink = world
    sent = []
    for to, subject in (("bob@peer.test", "one"), ("carol@plain.test", "two")):     # one session each
        r = sender.api("POST", "/api/send", json={"from": "agent@example.test", "to": to, "subject": subject,
                                                  "text": "hello"})
        assert r.status_code == 202, r.text
        sent.append(r.json()["id"])
        assert wait_for(lambda: _delivered(sender, sent[-1])), sender.api("GET", f"/api/messages/{sent[-1]}").text
    assert sink.tls_flags == [False]                          # plain.test took it in clear: opportunistic
    day = time.strftime("%Y-%m-%d", time.gmtime())

    r = sender.api("POST", "/api/tls-reports/send", json={"day": day})
    assert r.status_code == 200, r.text
    outcomes = {e["domain"]: (e["outcome"], e["rua"]) for e in r.json()["data"]}
    assert outcomes == {"peer.test": ("queued", ["postmaster@peer.test"]),
                        "plain.test": ("queued", ["postmaster@peer.test"])}
    again = sender.api("POST", "/api/tls-reports/send", json={"day": day})
    assert again.status_code == 200 and again.json()["data"] == []          # one report per domain and day

    def reports_in():
        found = [m for m in receiver.messages("postmaster@peer.test")
                 if (m.get("subject") or "").startswith("Report Domain: ")]
        return found if len(found) == 2 else None
    found = wait_for(reports_in, timeout=60)
    assert found, receiver.messages("postmaster@peer.test")
    for msg in found:
        detail = receiver.api("GET", f"/api/messages/{msg['id']}").json()
        assert [(d["result"], d["domain"]) for d in detail["auth"]["dkim"]] == [("pass", "example.test")] * 2
        assert detail["auth"]["dmarc"] == "pass"
        assert "Submitter: mx.example.test" in msg["subject"]

    def tls_reports():
        rows = receiver.api("GET", "/api/reports/tls").json()["data"]
        return rows if len(rows) == 2 else None
    rows = wait_for(tls_reports, timeout=60)
    assert rows, receiver.api("GET", "/api/reports/tls?include=errors").text
    got = {(r["org_name"], r["policy_domain"], r["policy_type"]): (r["successful"], r["failed"], r["failure_types"])
           for r in rows}
    assert got == {
        ("mx.example.test", "peer.test", "no-policy-found"): (1, 0, {}),
        ("mx.example.test", "plain.test", "no-policy-found"): (0, 1, {"starttls-not-supported": 1}),
    }

    r = sender.api("POST", "/api/tls-reports/send", json={"day": "03/12/2026"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    cli = subprocess.run([sys.executable, "-m", "mxd.cli", "tls-reports", "send", "--day", day, "--url", sender.url(""),
                          "--token", sender.admin_token], env=sender.env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and cli.stdout.strip() == "no TLS report was due", cli.stdout + cli.stderr
