"""TLS reports, outbound (RFC 8460): for every recipient domain with TLS results of a past UTC day and no
report yet, its `_smtp._tls` policy is looked up and the daily report goes to its mailto: rua addresses as
mail from `tls_report_from`, through the one send path (preflight, DKIM signing, the queue) as mail of mxd
itself (principal None: the system budget, system_mail_daily_cap).

Each (domain, day) is claimed before it is sent (mxd.store.tls_results.claim), so one report goes out
whichever node or caller makes it; a temporary failure (DNS, the system budget) gives the claim back for
the next pass. https: rua endpoints are not POSTed to: a domain that names only those gets no report.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from mxd import tlsreport
from mxd.delivery import tlsrpt
from mxd.errors import MxdError
from mxd.ids import new_id
from mxd.resolver import DNSError
from mxd.sending import Outgoing
from mxd.sending import send as send_outgoing
from mxd.service import Services
from mxd.store import directory, orgs, tls_results

log = logging.getLogger("mxd.tlsrpt")
REPORT_DAYS = 7          # a day not reported within this many days (the server was down) is not reported


def _day(ts: float) -> str:
    return tlsrpt.utc_day(ts)


def past_days(now: float) -> list[str]:
    """The UTC days a scheduled pass reports on: yesterday and the REPORT_DAYS - 1 before it."""
    return [_day(now - 86400 * n) for n in range(1, REPORT_DAYS + 1)]


def report_sender(configured: str, default_domain: str) -> tuple[str, bool]:
    """Runs in the writer: the address reports come from (`tls_report_from`, else tls-reports@ the default
    domain), its mailbox made if missing (the preflight sends only from mailboxes; replies land there), and
    whether it was made."""
    address = configured or f"tls-reports@{orgs.default_domain(default_domain).name}"
    box, created = directory.create_mailbox(address, "TLS reports")
    return str(box.address), created


async def send_reports(s: Services, day: str | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """Send the reports due: of `day` (YYYY-MM-DD, today included: operators and tests), else of the past
    days not reported yet. Returns one entry per report looked at: domain, day, outcome (queued, no-rua,
    failed, retry), rua and, for a queued one, the message id; results older than KEEP_DAYS are pruned."""
    now = time.time() if now is None else now
    if day is not None:
        try:
            tlsreport.day_range(day)
        except ValueError:
            raise MxdError("bad_request", f"day must be a UTC date YYYY-MM-DD, not {day[:40]!r}") from None
        days = [day]
    else:
        days = past_days(now)
    await tlsrpt.flush_all(s.db)                 # the sessions of today so far, when today is asked for
    due = await s.db.read(tls_results.unreported, days, now)
    out = [await send_one(s, domain, d) for domain, d in due]
    await s.db.write(tls_results.prune, _day(now - 86400 * tls_results.KEEP_DAYS))
    return [r for r in out if r is not None]


async def send_one(s: Services, domain: str, day: str) -> dict[str, Any] | None:
    """The report of one domain and day, if it can be claimed (None: sent, or being sent, elsewhere)."""
    if not await s.db.write(tls_results.claim, domain, day):
        return None
    entry: dict[str, Any] = {"domain": domain, "day": day, "outcome": "queued", "rua": []}
    try:
        txts = await s.resolver.atxt(f"_smtp._tls.{domain}")
    except DNSError as exc:
        await s.db.write(tls_results.release, domain, day)
        return dict(entry, outcome="retry", reason=f"DNS: {exc}"[:300])
    uris = tlsreport.parse_record(txts)
    rcpts = tlsreport.mail_recipients(uris or [])
    if not rcpts:
        await s.db.write(tls_results.settle, domain, day, "no-rua", ",".join(uris or []))
        reason = "no TLSRPT record" if uris is None else "no mailto: rua (https: reports are not sent)"
        return dict(entry, outcome="no-rua", rua=uris or [], reason=reason)
    entry["rua"] = rcpts
    try:
        sender, created = await s.db.write(report_sender, s.cfg.tls_report_from, s.cfg.default_domain)
        if created:
            await s.db.read(s.directory.refresh)     # replies to it are routed at once
        results = await s.db.read(tls_results.of_day, domain, day)
        sender_domain = sender.rsplit("@", 1)[1]
        report = tlsreport.build(day, domain, results, s.cfg.hostname, f"postmaster@{sender_domain}")
        data = tlsreport.message(report, domain, s.cfg.hostname, sender, rcpts,
                                 f"<{new_id('tlsrpt')}@{sender_domain}>")
        sent = await send_outgoing(s.cfg, s.db, s.workers, None, Outgoing(sender, rcpts, data, "system"))
    except MxdError as exc:
        if exc.retry_after is not None:          # the system budget or a rate limit: later
            await s.db.write(tls_results.release, domain, day)
            return dict(entry, outcome="retry", reason=exc.message)
        await s.db.write(tls_results.settle, domain, day, "failed", ",".join(rcpts))
        log.warning("TLS report for %s (%s) not sent: %s", domain, day, exc.message)
        return dict(entry, outcome="failed", reason=exc.message)
    await s.db.write(tls_results.settle, domain, day, "queued", ",".join(rcpts))
    s.queued()
    return dict(entry, message_id=sent["id"], report_id=report["report-id"])
