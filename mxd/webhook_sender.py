"""Webhook delivery: fans event rows out to matching webhooks as durable delivery rows, then POSTs
them signed per the Standard Webhooks spec, retrying with backoff; a 410 disables the endpoint.

Target addresses are checked when a webhook is made and again on every connection: the host is
resolved once, through the configured resolver like every other lookup, and every address it resolves
to must be public (unless webhook_allow_private; the rule is `mxd.netcheck.refusal`, which also judges
the IPv4 address inside 6to4, Teredo, NAT64 and other IPv6 forms), and the connection goes to an
address that was checked, so a name that changes its answer between the check and the connection (DNS
rebinding) cannot reach loopback, private or link-local services. Secrets are stored sealed
(mxd.secretbox) and opened only to sign.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any, Iterable

import httpcore
import httpx
import standardwebhooks

from mxd.background import BackgroundWorker
from mxd.config import Config, parse_duration
from mxd.db import Database
from mxd.resolver import Resolver
from mxd.secretbox import for_dir
from mxd.store import webhook_rows as store
from mxd.webhook_target import UrlRefused, resolve

log = logging.getLogger("mxd.webhooks")
logging.getLogger("httpx").setLevel(logging.WARNING)   # its INFO line per request carries the URL, often a secret

POLL_SECONDS = 1.0
FAN_OUT_BATCH = 200
MAX_IN_FLIGHT = 32          # deliveries under way at once
PER_WEBHOOK = 4             # of which at most this many to one endpoint, so a slow one cannot starve the rest
KEEP_SECONDS = 30 * 86400   # finished deliveries and attempts are listed for this long
PRUNE_EVERY = 3600.0
USER_AGENT = "mxd-webhooks/1"


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses that passed `resolve`, so the address checked is the one used."""

    def __init__(self, allow_private: bool, resolver: Resolver | None = None) -> None:
        self.allow_private, self.resolver = allow_private, resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port, self.allow_private, timeout or 10.0, self.resolver)
        error: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(ip, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise UrlRefused("unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def make_client(timeout: float, allow_private: bool, resolver: Resolver | None = None) -> httpx.AsyncClient:
    """An HTTP client whose every connection goes through the address check (host names resolved through
    `resolver`, else the system's); no redirects, no proxies."""
    transport = httpx.AsyncHTTPTransport()
    transport._pool = httpcore.AsyncConnectionPool(      # httpx has no public hook for the network backend
        ssl_context=httpx.create_ssl_context(), max_connections=MAX_IN_FLIGHT, max_keepalive_connections=16,
        keepalive_expiry=5.0, network_backend=_CheckedBackend(allow_private, resolver))
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False,
                             headers={"user-agent": USER_AGENT})


# ---------------------------------------------------------------- signing
def sign_headers(msg_id: str, body: str, secrets: list[str], when: float | None = None) -> dict[str, str]:
    """The Standard Webhooks headers: webhook-id, webhook-timestamp and webhook-signature (one
    space-separated `v1,<base64 HMAC-SHA256>` per secret, so a receiver holding either secret verifies)."""
    ts = int(time.time() if when is None else when)
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    signature = " ".join(standardwebhooks.Webhook(s).sign(msg_id, moment, body) for s in secrets)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature,
            "content-type": "application/json"}


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


# ---------------------------------------------------------------- the worker
class WebhookWorker(BackgroundWorker):
    """Fans events out, then delivers what is due with bounded concurrency; survives restarts because
    every delivery is a row (one still pending when the daemon stops is sent after it starts again)."""

    name = "mxd-webhooks"
    poll = POLL_SECONDS
    graceful = 10.0                            # on stop, the pass under way may finish
    failure = "webhook pass failed"
    log = log

    def __init__(self, cfg: Config, db: Database, resolver: Resolver) -> None:
        super().__init__()
        self.cfg, self.db, self.resolver = cfg, db, resolver
        self.box = for_dir(cfg.data_dir)           # webhook secrets are stored sealed (mxd.secretbox)
        self.delays = [parse_duration(d, "webhook_retry_schedule") for d in cfg.webhook_retry_schedule]
        self.lifetime = cfg.seconds("webhook_lifetime")
        self._inflight: dict[str, tuple[str, asyncio.Task]] = {}      # delivery id -> (webhook id, task)
        self._client: httpx.AsyncClient | None = None
        self._pruned = -PRUNE_EVERY

    def start(self) -> None:
        self._client = make_client(self.cfg.webhook_timeout, self.cfg.webhook_allow_private, self.resolver)
        super().start()

    async def stop(self) -> None:
        await super().stop()
        tasks = [task for _, task in self._inflight.values()]
        if tasks:                              # unfinished ones stay pending and go out after a restart
            _, late = await asyncio.wait(tasks, timeout=self.cfg.webhook_timeout + 1)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def setup(self) -> None:
        try:
            sealed = await self.db.write(store.seal_plain, self.box)
            if sealed:
                log.info("sealed the secrets of %d webhooks stored in clear by an earlier mxd", sealed)
        except Exception:
            log.exception("sealing webhook secrets stored in clear failed; they still sign")

    async def run_once(self) -> float | None:
        more = False
        if time.monotonic() - self._pruned > PRUNE_EVERY:
            self._pruned = time.monotonic()
            await self.db.write(store.prune, time.time() - max(KEEP_SECONDS, 2 * self.lifetime), bulk=True)
        if await self.db.read(store.unfanned):
            more = await self.db.write(store.fan_out, FAN_OUT_BATCH, bulk=True) >= FAN_OUT_BATCH
        await self._dispatch()
        return 0 if more else None

    async def _dispatch(self) -> None:
        room = MAX_IN_FLIGHT - len(self._inflight)
        if room <= 0 or self._stopping:
            return
        jobs, gone = await self.db.read(store.due, time.time(), PER_WEBHOOK, MAX_IN_FLIGHT, frozenset(self._inflight),
                                        self.box)
        if gone:
            await self.db.write(store.cancel, gone, "the webhook was disabled or deleted, or the event is gone")
        per_hook: dict[str, int] = {}
        for hook_id, _ in self._inflight.values():
            per_hook[hook_id] = per_hook.get(hook_id, 0) + 1
        for job in jobs:
            if len(self._inflight) >= MAX_IN_FLIGHT:
                break
            if per_hook.get(job.webhook_id, 0) >= PER_WEBHOOK:
                continue
            per_hook[job.webhook_id] = per_hook.get(job.webhook_id, 0) + 1
            task = asyncio.get_running_loop().create_task(self._deliver(job))
            self._inflight[job.delivery_id] = (job.webhook_id, task)
            task.add_done_callback(lambda _t, key=job.delivery_id: self._done(key))

    def _done(self, delivery_id: str) -> None:
        self._inflight.pop(delivery_id, None)
        self._wake.set()                       # a slot is free

    async def _deliver(self, job: store.Job) -> None:
        assert self._client is not None
        status: int | None = None
        error = ""
        started = time.monotonic()
        try:
            headers = sign_headers(job.event_id, job.body, job.secrets)
            async with asyncio.timeout(self.cfg.webhook_timeout + 1):     # the whole exchange, not each read
                async with self._client.stream("POST", job.url, content=job.body.encode(), headers=headers) as resp:
                    status = resp.status_code
                    if not 200 <= status < 300:
                        head = b""
                        async for chunk in resp.aiter_bytes():
                            head += chunk
                            if len(head) >= 200:
                                break
                        error = f"HTTP {status}: {head[:200].decode('utf-8', 'replace')}".strip()
        except UrlRefused as exc:
            error = f"refused: {exc}"
        except (httpx.HTTPError, httpx.InvalidURL, OSError, TimeoutError) as exc:
            error = _describe(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:               # a bad URL or answer must not end the worker
            log.warning("webhook %s delivery %s: %s", job.webhook_id, job.delivery_id, _describe(exc))
            error = _describe(exc)
        elapsed = int((time.monotonic() - started) * 1000)
        try:
            outcome = await self.db.write(store.record, job.delivery_id, status, error, elapsed, self.delays,
                                          self.lifetime)
        except Exception:
            log.exception("recording webhook delivery %s failed", job.delivery_id)
            return
        if outcome == "failed":
            log.info("webhook %s: delivery %s of %s given up (%s)", job.webhook_id, job.delivery_id, job.event_id,
                     error or status)
