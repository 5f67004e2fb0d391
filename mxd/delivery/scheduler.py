"""Delivery workers: lease due queue entries, deliver them per destination over a bounded number of
reused connections, and record every outcome (delivered, deferred with backoff, failed with a bounce
and suppression).

Leased entries wait in one in-memory queue per destination domain. Up to `connections_per_domain`
lanes per domain each hold one SMTP connection and carry message after message over it while the
domain's queue has work, then keep it open for a short idle time (Postfix's connection cache) before
QUIT. Outcomes are recorded in batches; a batch of accepted messages is written while the lane goes
on sending (a crash before that write means one more delivery of those messages, never a loss).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque

from mxd import policy
from mxd.background import BackgroundWorker
from mxd.config import Config, parse_hostport
from mxd.db import Database, execute
from mxd.delivery import bounces
from mxd.delivery.mxhosts import NoRoute, NullMX, Target, resolve_targets
from mxd.ingest import with_trace
from mxd.netcheck import refusal
from mxd.resolver import Resolver
from mxd.smtpclient import Connection, DeliveryError
from mxd.store import queue as outqueue
from mxd.store.models import QueueEntry

log = logging.getLogger("mxd.delivery")
BATCH = 200
LEASE = 900.0
IDLE = 2.0            # seconds an idle connection waits for more of its domain's mail before QUIT
PER_LANE = 8          # queued entries per open lane before another connection is opened
RECORD_EVERY = 32     # accepted messages recorded per write (and whenever the lane runs dry)
COALESCE = 0.01       # after a wake-up, let more submissions arrive before leasing again


def _reply(code: int | None, enhanced: str | None, text: str) -> str:
    return " ".join(str(p) for p in (code, enhanced, text) if p)


class Scheduler(BackgroundWorker):
    name = "mxd-delivery"
    poll = 30.0           # the longest wait when no entry falls due sooner
    coalesce = COALESCE   # one lease for many submissions, not one each
    failure = "delivery pass failed"
    log = log

    def __init__(self, cfg: Config, db: Database, resolver: Resolver, on_local: "callable") -> None:
        super().__init__()
        self.cfg, self.db, self.resolver, self.on_local = cfg, db, resolver, on_local
        self._tasks: set[asyncio.Task] = set()
        self._queues: dict[str, deque[QueueEntry]] = defaultdict(deque)   # leased, not yet taken by a lane
        self._ready: dict[str, asyncio.Event] = defaultdict(asyncio.Event)  # set when a domain's queue grows
        self._lanes: dict[str, int] = defaultdict(int)       # running lanes per domain
        self._connected: dict[str, int] = defaultdict(int)   # lanes per domain holding an open connection
        self._limit: dict[str, int] = {}          # fewer lanes after a refused connection, until the queue drains
        self._inflight: set[str] = set()                     # leased entries whose outcome is not recorded
        self._data: dict[str, bytes] = {}                    # message bytes of leased entries, by entry id
        self._pruned_at = 0.0

    async def stop(self) -> None:
        await super().stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: "asyncio.coroutines") -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def setup(self) -> None:
        released = await self.db.write(outqueue.release_leases)
        if released:
            log.info("%d queue entries leased by a previous run are due again", released)

    async def run_once(self) -> float | None:
        if time.monotonic() - self._pruned_at > 3600:
            self._pruned_at = time.monotonic()
            await self.db.write(policy.prune)
        room = min(BATCH, BATCH * 4 - len(self._inflight))
        entries, data, due = await self.db.write(_lease, room) if room > 0 else ([], {}, None)
        for entry in entries:
            if entry.id in self._inflight:
                continue
            self._inflight.add(entry.id)
            if entry.inbound_id in data:
                self._data[entry.id] = data[entry.inbound_id]
            self._queues[entry.domain].append(entry)
        self._open_lanes()
        if room > 0 and len(entries) >= room:
            return 0
        return self.poll if due is None else max(0.05, min(self.poll, due - time.time()))

    def _open_lanes(self) -> None:
        """Wake idle lanes and open more (up to connections_per_domain) where queues are long."""
        for domain in [d for d, q in self._queues.items() if not q and not self._lanes[d]]:
            del self._queues[domain]
            for table in (self._ready, self._lanes, self._connected, self._limit):
                table.pop(domain, None)
        for domain, queue in self._queues.items():
            if not queue:
                continue
            self._ready[domain].set()
            want = min(self.cfg.connections_per_domain, self._limit.get(domain, 1 << 30),
                       max(1, -(-len(queue) // PER_LANE)))
            for _ in range(want - self._lanes[domain]):
                self._lanes[domain] += 1
                self._spawn(self._lane(domain))

    # ------------------------------------------------------------ one connection's worth
    async def _lane(self, domain: str) -> None:
        taken: dict[str, QueueEntry] = {}   # popped from the queue, outcome not recorded yet
        try:
            await self._lane_run(domain, taken)
        except Exception:
            log.exception("delivery to %s failed unexpectedly", domain)
            for entry in list(taken.values()):
                if entry.id in self._inflight:
                    await self._outcome(entry, False, "451 4.3.0 internal delivery error", "")
        finally:
            self._lanes[domain] -= 1
            if self._queues.get(domain):
                self._wake.set()           # what is left gets another lane


    async def _targets(self, domain: str) -> tuple[list[Target], int]:
        if self.cfg.smart_host:
            host, port = parse_hostport(self.cfg.smart_host, "smart_host")
            return [Target(host, [host], 0)], port
        targets = await resolve_targets(domain, self.resolver)
        if not self.cfg.outbound_allow_private:
            targets = public_targets(domain, targets)
        return targets, self.cfg.outbound_mx_port

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

    async def _fail_queued(self, domain: str, taken: dict[str, QueueEntry], permanent: bool, reply: str,
                           host: str) -> None:
        """No connection could be had: every entry waiting for this domain gets the outcome, unless
        other lanes are connected and can carry them (then the domain gets no more lanes than those)."""
        if self._connected[domain]:
            self._limit[domain] = self._connected[domain]
            return
        queue = self._queues[domain]
        taken.update((e.id, e) for e in queue)
        queue.clear()
        for entry in list(taken.values()):
            await self._outcome(entry, permanent, reply, host)
            del taken[entry.id]

    async def _lane_run(self, domain: str, taken: dict[str, QueueEntry]) -> None:
        try:
            targets, port = await self._targets(domain)
        except NullMX:     # RFC 7505 3: a null MX means the domain accepts no mail
            return await self._fail_queued(domain, taken, True, "556 5.1.10 recipient domain has a null MX (RFC 7505)", "")
        except DeliveryError as exc:
            return await self._fail_queued(domain, taken, exc.permanent, _reply(exc.code, exc.enhanced, exc.text), "")
        if not targets:
            return await self._fail_queued(domain, taken, False, "451 4.4.4 no address for the destination", "")
        if not self._queues[domain]:
            return
        conn, error = await self._connect(targets, port)
        if conn is None:
            reply = _reply(error.code, error.enhanced, error.text) if error else "451 4.4.1 no host reachable"
            return await self._fail_queued(domain, taken, False, reply, error.host or "" if error else "")
        self._connected[domain] += 1
        sent: list[tuple[QueueEntry, str, str]] = []
        relayed = bool(self.cfg.smart_host)
        host = conn_host(conn)
        queue = self._queues[domain]
        try:
            while True:
                if not queue:
                    if sent:
                        self._record_sent(sent, relayed, taken)
                    ready = self._ready[domain]
                    ready.clear()
                    try:
                        await asyncio.wait_for(ready.wait(), IDLE)
                    except asyncio.TimeoutError:
                        return
                    if not queue:
                        continue
                if not conn.is_open:
                    return               # closed by the server while idle: the rest waits for another lane
                entry = queue.popleft()
                taken[entry.id] = entry
                data = self._data.get(entry.id)
                if data is None:
                    data = await self.db.read(_message_bytes, entry.inbound_id)
                try:
                    [result] = await conn.send(entry.return_path, [entry.recipient], data)
                except DeliveryError as exc:
                    reply = _reply(exc.code, exc.enhanced, exc.text)
                    await self._outcome(entry, exc.permanent, reply, exc.host or "")
                    del taken[entry.id]
                    if exc.stage in ("connect", "ehlo", "starttls") or not exc.permanent:
                        return           # the connection is gone: the rest waits for another lane
                    continue
                reply = _reply(result.code, result.enhanced, result.text)
                if result.ok:
                    sent.append((entry, reply, host))
                    if len(sent) >= RECORD_EVERY:
                        self._record_sent(sent, relayed, taken)
                else:
                    await self._outcome(entry, result.permanent, reply, host)
                    del taken[entry.id]
                if not conn.is_open:
                    return
        finally:
            self._connected[domain] -= 1
            self._record_sent(sent, relayed, taken)
            try:
                await conn.close()
            except Exception:                     # the outcomes are recorded; a failing QUIT changes nothing
                log.debug("closing the connection to %s failed", domain, exc_info=True)

    def _record_sent(self, sent: list[tuple[QueueEntry, str, str]], relayed: bool,
                     taken: dict[str, QueueEntry]) -> None:
        """Accepted by the remote side; written in the background while the lane sends on."""
        if not sent:
            return
        batch = list(sent)
        sent.clear()
        for entry, _, _ in batch:
            self._data.pop(entry.id, None)
            taken.pop(entry.id, None)
        self._spawn(self._write_sent(batch, relayed))

    async def _write_sent(self, batch: list[tuple[QueueEntry, str, str]], relayed: bool) -> None:
        try:
            await self.db.write(outqueue.delivered_many, batch, relayed)
        except Exception:
            # Left leased: due again when the lease ends, so delivered once more rather than lost.
            log.exception("recording %d delivered entries failed", len(batch))
        finally:
            for entry, _, _ in batch:
                self._inflight.discard(entry.id)
            self._wake.set()                      # room to lease more

    async def _outcome(self, entry: QueueEntry, permanent: bool, reply: str, host: str) -> None:
        """Record a failure: permanent ones fail and bounce; temporary ones back off until the lifetime ends."""
        self._inflight.discard(entry.id)          # its outcome is recorded here, once
        self._data.pop(entry.id, None)
        if not permanent:
            updated, expired = await self.db.write(outqueue.deferred, entry.id, reply, host, self.cfg.retry_delays)
            self._wake.set()                      # the run loop learns the new next attempt time
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


def public_targets(domain: str, targets: list[Target]) -> list[Target]:
    """The targets with only their public addresses (mxd.netcheck); raises NoRoute (550 5.4.4) when none is
    left. An MX at loopback or on a private network would let whoever controls a domain's DNS make mxd
    talk to services on this host or its LAN (a relay that trusts its network, say); like Exim's
    ignore_target_hosts, such hosts are skipped, and a domain with no other host fails for good."""
    kept: list[Target] = []
    refused: list[str] = []
    for target in targets:
        public = []
        for ip in target.addresses:
            why = refusal(ip)
            if why is None:
                public.append(ip)
            else:
                refused.append(f"{target.host} {ip} ({why})")
        if public:
            kept.append(Target(target.host, public, target.preference))
    if not kept:
        raise NoRoute(True, 550, "5.4.4", f"no public address for {domain}: {', '.join(refused)[:300]}; "
                      "non-public MX addresses are refused (outbound_allow_private is off)", None, "dns")
    if refused:
        log.info("%s: skipping non-public MX addresses %s", domain, ", ".join(refused)[:300])
    return kept


def _lease(limit: int) -> tuple[list[QueueEntry], dict[str, bytes], float | None]:
    """Lease due entries and read their messages' bytes in the same writer call; with fewer than
    `limit`, also when the next entry falls due."""
    entries = outqueue.lease(limit, None, LEASE)
    ids = sorted({e.inbound_id for e in entries})
    data = {}
    if ids:
        rows = execute(f'SELECT "id", "trace", "data" FROM "inbound" WHERE "id" IN ({",".join("?" * len(ids))})', ids)
        data = {row[0]: with_trace(row[1], row[2]) for row in rows.fetchall()}
    return entries, data, outqueue.next_due() if len(entries) < limit else None


def _message_bytes(inbound_id: str) -> bytes:
    row = execute('SELECT "trace", "data" FROM "inbound" WHERE "id" = ?', (inbound_id,)).fetchone()
    return with_trace(row[0], row[1]) if row else b""


def conn_host(conn: Connection) -> str:
    return getattr(conn, "host", "") or ""
