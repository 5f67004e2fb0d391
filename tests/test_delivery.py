"""Outbound delivery end to end: a real mxd, a real DNS server and aiosmtpd MX peers on loopback.

Every peer "host" is its own 127.0.0.x address; all of them listen on the one
port mxd is told to use for every MX (MXD_OUTBOUND_MX_PORT). A host that is
"down" is an address where nothing listens. Covers retries on the configured
schedule, hard failures with a DSN and a suppression, giving up after the
queue lifetime (with a delay notice first), null MX, MX preference and the
implicit MX, connection reuse and the per-domain connection limit, a bounce
that comes back after a 250, the operator's queue controls and a restart.
"""
from __future__ import annotations

import email
import email.policy
import json
import re
import smtplib
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, syntax

from tests.support.daemon import MxdProcess, free_port, wait_for
from tests.support.dnsserver import DNSServer
from tests.support.mail import dsn as bounce_message

SENDER = "agent@example.test"

# Each test domain's MX host and the loopback address it stands on ("down.test": nothing listens there;
# prio.test's preferred MX is down).
_HOSTS = {"example.test": "127.0.0.1", "greylist.test": "127.0.0.3", "reject.test": "127.0.0.4",
          "down.test": "127.0.0.5", "many.test": "127.0.0.9", "bounce.test": "127.0.0.10", "ops.test": "127.0.0.11",
          "restart.test": "127.0.0.12"}
ZONE: dict[str, Any] = {
    **{name: {"MX": [(10, f"mx.{name}")]} for name in _HOSTS},
    **{f"mx.{name}": {"A": [ip]} for name, ip in _HOSTS.items()},
    "nullmx.test": {"MX": [(0, ".")]},
    "prio.test": {"MX": [(20, "mx2.prio.test"), (10, "mx1.prio.test")]},
    "mx1.prio.test": {"A": ["127.0.0.6"]},
    "mx2.prio.test": {"A": ["127.0.0.7"]},
    "implicit.test": {"A": ["127.0.0.8"]},                      # no MX: the implicit MX
}
ZONE["example.test"]["TXT"] = ["v=spf1 ip4:127.0.0.0/8 -all"]

# High enough that no test here meets a send limit.
UNLIMITED = {"MXD_DAILY_SEND_CAP": "100000", "MXD_RATE_PER_MAILBOX_PER_MINUTE": "100000",
             "MXD_RATE_PER_DOMAIN_PER_MINUTE": "100000", "MXD_RATE_PER_RECIPIENT_PER_HOUR": "100000"}


# ---------------------------------------------------------------- the peer MX
class _CountingSMTP(SMTP):
    """aiosmtpd's SMTP that tells its Peer when a session greets and when it ends."""
    peer: "Peer"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.greeted = False
        self.delivered = 0

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if not self.greeted:                 # count real sessions, not the Controller's start-up probe
            self.greeted = True
            self.peer._opened()
        await super().smtp_EHLO(hostname)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.greeted:
            self.greeted = False
            self.peer._closed(self.delivered)
        super().connection_lost(exc)


class Peer:
    """An MX on ip:port. RCPT is answered from `rcpt_replies` (one per attempt, in order), then `default_reply`
    (None: 250). Records every RCPT attempt, every accepted message and every SMTP session."""

    def __init__(self, ip: str, port: int, *, rcpt_replies: list[str] | None = None,
                 default_reply: str | None = None, data_delay: float = 0.0) -> None:
        self.ip, self.port = ip, port
        self.rcpt_replies = list(rcpt_replies or [])
        self.default_reply = default_reply
        self.data_delay = data_delay
        self.lock = threading.Lock()
        self.attempts: list[tuple[float, str, str, str]] = []   # (time, MAIL FROM, RCPT, reply)
        self.accepted: list[dict] = []                          # {"time", "mail_from", "rcpts", "data"}
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.per_connection: list[int] = []                     # messages carried by each finished session
        peer = self

        class Factory(Controller):
            def factory(self) -> SMTP:
                smtp = _CountingSMTP(self.handler, **self.SMTP_kwargs)
                smtp.peer = peer
                return smtp
        self.controller = Factory(self, hostname=ip, port=port, server_hostname=f"peer-{ip}")

    # --- aiosmtpd handler hooks ---
    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        with self.lock:
            reply = self.rcpt_replies.pop(0) if self.rcpt_replies else self.default_reply
            self.attempts.append((time.time(), envelope.mail_from, address, reply or "250"))
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _CountingSMTP, session: Any, envelope: Any) -> str:
        if self.data_delay:
            import asyncio
            await asyncio.sleep(self.data_delay)
        with self.lock:
            self.accepted.append({"time": time.time(), "mail_from": envelope.mail_from,
                                  "rcpts": list(envelope.rcpt_tos), "data": envelope.original_content})
        server.delivered += 1
        return f"250 2.0.0 OK accepted by {self.ip}"

    # --- session accounting (from the SMTP protocol in the controller's thread) ---
    def _opened(self) -> None:
        with self.lock:
            self.connections += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def _closed(self, delivered: int) -> None:
        with self.lock:
            self.active -= 1
            self.per_connection.append(delivered)

    def start(self) -> "Peer":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    with DNSServer(ZONE) as server:
        yield server


@pytest.fixture(scope="module")
def mx_port() -> int:
    return free_port("127.0.0.3")


@pytest.fixture
def peer_factory(mx_port: int) -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(ip: str, **kwargs: Any) -> Peer:
        peer = Peer(ip, mx_port, **kwargs).start()
        made.append(peer)
        return peer
    yield make
    for peer in made:
        peer.stop()


@pytest.fixture
def mxd_factory(tmp_path: Path, dns: DNSServer, mx_port: int) -> Iterator[Callable[..., MxdProcess]]:
    """make(**env) → a started mxd sending for example.test (mailbox agent@, domain ready) to the peers."""
    made: list[MxdProcess] = []

    def make(**env: str) -> MxdProcess:
        full = {"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2", "MXD_OUTBOUND_MX_PORT": str(mx_port),
                "MXD_RETRY_SCHEDULE": "1s,1s", "MXD_QUEUE_LIFETIME": "10m", "MXD_DELAY_WARNING": "0", **UNLIMITED}
        full.update(env)
        proc = MxdProcess(tmp_path / f"mxd{len(made)}", domains=["example.test"], env=full)
        proc.init()
        made.append(proc)
        proc.start()
        assert proc.api("POST", "/api/mailboxes", json={"address": SENDER}).status_code == 201
        assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        return proc
    yield make
    for proc in made:
        proc.stop()


# ---------------------------------------------------------------- helpers
def send(m: MxdProcess, to: str | list[str], subject: str = "hello", status: int = 202) -> dict:
    r = m.api("POST", "/api/send", json={"from": SENDER, "to": to, "subject": subject, "text": f"body of {subject}"})
    assert r.status_code == status, r.text
    return r.json()


def delivery(m: MxdProcess, message_id: str) -> list[dict]:
    r = m.api("GET", f"/api/messages/{message_id}")
    assert r.status_code == 200, r.text
    return r.json()["delivery"]


def wait_status(m: MxdProcess, message_id: str, status: str, timeout: float = 30.0) -> dict:
    """The (single) recipient's delivery row once it reaches `status`; fails with the last row seen."""
    last: list[dict] = []

    def check() -> dict | None:
        nonlocal last
        last = delivery(m, message_id)
        return last[0] if last and last[0]["status"] == status else None
    row = wait_for(check, timeout)
    assert row, f"not {status} after {timeout}s: {last}"
    return row


def events(m: MxdProcess, message_id: str) -> list[tuple[str, dict]]:
    db = sqlite3.connect(f"file:{m.data_dir / 'mxd.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT type, data FROM event WHERE message_id = ? ORDER BY created_at, id",
                          (message_id,)).fetchall()
    finally:
        db.close()
    return [(t, json.loads(d) if d else {}) for t, d in rows]


def dsns(m: MxdProcess, mailbox: str = SENDER) -> list[email.message.EmailMessage]:
    """Every multipart/report (delivery-status) in `mailbox`, parsed from its raw bytes by the stdlib."""
    found = []
    for summary in m.messages(mailbox):
        if summary.get("direction") == "out":
            continue
        raw = m.api("GET", f"/api/messages/{summary['id']}/raw")
        assert raw.status_code == 200
        msg = email.message_from_bytes(raw.content, policy=email.policy.default)
        if msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status":
            found.append(msg)
    return found


def status_blocks(dsn: email.message.Message) -> list[email.message.Message]:
    """The per-recipient field groups of a DSN's message/delivery-status part (RFC 3464 2.3)."""
    [part] = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"]
    blocks = part.get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2, blocks
    return blocks[1:]


def wait_dsn(m: MxdProcess, recipient: str, action: str, timeout: float = 30.0) -> email.message.Message:
    """The per-recipient block of the DSN naming `recipient` with `action`, once it is in the sender's mailbox."""
    def find() -> email.message.Message | None:
        for dsn in dsns(m):
            for block in status_blocks(dsn):
                if recipient in str(block["Final-Recipient"]) and str(block["Action"]).strip() == action:
                    return block
        return None
    block = wait_for(find, timeout, every=0.25)
    assert block is not None, f"no DSN ({action}) for {recipient} after {timeout}s"
    return block


def suppressed(m: MxdProcess) -> set[str]:
    r = m.api("GET", "/api/suppressions", params={"limit": 500})
    assert r.status_code == 200, r.text
    return {row["address"] for row in r.json()["data"]}


# ---------------------------------------------------------------- retries
def test_temporary_failures_retry_on_schedule_then_deliver(mxd_factory, peer_factory):
    peer = peer_factory("127.0.0.3", rcpt_replies=["451 4.7.1 greylisted, try again later"] * 2)
    m = mxd_factory(MXD_RETRY_SCHEDULE="1s,1s")
    sent = send(m, "bob@greylist.test", "greylisted")
    assert sent["recipients"][0]["status"] == "queued"
    seen = wait_for(lambda: delivery(m, sent["id"])[0]["status"] == "deferred" or None, 10)
    assert seen, delivery(m, sent["id"])
    row = wait_status(m, sent["id"], "delivered", 15)
    assert row["attempts"] == 3
    assert row["last_reply"].startswith("250 2.0.0") and row["last_host"] == "mx.greylist.test"

    types = [t for t, _ in events(m, sent["id"])]
    assert types == ["message.queued", "message.deferred", "message.deferred", "message.delivered"]
    deferred = [d for t, d in events(m, sent["id"]) if t == "message.deferred"]
    assert [d["attempts"] for d in deferred] == [1, 2]
    assert all("451 4.7.1" in d["reply"] for d in deferred)

    # the peer saw three attempts, each about one second (the schedule, +-10% jitter) after the one before
    times = [t for t, _, rcpt, _ in peer.attempts if rcpt == "bob@greylist.test"]
    assert len(times) == 3, peer.attempts
    gaps = [b - a for a, b in zip(times, times[1:])]
    print(f"gaps between attempts: {gaps}")
    assert all(0.85 <= g <= 1.5 for g in gaps), gaps
    assert len(peer.accepted) == 1 and peer.accepted[0]["rcpts"] == ["bob@greylist.test"]


def test_each_attempt_names_its_transport_policy(mxd_factory, peer_factory):
    """GET /api/queue/{id} says which policy the last attempt was held to, and what came of TLS: a peer
    without STARTTLS and without DANE or MTA-STS is reached in clear, opportunistically (RFC 7435)."""
    peer = peer_factory("127.0.0.3", rcpt_replies=["451 4.7.1 greylisted, try again later"])
    m = mxd_factory(MXD_RETRY_SCHEDULE="1s,1s")
    sent = send(m, "carol@greylist.test", "which policy")
    qid = sent["recipients"][0]["queue_id"]
    wait_status(m, sent["id"], "delivered", 15)
    entry = m.api("GET", f"/api/queue/{qid}").json()
    assert entry["tls"] == {"policy": "opportunistic", "mode": "", "host": "mx.greylist.test",
                            "detail": "no TLS: STARTTLS not offered"}, entry
    assert len(peer.accepted) == 1


def test_hard_failure_bounces_and_suppresses(mxd_factory, peer_factory):
    peer = peer_factory("127.0.0.4", default_reply="550 5.1.1 <nobody@reject.test>: no such user")
    m = mxd_factory()
    sent = send(m, "nobody@reject.test", "to nobody")
    row = wait_status(m, sent["id"], "failed", 10)
    assert row["attempts"] == 1 and row["last_reply"].startswith("550 5.1.1")
    assert len(peer.attempts) == 1 and not peer.accepted
    assert [t for t, _ in events(m, sent["id"])] == ["message.queued", "message.failed"]

    block = wait_dsn(m, "nobody@reject.test", "failed")
    assert str(block["Status"]).strip() == "5.1.1"
    assert "550 5.1.1" in str(block["Diagnostic-Code"])
    [dsn] = dsns(m)
    assert dsn["Auto-Submitted"] == "auto-replied" and "MAILER-DAEMON" in dsn["From"]

    assert "nobody@reject.test" in suppressed(m)
    r = m.api("POST", "/api/send", json={"from": SENDER, "to": "nobody@reject.test", "subject": "again",
                                         "text": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "recipient_suppressed"
    time.sleep(0.5)
    assert len(peer.attempts) == 1


@pytest.mark.slow
def test_unreachable_host_is_retried_warned_about_then_given_up(mxd_factory):
    # nothing listens on 127.0.0.5: every attempt is refused at connect time
    m = mxd_factory(MXD_RETRY_SCHEDULE="1s", MXD_QUEUE_LIFETIME="6s", MXD_DELAY_WARNING="2s")
    sent = send(m, "bob@down.test", "into the void")
    row = wait_status(m, sent["id"], "deferred", 10)
    assert "127.0.0.5" in row["last_reply"] and "refused" in row["last_reply"].lower()

    delayed = wait_dsn(m, "bob@down.test", "delayed", 15)
    assert str(delayed["Status"]).startswith("4.")
    assert delayed["Will-Retry-Until"]
    assert wait_status(m, sent["id"], "deferred", 1)                # still being tried after the warning

    row = wait_status(m, sent["id"], "failed", 20)
    assert "gave up" in row["last_reply"] and row["attempts"] >= 5
    failed = wait_dsn(m, "bob@down.test", "failed")
    assert "gave up" in str(failed["Diagnostic-Code"])
    types = [t for t, _ in events(m, sent["id"])]
    assert types[0] == "message.queued" and types[-1] == "message.failed"
    assert set(types[1:-1]) == {"message.deferred"}
    assert "bob@down.test" not in suppressed(m)                     # a timeout is no hard bounce


def test_null_mx_fails_at_once(mxd_factory, dns):
    m = mxd_factory()
    sent = send(m, "bob@nullmx.test", "null mx")
    row = wait_status(m, sent["id"], "failed", 10)
    assert row["attempts"] == 1 and "5.1.10" in row["last_reply"]
    block = wait_dsn(m, "bob@nullmx.test", "failed")
    assert str(block["Status"]).strip() == "5.1.10"
    # mxd asked for the MX and nothing more: no address lookup for a domain that takes no mail
    assert ("nullmx.test", "MX") in {(n, t) for n, t, _ in dns.queries}


# ---------------------------------------------------------------- routing
def test_mx_preference_falls_back_to_the_next_host(mxd_factory, peer_factory):
    backup = peer_factory("127.0.0.7")                  # mx1.prio.test (127.0.0.6, preference 10) is down
    m = mxd_factory()
    sent = send(m, "bob@prio.test", "prio")
    row = wait_status(m, sent["id"], "delivered", 10)
    assert row["attempts"] == 1 and row["last_host"] == "mx2.prio.test"
    assert [a[2] for a in backup.attempts] == ["bob@prio.test"]


def test_implicit_mx_is_the_domains_address(mxd_factory, peer_factory):
    peer = peer_factory("127.0.0.8")
    m = mxd_factory()
    sent = send(m, "bob@implicit.test", "implicit")
    row = wait_status(m, sent["id"], "delivered", 10)
    assert row["last_host"] == "implicit.test"
    assert [a["rcpts"] for a in peer.accepted] == [["bob@implicit.test"]]


def test_one_connection_carries_several_messages(mxd_factory, peer_factory):
    peer = peer_factory("127.0.0.9", data_delay=0.05)
    m = mxd_factory()
    with ThreadPoolExecutor(10) as pool:
        sent = list(pool.map(lambda i: send(m, f"user{i}@many.test", f"many {i}"), range(10)))
    for s in sent:
        wait_status(m, s["id"], "delivered", 20)
    wait_for(lambda: peer.active == 0 or None, 5)
    assert len(peer.accepted) == 10
    assert sorted(r for a in peer.accepted for r in a["rcpts"]) == sorted(f"user{i}@many.test" for i in range(10))
    print(f"{peer.connections} connections carried {peer.per_connection} messages, at most {peer.max_active} at once")
    assert peer.connections < 10, peer.per_connection
    assert max(peer.per_connection) >= 2, peer.per_connection
    assert peer.max_active <= 4, peer.max_active                 # connections_per_domain, default 4


def test_connections_per_domain_is_a_ceiling(mxd_factory, peer_factory):
    peer = peer_factory("127.0.0.9", data_delay=0.05)
    m = mxd_factory(MXD_CONNECTIONS_PER_DOMAIN="2")
    with ThreadPoolExecutor(8) as pool:
        sent = list(pool.map(lambda i: send(m, f"user{i}@many.test", f"burst {i}"), range(40)))
    for s in sent:
        wait_status(m, s["id"], "delivered", 30)
    wait_for(lambda: peer.active == 0 or None, 5)
    assert len(peer.accepted) == 40
    print(f"{peer.connections} connections carried {peer.per_connection} messages, at most {peer.max_active} at once")
    assert peer.max_active <= 2 and peer.connections < 40


# ---------------------------------------------------------------- a bounce after 250
def _dsn_for(return_path: str, recipient: str) -> bytes:
    return bounce_message(return_path, recipient, mta="mx.bounce.test")


def test_bounce_after_acceptance_fails_and_suppresses(mxd_factory, peer_factory):
    peer = peer_factory("127.0.0.10")
    m = mxd_factory()
    sent = send(m, "later@bounce.test", "accepted then bounced")
    wait_status(m, sent["id"], "delivered", 10)
    [got] = peer.accepted
    return_path = got["mail_from"]
    queue_id = sent["recipients"][0]["queue_id"]
    assert re.fullmatch(rf"bounces\+{queue_id}\.[0-9a-z]{{16}}@example\.test", return_path), return_path

    with smtplib.SMTP(m.host, m.mx_port, timeout=10) as s:
        s.ehlo("mx.bounce.test")
        refused = s.sendmail("", [return_path], _dsn_for(return_path, "later@bounce.test"))
        assert refused == {}
    row = wait_status(m, sent["id"], "failed", 15)
    assert "5.1.1" in row["last_reply"]
    assert wait_for(lambda: "later@bounce.test" in suppressed(m) or None, 10)
    assert [t for t, _ in events(m, sent["id"])] == ["message.queued", "message.delivered", "message.failed"]


# ---------------------------------------------------------------- operator controls
def _queue_row(m: MxdProcess, queue_id: str) -> dict:
    rows = [r for r in m.api("GET", "/api/queue", params={"limit": 500}).json()["data"] if r["id"] == queue_id]
    assert len(rows) == 1
    return rows[0]


def test_operator_hold_release_retry_delete(mxd_factory, peer_factory):
    peer = peer_factory("127.0.0.11", default_reply="451 4.3.2 not now")
    m = mxd_factory(MXD_RETRY_SCHEDULE="1h")                 # nothing is retried unless the operator says so
    sent = send(m, "bob@ops.test", "operated")
    qid = sent["recipients"][0]["queue_id"]
    wait_status(m, sent["id"], "deferred", 10)
    assert len(peer.attempts) == 1
    assert qid in {r["id"] for r in m.api("GET", "/api/queue", params={"status": "deferred"}).json()["data"]}

    r = m.api("POST", f"/api/queue/{qid}/hold")
    assert r.status_code == 200 and r.json()["status"] == "held", r.text
    assert m.api("POST", f"/api/queue/{qid}/retry").status_code == 409      # held entries are not retried
    assert m.api("POST", f"/api/queue/{qid}/hold").status_code == 409
    time.sleep(1.0)
    assert len(peer.attempts) == 1 and _queue_row(m, qid)["status"] == "held"

    r = m.api("POST", f"/api/queue/{qid}/release")                          # released: due at once
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    assert wait_for(lambda: len(peer.attempts) == 2 or None, 10), peer.attempts
    wait_status(m, sent["id"], "deferred", 5)
    assert m.api("POST", f"/api/queue/{qid}/release").status_code == 409

    peer.default_reply = None                                               # the peer is fine now
    r = m.api("POST", f"/api/queue/{qid}/retry")
    assert r.status_code == 200, r.text
    row = wait_status(m, sent["id"], "delivered", 10)
    assert row["attempts"] == 3 and len(peer.accepted) == 1
    assert m.api("POST", f"/api/queue/{qid}/retry").status_code == 409
    assert m.api("DELETE", f"/api/queue/{qid}").status_code == 409          # delivered: nothing to delete
    types = [t for t, _ in events(m, sent["id"])]
    assert types == ["message.queued", "message.deferred", "message.held", "message.released",
                     "message.deferred", "message.delivered"]

    # delete a deferred entry: it fails for good, is never tried again, and is no hard bounce
    peer.default_reply = "451 4.3.2 not now"
    other = send(m, "carol@ops.test", "deleted")
    oid = other["recipients"][0]["queue_id"]
    wait_status(m, other["id"], "deferred", 10)
    before = len(peer.attempts)
    assert m.api("DELETE", f"/api/queue/{oid}").status_code == 204
    row = wait_status(m, other["id"], "failed", 5)
    assert "deleted" in row["last_reply"]
    assert m.api("POST", f"/api/queue/{oid}/retry").status_code == 409
    assert m.api("DELETE", f"/api/queue/{oid}").status_code == 409
    assert m.api("DELETE", "/api/queue/q_doesnotexist").status_code == 404
    time.sleep(0.5)
    assert len(peer.attempts) == before
    assert "carol@ops.test" not in suppressed(m)


# ---------------------------------------------------------------- restart
@pytest.mark.slow
def test_deferred_entries_survive_a_restart(mxd_factory, peer_factory):
    peer = peer_factory("127.0.0.12", default_reply="451 4.4.5 busy")
    m = mxd_factory(MXD_RETRY_SCHEDULE="3s")
    sent = [send(m, f"r{i}@restart.test", f"restart {i}") for i in range(3)]
    for s in sent:
        wait_status(m, s["id"], "deferred", 10)
    assert m.stop() == 0                                    # SIGTERM, between attempts
    peer.default_reply = None
    m.start()
    for s in sent:
        row = wait_status(m, s["id"], "delivered", 20)
        assert row["attempts"] == 2
    assert sorted(r for a in peer.accepted for r in a["rcpts"]) == [f"r{i}@restart.test" for i in range(3)]
