"""Domain DNS plan, status and verify against a DNS server on loopback serving right, wrong and missing
records; the domain.verified event; hold rules at send time."""
from __future__ import annotations

import json
import sqlite3

import pytest

from tests.support.daemon import MxdProcess
from tests.support.dnsserver import DNSServer

DOMAINS = ["example.test", "right.test", "wrong.test", "missing.test"]


@pytest.fixture
def setup(tmp_path):
    dns = DNSServer({"mx.example.test": {"A": ["127.0.0.1"]}})     # the MTA-STS host's CNAME target
    dns.start()
    proc = MxdProcess(tmp_path / "data", domains=DOMAINS,
                      env={"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2",
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


def _events(proc: MxdProcess, type_: str) -> list[dict]:
    db = sqlite3.connect(f"file:{proc.data_dir / 'mxd.db'}?mode=ro", uri=True, timeout=30)
    try:
        return [json.loads(row[0]) for row in db.execute('SELECT "data" FROM "event" WHERE "type" = ? ORDER BY "id"',
                                                           (type_,))]
    finally:
        db.close()


def _by_key(records: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["type"], r["name"]): r for r in records}


def test_dns_plan_lists_required_and_recommended_records(setup):
    proc, _ = setup
    body = proc.api("GET", "/api/domains/example.test/dns-plan").json()
    plan = body["records"]
    dkim = [r for r in plan if "._domainkey." in r["name"]]
    assert len(dkim) == 2 and {r["kind"] for r in dkim} == {"dkim"}
    assert {"k=rsa", "k=ed25519"} == {r["value"].split("; ")[1] for r in dkim}
    required = {(r["type"], r["name"]) for r in plan if r["required"]}
    assert required == {("MX", "example.test"), ("TXT", "example.test"), ("TXT", "_dmarc.example.test")} | {
        ("TXT", r["name"]) for r in dkim}
    recommended = _by_key([r for r in plan if not r["required"]])
    assert set(recommended) == {("TXT", "_mta-sts.example.test"), ("CNAME", "mta-sts.example.test"),
                                ("TXT", "_smtp._tls.example.test")}
    assert recommended[("TXT", "_mta-sts.example.test")]["value"].startswith("v=STSv1; id=")
    assert recommended[("TXT", "_smtp._tls.example.test")]["value"] == \
        "v=TLSRPTv1; rua=mailto:postmaster@example.test"
    mx = _by_key(plan)[("MX", "example.test")]
    assert mx["value"] == "10 mx.example.test" and mx["return_path"] is True
    assert mx["zone_line"] == "example.test. 3600 IN MX 10 mx.example.test."
    assert body["return_path"]["address"] == "bounces+<queue id>.<tag>@example.test"
    assert body["mta_sts"]["policy_url"] == "https://mta-sts.example.test/.well-known/mta-sts.txt"
    assert "mx: mx.example.test" in body["mta_sts"]["policy"]
    assert proc.api("GET", "/api/domains/nowhere.test/dns-plan").status_code == 404


def test_verify_per_record_against_right_wrong_and_missing_dns(setup):
    proc, dns = setup
    plans = {d: proc.api("GET", f"/api/domains/{d}/dns-plan").json()["records"] for d in DOMAINS}
    _publish(dns, plans["right.test"])                             # everything, recommended extras included
    _publish(dns, plans["wrong.test"], wrong="wrong.test")         # SPF wrong
    wrong_dkim = [r["name"] for r in plans["wrong.test"] if r["kind"] == "dkim"]
    dns.set(wrong_dkim[0], "TXT", ["v=DKIM1; k=rsa; p=AAAA"])      # one DKIM key wrong
    dns.set("_smtp._tls.wrong.test", "TXT", ["v=TLSRPTv1"])       # TLS-RPT without rua: wrong, not required
    # missing.test: nothing published at all

    status = proc.api("GET", "/api/domains/missing.test/status").json()
    assert status["dns_ok"] is False and status["ready"] is False
    assert {r["status"] for r in status["records"]} == {"missing"}
    assert all(r["found"] == [] for r in status["records"])

    r = proc.api("POST", "/api/domains/wrong.test/verify")
    assert r.status_code == 200
    body = r.json()
    assert body["dns_ok"] is False and body["ready"] is False and body["verified_now"] is False
    checks = _by_key(body["records"])
    assert checks[("MX", "wrong.test")]["status"] == "found"
    assert checks[("MX", "wrong.test")]["found"] == ["10 mx.example.test"]
    spf = checks[("TXT", "wrong.test")]
    assert (spf["status"], spf["found"], spf["expected"], spf["required"]) == (
        "wrong", ["v=spf1 -all"], "v=spf1 mx ~all", True)
    assert checks[("TXT", wrong_dkim[0])]["status"] == "wrong"
    assert checks[("TXT", wrong_dkim[0])]["found"] == ["v=DKIM1; k=rsa; p=AAAA"]
    assert checks[("TXT", wrong_dkim[1])]["status"] == "found"
    assert checks[("TXT", "_dmarc.wrong.test")]["status"] == "found"
    tlsrpt = checks[("TXT", "_smtp._tls.wrong.test")]
    assert (tlsrpt["status"], tlsrpt["required"], tlsrpt["found"]) == ("wrong", False, ["v=TLSRPTv1"])

    r = proc.api("POST", "/api/domains/missing.test/verify").json()
    assert r["dns_ok"] is False and r["ready"] is False

    r = proc.api("POST", "/api/domains/right.test/verify").json()
    assert r["dns_ok"] is True and r["ready"] is True and r["ready_source"] == "dns" and r["verified_now"] is True
    assert {x["status"] for x in r["records"]} == {"found"}
    events = _events(proc, "domain.verified")
    assert [e["domain"] for e in events] == ["right.test"] and events[0]["org_id"] is None
    again = proc.api("POST", "/api/domains/right.test/verify").json()
    assert again["ready"] is True and again["verified_now"] is False
    assert len(_events(proc, "domain.verified")) == 1                # once, not per verify

    listed = {d["name"]: d for d in proc.api("GET", "/api/domains").json()["data"]}
    assert [n for n, d in listed.items() if d["ready"]] == ["right.test"]

    # A recommended record missing does not stop readiness: MTA-STS taken away, still ready.
    dns.delete("_mta-sts.right.test")
    r = proc.api("POST", "/api/domains/right.test/verify").json()
    assert r["dns_ok"] is True and r["ready"] is True
    assert _by_key(r["records"])[("TXT", "_mta-sts.right.test")]["status"] == "missing"

    # The wrong domain fixed: verified, one more event.
    dns.delete(wrong_dkim[0])
    _publish(dns, plans["wrong.test"])
    r = proc.api("POST", "/api/domains/wrong.test/verify").json()
    assert r["dns_ok"] is True and r["ready"] is True
    assert [e["domain"] for e in _events(proc, "domain.verified")] == ["right.test", "wrong.test"]

    # Readiness that DNS gave is taken back when a required record goes wrong.
    dns.set("right.test", "TXT", ["v=spf1 -all"])
    r = proc.api("POST", "/api/domains/right.test/verify").json()
    assert r["dns_ok"] is False and r["ready"] is False


def test_an_organisation_verifies_its_own_domain(setup):
    proc, dns = setup
    con = sqlite3.connect(proc.data_dir / "mxd.db", timeout=60)
    try:
        con.execute('INSERT INTO "organization" ("id", "name", "slug", "owner_email", "created_at", "code_attempts") '
                    "VALUES ('org_dns', 'DNS Org', 'dns-org', 'owner@remote.test', 0, 0)")
        con.commit()
    finally:
        con.close()
    org = proc.api("POST", "/api/tokens", json={"name": "org", "scopes": ["admin"], "org_id": "org_dns"}).json()["token"]
    assert proc.api("POST", "/api/domains", token=org, json={"domain": "org.test"}).status_code == 201
    assert proc.api("PUT", "/api/domains/org.test/readiness", token=org, json={"ready": True}).status_code == 403
    assert proc.api("POST", "/api/domains/right.test/verify", token=org).status_code == 404
    _publish(dns, proc.api("GET", "/api/domains/org.test/dns-plan", token=org).json()["records"])
    r = proc.api("POST", "/api/domains/org.test/verify", token=org).json()
    assert r["ready"] is True and r["ready_source"] == "dns" and r["org_id"] == "org_dns"
    assert [(e["domain"], e["org_id"]) for e in _events(proc, "domain.verified")] == [("org.test", "org_dns")]


def test_resolver_failure_is_an_error_not_missing(setup):
    proc, dns = setup
    dns.servfail("_dmarc.missing.test")
    checks = _by_key(proc.api("GET", "/api/domains/missing.test/status").json()["records"])
    assert checks[("TXT", "_dmarc.missing.test")]["status"] == "error"
    assert checks[("TXT", "_dmarc.missing.test")]["found"] == []
    assert "_dmarc.missing.test" in checks[("TXT", "_dmarc.missing.test")]["error"]


def test_domaincheck_functions_take_a_domain_name():
    """The plain functions (shared by the /v1 dialect) against an in-memory resolver."""
    import asyncio

    from mxd import dnsrecords, domaincheck
    from mxd.resolver import StaticResolver

    planned = dnsrecords.plan("Example.COM", "mx.example.com", [])
    zone: dict = {"mx.example.com": {"A": ["192.0.2.1"]}}
    for p in planned:
        entry = zone.setdefault(p.record.name, {})
        if p.record.type == "MX":
            entry.setdefault("MX", []).append((10, "mx.example.com"))
        else:
            entry.setdefault(p.record.type, []).append(p.record.value)
    zone["example.com"]["TXT"].append("google-site-verification=abc")     # other TXT records do not matter
    zone["example.com"]["TXT"][0] = "v=spf1 ip4:192.0.2.1 mx -all"          # extra mechanisms are fine
    results = [asyncio.run(domaincheck.check_record(p, StaticResolver(zone))) for p in planned]
    assert [r.status for r in results] == ["found"] * len(planned)
    zone["example.com"]["TXT"] = ["v=spf1 a ~all", "v=spf1 mx ~all"]        # two SPF records: RFC 7208 4.5
    spf = next(p for p in planned if p.kind == "spf")
    assert asyncio.run(domaincheck.check_record(spf, StaticResolver(zone))).status == "wrong"
    zone["example.com"]["TXT"] = ["google-site-verification=abc"]
    assert asyncio.run(domaincheck.check_record(spf, StaticResolver(zone))).status == "missing"


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
