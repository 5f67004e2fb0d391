"""Quarantine end to end: a message the real pipeline quarantines (an executable behind a double extension,
blocked by an agent mailbox's default policy) arrives over SMTP at a running daemon, stays out of every
reader, is listed by /api/quarantine and, once released, reaches the mailbox exactly once."""
from __future__ import annotations

import smtplib

import pytest

from tests.support.daemon import running_daemon, wait_for

pytestmark = pytest.mark.slow
AGENT = "agent@example.test"


def test_smtp_quarantined_then_released(tmp_path):
    with running_daemon(tmp_path / "data", mailboxes=[AGENT], ready=["example.test"]) as proc:
        box_id = proc.api("GET", f"/api/mailboxes/{AGENT}").json()["id"]
        with smtplib.SMTP("127.0.0.1", proc.mx_port, timeout=30) as s:
            s.sendmail("carol@partner.test", [AGENT],
                       b"From: Carol <carol@partner.test>\r\nTo: agent@example.test\r\nSubject: plain one\r\n\r\nhi\r\n")
            s.sendmail("carol@partner.test", [AGENT], (
                b"From: Carol <carol@partner.test>\r\nTo: agent@example.test\r\nSubject: invoice attached\r\n"
                b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
                b"Content-Type: text/plain\r\n\r\nplease run the quarterlyinvoice tool\r\n--b\r\n"
                b"Content-Type: application/octet-stream\r\n"
                b"Content-Disposition: attachment; filename=\"invoice.pdf.exe\"\r\n\r\nMZ\r\n--b--\r\n"))
        held = wait_for(lambda: proc.api("GET", "/api/quarantine").json()["data"], timeout=60)
        plain = wait_for(lambda: proc.messages(AGENT), timeout=60)
        assert [m["subject"] for m in held] == ["invoice attached"]
        assert [r["code"] for r in held[0]["quarantine"]] == ["blocked_attachment"]
        assert held[0]["verdict"] == "suspicious"
        held_id = held[0]["id"]
        assert [m["subject"] for m in plain] == ["plain one"]

        def visible() -> dict:
            search = proc.api("GET", "/api/messages/search", params={"q": "quarterlyinvoice"}).json()["data"]
            poll = proc.api("GET", f"/v1/mailboxes/{box_id}/inbox").json()["data"]
            return {"list": [m["id"] for m in proc.messages(AGENT)].count(held_id),
                    "search": [m["id"] for m in search].count(held_id),
                    "poll": [m["id"] for m in poll].count(held_id),
                    "get": proc.api("GET", f"/api/messages/{held_id}").status_code}

        assert visible() == {"list": 0, "search": 0, "poll": 0, "get": 404}
        found = proc.api("GET", "/api/messages/search", params={"q": "quarterlyinvoice", "include": "quarantined"})
        assert [m["id"] for m in found.json()["data"]] == [held_id]
        shown = proc.api("GET", f"/api/quarantine/{held_id}").json()
        assert shown["trust"]["risky_attachments"][0]["why"] == "double extension .pdf.exe"
        received_at = shown["received_at"]

        released = proc.api("POST", f"/api/quarantine/{held_id}/release")
        assert released.status_code == 200, released.text
        assert released.json()["received_at"] == received_at and released.json()["thread_id"]
        assert visible() == {"list": 1, "search": 1, "poll": 1, "get": 200}
        assert proc.api("GET", "/api/quarantine").json()["data"] == []
        events = proc.sql('SELECT "type" FROM "event" WHERE "message_id" = ? ORDER BY "id"', (held_id,))
        assert [t for (t,) in events] == ["message.quarantined", "message.inbound"]
        assert proc.api("POST", f"/api/quarantine/{held_id}/release").status_code == 409
        audit = proc.api("GET", "/api/audit", params={"action": "POST /api/quarantine/{id}/release"}).json()["data"]
        assert [a["result"] for a in audit] == ["conflict", "ok"]
