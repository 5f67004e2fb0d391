"""What the MX's defences did since the process started: refusals by reason, configuration problems
(a blocklist's error answers, timeouts), and how long the checks before the 250 took.

The MX writes here; `GET /api/health` reads `snapshot()`. In memory and per process, on purpose: these
are an operator's gauges, not records (what a message went through is stored with it, `Inbound.checks`).
"""
from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Any

from mxd.timefmt import iso

log = logging.getLogger("mxd.defences")
_SAMPLES = 4096

refusals: Counter[str] = Counter()
problems: dict[str, dict[str, Any]] = {}
_check_seconds: deque[float] = deque(maxlen=_SAMPLES)
_engine_seconds: deque[tuple[float, float]] = deque(maxlen=_SAMPLES)   # (spam engine, all checks) per message


def refused(reason: str) -> None:
    """One refusal (a reply that turned a client or a message away), by reason: dnsbl, dmarc_reject, ..."""
    refusals[reason] += 1


def problem(key: str, detail: str) -> None:
    """A configuration or network problem seen (e.g. "dnsbl zen.spamhaus.org error"): counted, with the
    last detail and when it was last seen; logged the 1st, 10th, 100th, ... time."""
    entry = problems.get(key)
    if entry is None:
        if len(problems) >= 256:             # bounded: a hostile zone cannot grow this without end
            return
        entry = problems[key] = {"count": 0, "detail": "", "last_seen": 0.0}
    entry["count"] += 1
    entry["detail"] = detail[:300]
    entry["last_seen"] = time.time()
    count = entry["count"]
    if count == 10 ** (len(str(count)) - 1):
        log.warning("inbound defences: %s (%d times so far): %s", key, count, entry["detail"])


def checked(seconds: float) -> None:
    """The time the checks at DATA took for one message (before its commit and 250)."""
    _check_seconds.append(seconds)


def engine_checked(engine: float, total: float) -> None:
    """The spam engine's time for one message, and the time all the checks at DATA took for it."""
    _engine_seconds.append((engine, total))


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def check_times() -> dict[str, Any]:
    values = list(_check_seconds)
    out: dict[str, Any] = {"count": len(values), "p50_ms": round(percentile(values, 0.50) * 1000, 3),
                           "p99_ms": round(percentile(values, 0.99) * 1000, 3)}
    pairs = list(_engine_seconds)
    if pairs:
        engine = [e for e, _ in pairs]
        total = sum(t for _, t in pairs)
        out["spam_engine"] = {"count": len(pairs), "p50_ms": round(percentile(engine, 0.50) * 1000, 3),
                              "p99_ms": round(percentile(engine, 0.99) * 1000, 3),
                              "share": round(sum(engine) / total, 3) if total > 0 else 0.0}
    return out


def snapshot() -> dict[str, Any]:
    return {"refusals": dict(refusals),
            "problems": [{"key": k, "count": v["count"], "detail": v["detail"], "last_seen": iso(v["last_seen"])}
                         for k, v in sorted(problems.items())],
            "check_time": check_times()}


def reset() -> None:
    """Forget everything (tests, and a bench run that wants its own figures)."""
    refusals.clear()
    problems.clear()
    _check_seconds.clear()
    _engine_seconds.clear()
