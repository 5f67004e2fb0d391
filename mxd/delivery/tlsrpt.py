"""The TLS tally owns counting outbound TLS sessions per day, policy and outcome (RFC 8460 4), in memory
between flushes to the store, from which the daily TLS reports are made."""
from __future__ import annotations

from typing import TYPE_CHECKING

from mxd.db import Database

if TYPE_CHECKING:
    from mxd.delivery.tlspolicy import Applied


class TlsTally:
    def __init__(self, db: Database) -> None:
        self.db = db

    def note(self, applied: "Applied", receiving_ip: str, result_type: str = "", detail: str = "") -> None:
        """One session (result_type "" for a success) under the policy that applied."""

    async def flush(self) -> None:
        """Write what was noted since the last flush."""
