"""The inbound pipeline worker: parse, authenticate, thread, index and announce every committed message.

It takes Inbound rows not yet processed (after a crash too, so nothing that got
a 250 is left behind), does the CPU and DNS work on worker threads, and writes
each message's results in one transaction through the writer. A message that
cannot be parsed is still delivered, raw, with its parse error.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from mxd.config import Config
from mxd.db import Database
from mxd.mime.parse import parse
from mxd.resolver import Resolver
from mxd.delivery.bounces import bounce_received
from mxd.delivery.dsn import parse_dsn
from mxd.store import messages
from mxd.store.models import Inbound

log = logging.getLogger("mxd.pipeline")
BATCH = 256


def _pending(exclude: set[str], limit: int) -> list[Inbound]:
    query = Inbound.select().where(Inbound.processed == False).order_by(Inbound.id).limit(limit + len(exclude))  # noqa: E712
    return [row for row in query if row.id not in exclude][:limit]


class Pipeline:
    def __init__(self, cfg: Config, db: Database, resolver: Resolver | None, workers: int = 4) -> None:
        self.cfg, self.db, self.resolver = cfg, db, resolver
        self.window = cfg.thread_subject_window_days * 86400.0
        self._wake = asyncio.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="mxd-pipe")
        self._inflight: set[str] = set()
        self._sem = asyncio.Semaphore(workers * 8)
        self._task: asyncio.Task | None = None
        self.processed = 0
        self.idle = asyncio.Event()

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mxd-pipeline")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            rows = await self.db.read(_pending, set(self._inflight), BATCH)
            if not rows:
                if not self._inflight:
                    self.idle.set()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=5.0)
                except asyncio.TimeoutError:
                    pass
                continue
            self.idle.clear()
            for row in rows:
                await self._sem.acquire()
                self._inflight.add(row.id)
                asyncio.get_running_loop().create_task(self._one(row))

    async def _one(self, row: Inbound) -> None:
        try:
            loop = asyncio.get_running_loop()
            parsed, auth, trace = await loop.run_in_executor(self._pool, self._analyse, row)
            await self.db.write(self._store, row, parsed, auth, trace)
            self.processed += 1
        except Exception:
            log.exception("processing inbound %s failed; it will be retried", row.id)
            await asyncio.sleep(1.0)
        finally:
            self._inflight.discard(row.id)
            self._sem.release()
            self._wake.set()

    def _store(self, row: Inbound, parsed: Any, auth: Any, trace: str) -> None:
        """Runs in the writer: the messages, and for a bounce to a VERP address, the queue entry's fate."""
        messages.deliver(row, parsed, auth, trace, self.window)
        for rcpt in row.rcpts:
            if rcpt.get("bounce_entry"):
                bounce_received(rcpt["bounce_entry"], parse_dsn(bytes(row.data)))

    def _analyse(self, row: Inbound) -> tuple[Any, Any, str]:
        data = bytes(row.data)
        try:
            parsed = parse(data)
        except Exception as exc:                  # parse() is not meant to raise; never lose the message if it does
            log.exception("parser failed on %s", row.id)
            parsed = None
            _ = exc
        auth = None
        trace = row.trace
        if self.cfg.auth_checks and self.resolver is not None and row.source == "smtp":
            from mxd.authn import authenticate
            try:
                auth = authenticate(data, ip=row.remote_ip, helo=row.helo, mail_from=row.mail_from,
                                    resolver=self.resolver, authserv_id=self.cfg.hostname)
                trace = f"Authentication-Results: {auth.header_value}\r\n" + trace
            except Exception:
                log.exception("authentication checks failed on %s", row.id)
        return parsed, auth, trace
