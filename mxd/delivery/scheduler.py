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
import re
import time
from collections import defaultdict, deque

from mxd import policy
from mxd.background import BackgroundWorker
from mxd.config import Config, parse_hostport
from mxd.db import Database, execute
from mxd.delivery import bounces
from mxd.delivery.mtasts import PolicyCache
from mxd.delivery.mxhosts import NoRoute, NullMX, Target, resolve_targets
from mxd.delivery.tlspolicy import Applied, DomainPlan, TransportPolicy
from mxd.delivery.tlsrpt import TlsTally
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


TLS_OPTIONAL = " tls-optional"     # suffix of the lane key of messages that say "TLS-Required: No"
_TLS_OPTIONAL = re.compile(rb"(?im)^TLS-Required:[ \t]*No[ \t]*\r?$")


def tls_optional(message: bytes) -> bool:
    """The header says "TLS-Required: No" (RFC 8689 5): TLS policies are not to stop its delivery."""
    head = message.split(b"\r\n\r\n", 1)[0]
    return b"tls-required" in head.lower() and _TLS_OPTIONAL.search(head) is not None


def _named(applied: Applied) -> str:
    """"DANE", "MTA-STS (enforce)": the policy a failure is reported under."""
    name = {"dane": "DANE", "mta-sts": "MTA-STS"}.get(applied.policy, applied.policy)
    return f"{name} ({applied.mode})" if applied.mode and applied.policy != "dane" else name


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
        self.transport = TransportPolicy(cfg, resolver, PolicyCache(cfg, db, resolver) if cfg.outbound_mta_sts else None)
        self.tally = TlsTally(db)               # outbound TLS results for the daily reports (RFC 8460)
        self._flushed_at = time.monotonic()

    async def stop(self) -> None:
        await super().stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.transport.sts_cache is not None:
            await self.transport.sts_cache.close()
        await self.tally.flush()

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
        if time.monotonic() - self._flushed_at > 60:
            self._flushed_at = time.monotonic()
            await self.tally.flush()
        room = min(BATCH, BATCH * 4 - len(self._inflight))
        entries, data, due = await self.db.write(_lease, room) if room > 0 else ([], {}, None)
        for entry in entries:
            if entry.id in self._inflight:
                continue
            self._inflight.add(entry.id)
            raw = data.get(entry.inbound_id)
            if raw is not None:
                self._data[entry.id] = raw
            # RFC 8689: mail that says "TLS-Required: No" (TLS reports, RFC 8460 5.3) has a lane of its own
            self._queues[entry.domain + TLS_OPTIONAL if raw is not None and tls_optional(raw) else entry.domain
                         ].append(entry)
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

    async def _connect(self, domain: str, targets: list[Target], port: int, relaxed: bool = False
                       ) -> tuple[Connection | None, DeliveryError | None, Applied]:
        """The first host that takes a connection meeting its transport policy (mxd.delivery.tlspolicy),
        with the policy that applied; else the last error. Each TLS outcome is noted for the TLS report.
        relaxed: the messages say "TLS-Required: No" (RFC 8689 5): STARTTLS when offered, no policy
        enforced, and the sessions are left out of the TLS reports (RFC 8460 5.3)."""
        cfg, last = self.cfg, None
        if relaxed and not cfg.smart_host:
            for target in targets:
                applied = Applied("opportunistic", "", target.host, "TLS-Required: No (RFC 8689): no policy enforced")
                for ip in target.addresses:
                    try:
                        return await Connection.open(target.host, port, helo_name=cfg.hostname, ip_for_connect=ip,
                                                     tls="opportunistic", timeout=60), None, applied
                    except DeliveryError as exc:
                        last = exc
            return None, last, Applied("opportunistic", "", "", "TLS-Required: No (RFC 8689)")
        if cfg.smart_host:
            target = targets[0]
            applied = Applied("smart-host", cfg.smart_host_tls, target.host, "all mail goes through smart_host")
            for ip in target.addresses:
                try:
                    return await Connection.open(
                        target.host, port, helo_name=cfg.hostname, ip_for_connect=ip, tls=cfg.smart_host_tls,
                        timeout=60, username=cfg.smart_host_username or None,
                        password=cfg.smart_host_password or None), None, applied
                except DeliveryError as exc:
                    last = exc
            return None, last, applied
        dplan: DomainPlan = await self.transport.plan_domain(domain)
        if dplan.sts_failure is not None:
            self.tally.note(Applied("mta-sts", "", "", dplan.sts_failure.text, "sts", [], domain), "",
                            dplan.sts_failure.result_type, dplan.sts_failure.text)
        applied = Applied("opportunistic", "", "", "", "no-policy-found", [], domain)
        for target in targets:
            plan = await self.transport.plan_host(dplan, target, port)
            applied = plan.applied
            if plan.refuse is not None:
                self.tally.note(applied, "", plan.refuse.result_type, plan.refuse.text)
                applied.detail = plan.refuse.text
                last = DeliveryError(False, 451, "4.7.5", f"{_named(applied)}: {plan.refuse.text}", target.host,
                                     "starttls", tls_result=plan.refuse.result_type)
                continue
            for ip in target.addresses:
                try:
                    conn = await Connection.open(
                        target.host, port, helo_name=cfg.hostname, ip_for_connect=ip, tls=plan.tls, timeout=60,
                        tls_context=plan.context, check_tls=plan.check, enforce_check=plan.enforce)
                except DeliveryError as exc:
                    if exc.tls_result:
                        self.tally.note(applied, ip, exc.tls_result, exc.text)
                        applied.detail = exc.text
                        exc.code, exc.enhanced = exc.code or 451, exc.enhanced or "4.7.5"
                        exc.text = f"{_named(applied)}: {exc.text}"
                    last = exc
                    continue
                failure = conn.tls_failure
                if failure is not None:                  # testing mode: delivered, and reported
                    self.tally.note(applied, ip, failure.result_type, failure.text)
                    applied.detail = f"would have failed: {failure.text}"
                elif not conn.tls_active:
                    self.tally.note(applied, ip, "starttls-not-supported", "the session went on without TLS")
                    applied.detail = "no TLS: " + ("the handshake failed" if conn.tls_fallback else "STARTTLS not offered")
                else:
                    self.tally.note(applied, ip)
                return conn, None, applied
        return None, last, applied

    async def _fail_queued(self, domain: str, taken: dict[str, QueueEntry], permanent: bool, reply: str,
                           host: str, tls: str = "") -> None:
        """No connection could be had: every entry waiting for this domain gets the outcome, unless
        other lanes are connected and can carry them (then the domain gets no more lanes than those)."""
        if self._connected[domain]:
            self._limit[domain] = self._connected[domain]
            return
        queue = self._queues[domain]
        taken.update((e.id, e) for e in queue)
        queue.clear()
        for entry in list(taken.values()):
            await self._outcome(entry, permanent, reply, host, tls)
            del taken[entry.id]

    async def _lane_run(self, domain: str, taken: dict[str, QueueEntry]) -> None:
        name, relaxed = domain.removesuffix(TLS_OPTIONAL), domain.endswith(TLS_OPTIONAL)   # the lane's key, and
        try:                                                                           # the destination domain
            targets, port = await self._targets(name)
        except NullMX:     # RFC 7505 3: a null MX means the domain accepts no mail
            return await self._fail_queued(domain, taken, True, "556 5.1.10 recipient domain has a null MX (RFC 7505)", "")
        except DeliveryError as exc:
            return await self._fail_queued(domain, taken, exc.permanent, _reply(exc.code, exc.enhanced, exc.text), "")
        if not targets:
            return await self._fail_queued(domain, taken, False, "451 4.4.4 no address for the destination", "")
        if not self._queues[domain]:
            return
        conn, error, applied = await self._connect(name, targets, port, relaxed)
        tls = applied.to_json()
        if conn is None:
            reply = _reply(error.code, error.enhanced, error.text) if error else "451 4.4.1 no host reachable"
            return await self._fail_queued(domain, taken, False, reply, error.host or "" if error else "", tls)
        self._connected[domain] += 1
        sent: list[tuple[QueueEntry, str, str]] = []
        relayed = bool(self.cfg.smart_host)
        host = conn_host(conn)
        queue = self._queues[domain]
        try:
            while True:
                if not queue:
                    if sent:
                        self._record_sent(sent, relayed, taken, tls)
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
                    await self._outcome(entry, exc.permanent, reply, exc.host or "", tls)
                    del taken[entry.id]
                    if exc.stage in ("connect", "ehlo", "starttls") or not exc.permanent:
                        return           # the connection is gone: the rest waits for another lane
                    continue
                reply = _reply(result.code, result.enhanced, result.text)
                if result.ok:
                    sent.append((entry, reply, host))
                    if len(sent) >= RECORD_EVERY:
                        self._record_sent(sent, relayed, taken, tls)
                else:
                    await self._outcome(entry, result.permanent, reply, host, tls)
                    del taken[entry.id]
                if not conn.is_open:
                    return
        finally:
            self._connected[domain] -= 1
            self._record_sent(sent, relayed, taken, tls)
            try:
                await conn.close()
            except Exception:                     # the outcomes are recorded; a failing QUIT changes nothing
                log.debug("closing the connection to %s failed", domain, exc_info=True)

    def _record_sent(self, sent: list[tuple[QueueEntry, str, str]], relayed: bool,
                     taken: dict[str, QueueEntry], tls: str = "") -> None:
        """Accepted by the remote side; written in the background while the lane sends on."""
        if not sent:
            return
        batch = list(sent)
        sent.clear()
        for entry, _, _ in batch:
            self._data.pop(entry.id, None)
            taken.pop(entry.id, None)
        self._spawn(self._write_sent(batch, relayed, tls))

    async def _write_sent(self, batch: list[tuple[QueueEntry, str, str]], relayed: bool, tls: str = "") -> None:
        try:
            await self.db.write(outqueue.delivered_many, batch, relayed, tls)
        except Exception:
            # Left leased: due again when the lease ends, so delivered once more rather than lost.
            log.exception("recording %d delivered entries failed", len(batch))
        finally:
            for entry, _, _ in batch:
                self._inflight.discard(entry.id)
            self._wake.set()                      # room to lease more

    async def _outcome(self, entry: QueueEntry, permanent: bool, reply: str, host: str, tls: str = "") -> None:
        """Record a failure: permanent ones fail and bounce; temporary ones back off until the lifetime ends."""
        self._inflight.discard(entry.id)          # its outcome is recorded here, once
        self._data.pop(entry.id, None)
        if not permanent:
            updated, expired = await self.db.write(outqueue.deferred, entry.id, reply, host, self.cfg.retry_delays, tls)
            self._wake.set()                      # the run loop learns the new next attempt time
            if not expired:
                await self._maybe_warn(updated)
                return
            reply = f"{reply} (gave up after {self.cfg.queue_lifetime})"
        await self.db.write(bounces.fail_and_bounce, self.cfg, entry.id, reply, host, "failed", tls or None)
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
