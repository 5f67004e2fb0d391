"""The same daemon on PostgreSQL (the store for several nodes): inbound, threads, search, send and queue."""
from __future__ import annotations

import smtplib
import time

import pytest

from tests.support.daemon import MxdProcess
from tests.support.pg import fresh_database
from tests.support.smtp import insecure_tls

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg_url():
    with fresh_database("mxd_test") as url:
        yield url


def test_daemon_on_postgresql(tmp_path, pg_url):
    proc = MxdProcess(tmp_path / "data", env={"MXD_STORE_URL": pg_url, "MXD_OUTBOUND_MX_PORT": "1"})
    proc.init()
    proc.start()
    try:
        for box in ("agent@example.test", "other@example.test"):
            assert proc.api("POST", "/api/mailboxes", json={"address": box}).status_code == 201
        with smtplib.SMTP("127.0.0.1", proc.mx_port) as s:
            s.sendmail("x@remote.test", ["agent@example.test"],
                       b"Subject: Re: on pg\r\nMessage-ID: <r@x>\r\nIn-Reply-To: <p@x>\r\n\r\nreply first\r\n")
            s.sendmail("x@remote.test", ["agent@example.test"],
                       b"Subject: on pg\r\nMessage-ID: <p@x>\r\n\r\nhello postgres world\r\n")
        msgs = proc.wait_messages(2, "agent@example.test")
        assert {m["subject"] for m in msgs} == {"on pg", "Re: on pg"}
        assert len({m["thread_id"] for m in msgs}) == 1
        found = proc.api("GET", "/api/messages/search", params={"q": "postgres"}).json()["data"]
        assert [m["subject"] for m in found] == ["on pg"]
        assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        r = proc.api("POST", "/api/send", json={"from": "agent@example.test", "to": ["bob@remote.test",
                                                "other@example.test"], "subject": "out", "text": "x"},
                     headers={"Idempotency-Key": "pg-1"})
        assert r.status_code == 202, r.text
        again = proc.api("POST", "/api/send", json={"from": "agent@example.test", "to": ["bob@remote.test",
                                                    "other@example.test"], "subject": "out", "text": "x"},
                         headers={"Idempotency-Key": "pg-1"})
        assert again.json()["id"] == r.json()["id"]
        assert len(proc.wait_messages(1, "other@example.test")) == 1
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            entries = proc.api("GET", "/api/queue").json()["data"]
            if entries and entries[0]["status"] == "deferred":
                break
            time.sleep(0.2)
        assert [e["recipient"] for e in entries] == ["bob@remote.test"] and entries[0]["status"] == "deferred"

        # SMTP submission: 250 after accept, then the pipeline signs, files and queues it (on PostgreSQL too)
        token = proc.token(["send"], ["agent@example.test"])
        with smtplib.SMTP("127.0.0.1", proc.submission_port, timeout=10) as s:
            s.starttls(context=insecure_tls())
            s.login("agent@example.test", token)
            s.mail("agent@example.test")
            s.rcpt("carol@remote.test")
            s.rcpt("other@example.test")
            code, reply = s.data(b"From: agent@example.test\r\nTo: carol@remote.test\r\nSubject: submitted on pg"
                                 b"\r\n\r\nvia 587\r\n")
        assert code == 250
        sent_id = reply.decode().split()[-1]
        assert len([m for m in proc.wait_messages(2, "other@example.test") if m["subject"] == "submitted on pg"]) == 1
        detail = proc.api("GET", f"/api/messages/{sent_id}").json()
        assert detail["direction"] == "out" and [d["recipient"] for d in detail["delivery"]] == ["carol@remote.test"]
        raw = proc.api("GET", f"/api/messages/{sent_id}/raw").content
        assert raw.count(b"DKIM-Signature:") == 2 and raw.endswith(b"via 587\r\n")
    finally:
        proc.stop()
