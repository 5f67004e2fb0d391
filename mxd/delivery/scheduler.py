"""Delivery workers: lease due queue entries, deliver them per destination with bounded connections,
and record every outcome (delivered, deferred with backoff, failed with a bounce and suppression)."""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from mxd import outqueue, policy
from mxd.config import Config, parse_hostport
from mxd.db import Database, execute
from mxd.delivery import bounces
from mxd.delivery.mx import NullMX, Target, resolve_targets
from mxd.resolver import Resolver
from mxd.smtpclient import Connection, DeliveryError
from mxd.store.models import QueueEntry

log = logging.getLogger("mxd.delivery")
BATCH = 200
LEASE = 900.0


def _reply(code: int | None, enhanced: str | None, text: str) -> str:
    return " ".join(str(p) for p in (code, enhanced, text) if p)


class Scheduler:
    def __init__(self, cfg: Config, db: Database, resolver: Resolver, on_local: "callable") -> None:
        self.cfg, self.db, self.resolver, self.on_local = cfg, db, resolver, on_local
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._slots: dict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(cfg.connections_per_domain))
        self._inflight: set[str] = set()
        self._data: dict[str, bytes] = {}        # message bytes of leased entries, by inbound id

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mxd-delivery")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        released = await self.db.write(outqueue.release_leases)
        if released:
            log.info("%d queue entries leased by a previous run are due again", released)
        pruned_at = 0.0
        while True:
            self._wake.clear()
            if time.monotonic() - pruned_at > 3600:
                pruned_at = time.monotonic()
                await self.db.write(policy.prune)
            room = BATCH * 4 - len(self._inflight)
            entries, data = await self.db.write(_lease, min(BATCH, room)) if room > 0 else ([], {})
            self._data.update(data)
            entries = [e for e in entries if e.id not in self._inflight]
            groups: dict[str, list[QueueEntry]] = defaultdict(list)
            for entry in entries:
                self._inflight.add(entry.id)
                groups[entry.domain].append(entry)
            for domain, group in groups.items():
                width = max(1, min(self.cfg.connections_per_domain, (len(group) + 19) // 20))
                for i in range(width):
                    chunk = group[i::width]
                    task = asyncio.get_running_loop().create_task(self._deliver(domain, chunk))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            if entries:
                continue
            due = await self.db.read(outqueue.next_due)
            wait = 30.0 if due is None else max(0.05, min(30.0, due - time.time()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------ one connection's worth
    async def _deliver(self, domain: str, entries: list[QueueEntry]) -> None:
        try:
            async with self._slots[domain]:
                await self._deliver_locked(domain, entries)
        except Exception:
            log.exception("delivery to %s failed unexpectedly", domain)
            for entry in entries:                 # only those whose outcome was not recorded yet
                if entry.id in self._inflight:
                    await self._outcome(entry, False, "451 4.3.0 internal delivery error", "")
        finally:
            for entry in entries:
                self._inflight.discard(entry.id)
                self._data.pop(entry.inbound_id, None)   # another chunk of the same message reads it again
            self._wake.set()

    async def _targets(self, domain: str) -> tuple[list[Target], int]:
        if self.cfg.smart_host:
            host, port = parse_hostport(self.cfg.smart_host, "smart_host")
            return [Target(host, [host], 0)], port
        return await resolve_targets(domain, self.resolver), self.cfg.outbound_mx_port

    async def _connect(self, targets: list[Target], port: int) -> tuple[Connection | None, DeliveryError | None]:
        cfg, last = self.cfg, None
        smart = bool(cfg.smart_host)
        for target in targets:
            for ip in target.addresses:
                try:
                    conn = await Connection.open(
                        target.host, port, helo_name=cfg.hostname, ip_for_connect=ip,
                        tls=cfg.smart_host_tls if smart else "opportunistic", timeout=60,
                        username=(cfg.smart_host_username or None) if smart else None,
                        password=(cfg.smart_host_password or None) if smart else None)
                    return conn, None
                except DeliveryError as exc:
                    last = exc
        return None, last

    async def _deliver_locked(self, domain: str, entries: list[QueueEntry]) -> None:
        try:
            targets, port = await self._targets(domain)
        except NullMX:
            for entry in entries:     # RFC 7505 3: a null MX means the domain accepts no mail
                await self._outcome(entry, True, "556 5.1.10 recipient domain has a null MX (RFC 7505)", "")
            return
        except DeliveryError as exc:
            for entry in entries:
                await self._outcome(entry, exc.permanent, _reply(exc.code, exc.enhanced, exc.text), "")
            return
        if not targets:
            for entry in entries:
                await self._outcome(entry, False, "451 4.4.4 no address for the destination", "")
            return
        conn, error = await self._connect(targets, port)
        if conn is None:
            reply = _reply(error.code, error.enhanced, error.text) if error else "451 4.4.1 no host reachable"
            for entry in entries:
                await self._outcome(entry, False, reply, error.host or "" if error else "")
            return
        sent: list[tuple[QueueEntry, str, str]] = []          # recorded in batches, not one write each
        relayed = bool(self.cfg.smart_host)
        try:
            for index, entry in enumerate(entries):
                data = self._data.get(entry.inbound_id)
                if data is None:
                    data = self._data[entry.inbound_id] = await self.db.read(_message_bytes, entry.inbound_id)
                try:
                    [result] = await conn.send(entry.return_path, [entry.recipient], data)
                except DeliveryError as exc:
                    reply = _reply(exc.code, exc.enhanced, exc.text)
                    await self._outcome(entry, exc.permanent, reply, exc.host or "")
                    if exc.stage in ("connect", "ehlo", "starttls") or not exc.permanent:
                        for rest in entries[index + 1:]:        # the connection is gone: try the rest later
                            await self._outcome(rest, False, reply, exc.host or "")
                        return
                    continue
                reply = _reply(result.code, result.enhanced, result.text)
                if result.ok:
                    sent.append((entry, reply, conn_host(conn)))
                    if len(sent) >= 16:
                        await self._record_sent(sent, relayed)
                else:
                    await self._outcome(entry, result.permanent, reply, conn_host(conn))
        finally:
            await self._record_sent(sent, relayed)
            try:
                await conn.close()
            except Exception:                     # the outcomes are recorded; a failing QUIT changes nothing
                log.debug("closing the connection to %s failed", domain, exc_info=True)

    async def _record_sent(self, sent: list[tuple[QueueEntry, str, str]], relayed: bool) -> None:
        """Accepted by the remote side. A crash before this write means one more delivery, never a loss."""
        if sent:
            batch = list(sent)
            sent.clear()
            await self.db.write(outqueue.delivered_many, batch, relayed)
            for entry, _, _ in batch:
                self._inflight.discard(entry.id)

    async def _outcome(self, entry: QueueEntry, permanent: bool, reply: str, host: str) -> None:
        """Record a failure: permanent ones fail and bounce; temporary ones back off until the lifetime ends."""
        self._inflight.discard(entry.id)          # its outcome is recorded here, once
        if not permanent:
            updated, expired = await self.db.write(outqueue.deferred, entry.id, reply, host, self.cfg.retry_delays)
            if not expired:
                await self._maybe_warn(updated)
                return
            reply = f"{reply} (gave up after {self.cfg.queue_lifetime})"
        await self.db.write(bounces.fail_and_bounce, self.cfg, entry.id, reply, host, "failed")
        self.on_local()

    async def _maybe_warn(self, entry: QueueEntry) -> None:
        warn_after = self.cfg.seconds("delay_warning")
        if warn_after and not entry.delay_notified and time.time() - entry.created_at >= warn_after:
            await self.db.write(bounces.fail_and_bounce, self.cfg, entry.id, entry.last_reply, entry.last_host,
                                "delayed")
            self.on_local()


def _lease(limit: int) -> tuple[list[QueueEntry], dict[str, bytes]]:
    """Lease due entries and read their messages' bytes in the same writer call."""
    entries = outqueue.lease(limit, None, LEASE)
    ids = sorted({e.inbound_id for e in entries})
    data = {}
    if ids:
        rows = execute(f'SELECT "id", "data" FROM "inbound" WHERE "id" IN ({",".join("?" * len(ids))})', ids)
        data = {row[0]: bytes(row[1]) for row in rows.fetchall()}
    return entries, data


def _message_bytes(inbound_id: str) -> bytes:
    row = execute('SELECT "data" FROM "inbound" WHERE "id" = ?', (inbound_id,)).fetchone()
    return bytes(row[0]) if row else b""


def conn_host(conn: Connection) -> str:
    return getattr(conn, "host", "") or ""

