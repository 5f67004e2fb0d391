"""The TLS reporter: once a day, shortly after 00:00 UTC plus a random delay (RFC 8460 4.1 asks reporters
to spread their load), the reports of the past days go out (mxd.service.tls_reports). Between passes it
sleeps: no timer, no query. A pass that could not finish (DNS down, the system budget spent) is tried
again an hour later."""
from __future__ import annotations

import logging
import random
import time

from mxd.background import BackgroundWorker
from mxd.service import Services, tls_reports

log = logging.getLogger("mxd.tlsrpt")
RETRY = 3600.0
JITTER = (300.0, 3600.0)          # seconds after midnight UTC the daily pass starts


def until_next_pass(now: float, jitter: float) -> float:
    """Seconds from `now` to the next 00:00 UTC plus `jitter`."""
    return 86400.0 - now % 86400.0 + jitter


class TlsReporter(BackgroundWorker):
    name = "mxd-tls-reports"
    poll = RETRY                   # after a pass that raised
    failure = "TLS report pass failed"
    log = log

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services

    def first_wait(self) -> float | None:
        return random.uniform(60.0, 600.0)     # a restart sends what a stop at midnight missed, not at once

    async def run_once(self) -> float | None:
        done = await tls_reports.send_reports(self.services)
        for r in done:
            log.info("TLS report %s %s: %s %s", r["domain"], r["day"], r["outcome"], r.get("reason", ""))
        if any(r["outcome"] == "retry" for r in done):
            return RETRY
        return until_next_pass(time.time(), random.uniform(*JITTER))
