"""The ACME renewal worker: issue at start when the certificate is missing or does not cover the names,
renew when a third of its lifetime is left, and serve each new certificate from the next handshake on.

Between renewals it sleeps until the due time (one timer; no polling), waking at most every
`names_check` seconds to read which domains have MTA-STS on (one SELECT), so that a new mta-sts.<domain>
name is added without waiting for the renewal. A failed attempt keeps the certificate being served,
records `certificate.renewal_failed` and retries after `retry_first` seconds, doubling up to
`retry_max`; a success records `certificate.renewed` and an audit row (actor "system").
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import threading
import time
from typing import Any, Callable, TypeVar

from mxd.background import BackgroundWorker
from mxd.certs import acme
from mxd.certs.contexts import ServerTLS
from mxd.config import Config
from mxd.db import Database
from mxd.store import audit, events
from mxd.store.models import Domain

log = logging.getLogger("mxd.acme")
T = TypeVar("T")


def sts_domains() -> list[str]:
    """Runs in a reader: the domains whose MTA-STS policy is served (mode not "off")."""
    return [d.name for d in Domain.select(Domain.name).where(Domain.mta_sts_mode != "off")]


def _in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """fn(*args) on a daemon thread of its own: an order may wait on a silent ACME server for minutes, and
    that must hold up neither the default executor nor the daemon's exit (asyncio.to_thread would)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if not future.done():
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def run() -> None:
        result, error = None, None
        try:
            result = fn(*args)
        except BaseException as exc:
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:                  # the loop is gone: the daemon stopped meanwhile
            pass
    threading.Thread(target=run, name="mxd-acme-order", daemon=True).start()
    return future


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class CertificateRenewal(BackgroundWorker):
    name = "mxd-acme"
    failure = "certificate renewal pass failed"
    retry_first = 60.0            # seconds before the first retry after a failure; doubles each time
    retry_max = 6 * 3600.0        # the longest wait between retries
    names_check = 3600.0          # the longest sleep before the names are read again

    def __init__(self, cfg: Config, db: Database, server_tls: ServerTLS, issuer: acme.Issuer) -> None:
        super().__init__()
        self.cfg, self.db, self.server_tls, self.issuer = cfg, db, server_tls, issuer
        self.failures = 0              # attempts failed in a row
        self.forced = False            # a renewal was asked for (renew_now) and has not succeeded yet
        self.serving: acme.Certificate | None = None
        self.attempts = 0              # issuance attempts made (for tests and the log)
        self.passes = 0                # passes done (each reads the names and the certificate on disk)

    def renew_now(self) -> None:
        """Renew at once whatever the certificate's age (an operator's or a test's request); retried until it succeeds."""
        self.forced = True
        self.notify()

    async def run_once(self) -> float:
        try:
            return await self._pass()
        finally:
            self.passes += 1

    async def _pass(self) -> float:
        names = acme.wanted_names(self.cfg.hostname, await self.db.read(sts_domains), bool(self.cfg.https_listen))
        cert = await asyncio.to_thread(acme.current, self.issuer.directory)
        now = time.time()
        if cert is not None and not self.forced and cert.covers(names) and now < cert.renew_at:
            try:
                if self.serving != cert:
                    self._serve(cert)
                self.failures = 0
                return self._sleep(cert, now)
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.warning("the ACME certificate in %s does not load, a new one will be issued: %s", cert.path, exc)
        return await self._renew(names, cert)

    def _serve(self, cert: acme.Certificate) -> None:
        self.server_tls.load(cert.path, cert.key_path)
        self.serving = cert
        log.info("serving the ACME certificate for %s (valid until %s)", ", ".join(sorted(cert.names)),
                 _iso(cert.not_after))

    def _sleep(self, cert: acme.Certificate, now: float) -> float:
        return max(1.0, min(cert.renew_at - now, self.names_check))

    async def _renew(self, names: list[str], old: acme.Certificate | None) -> float:
        self.attempts += 1
        try:
            cert = await _in_thread(self.issuer.issue, names)
            self._serve(cert)
        except Exception as exc:
            delay = min(self.retry_first * 2 ** self.failures, self.retry_max)
            self.failures += 1
            reason = str(exc)[:500] or type(exc).__name__
            log.warning("certificate for %s not renewed (attempt %d), the current one is kept; retry in %.0f s: %s",
                        ", ".join(names), self.failures, delay, reason)
            await self.db.write(_failed, names, reason, delay, self.failures)
            return delay
        self.failures, self.forced = 0, False
        await self.db.write(_renewed, names, cert, old)
        return self._sleep(cert, time.time())


def _failed(names: list[str], reason: str, delay: float, failures: int) -> None:
    events.emit("certificate.renewal_failed", names=names, error=reason, retry_in=round(delay), failures=failures)
    audit.record("system", "certificate.renew", target=",".join(names), result="error",
                 detail={"error": reason, "retry_in": round(delay)})


def _renewed(names: list[str], cert: acme.Certificate, old: acme.Certificate | None) -> None:
    events.emit("certificate.renewed", names=names, not_after=_iso(cert.not_after))
    audit.record("system", "certificate.renew", target=",".join(names),
                 detail={"not_after": _iso(cert.not_after),
                         "previous_not_after": _iso(old.not_after) if old is not None else None})
