"""kill -9 in the middle of outbound delivery loses nothing: 2,000 messages, a crash after ~500, a restart.
(And below: kill -9 after SMTP submission's 250s but before the messages were signed and queued.)

A counting aiosmtpd MX (crash.test, 127.0.0.13) records every (Message-ID,
recipient) it accepts. Its DATA replies wait at a gate until all 2,000 sends
are accepted by the API, so the crash comes in the middle of delivery and not
of sending. mxd is killed with SIGKILL once the peer holds ~500 messages and
restarted on the same data directory. Every recipient must then arrive at
least once and at most twice (a message the peer took whose 250 mxd never
recorded is sent again: at-least-once), and every queue entry must end
delivered.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from tests.support.daemon import MxdProcess, free_port, wait_for
from tests.support.dnsserver import DNSServer
from tests.support.smtp import insecure_tls

pytestmark = pytest.mark.slow

N = 2000
KILL_AFTER = 500
PEER_IP = "127.0.0.13"
SENDER = "agent@example.test"
_MSGID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]+>)", re.I | re.M)


class CountingPeer:
    """Accepts everything; remembers (Message-ID, recipient) per accepted message. DATA waits for `gate`."""

    def __init__(self, ip: str, port: int) -> None:
        self.received: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.controller = Controller(self, hostname=ip, port=port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        while not self.gate.is_set():
            await asyncio.sleep(0.02)
        m = _MSGID.search(envelope.original_content or b"")
        msgid = m.group(1).decode() if m else "?"
        with self.lock:
            self.received.extend((msgid, rcpt) for rcpt in envelope.rcpt_tos)
        return "250 2.0.0 OK"

    def count(self) -> int:
        with self.lock:
            return len(self.received)


def _sender(tmp_path: Path, dns: DNSServer, port: int, **env: str) -> MxdProcess:
    """mxd sending to the peer on `port` (MX found through `dns`), without send caps in the way."""
    return MxdProcess(tmp_path / "data", env={
        "MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2", "MXD_OUTBOUND_MX_PORT": str(port),
        "MXD_DAILY_SEND_CAP": "100000", "MXD_RATE_PER_MAILBOX_PER_MINUTE": "100000",
        "MXD_RATE_PER_DOMAIN_PER_MINUTE": "100000", "MXD_RATE_PER_RECIPIENT_PER_HOUR": "100000", **env})


def _start_ready(m: MxdProcess) -> None:
    m.init()
    m.start()
    assert m.api("POST", "/api/mailboxes", json={"address": SENDER}).status_code == 201
    assert m.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200


def _queue_counts(db_path: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return dict(db.execute("SELECT status, count(*) FROM queue_entry GROUP BY status").fetchall())
    finally:
        db.close()


def _stuck(db_path: Path) -> int:
    """Active entries whose lease (taken by the killed process) is still in the future."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT count(*) FROM queue_entry WHERE status IN ('queued', 'deferred') "
                          "AND lease_until > ?", (time.time(),)).fetchone()[0]
    finally:
        db.close()


def test_kill9_during_delivery_loses_nothing(tmp_path):
    started = time.monotonic()
    port = free_port(PEER_IP)
    dns = DNSServer({"crash.test": {"MX": [(10, "mx.crash.test")]}, "mx.crash.test": {"A": [PEER_IP]}}).start()
    peer = CountingPeer(PEER_IP, port)
    peer.controller.start()
    m = _sender(tmp_path, dns, port, MXD_RETRY_SCHEDULE="1s")
    db_path = m.data_dir / "mxd.db"
    try:
        _start_ready(m)

        local = threading.local()

        def send(i: int) -> tuple[str, str]:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = httpx.Client(headers={"Authorization": f"Bearer {m.admin_token}"},
                                                     timeout=60)
            rcpt = f"user{i:04d}@crash.test"
            r = client.post(m.url("/api/send"), json={"from": SENDER, "to": rcpt, "subject": f"crash {i}",
                                                      "text": f"message {i}\n"})
            assert r.status_code == 202, r.text
            return r.json()["id"], rcpt

        with ThreadPoolExecutor(16) as pool:
            accepted = list(pool.map(send, range(N)))
        sent_at = time.monotonic()
        print(f"\n{N} sends accepted in {sent_at - started:.1f}s (from the start of the test)")
        assert len({mid for mid, _ in accepted}) == N

        peer.gate.set()                                        # let delivery run, then pull the plug
        deadline = time.monotonic() + 30
        while peer.count() < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.005)
        before_kill = peer.count()
        m.kill9()
        print(f"kill -9 with {before_kill} received by the peer; queue {_queue_counts(db_path)}")
        assert KILL_AFTER <= before_kill < N

        m.start()
        deadline = started + 85
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            counts = _queue_counts(db_path)
            if not counts.get("queued") and not counts.get("deferred"):
                break
            time.sleep(0.2)
        print(f"after restart: queue {counts}, peer received {peer.count()}, "
              f"{time.monotonic() - started:.1f}s since the start")
        assert not counts.get("queued") and not counts.get("deferred"), (
            f"queue not drained after the restart: {counts}; {_stuck(db_path)} active entries still leased by "
            f"the killed process")
    finally:
        m.stop()
        peer.controller.stop()
        dns.stop()

    by_rcpt = Counter(rcpt for _, rcpt in peer.received)
    twice = sorted(r for r, c in by_rcpt.items() if c == 2)
    print(f"received twice: {len(twice)} of {N} (at-least-once across the crash)")
    missing = [rcpt for _, rcpt in accepted if by_rcpt[rcpt] == 0]
    assert not missing, f"{len(missing)} never arrived, e.g. {missing[:5]}"
    assert max(by_rcpt.values()) <= 2, by_rcpt.most_common(3)
    assert set(by_rcpt) == {rcpt for _, rcpt in accepted}
    # one Message-ID per recipient: a duplicate is the same message again, not a new one
    ids = {rcpt: {mid for mid, r in peer.received if r == rcpt} for rcpt in twice}
    assert all(len(v) == 1 for v in ids.values())

    # every message the API accepted is delivered (read-only look at the store)
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        rows = dict(db.execute("SELECT message_id, status FROM queue_entry").fetchall())
    finally:
        db.close()
    assert {mid: rows.get(mid) for mid, _ in accepted} == {mid: "delivered" for mid, _ in accepted}
    assert time.monotonic() - started < 90


# ---------------------------------------------------------------- submission: 250 before signing
SUBMITTED = 300


def _pending_submissions(db_path: Path) -> int:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT count(*) FROM inbound WHERE source = 'outbound' AND NOT processed").fetchone()[0]
    finally:
        db.close()


def _worker_pids(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_kill9_after_submission_250s_before_signing_loses_nothing(tmp_path):
    """SMTP submission answers 250 once the unsigned message and its preflight decision are committed;
    signing, the sent copy and the queue entries follow in the pipeline. Here the worker process that
    signs is stopped (SIGSTOP), 300 messages get their 250, mxd is killed with SIGKILL, and after a
    restart every one of them is signed and delivered exactly once."""
    port = free_port(PEER_IP)
    dns = DNSServer({"crash.test": {"MX": [(10, "mx.crash.test")]}, "mx.crash.test": {"A": [PEER_IP]}}).start()
    peer = CountingPeer(PEER_IP, port)
    peer.gate.set()
    peer.controller.start()
    m = _sender(tmp_path, dns, port)
    db_path = m.data_dir / "mxd.db"
    try:
        _start_ready(m)
        r = m.api("POST", "/api/tokens", json={"name": "s", "scopes": ["send"], "mailboxes": [SENDER]})
        token = r.json()["token"]

        def session(numbers: list[int]) -> list[str]:
            ids = []
            with smtplib.SMTP("127.0.0.1", m.submission_port, timeout=30) as s:
                s.starttls(context=insecure_tls())
                s.login(SENDER, token)
                for i in numbers:
                    body = (f"From: {SENDER}\r\nTo: <user{i:04d}@crash.test>\r\nSubject: submitted {i}\r\n"
                            f"Message-ID: <sub-{i}@example.test>\r\n\r\nmessage {i}\r\n").encode()
                    s.mail(SENDER)
                    s.rcpt(f"user{i:04d}@crash.test")
                    code, reply = s.data(body)
                    assert code == 250, reply
                    ids.append(reply.decode().split()[-1])
            return ids

        session([0])                                           # the worker process exists once this is out
        assert wait_for(lambda: peer.count() == 1, 30)
        workers = _worker_pids(m.proc.pid)
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        with ThreadPoolExecutor(4) as pool:
            accepted = [i for ids in pool.map(session, [list(range(1, SUBMITTED + 1))[k::4] for k in range(4)])
                        for i in ids]
        assert len(set(accepted)) == SUBMITTED
        m.kill9()
        assert _pending_submissions(db_path) == SUBMITTED      # all of them had their 250 and nothing more
        assert peer.count() == 1

        m.start()
        assert wait_for(lambda: peer.count() >= SUBMITTED + 1, 60), f"only {peer.count()} arrived"
        assert wait_for(lambda: _queue_counts(db_path).get("delivered") == SUBMITTED + 1, 30), _queue_counts(db_path)
        assert _pending_submissions(db_path) == 0
        for message_id in accepted[:5]:                        # the ids in the 250 replies are the sent copies
            r = m.api("GET", f"/api/messages/{message_id}")
            assert r.status_code == 200 and r.json()["delivery"][0]["status"] == "delivered"
    finally:
        m.stop()
        peer.controller.stop()
        dns.stop()
    by_rcpt = Counter(rcpt for _, rcpt in peer.received)
    assert by_rcpt == Counter({f"user{i:04d}@crash.test": 1 for i in range(SUBMITTED + 1)})
    assert {mid for mid, _ in peer.received} == {f"<sub-{i}@example.test>" for i in range(SUBMITTED + 1)}
