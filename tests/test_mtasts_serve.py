"""The MTA-STS policy of our domains (RFC 8461): its text and TXT id, /.well-known/mta-sts.txt per Host and
mode, the mode set by the operator, and the domain check fetching the policy over HTTPS as a sender does
(a real DNS server and the daemon's HTTPS listener on port 443 of a loopback address) and trying our MX's
certificate as an enforcing sender would."""
from __future__ import annotations

import ssl

import httpx
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd import dnsrecords
from tests.support.asgi import in_process_api
from tests.support.daemon import MxdProcess
from tests.support.dnsserver import DNSServer

HOSTNAME = "mx.example.test"
POLICY_IP = "127.26.1.1"              # the daemon's HTTPS listener, on port 443 as senders expect it
SILENT_IP = "127.26.1.2"              # nothing listens there


# ---------------------------------------------------------------- the policy text and its id
def test_policy_text_is_rfc_8461_lines_with_our_mx():
    assert dnsrecords.mta_sts_policy("Example.TEST", "MX.Example.test", "enforce", 86400) == (
        "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n")
    with pytest.raises(ValueError):
        dnsrecords.mta_sts_policy("example.test", HOSTNAME, "off")


def test_txt_id_changes_with_mode_and_max_age_and_is_1_to_32_alphanumerics():
    ids = {(mode, age): dnsrecords.mta_sts_id(dnsrecords.mta_sts_policy("example.test", HOSTNAME, mode, age))
           for mode in ("testing", "enforce") for age in (86400, 604800)}
    assert len(set(ids.values())) == 4
    assert all(1 <= len(i) <= 32 and i.isalnum() for i in ids.values())
    txt = dnsrecords.mta_sts_records("example.test", HOSTNAME, "enforce", 86400)[0]
    assert (txt.name, txt.value) == ("_mta-sts.example.test", f"v=STSv1; id={ids[('enforce', 86400)]}")
    assert dnsrecords.mta_sts_records("example.test", HOSTNAME, "off") == []


def test_plan_lists_txt_host_and_tlsrpt_and_nothing_of_mta_sts_when_off():
    planned = dnsrecords.plan("example.test", HOSTNAME, [], mta_sts_mode="testing")
    sts = [(p.record.type, p.record.name, p.record.value, p.kind, p.required) for p in planned
           if p.kind in ("mta-sts", "tls-rpt")]
    policy_id = dnsrecords.mta_sts_id(dnsrecords.mta_sts_policy("example.test", HOSTNAME))
    assert sts == [("TXT", "_mta-sts.example.test", f"v=STSv1; id={policy_id}", "mta-sts", False),
                   ("CNAME", "mta-sts.example.test", HOSTNAME, "mta-sts", False),
                   ("TXT", "_smtp._tls.example.test", "v=TLSRPTv1; rua=mailto:postmaster@example.test", "tls-rpt",
                    False)]
    assert planned[-2].record.zone_line() == "mta-sts.example.test. 3600 IN CNAME mx.example.test."
    off = dnsrecords.plan("example.test", HOSTNAME, [], mta_sts_mode="off")
    assert [p.kind for p in off if p.kind in ("mta-sts", "tls-rpt")] == ["tls-rpt"]


# ---------------------------------------------------------------- /.well-known/mta-sts.txt, the mode
@pytest.fixture
def app(tmp_path):
    with in_process_api(tmp_path / "data", domains=["example.test", "other.test"],
                        env={"MXD_MTA_STS_MAX_AGE": "86400"}) as api:
        yield api


def _policy(app, host: str) -> httpx.Response:
    return app.client.get("/.well-known/mta-sts.txt", headers={"Host": host})


def test_policy_is_served_only_for_mta_sts_host_of_our_domains(app):
    r = _policy(app, "mta-sts.example.test")
    assert r.status_code == 200
    assert r.text == "version: STSv1\r\nmode: testing\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"
    assert r.headers["content-type"].split(";")[0] == "text/plain"
    assert "public" in r.headers["cache-control"] and "location" not in r.headers
    assert _policy(app, "MTA-STS.Example.Test.:443").text == r.text           # case, root dot and port ignored
    for host in ("example.test", "mx.example.test", "mta-sts.unknown.test", "mta-sts.", "mta-sts",
                 "www.mta-sts.example.test", "[::1]:443", "mta-sts.exa mple.test", ""):
        refused = _policy(app, host)
        assert refused.status_code == 404, host
        assert refused.json()["error"]["code"] == "not_found"
    assert app.client.post("/.well-known/mta-sts.txt", headers={"Host": "mta-sts.example.test"}).status_code == 405


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60)
       | st.sampled_from(["mta-sts.example.test:", "mta-sts.example.test:x:y", "[mta-sts.example.test]",
                          "mta-sts.example.test..", "mta-sts..example.test", "mta-sts.-example.test"]))
def test_any_host_header_gets_the_policy_or_a_404(app, host):
    r = _policy(app, host)
    assert r.status_code in (200, 404), (host, r.status_code)
    if r.status_code == 200:
        assert host.lower().startswith("mta-sts.") and r.text.startswith("version: STSv1\r\n")


def test_mode_set_by_the_operator_changes_policy_plan_and_id(app):
    before = app.api("GET", "/api/domains/example.test/dns-plan").json()
    assert before["mta_sts"]["mode"] == "testing"
    r = app.api("PATCH", "/api/domains/example.test", json={"mta_sts_mode": "enforce"})
    assert r.status_code == 200 and r.json()["mta_sts_mode"] == "enforce"
    assert "mode: enforce\r\n" in _policy(app, "mta-sts.example.test").text
    assert "mode: testing\r\n" in _policy(app, "mta-sts.other.test").text   # per domain
    after = app.api("GET", "/api/domains/example.test/dns-plan").json()
    txt = {r["name"]: r["value"] for r in after["records"]}["_mta-sts.example.test"]
    assert txt == f"v=STSv1; id={after['mta_sts']['policy_id']}" != \
        {r["name"]: r["value"] for r in before["records"]}["_mta-sts.example.test"]
    assert after["mta_sts"]["policy"] == _policy(app, "mta-sts.example.test").text

    assert app.api("PATCH", "/api/domains/example.test", json={"mta_sts_mode": "off"}).json()["mta_sts_mode"] == "off"
    assert _policy(app, "mta-sts.example.test").status_code == 404
    plan = app.api("GET", "/api/domains/example.test/dns-plan").json()
    assert plan["mta_sts"] == {"mode": "off"}
    assert not [r for r in plan["records"] if r["kind"] == "mta-sts"]

    for bad in ({"mta_sts_mode": "none"}, {"mta_sts_mode": 1}, {}):
        r = app.api("PATCH", "/api/domains/example.test", json=bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    assert app.api("PATCH", "/api/domains/nowhere.test", json={"mta_sts_mode": "testing"}).status_code == 404
    assert app.api("GET", "/api/domains/example.test").json()["mta_sts_mode"] == "off"


def test_v1_dialect_sets_and_shows_the_mode(app):
    domain_id = app.api("GET", "/api/domains/other.test").json()["id"]
    r = app.api("PATCH", f"/v1/domains/{domain_id}", json={"mta_sts_mode": "enforce"})
    assert r.status_code == 200 and r.json()["mta_sts_mode"] == "enforce" and r.json()["domain"] == "other.test"
    assert app.api("GET", f"/v1/domains/{domain_id}").json()["mta_sts_mode"] == "enforce"
    assert "mode: enforce\r\n" in _policy(app, "mta-sts.other.test").text
    assert app.api("PATCH", f"/v1/domains/{domain_id}", json={"mta_sts_mode": "strict"}).status_code == 400
    assert app.api("PATCH", "/v1/domains/dom_nope", json={"mta_sts_mode": "off"}).status_code == 404


def test_max_age_comes_from_config(tmp_path):
    ids = []
    for name, age in (("a", "86400"), ("b", "1209600")):          # one store at a time (peewee's proxy is global)
        with in_process_api(tmp_path / name, env={"MXD_MTA_STS_MAX_AGE": age}) as app:
            ids.append(app.api("GET", "/api/domains/example.test/dns-plan").json()["mta_sts"]["policy_id"])
            assert _policy(app, "mta-sts.example.test").text.endswith(f"max_age: {age}\r\n")
    assert ids[0] != ids[1]


# ---------------------------------------------------------------- verify: the policy as senders fetch it
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A daemon with HTTPS on POLICY_IP:443 (a certificate from a test CA, trusted through outbound_tls_ca_file,
    valid for every mta-sts.<domain> below but badcert.test) and a DNS server for the domains."""
    tmp = tmp_path_factory.mktemp("sts")
    ca = trustme.CA()
    names = [HOSTNAME] + [f"mta-sts.{d}" for d in ("good.test", "notxt.test", "oldid.test", "noserve.test")]
    cert = ca.issue_cert(*names)
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    (tmp / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    dns = DNSServer({HOSTNAME: {"A": [POLICY_IP]}}).start()
    proc = MxdProcess(tmp / "data", domains=["good.test", "notxt.test", "oldid.test", "noserve.test", "badcert.test"],
                      host=POLICY_IP, env={"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2",
                           "MXD_TLS_CERT": str(tmp / "cert.pem"), "MXD_TLS_KEY": str(tmp / "key.pem"),
                           "MXD_HTTPS_LISTEN": f"{POLICY_IP}:443", "MXD_OUTBOUND_TLS_CA_FILE": str(tmp / "ca.pem")})
    proc.init()
    proc.start()
    for domain in ("good.test", "notxt.test", "oldid.test", "noserve.test", "badcert.test"):
        for rec in proc.api("GET", f"/api/domains/{domain}/dns-plan").json()["records"]:
            if rec["kind"] == "mta-sts":
                dns.set(rec["name"], rec["type"], [rec["value"]])
    dns.delete("_mta-sts.notxt.test")
    dns.set("_mta-sts.oldid.test", "TXT", ["v=STSv1; id=20260101"])
    dns.set("mta-sts.noserve.test", "A", [SILENT_IP])
    dns.set("mta-sts.noserve.test", "CNAME", None)
    yield proc, dns, tmp
    proc.stop()
    dns.stop()


def _sts(proc: MxdProcess, domain: str) -> tuple[dict, dict]:
    r = proc.api("POST", f"/api/domains/{domain}/verify")
    assert r.status_code == 200, r.text
    sts = r.json()["mta_sts"]
    return sts, {step["check"]: step for step in sts["checks"]}


def test_https_listener_serves_the_policy_with_a_certificate_senders_verify(served):
    proc, _, tmp = served
    ctx = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    with httpx.Client(verify=ctx) as client:
        r = client.get(f"https://{POLICY_IP}/.well-known/mta-sts.txt", headers={"Host": "mta-sts.good.test"},
                       extensions={"sni_hostname": "mta-sts.good.test"})
    assert r.status_code == 200 and r.text.startswith("version: STSv1\r\nmode: testing\r\n")
    assert r.request.url.scheme == "https"


def test_verify_passes_when_txt_host_and_policy_all_hold(served):
    proc, _, _ = served
    sts, steps = _sts(proc, "good.test")
    assert {k: v["status"] for k, v in steps.items()} == {"txt": "found", "host": "found", "policy": "found",
                                                          "mx_certificate": "found"}
    assert f"STARTTLS at {POLICY_IP}:{proc.mx_port}" in steps["mx_certificate"]["detail"]
    assert sts["ok"] is True and sts["enforce_ready"] is True and sts["mode"] == "testing"
    assert sts["policy_url"] == "https://mta-sts.good.test/.well-known/mta-sts.txt"
    # enforcing is the operator's step; verify never switches it
    assert proc.api("GET", "/api/domains/good.test").json()["mta_sts_mode"] == "testing"


def test_verify_reports_txt_missing(served):
    sts, steps = _sts(served[0], "notxt.test")
    assert steps["txt"]["status"] == "missing" and steps["policy"]["status"] == "found"
    assert sts["ok"] is False and sts["enforce_ready"] is False


def test_verify_reports_a_txt_with_another_id(served):
    sts, steps = _sts(served[0], "oldid.test")
    assert (steps["txt"]["status"], steps["txt"]["found"]) == ("wrong", ["v=STSv1; id=20260101"])
    assert steps["txt"]["expected"] == f"v=STSv1; id={sts['policy_id']}"
    assert "another id" in steps["txt"]["detail"] and sts["ok"] is False


def test_verify_reports_a_policy_not_served(served):
    sts, steps = _sts(served[0], "noserve.test")
    assert steps["host"]["status"] == "wrong" and steps["host"]["found"] == [SILENT_IP]
    assert steps["policy"]["status"] == "missing"
    assert "ConnectError" in steps["policy"]["detail"] and sts["ok"] is False


def test_verify_reports_an_invalid_certificate(served):
    sts, steps = _sts(served[0], "badcert.test")
    assert steps["host"]["status"] == "found"
    assert steps["policy"]["status"] == "certificate_invalid"
    assert "mta-sts.badcert.test" in steps["policy"]["detail"] and "mismatch" in steps["policy"]["detail"].lower()


def test_mode_change_makes_the_published_id_stale_until_republished(served):
    proc, dns, _ = served
    assert _sts(proc, "good.test")[0]["ok"] is True
    assert proc.api("PATCH", "/api/domains/good.test", json={"mta_sts_mode": "enforce"}).status_code == 200
    try:
        sts, steps = _sts(proc, "good.test")
        assert steps["txt"]["status"] == "wrong" and steps["policy"]["status"] == "found"   # the new policy is served
        assert sts["mode"] == "enforce" and sts["enforce_ready"] is False
        dns.set("_mta-sts.good.test", "TXT", [steps["txt"]["expected"]])
        sts, _ = _sts(proc, "good.test")
        assert sts["ok"] is True and sts["enforce_ready"] is False              # enforced already
    finally:
        proc.api("PATCH", "/api/domains/good.test", json={"mta_sts_mode": "testing"})
        for rec in proc.api("GET", "/api/domains/good.test/dns-plan").json()["records"]:
            if rec["type"] == "TXT" and rec["kind"] == "mta-sts":
                dns.set(rec["name"], "TXT", [rec["value"]])


def test_verify_of_a_domain_with_mta_sts_off_checks_nothing(served):
    proc, _, _ = served
    proc.api("PATCH", "/api/domains/badcert.test", json={"mta_sts_mode": "off"})
    try:
        sts, steps = _sts(proc, "badcert.test")
        assert sts == {"mode": "off", "ok": False, "enforce_ready": False, "checks": []}
        with httpx.Client(verify=False) as client:
            assert client.get(f"https://{POLICY_IP}/.well-known/mta-sts.txt",
                              headers={"Host": "mta-sts.badcert.test"}).status_code == 404
    finally:
        proc.api("PATCH", "/api/domains/badcert.test", json={"mta_sts_mode": "testing"})


def test_cli_sets_the_mode_and_shows_the_checks(served):
    import subprocess
    import sys
    proc = served[0]
    env = dict(proc.env, MXD_URL=proc.url(""), MXD_TOKEN=proc.admin_token)
    out = subprocess.run([sys.executable, "-m", "mxd.cli", "domains", "mta-sts", "notxt.test", "enforce"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "enforce" in out.stdout
    try:
        out = subprocess.run([sys.executable, "-m", "mxd.cli", "domains", "verify", "notxt.test"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "MTA-STS enforce: not ok" in out.stdout
        assert any(line.split()[:2] == ["missing", "txt"] for line in out.stdout.splitlines())
    finally:
        proc.api("PATCH", "/api/domains/notxt.test", json={"mta_sts_mode": "testing"})



# ---------------------------------------------------------------- the fetch against hostile or broken policy hosts
HOSTILE_IP = "127.26.1.3"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """An HTTPS server on HOSTILE_IP:443 for mta-sts.hostile.test whose answer the test picks."""
    import http.server
    import threading

    tmp = tmp_path_factory.mktemp("hostile")
    ca = trustme.CA()
    cert = ca.issue_cert("mta-sts.hostile.test")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    state = {"answer": "ok"}
    good = dnsrecords.mta_sts_policy("hostile.test", HOSTNAME).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            kind = state["answer"]
            if kind == "silent":
                threading.Event().wait(5)
                return
            status, media, body = {
                "ok": (200, "text/plain", good), "redirect": (302, "text/plain", b""),
                "html": (200, "text/html", good), "huge": (200, "text/plain", good + b"x" * 1_000_000),
                "other": (200, "text/plain", good.replace(b"testing", b"enforce")),
                "binary": (200, "text/plain", bytes(range(256)) * 10)}[kind]
            self.send_response(status)
            self.send_header("Content-Type", media)
            if status == 302:
                self.send_header("Location", "https://elsewhere.test/")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer((HOSTILE_IP, 443), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, tmp
    server.shutdown()
    server.server_close()


def _fetch(tmp, env: dict | None = None, zone: dict | None = None) -> dict:
    import asyncio

    from mxd import config as config_mod
    from mxd import domaincheck
    from mxd.resolver import StaticResolver
    cfg = config_mod.load(None, dict({"MXD_DATA_DIR": str(tmp), "MXD_HOSTNAME": HOSTNAME,
                                      "MXD_OUTBOUND_TLS_CA_FILE": str(tmp / "ca.pem"),
                                      "MXD_OUTBOUND_ALLOW_PRIVATE": "true"}, **(env or {})))
    resolver = StaticResolver({"mta-sts.hostile.test": {"A": [HOSTILE_IP]}} if zone is None else zone)
    want = dnsrecords.mta_sts_policy("hostile.test", HOSTNAME)
    return asyncio.run(domaincheck.fetch_policy(cfg, "hostile.test", resolver, want))


@pytest.mark.parametrize("answer, status, detail", [
    ("ok", "found", "valid certificate"),
    ("redirect", "missing", "HTTP 302 (a redirect, which MTA-STS does not follow)"),
    ("html", "wrong", "not text/plain"),
    ("huge", "wrong", "more than 64 KiB"),
    ("other", "wrong", "not the one expected"),
    ("binary", "wrong", "not UTF-8"),
])
def test_fetch_judges_what_the_policy_host_answers(hostile, answer, status, detail):
    state, tmp = hostile
    state["answer"] = answer
    step = _fetch(tmp)
    assert (step["check"], step["status"]) == ("policy", status)
    assert detail in step["detail"]
    if answer == "other":
        assert step["found"].startswith("version: STSv1\r\n") and len(step["found"]) <= 2048


def test_fetch_gives_up_on_a_host_that_never_answers(hostile, monkeypatch):
    from mxd import domaincheck
    state, tmp = hostile
    state["answer"] = "silent"
    monkeypatch.setattr(domaincheck, "POLICY_TIMEOUT", 0.5)
    step = _fetch(tmp)
    assert step["status"] == "error" and "within 0.5 s" in step["detail"]


def test_fetch_never_reaches_private_addresses_unless_allowed(hostile):
    state, tmp = hostile
    state["answer"] = "ok"
    step = _fetch(tmp, env={"MXD_OUTBOUND_ALLOW_PRIVATE": "false"})
    assert step["status"] == "error" and "non-public" in step["detail"] and HOSTILE_IP in step["detail"]
    assert _fetch(tmp, zone={"mta-sts.hostile.test": "SERVFAIL"})["status"] == "error"
    assert _fetch(tmp, zone={})["status"] == "missing"


def test_mx_certificate_step_refuses_a_certificate_for_another_name(tmp_path):
    import asyncio

    from mxd import config as config_mod
    from mxd import domaincheck
    from mxd.resolver import StaticResolver
    from tests.support.sink import MailSink
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("someone-else.test").configure_cert(server)
    sink = MailSink(ip="127.26.1.4", tls_context=server).start()
    try:
        def step(mx_listen: str) -> dict:
            cfg = config_mod.load(None, {"MXD_DATA_DIR": str(tmp_path), "MXD_HOSTNAME": HOSTNAME,
                                         "MXD_MX_LISTEN": mx_listen, "MXD_OUTBOUND_ALLOW_PRIVATE": "true",
                                         "MXD_OUTBOUND_TLS_CA_FILE": str(tmp_path / "ca.pem")})
            resolver = StaticResolver({HOSTNAME: {"A": ["127.26.1.4"]}})
            return asyncio.run(domaincheck.check_mx_certificate(cfg, resolver))
        bad = step(f"0.0.0.0:{sink.port}")
        assert (bad["check"], bad["status"]) == ("mx_certificate", "certificate_invalid")
        assert HOSTNAME in bad["detail"]
        assert sink.messages == []
        off = step("")
        assert off["status"] == "error" and "mx_listen" in off["detail"]
    finally:
        sink.stop()
