"""How mxd writes a time in JSON (RFC 3339 in UTC with a `Z`, or null) and reads one from a query string."""
from __future__ import annotations

import math
from datetime import datetime, timezone

from mxd.errors import MxdError


def iso(ts: float | None) -> str | None:
    """`ts` (seconds since the epoch) as `2026-01-02T03:04:05.123456Z`; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def when(value: str | None, name: str) -> float | None:
    """ISO 8601 (a time without zone is UTC) or seconds since the epoch."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise MxdError("bad_request", f"{name} must be a finite time")
        return number
    text = value.strip().replace("Z", "+00:00")
    if "T" in text and text.count(" ") == 1:              # a "+" that arrived unencoded in the query string
        text = text.replace(" ", "+")
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    except (ValueError, OverflowError):
        raise MxdError("bad_request", f"{name} must be ISO 8601 (2026-01-31T12:00:00Z) or epoch seconds") from None
