"""rspamd before the 250, end to end: a running mxd with rspamd_url set, mail sent over SMTP.

With a real rspamd: the GTUBE message is refused 550 5.7.1 and nothing is stored; a clean message is
accepted and its score kept in Inbound.checks["spam"]; rspamd stopped mid-run costs no message (accepted,
recorded unscored). With a loopback stand-in answering what a test asks: soft reject is 451 4.7.1,
add header is a quarantine finding, an engine that never answers costs only rspamd_timeout."""
from __future__ import annotations

import http.server
import json
import smtplib
import threading
import uuid
from email.message import EmailMessage

import pytest

from tests.support.daemon import MxdProcess, wait_for
from tests.support.peers.rspamd import GTUBE, rspamd  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow


def _msg(subject: str, body: str = "Hello, the minutes of Tuesday are below.\n") -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Alice <alice@remote.test>"
    m["To"] = "agent@example.test"
    m["Subject"] = subject
    m["Message-ID"] = f"<{uuid.uuid4().hex}@remote.test>"
    m.set_content(body)
    return m


def _send(proc: MxdProcess, msg: EmailMessage, source: str = "127.0.0.1") -> None:
    with smtplib.SMTP("127.0.0.1", proc.mx_port, timeout=30, source_address=(source, 0)) as s:
        s.send_message(msg, from_addr="alice@remote.test", to_addrs=["agent@example.test"])


def _checks(proc: MxdProcess, marker: str) -> list[dict]:
    """Inbound.checks of the stored messages whose raw bytes hold `marker`, oldest first."""
    rows = proc.sql("SELECT checks FROM inbound WHERE instr(data, ?) > 0 ORDER BY received_at", (marker.encode(),))
    return [json.loads(r[0]) if r[0] else {} for r in rows]


def _daemon(tmp_path_factory, rspamd_url: str, nameserver: str, timeout: str = "5") -> MxdProcess:
    proc = MxdProcess(tmp_path_factory.mktemp("rspamd-mx") / "data", env={
        "MXD_RSPAMD_URL": rspamd_url, "MXD_RSPAMD_TIMEOUT": timeout, "MXD_DNS_NAMESERVERS": nameserver})
    proc.init()
    proc.start()
    if "spam_engine" not in proc.get("/api/health").text:      # the MX's checks before the 250 (mxd.defences.gate)
        proc.stop()
        pytest.skip("this build's MX does not ask a spam engine before the 250")
    assert proc.api("POST", "/api/mailboxes", json={"address": "agent@example.test"}).status_code == 201
    return proc


@pytest.fixture(scope="module")
def server(tmp_path_factory, rspamd):
    proc = _daemon(tmp_path_factory, rspamd.url, rspamd.dns.nameserver)
    yield proc
    proc.stop()


# ------------------------------------------------------------------ the real rspamd
def test_health_names_rspamd(server, rspamd):
    assert rspamd.url in json.dumps(server.get("/api/health").json())


def test_gtube_is_refused_before_the_250(server):
    marker = uuid.uuid4().hex
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _send(server, _msg(f"offer {marker}", f"{GTUBE}\n"))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1")
    # the next message is accepted and stored; the refused one never was
    after = uuid.uuid4().hex
    _send(server, _msg(f"after {after}"))
    assert wait_for(lambda: _checks(server, after))
    assert _checks(server, marker) == []


def test_clean_message_is_accepted_and_its_score_kept(server):
    marker = uuid.uuid4().hex
    _send(server, _msg(f"minutes {marker}"))
    checks, = wait_for(lambda: _checks(server, marker))
    spam = checks["spam"]
    assert spam["action"] == "accept" and spam["unscored"] is None
    assert isinstance(spam["score"], (int, float)) and spam["score"] < spam["required_score"]
    assert spam["engine_action"] in ("no action", "greylist")
    assert "MIME_GOOD" in spam["symbols"]                       # rspamd's own symbol, scored on this message
    assert not [q for q in checks.get("quarantine", []) if q["code"] == "spam"]
    found = wait_for(lambda: [m for m in server.messages("agent@example.test") if marker in m["subject"]])
    assert len(found) == 1
    engine = server.get("/api/health").json()["defences"]["check_time"]["spam_engine"]
    assert engine["count"] >= 1 and 0 < engine["share"] <= 1 and engine["p99_ms"] >= engine["p50_ms"] > 0


def test_score_is_shown_on_the_message(server):
    marker = uuid.uuid4().hex
    _send(server, _msg(f"shown {marker}"))
    checks, = wait_for(lambda: _checks(server, marker))
    found = wait_for(lambda: [m for m in server.messages("agent@example.test") if marker in m["subject"]])
    detail = server.api("GET", f"/api/messages/{found[0]['id']}").json()
    if not isinstance(detail.get("trust"), dict):
        pytest.skip("this build has no trust signals on messages (GET /api/messages/{id} trust)")
    shown = detail["trust"]["spam"]
    assert shown["score"] == checks["spam"]["score"] and shown["symbols"] == checks["spam"]["symbols"]
    assert shown["action"] == "accept"


def test_rspamd_stopped_mid_run_costs_no_message(server, rspamd):
    marker = uuid.uuid4().hex
    for i in range(2):
        _send(server, _msg(f"{marker} before {i}"))
    with rspamd.stopped():
        for i in range(3):
            _send(server, _msg(f"{marker} during {i}"))        # every one gets its 250
    for i in range(2):
        _send(server, _msg(f"{marker} after {i}"))
    stored = wait_for(lambda: len(_checks(server, marker)) == 7 and _checks(server, marker))
    assert [bool(c["spam"]["unscored"]) for c in stored] == [False, False, True, True, True, False, False]
    assert all("rspamd" in c["spam"]["unscored"] for c in stored[2:5])
    assert all(c["spam"]["action"] == "accept" for c in stored)
    assert any("unscored" in note for note in stored[2]["notes"])
    found = wait_for(lambda: len([m for m in server.messages("agent@example.test") if marker in m["subject"]]) == 7)
    assert found


def test_rspamd_stopped_under_load_costs_no_message(server, rspamd):
    """Ten clients sending while rspamd goes down and comes back: every message gets its 250 and is stored."""
    marker = uuid.uuid4().hex
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for i in range(5):
                _send(server, _msg(f"{marker} load {n}.{i}"))
        except BaseException as e:                              # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(_checks(server, marker)) >= 5)
    with rspamd.stopped():
        assert wait_for(lambda: len(_checks(server, marker)) >= 25 or not any(t.is_alive() for t in threads))
    for t in threads:
        t.join(120)
    assert errors == []
    stored = wait_for(lambda: len(_checks(server, marker)) == 50 and _checks(server, marker))
    assert stored and all(c["spam"]["action"] == "accept" for c in stored)
    found = wait_for(lambda: len([m for m in server.messages("agent@example.test") if marker in m["subject"]]) == 50)
    assert found


# ------------------------------------------------------------------ a stand-in that answers what we ask
class _Engine(http.server.ThreadingHTTPServer):
    daemon_threads = True
    answer: dict = {}
    hang = False
    seen: list = []                  # the headers of each request
    release = threading.Event()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(dict(self.headers))
        if self.server.hang:
            self.server.release.wait(60)
            return
        body = json.dumps(self.server.answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def engine():
    srv = _Engine(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def staged(tmp_path_factory, engine):
    from tests.support.dnsserver import DNSServer
    with DNSServer({}) as dns:
        proc = _daemon(tmp_path_factory, f"http://127.0.0.1:{engine.server_address[1]}", dns.nameserver,
                       timeout="1")
        proc.dns = dns                  # type: ignore[attr-defined]
        yield proc
        proc.stop()


def test_soft_reject_is_451(staged, engine):
    engine.hang, engine.answer = False, {"action": "soft reject", "score": 3.0, "required_score": 15.0, "symbols": {}}
    marker = uuid.uuid4().hex
    with pytest.raises(smtplib.SMTPDataError) as deferred:
        _send(staged, _msg(f"later {marker}"))
    assert deferred.value.smtp_code == 451 and deferred.value.smtp_error.startswith(b"4.7.1")
    assert _checks(staged, marker) == []


def test_add_header_is_a_quarantine_finding(staged, engine):
    engine.hang, engine.answer = False, {"action": "add header", "score": 9.5, "required_score": 15.0,
                                         "symbols": {"SUSPICIOUS": {"score": 9.5}}}
    marker = uuid.uuid4().hex
    _send(staged, _msg(f"doubtful {marker}"))
    checks, = wait_for(lambda: _checks(staged, marker))
    assert checks["spam"]["action"] == "quarantine" and checks["spam"]["symbols"] == {"SUSPICIOUS": 9.5}
    assert [q["code"] for q in checks["quarantine"]] == ["spam"]


def test_engine_that_never_answers_costs_only_the_timeout(staged, engine):
    engine.hang = True
    try:
        marker = uuid.uuid4().hex
        _send(staged, _msg(f"slow {marker}"))                   # accepted once rspamd_timeout (1 s) is over
        checks, = wait_for(lambda: _checks(staged, marker))
    finally:
        engine.hang = False
    assert checks["spam"]["action"] == "accept"
    assert checks["spam"]["unscored"] == "rspamd did not answer within 1s"


def test_the_engine_is_told_the_clients_confirmed_name(staged, engine):
    """rspamd's Hostname is the client's forward-confirmed reverse-DNS name (as Postfix tells milters): a
    PTR name that leads back to the IP is sent; none, or one that leads elsewhere, is not (rspamd then
    scores the client as nameless); mxd's own hostname goes as MTA-Name."""
    engine.hang, engine.answer = False, {"action": "no action", "score": 0.0, "required_score": 15.0, "symbols": {}}
    staged.dns.set_ptr("127.0.0.9", ["mail.remote.test"])
    staged.dns.set("mail.remote.test", "A", ["127.0.0.9"])
    staged.dns.set_ptr("127.0.0.10", ["liar.remote.test"])
    staged.dns.set("liar.remote.test", "A", ["127.0.0.99"])
    names = {}
    for ip in ("127.0.0.9", "127.0.0.10", "127.0.0.11"):
        engine.seen.clear()
        _send(staged, _msg(f"named {uuid.uuid4().hex}"), source=ip)
        [headers] = engine.seen
        assert headers["IP"] == ip and headers.get("MTA-Name")
        names[ip] = headers.get("Hostname")
    assert names == {"127.0.0.9": "mail.remote.test", "127.0.0.10": None, "127.0.0.11": None}
