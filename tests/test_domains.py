"""Domain DNS plan, status and verify against a DNS server on loopback; hold rules at send time."""
from __future__ import annotations

import pytest

from tests.daemon import MxdProcess
from tests.dnsserver import DNSServer


@pytest.fixture
def setup(tmp_path):
    dns = DNSServer({})
    dns.start()
    proc = MxdProcess(tmp_path / "data", env={"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2",
                                              "MXD_HOLD_RULES": "@held.test,from:shy@example.test"})
    proc.init()
    proc.start()
    yield proc, dns
    proc.stop()
    dns.stop()


def _publish(dns: DNSServer, records: list[dict], skip: str = "", wrong: str = "") -> None:
    by_name: dict[tuple[str, str], list] = {}
    for rec in records:
        if rec["type"] == "MX":
            pref, host = rec["value"].split()
            by_name.setdefault((rec["name"], "MX"), []).append((int(pref), host))
        else:
            by_name.setdefault((rec["name"], rec["type"]), []).append(rec["value"])
    for (name, rtype), values in by_name.items():
        if skip and skip in name:
            continue
        if wrong and wrong == name:
            values = ["v=spf1 -all"] if rtype == "TXT" else values
        dns.set(name, rtype, values)


def test_dns_plan_status_and_verify(setup):
    proc, dns = setup
    plan = proc.api("GET", "/api/domains/example.test/dns-plan").json()["records"]
    assert {(r["type"], r["name"]) for r in plan} == {
        ("MX", "example.test"), ("TXT", "example.test"), ("TXT", "_dmarc.example.test")} | {
        ("TXT", r["name"]) for r in plan if "._domainkey." in r["name"]}
    assert len([r for r in plan if "._domainkey." in r["name"]]) == 2

    status = proc.api("GET", "/api/domains/example.test/status").json()
    assert status["dns_ok"] is False and {r["status"] for r in status["records"]} == {"missing"}

    dkim_names = [r["name"] for r in plan if "._domainkey." in r["name"]]
    _publish(dns, plan, skip="_dmarc", wrong="example.test")          # SPF wrong, DMARC missing
    dns.set(dkim_names[0], "TXT", ["v=DKIM1; k=rsa; p=AAAA"])          # one DKIM key wrong
    checks = {(r["type"], r["name"]): r for r in proc.api("GET", "/api/domains/example.test/status").json()["records"]}
    assert checks[("MX", "example.test")]["status"] == "found"
    assert checks[("TXT", "example.test")]["status"] == "wrong"
    assert checks[("TXT", "example.test")]["found"] == ["v=spf1 -all"]
    assert checks[("TXT", "_dmarc.example.test")]["status"] == "missing"
    assert checks[("TXT", dkim_names[0])]["status"] == "wrong"
    assert checks[("TXT", dkim_names[1])]["status"] == "found"
    r = proc.api("POST", "/api/domains/example.test/verify").json()
    assert r["dns_ok"] is False and r["ready"] is False

    dns.delete(dkim_names[0])
    _publish(dns, plan)
    r = proc.api("POST", "/api/domains/example.test/verify").json()
    assert r["dns_ok"] is True and r["ready"] is True and r["ready_source"] == "dns"


def test_hold_rules_park_mail_until_released(setup):
    proc, _ = setup
    for box in ("agent@example.test", "shy@example.test"):
        assert proc.api("POST", "/api/mailboxes", json={"address": box}).status_code == 201
    assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
    r = proc.api("POST", "/api/send", json={"from": "agent@example.test", "to": "x@held.test", "subject": "s",
                                            "text": "t"})
    assert r.status_code == 202 and r.json()["status"] == "held"
    assert r.json()["hold_reason"] == "operator rule @held.test"
    entry = r.json()["recipients"][0]["queue_id"]
    r = proc.api("POST", "/api/send", json={"from": "shy@example.test", "to": "x@free.test", "subject": "s",
                                            "text": "t"})
    assert r.json()["status"] == "held" and r.json()["hold_reason"] == "operator rule from:shy@example.test"
    held = proc.api("GET", "/api/queue", params={"status": "held"}).json()["data"]
    assert entry in [e["id"] for e in held]
    r = proc.api("POST", f"/api/queue/{entry}/release")
    assert r.status_code == 200 and r.json()["status"] in ("queued", "deferred")
    assert proc.api("POST", f"/api/queue/{entry}/release").status_code == 409
    r = proc.api("POST", "/api/send", json={"from": "agent@example.test", "to": "x@free.test", "subject": "s",
                                            "text": "t"})
    assert r.json()["status"] == "queued"
