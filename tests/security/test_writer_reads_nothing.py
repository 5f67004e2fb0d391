"""Threat: outside input parsed inside the store's single writer thread. Every 250, API write and audit
row waits for that thread, so one message that is slow to read stalls all of them. A submission's From
addresses are read on the event loop, before the writer job, which only receives them; so is the
delivery-status report of a bounce to a VERP address."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from types import SimpleNamespace

from mxd import pipeline, sending
from mxd.ingest import InboundRow
from mxd.sending import Outgoing


class _Writer:
    """Stands in for mxd.db.Database: every job runs on one thread of its own, as on the writer."""

    def __init__(self) -> None:
        self.threads: set[str] = set()
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="writer")

    async def write(self, fn, *args, bulk: bool = False):
        def job():
            self.threads.add(threading.current_thread().name)
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._thread, job)


def test_submission_reads_the_header_before_the_writer_job(monkeypatch):
    readers: list[str] = []
    real = sending.authors_of

    def authors_of(data: bytes) -> list[str]:
        readers.append(threading.current_thread().name)
        return real(data)

    monkeypatch.setattr(sending, "authors_of", authors_of)
    monkeypatch.setattr(sending, "accept", lambda cfg, principal, out, authors, *receipt: (None, {"authors": authors}))
    writer = _Writer()
    out = Outgoing("alice@sec.test", ["bob@sec.test"], b"From: Alice <alice@sec.test>\r\nSubject: s\r\n\r\nbody\r\n",
                   "submission")
    cfg = SimpleNamespace(seconds=lambda key: 0.0)
    answer = asyncio.run(sending.submit(cfg, writer, None, out))
    assert answer == {"authors": ["alice@sec.test"]}
    assert readers and not set(readers) & writer.threads


def test_a_bounce_is_parsed_before_the_writer_job(monkeypatch):
    parsers: list[str] = []
    reports: list[tuple[str, list]] = []
    real = pipeline.delivery_report

    def delivery_report(mail_from: str, raw: bytes) -> list[dict] | None:
        parsers.append(threading.current_thread().name)
        return real(mail_from, raw)

    monkeypatch.setattr(pipeline, "delivery_report", delivery_report)
    monkeypatch.setattr(pipeline.messages, "deliver", lambda *args, **kwargs: None)
    monkeypatch.setattr(pipeline, "bounce_received", lambda entry, report: reports.append((entry, report)))
    dsn = (b"From: MAILER-DAEMON@peer.test\r\nTo: bounces+q1@sec.test\r\nSubject: failed\r\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
           b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.peer.test\r\n\r\n"
           b"Final-Recipient: rfc822; bob@peer.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n")
    row = InboundRow("inb_1", 0.0, "smtp", "", [{"address": "bounces+q1@sec.test", "bounce_entry": "q1"}],
                     "192.0.2.1", "mx.peer.test", dsn, "")
    cfg = SimpleNamespace(thread_subject_window_days=7, pipeline_processes=1, auth_checks=False,
                          hostname="mx.sec.test", data_dir="/nonexistent", trusted_arc_sealers=[])
    writer = _Writer()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        async def run() -> None:
            await pipeline.Pipeline(cfg, writer, pool)._chunk([row])
        asyncio.run(run())
    assert [(entry, [r["action"] for r in report]) for entry, report in reports] == [("q1", ["failed"])]
    assert parsers and not set(parsers) & writer.threads
