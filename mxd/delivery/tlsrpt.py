"""The TLS tally owns counting outbound TLS sessions per day, policy and outcome (RFC 8460 4), in memory
between flushes to the store, from which the daily TLS reports are made.

`note` runs on the event loop for every session the delivery workers open (a dict increment); `flush`
writes what was noted in one transaction (mxd.store.tls_results.add, an upsert-increment). Every live
tally of the process on one store can be flushed at once (`flush_all`), so that a report made now sees every session
so far."""
from __future__ import annotations

import logging
import time
import weakref
from typing import TYPE_CHECKING

from mxd.db import Database
from mxd.store import tls_results
from mxd.store.tls_results import Count, Key

if TYPE_CHECKING:
    from mxd.delivery.tlspolicy import Applied

log = logging.getLogger("mxd.delivery")
MAX_DETAIL = 300          # characters of a failure's text kept as its failure-reason-code
MAX_KEYS = 50_000         # distinct keys held between flushes; past that, sessions are counted on flush only

_live: "weakref.WeakSet[TlsTally]" = weakref.WeakSet()


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


class TlsTally:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._counts: dict[Key, Count] = {}
        _live.add(self)

    def note(self, applied: "Applied", receiving_ip: str, result_type: str = "", detail: str = "") -> None:
        """One session (result_type "" for a success) under the policy that applied."""
        domain = applied.report_domain.lower()
        if not domain:
            return                  # no recipient domain (smart host): nobody to report to
        key = (utc_day(time.time()), domain, applied.report_type, applied.host.lower(), result_type, receiving_ip)
        found = self._counts.get(key)
        if found is None:
            if len(self._counts) >= MAX_KEYS:
                return
            self._counts[key] = Count(1, list(applied.report_strings), detail[:MAX_DETAIL] if result_type else "")
            return
        found.count += 1
        found.policy_string = list(applied.report_strings)
        if result_type and detail:
            found.detail = detail[:MAX_DETAIL]

    @property
    def pending(self) -> int:
        """Sessions noted and not yet written."""
        return sum(c.count for c in self._counts.values())

    async def flush(self) -> None:
        """Write what was noted since the last flush."""
        counts, self._counts = self._counts, {}
        if not counts:
            return
        try:
            await self.db.write(tls_results.add, counts)
        except Exception:
            log.exception("TLS results could not be written; kept for the next flush")
            for key, c in counts.items():        # back in, added to what was noted meanwhile
                now = self._counts.get(key)
                if now is None:
                    self._counts[key] = c
                else:
                    now.count += c.count


async def flush_all(db: Database) -> None:
    """Flush every tally of this process that writes to `db` (before a report is made on demand)."""
    for tally in list(_live):
        if tally.db is db:
            await tally.flush()
