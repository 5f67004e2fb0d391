"""The inbound pipeline worker: parse, authenticate, thread, index and announce every committed message.

It takes Inbound rows not yet processed (after a crash too, so nothing that got
a 250 is left behind). Parsing and SPF/DKIM/DMARC are CPU work, so they run in
a separate process (`mxd.workerpool`, `pipeline_processes`: the GIL would otherwise share one
core with the SMTP listener); each batch's results are then written through
the writer, one savepoint per message. A message that cannot be parsed is
still delivered, raw, with its parse error.

A message taken in by SMTP submission is an unprocessed inbound row too (source
"outbound"): here it is DKIM-signed and parsed, then `mxd.sending.complete`
files it in the sender's mailbox and queues it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading
from typing import Any, Callable

from mxd import mailpolicy, sending, trust, workerpool
from mxd.background import BackgroundWorker
from mxd.config import Config
from mxd.db import Database, execute, proxy
from mxd.delivery.bounces import bounce_received, delivery_report
from mxd.ingest import InboundRow
from mxd.mime.parse import attachment, parse
from mxd.store import correspondents, messages, policies
from mxd.workerpool import release_memory

log = logging.getLogger("mxd.pipeline")
BATCH = 256
CHUNK = 32          # messages per request to a worker process
STORE = 8           # messages per writer job
COALESCE = 0.02


def _pending(exclude: set[str], limit: int) -> list[InboundRow]:
    """Up to `limit` unprocessed rows, oldest first, leaving out those in `exclude` (in flight): their
    ids first, so that rows in flight are not read again whole."""
    ids = [r[0] for r in execute('SELECT "id" FROM "inbound" WHERE "processed" = ? ORDER BY "id" LIMIT ?',
                                 (False, limit + len(exclude))).fetchall() if r[0] not in exclude][:limit]
    if not ids:
        return []
    rows = execute('SELECT "id", "received_at", "source", "mail_from", "rcpts", "remote_ip", "helo", "data", "trace" '
                   f'FROM "inbound" WHERE "id" IN ({",".join("?" * len(ids))}) ORDER BY "id"', ids)
    return [InboundRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], bytes(r[7]), r[8])
            for r in rows.fetchall()]


# ---------------------------------------------------------------- the analysis (runs in a worker process)
_threads: concurrent.futures.ThreadPoolExecutor | None = None


def _analyse_one(item: tuple[str, bytes, str, str, str, str, str], auth_on: bool, authserv_id: str,
                 dkim_dir: str) -> tuple[Any, Any, str, dict | None]:
    from mxd.authn import authenticate
    inbound_id, data, ip, helo, mail_from, source, trace = item
    if source == "outbound":                   # a submitted message: its DKIM fields become its trace
        try:
            dkim, parsed = sending.prepare(dkim_dir, data, mail_from.rsplit("@", 1)[-1].lower())
            return parsed, None, dkim, None
        except Exception as exc:               # checked when it was accepted; never lose the message if it fails
            log.exception("signing %s failed; it is sent unsigned", inbound_id)
            parsed = parse(data)
            parsed.errors.append(f"not DKIM-signed: {type(exc).__name__}: {exc}"[:300])
            return parsed, None, "", None
    try:
        parsed = parse(data)
    except Exception:                          # parse() is not meant to raise; never lose the message if it does
        log.exception("parser failed on %s", inbound_id)
        parsed = None
    auth = None
    resolver = workerpool.resolver()
    if auth_on and source == "smtp" and resolver is not None:
        try:
            auth = authenticate(data, ip=ip, helo=helo, mail_from=mail_from, resolver=resolver,
                                authserv_id=authserv_id)
            trace = f"Authentication-Results: {auth.header_value}\r\n" + trace
        except Exception:
            log.exception("authentication checks failed on %s", inbound_id)
    facts = trust.facts(parsed, data, lambda index: (attachment(data, index) or (None, None))[1])
    return parsed, auth, trace, facts


def analyse(items: list[tuple[str, bytes, str, str, str, str, str]], auth_on: bool, authserv_id: str,
            dkim_dir: str = "") -> list[tuple[Any, Any, str, dict | None]]:
    """(parsed, auth, trace, trust facts) per (id, data, remote_ip, helo, mail_from, source, trace); never raises.

    A sent copy (source "outbound") is signed instead of authenticated: its trace is then its
    DKIM-Signature fields.

    With auth checks on, the items run on threads, so that one slow DNS answer does not hold up
    the rest of the batch.
    """
    global _threads
    if not auth_on or len(items) == 1:
        return [_analyse_one(item, auth_on, authserv_id, dkim_dir) for item in items]
    if _threads is None:
        _threads = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="mxd-auth")
    return list(_threads.map(lambda item: _analyse_one(item, auth_on, authserv_id, dkim_dir), items))


class Pipeline(BackgroundWorker):
    name = "mxd-pipeline"
    poll = 5.0
    coalesce = COALESCE     # every send wakes the pipeline (a local recipient is an inbound row): one look
    #                         at the store for a burst of them, not one thread hop per message
    failure = "inbound pipeline pass failed"
    log = log

    def __init__(self, cfg: Config, db: Database, workers: concurrent.futures.Executor,
                 on_queued: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.cfg, self.db, self.on_queued = cfg, db, on_queued
        self.window = cfg.thread_subject_window_days * 86400.0
        self._pool = workers
        self._inflight: set[str] = set()
        self._slots = asyncio.Semaphore(max(2, cfg.pipeline_processes * 2))
        self._busy = False
        threading.Thread(target=trust.warm, name="mxd-trust-warm", daemon=True).start()   # off the writer

    async def run_once(self) -> float | None:
        rows = await self.db.read(_pending, set(self._inflight), BATCH)
        if not rows:
            if self._busy and not self._inflight:
                self._busy = False
                release_memory()
                if isinstance(self._pool, concurrent.futures.ProcessPoolExecutor):
                    self._pool.submit(release_memory)
            return None
        self._busy = True
        loop = asyncio.get_running_loop()
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            await self._slots.acquire()
            self._inflight.update(r.id for r in chunk)
            loop.create_task(self._chunk(chunk))
        return 0

    async def _chunk(self, rows: list[InboundRow]) -> None:
        try:
            items = [(r.id, r.data, r.remote_ip, r.helo, r.mail_from, r.source, r.trace) for r in rows]
            run = getattr(self._pool, "run", None)          # WorkerProcesses
            args = (analyse, items, self.cfg.auth_checks, self.cfg.hostname, os.path.join(self.cfg.data_dir, "dkim"))
            results = await (run(*args) if run else asyncio.get_running_loop().run_in_executor(self._pool, *args))
            bounces = [r for r in rows if any(rcpt.get("bounce_entry") for rcpt in r.rcpts)]
            if bounces:                             # DSNs are parsed here: the writer never parses a message
                found = await asyncio.to_thread(lambda: [delivery_report(r.mail_from, r.data) for r in bounces])
                reports = {r.id: report for r, report in zip(bounces, found)}
                results = [(*result, reports.get(r.id)) for r, result in zip(rows, results)]
            await asyncio.gather(*(self._store_part(rows[i:i + STORE], results[i:i + STORE])
                                   for i in range(0, len(rows), STORE)))
            if self.on_queued is not None and any(r.source == "outbound" for r in rows):
                self.on_queued()                    # sent copies completed: their queue entries are due
        except Exception:
            log.exception("processing %d inbound messages failed; they will be retried", len(rows))
            await asyncio.sleep(1.0)
        finally:
            self._inflight.difference_update(r.id for r in rows)
            self._slots.release()
            self._wake.set()

    async def _store_part(self, rows: list[InboundRow], results: list[tuple[Any, ...]]) -> None:
        """A few messages per writer job (bulk: each job then waits its turn behind clients' writes)."""
        try:
            await self.db.write(self._store, rows, results, False, bulk=True)
        except Exception:                       # one bad message: redo the part one savepoint each
            await self.db.write(self._store, rows, results, True, bulk=True)

    def _store(self, rows: list[InboundRow], results: list[tuple[Any, ...]], careful: bool) -> None:
        """Runs in the writer: the messages, and for a bounce to a VERP address, the queue entry's fate.

        The batch first goes in as one unit; if anything fails, the writer rolls it back and it is
        retried with a savepoint per message, so one bad message spares the rest. What the trust
        signals and quarantine decisions read from the store is read once per batch (`Judgements`).
        """
        batch = Judgements()
        for row, (parsed, auth, trace, facts, *report) in zip(rows, results):
            dsn = report[0] if report else None
            if not careful:
                self._store_one(row, parsed, auth, trace, dsn, facts, batch)
                continue
            try:
                with proxy.obj.atomic():
                    self._store_one(row, parsed, auth, trace, dsn, facts, batch)
                continue
            except Exception:
                log.exception("storing inbound %s failed; storing it unparsed", row.id)
            try:
                with proxy.obj.atomic():            # the raw message, flagged, rather than nothing
                    self._store_one(row, None, None, trace, dsn, None, batch)
            except Exception:
                # Not even that: take it off the work list so it cannot spin; the raw bytes stay in inbound.
                log.exception("inbound %s cannot be stored as a message; its raw bytes stay in the store", row.id)
                execute('UPDATE "inbound" SET "processed" = ? WHERE "id" = ?', (True, row.id))

    def _store_one(self, row: InboundRow, parsed: Any, auth: Any, trace: str, dsn: list[dict] | None = None,
                   facts: dict | None = None, batch: Judgements | None = None) -> None:
        """Runs in the writer; `dsn` is the delivery report of a bounce to a VERP address (None: not a DSN),
        `facts` what mxd.trust read of the message in the analysis step."""
        if row.source == "outbound":
            sending.complete(self.cfg, row, trace, parsed)
            return
        judge = (batch or Judgements()).judge(row, auth, facts)
        messages.deliver(row, parsed, auth, trace, self.window, judge=judge)
        for rcpt in row.rcpts:
            if rcpt.get("bounce_entry"):
                bounce_received(rcpt["bounce_entry"], dsn)


class Judgements:
    """Runs in the writer, one per batch: the trust signals and quarantine reasons of each inbound message
    for each of its mailboxes, with what they read from the store (mxd's domains, a mailbox's policy and
    correspondent domains, whether it knows an author) read once per batch. An authenticated author
    becomes a correspondent of the mailbox once the message is judged, unless the message is suspicious
    (a lookalike domain that passes its own SPF must not become a reference of its own)."""

    def __init__(self) -> None:
        self._own: tuple[str, ...] | None = None
        self._policies: dict[str, dict | None] = {}
        self._domains: dict[str, tuple[str, ...]] = {}
        self._known: dict[tuple[str, str, str], tuple[bool, bool]] = {}
        self._lookalikes: dict[str, dict[str, dict | None]] = {}

    def own_domains(self) -> tuple[str, ...]:
        if self._own is None:
            self._own = tuple(r[0] for r in execute('SELECT "name" FROM "domain" ORDER BY "name"').fetchall())
        return self._own

    def policy(self, mailbox_id: str) -> dict | None:
        if mailbox_id not in self._policies:
            try:
                self._policies[mailbox_id] = mailpolicy.normalise(policies.get(mailbox_id) or {})
            except Exception:                   # a stored document that no longer normalises: the defaults
                log.exception("the policy of %s cannot be read; the defaults apply", mailbox_id)
                self._policies[mailbox_id] = None
        return self._policies[mailbox_id]

    def judge(self, row: InboundRow, auth: Any, facts: dict | None) -> messages.Judge:
        checks = getattr(row, "checks", None)
        if isinstance(checks, (str, bytes)):
            try:
                checks = json.loads(checks)
            except ValueError:
                checks = None
        checks = checks if isinstance(checks, dict) else None
        listed = (checks or {}).get("quarantine")
        from_mx = [{"code": str(r["code"])[:64], "detail": str(r.get("detail") or "")[:500]}
                   for r in (listed if isinstance(listed, list) else []) if isinstance(r, dict) and r.get("code")]
        fact = facts or trust.facts(None, b"")

        def decide(mailbox_id: str) -> tuple[dict | None, list[dict] | None]:
            doc = None
            reasons = list(from_mx)
            try:
                doc, author = self._signals(mailbox_id, row, auth, checks, fact)
                policy = self.policy(mailbox_id)
                blocked = trust.blocked_found(fact.get("attachments") or [], mailpolicy.blocked_types(policy))
                reasons += mailpolicy.quarantine_reasons(policy, author=fact.get("author") or "",
                                                         authenticated=doc["authenticated"],
                                                         blocked_attachments=blocked, size=len(row.data))
                if doc["authenticated"] and doc["author"] and doc["verdict"] != "suspicious":
                    correspondents.record(mailbox_id, [doc["author"]], row.received_at)
                    self._known[(mailbox_id, *author)] = (True, True)
            except Exception:                   # a bug in a signal must never cost the message
                log.exception("trust signals of inbound %s failed", row.id)
            return doc, reasons or None
        return decide

    def _signals(self, mailbox_id: str, row: InboundRow, auth: Any, checks: dict | None,
                 fact: dict) -> tuple[dict, tuple[str, str]]:
        found = correspondents.split(fact.get("author") or "") or ("", "")
        key = (mailbox_id, *found)
        if key not in self._known:
            self._known[key] = correspondents.known(mailbox_id, *found)
        if mailbox_id not in self._domains:
            self._domains[mailbox_id] = correspondents.domains(mailbox_id)
        known = trust.Known(*self._known[key], domains=self._domains[mailbox_id])
        doc = trust.signals(fact, auth=auth, checks=checks, known=known, own_domains=self.own_domains(),
                            blocked=mailpolicy.blocked_types(self.policy(mailbox_id)), local=row.source == "local",
                            lookalikes=self._lookalikes.setdefault(mailbox_id, {}))
        return doc, found
