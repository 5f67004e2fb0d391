"""The audit trail: who did what, as rows. Every mutating API call, every send with its preflight
decision, and every refused token use is recorded by `mxd.api.http.AuditMiddleware` (and by the
SMTP submission and MCP paths for what they do); `GET /api/audit` reads it back.

What a client without a valid token can make mxd write is bounded: its rows carry a short target and its
address, at most `ANONYMOUS_PER_IP` of them a minute per address (an IPv6 /64 counts as one), at most
`ANONYMOUS_PER_MINUTE` from everyone, and the retention sweep drops rows older than `audit_retention_days`."""
from __future__ import annotations

import ipaddress
import json
import time
from typing import Any

from mxd.db import execute
from mxd.ids import new_id
from mxd.store.models import Audit


def record(actor: str, action: str, *, org_id: str | None = None, target: str = "", mailbox: str | None = None,
           result: str = "ok", detail: dict[str, Any] | None = None, at: float | None = None) -> str:
    audit_id = new_id("aud")
    # hand-written SQL: one row per send, on the writer's hot path
    execute('INSERT INTO "audit" ("id", "at", "actor", "org_id", "action", "target", "mailbox", "result", "detail") '
            'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
            (audit_id, time.time() if at is None else at, actor[:200], org_id, action[:120], target[:2000], mailbox,
             result[:40], json.dumps(detail or {}, separators=(",", ":"))))
    return audit_id


def prune(before: float, limit: int = 5000) -> int:
    """Runs in the writer: delete up to `limit` of the oldest rows written before `before`; returns how many."""
    return execute('DELETE FROM "audit" WHERE "id" IN (SELECT "id" FROM "audit" WHERE "at" < ? ORDER BY "at" LIMIT ?)',
                   (before, limit)).rowcount


ANONYMOUS_PER_IP = 30          # rows a minute from one client address without a valid token
ANONYMOUS_PER_MINUTE = 600     # rows a minute from all of them
ANONYMOUS_TARGET = 200         # characters of the path kept in such a row


def client_key(ip: str) -> str:
    """The unit an anonymous budget is counted in: the address, or its /64 for IPv6 (one host's share)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class AnonymousBudget:
    """One-minute windows of anonymous audit rows, per client (from its first row) and in all; one per process.

    `admit` answers "record", "once" (the first refusal in a window: record one row saying so) or "drop".
    A client is remembered only while the window in all has room, so memory stays bounded whatever the
    addresses."""

    def __init__(self, per_ip: int = ANONYMOUS_PER_IP, total: int = ANONYMOUS_PER_MINUTE, window: float = 60.0) -> None:
        self.per_ip, self.total, self.window = per_ip, total, window
        self._since = float("-inf")
        self._used = 0
        self._total_noted = False
        self._clients: dict[str, list[float]] = {}        # key -> [window start, rows in it]

    def admit(self, ip: str, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        if now - self._since >= self.window:
            self._since, self._used, self._total_noted = now, 0, False
            self._clients = {k: v for k, v in self._clients.items() if now - v[0] < self.window}
        key = client_key(ip)
        entry = self._clients.get(key)
        if entry is not None and now - entry[0] >= self.window:
            entry = None
        if entry is not None and entry[1] > self.per_ip:
            return "drop"
        if self._used >= self.total:
            if self._total_noted:
                return "drop"
            self._total_noted = True
            return "once"
        if entry is None:
            entry = self._clients[key] = [now, 0]
        entry[1] += 1
        self._used += 1
        return "record" if entry[1] <= self.per_ip else "once"


anonymous = AnonymousBudget()


def result_of(status: int, code: str | None = None) -> str:
    """The result column for an outcome: ok, denied (a refused token or scope: 401/403), or the error code."""
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "denied"
    return code or "error"


def query(*, org_id: str | None = None, everyone: bool = False, actor: str | None = None,
          mailbox: str | None = None, action: str | None = None, since: float | None = None,
          until: float | None = None, result: str | None = None, limit: int = 100,
          cursor: str | None = None) -> list[Audit]:
    """Newest first. `everyone` (the operator) sees every organisation; otherwise only `org_id`'s rows."""
    q = Audit.select()
    if not everyone:
        q = q.where(Audit.org_id.is_null() if org_id is None else Audit.org_id == org_id)
    if actor:
        q = q.where(Audit.actor == actor)
    if mailbox:
        q = q.where(Audit.mailbox == mailbox)
    if action:   # exact, or a prefix ending in "*" ("send*", "POST /api/tokens*")
        q = q.where(Audit.action.startswith(action[:-1]) if action.endswith("*") else Audit.action == action)
    if since is not None:
        q = q.where(Audit.at >= since)
    if until is not None:
        q = q.where(Audit.at < until)
    if result:
        q = q.where(Audit.result == result)
    if cursor:
        q = q.where(Audit.id < cursor)
    return list(q.order_by(Audit.id.desc()).limit(limit))

