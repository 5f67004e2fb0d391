"""How mxd writes a time in JSON: RFC 3339 in UTC with a `Z`, or null."""
from __future__ import annotations

from datetime import datetime, timezone


def iso(ts: float | None) -> str | None:
    """`ts` (seconds since the epoch) as `2026-01-02T03:04:05.123456Z`; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")
