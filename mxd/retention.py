"""Retention: removes messages older than their mailbox's retention, with their attachments, search
entries, thread bookkeeping and raw bytes, in a background sweep and on demand (POST /api/retention/run).

A mailbox keeps messages for its own `retention_days`, else the server's
`default_retention_days` (0: forever), counted from when mxd received them.
Work is done in bounded batches, each one writer transaction, so a large
backlog never holds the writer for long. What is never removed: a message an
outbound queue entry still needs (queued, deferred or held), and raw bytes
(Inbound rows) that are not yet processed, that a remaining message points at,
or that any queue entry points at. The sweep of every mailbox also drops audit rows older than
`audit_retention_days` (0: kept forever).
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any

from mxd.background import BackgroundWorker
from mxd.config import Config
from mxd.db import Database, execute, proxy
from mxd.store import audit, search

log = logging.getLogger("mxd.retention")
BATCH = 500
DAY = 86400.0
ORPHAN_GRACE = 3600.0            # raw bytes no message points at are kept this long before they go
LIVE_QUEUE = ("queued", "deferred", "held")


def _marks(n: int) -> str:
    return ",".join("?" * n)


def new_report() -> dict[str, Any]:
    return {"messages": 0, "attachments": 0, "threads": 0, "raw_bytes": 0, "inbound_rows": 0, "search_entries": 0,
            "mailboxes": {}}


def mailboxes_due(default_days: int, mailbox_ids: list[str] | None = None) -> list[tuple[str, str, int]]:
    """(mailbox id, address, retention days) of every mailbox with a finite retention. Runs in a reader."""
    sql = 'SELECT "id", "address", "retention_days" FROM "mailbox"'
    params: tuple = ()
    if mailbox_ids is not None:
        if not mailbox_ids:
            return []
        sql += f' WHERE "id" IN ({_marks(len(mailbox_ids))})'
        params = tuple(mailbox_ids)
    out = []
    for box_id, address, days in execute(sql + ' ORDER BY "address"', params).fetchall():
        effective = days if days else default_days
        if effective and effective > 0:
            out.append((box_id, address, int(effective)))
    return out


def _remove_inbound(candidates: list[str], report: dict) -> None:
    """Delete the raw rows among `candidates` that nothing needs any more."""
    if not candidates:
        return
    rows = execute(
        f'SELECT "i"."id", LENGTH("i"."data") FROM "inbound" AS "i" WHERE "i"."id" IN ({_marks(len(candidates))}) '
        'AND "i"."processed" = ? '
        'AND NOT EXISTS (SELECT 1 FROM "message" AS "m" WHERE "m"."inbound_id" = "i"."id") '
        'AND NOT EXISTS (SELECT 1 FROM "queue_entry" AS "q" WHERE "q"."inbound_id" = "i"."id")',
        (*candidates, True)).fetchall()
    if not rows:
        return
    ids = [r[0] for r in rows]
    execute(f'DELETE FROM "inbound" WHERE "id" IN ({_marks(len(ids))})', tuple(ids))
    report["inbound_rows"] += len(ids)
    report["raw_bytes"] += sum(int(r[1] or 0) for r in rows)


def sweep_batch(mailbox_id: str, cutoff: float, limit: int = BATCH) -> dict[str, Any]:
    """Runs in the writer: remove up to `limit` of one mailbox's messages received before `cutoff`.

    Returns this batch's counts (messages 0 means the mailbox is done)."""
    report = new_report()
    ids_rows = execute(
        'SELECT "m"."id", "m"."inbound_id", "m"."thread_id" FROM "message" AS "m" '
        'WHERE "m"."mailbox_id" = ? AND "m"."received_at" < ? '
        f'AND NOT EXISTS (SELECT 1 FROM "queue_entry" AS "q" WHERE "q"."message_id" = "m"."id" '
        f'AND "q"."status" IN ({_marks(len(LIVE_QUEUE))})) '
        'ORDER BY "m"."received_at" LIMIT ?', (mailbox_id, cutoff, *LIVE_QUEUE, limit)).fetchall()
    if not ids_rows:
        return report
    ids = [r[0] for r in ids_rows]
    marks = _marks(len(ids))
    report["attachments"] = execute(f'SELECT COUNT(*) FROM "attachment" WHERE "message_id" IN ({marks})',
                                    tuple(ids)).fetchone()[0]
    execute(f'DELETE FROM "attachment" WHERE "message_id" IN ({marks})', tuple(ids))
    search.remove(proxy.obj, ids)
    report["search_entries"] = len(ids)
    # Delivered or failed queue entries of sent mail are its history; they go with the message.
    execute(f'DELETE FROM "queue_entry" WHERE "message_id" IN ({marks})', tuple(ids))
    execute(f'UPDATE "draft" SET "sent_message_id" = NULL WHERE "sent_message_id" IN ({marks})', tuple(ids))
    execute(f'DELETE FROM "message" WHERE "id" IN ({marks})', tuple(ids))
    report["messages"] = len(ids)

    # Threads: recount what is left; a thread left empty goes, with the Message-IDs it remembered.
    thread_ids = sorted({r[2] for r in ids_rows if r[2]})
    for thread_id in thread_ids:
        left, last_at = execute('SELECT COUNT(*), MAX("received_at") FROM "message" WHERE "thread_id" = ?',
                                (thread_id,)).fetchone()
        if left:
            execute('UPDATE "thread" SET "message_count" = ? WHERE "id" = ?', (left, thread_id))
        else:
            execute('DELETE FROM "thread_ref" WHERE "thread_id" = ?', (thread_id,))
            execute('DELETE FROM "thread" WHERE "id" = ?', (thread_id,))
            report["threads"] += 1
    _remove_inbound(sorted({r[1] for r in ids_rows if r[1]}), report)
    return report


def sweep_orphans(cutoff: float, limit: int = BATCH) -> dict[str, Any]:
    """Runs in the writer: raw rows, processed before `cutoff`, that no message or queue entry points at
    (their mailbox was deleted, say)."""
    report = new_report()
    rows = execute(
        'SELECT "i"."id" FROM "inbound" AS "i" WHERE "i"."processed" = ? AND "i"."received_at" < ? '
        'AND NOT EXISTS (SELECT 1 FROM "message" AS "m" WHERE "m"."inbound_id" = "i"."id") '
        'AND NOT EXISTS (SELECT 1 FROM "queue_entry" AS "q" WHERE "q"."inbound_id" = "i"."id") '
        'ORDER BY "i"."received_at" LIMIT ?', (True, cutoff, limit)).fetchall()
    _remove_inbound([r[0] for r in rows], report)
    return report


def _add(total: dict, part: dict, address: str | None = None) -> None:
    for key in ("messages", "attachments", "threads", "raw_bytes", "inbound_rows", "search_entries"):
        total[key] += part[key]
    if address is not None and part["messages"]:
        box = total["mailboxes"].setdefault(address, {"messages": 0, "attachments": 0, "raw_bytes": 0})
        for key in box:
            box[key] += part[key]


async def run(cfg: Config, db: Database, mailbox_ids: list[str] | None = None, now: float | None = None,
              batch: int = BATCH) -> dict[str, Any]:
    """Apply retention now: to `mailbox_ids` (None: every mailbox, and raw rows no message needs).

    Returns what was removed: counts in all and per mailbox address."""
    now = time.time() if now is None else now
    report = new_report()
    started = time.monotonic()
    for box_id, address, days in await db.read(mailboxes_due, cfg.default_retention_days, mailbox_ids):
        cutoff = now - days * DAY
        while True:
            part = await db.write(sweep_batch, box_id, cutoff, batch, bulk=True)
            _add(report, part, address)
            if part["messages"] < batch:
                break
    if mailbox_ids is None:
        while True:
            part = await db.write(sweep_orphans, now - ORPHAN_GRACE, batch, bulk=True)
            _add(report, part)
            if part["inbound_rows"] < batch:
                break
        await db.write(prune_replay_keys, now - KEY_DAYS * DAY, bulk=True)
        if cfg.audit_retention_days > 0:
            report["audit_rows"] = 0
            while True:
                removed = await db.write(audit.prune, now - cfg.audit_retention_days * DAY, AUDIT_BATCH, bulk=True)
                report["audit_rows"] += removed
                if removed < AUDIT_BATCH:
                    break
    report["duration_ms"] = int((time.monotonic() - started) * 1000)
    report["ran_at"] = now
    return report


AUDIT_BATCH = 5000
KEY_DAYS = 2     # Idempotency-Key and SES message-id records replay for 24 hours; kept a day longer


def prune_replay_keys(before: float) -> int:
    """Runs in the writer: forget replay records (idempotent sends, SES message ids) older than `before`."""
    return execute('DELETE FROM "idempotency" WHERE "created_at" < ?', (before,)).rowcount


class RetentionSweeper(BackgroundWorker):
    """Runs `run` every `retention_interval` (0: never), first at most a minute after start."""

    FIRST_DELAY = 60.0
    name = "mxd-retention"
    failure = "retention sweep failed"     # the sweep is retried at the next interval
    log = log

    def __init__(self, cfg: Config, db: Database) -> None:
        super().__init__()
        self.cfg, self.db = cfg, db
        self.interval = self.poll = cfg.seconds("retention_interval")
        self.last_report: dict[str, Any] | None = None

    def start(self) -> None:
        if self.interval <= 0:                     # retention_interval = "0": no background sweep
            return
        super().start()

    def first_wait(self) -> float | None:
        return min(self.FIRST_DELAY, self.interval)

    async def run_once(self) -> float | None:
        self.last_report = report = await run(self.cfg, self.db)
        if report["messages"] or report["inbound_rows"] or report.get("audit_rows"):
            await self.db.write(functools.partial(
                audit.record, "system", "retention.sweep", target="retention", result="ok",
                detail={k: report.get(k, 0) for k in ("messages", "attachments", "threads", "inbound_rows",
                                                     "raw_bytes", "audit_rows")}))
            log.info("retention removed %d messages, %d raw rows (%d bytes)", report["messages"],
                     report["inbound_rows"], report["raw_bytes"])
        return self.interval
