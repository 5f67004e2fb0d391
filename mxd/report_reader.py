"""The report reader: DMARC aggregate and SMTP TLS reports arriving at the report addresses become rows.

Every inbound message at a report address (postmaster@ of a served domain, the `rua=` the DNS plan
publishes) is looked at once, from the store, after the pipeline delivered it: its report parts are parsed
(mxd.reports, in a thread, bounded by `report_max_bytes`) and kept (mxd.store.reports). The message itself
stays ordinary mail; a part that cannot be read is recorded against it (`GET /api/reports/errors`), never
retried in a loop and never a crash.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from mxd import reports
from mxd.background import BackgroundWorker
from mxd.config import Config
from mxd.db import Database
from mxd.store import messages
from mxd.store import reports as report_rows

log = logging.getLogger("mxd.reports")
BATCH = 20


def _raw(message_id: str) -> bytes | None:
    msg = messages.get(message_id)
    return None if msg is None else messages.raw(msg)


def read_message(raw: bytes, max_bytes: int) -> tuple[list[reports.Report], list[dict]]:
    """(reports, errors) of one message; an unexpected failure is an error of the message, not of the reader."""
    try:
        return reports.in_message(raw, max_bytes)
    except Exception as e:          # a bug on hostile input: flag the message and go on
        log.exception("report parsing failed")
        return [], [{"code": "invalid_report", "detail": f"{e.__class__.__name__}", "part": ""}]


class ReportReader(BackgroundWorker):
    name = "mxd-reports"
    poll = 5.0
    failure = "report reader pass failed"
    log = log

    def __init__(self, cfg: Config, db: Database) -> None:
        super().__init__()
        self.cfg, self.db = cfg, db

    async def run_once(self) -> float | None:
        pending = await self.db.read(report_rows.unread, BATCH)
        for message_id, mailbox_id in pending:
            await self.read_one(message_id, mailbox_id)
        return 0 if len(pending) == BATCH else None

    async def read_one(self, message_id: str, mailbox_id: str) -> dict[str, Any]:
        raw = await self.db.read(_raw, message_id)
        found, errors = await asyncio.to_thread(read_message, raw or b"", self.cfg.report_max_bytes)
        added = await self.db.write(report_rows.record, message_id, mailbox_id, found, errors)
        if errors:
            log.warning("report message %s: %s", message_id, "; ".join(f"{e['code']}: {e['detail']}" for e in errors))
        return {"reports": added, "errors": errors}
