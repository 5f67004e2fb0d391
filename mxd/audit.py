"""The audit trail: who did what, as rows. Every mutating API call, every send with its preflight
decision, and every refused token use is recorded by `mxd.api.app.AuditMiddleware` (and by the
SMTP submission and MCP paths for what they do); `GET /api/audit` reads it back."""
from __future__ import annotations

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


def to_dict(row: Audit) -> dict[str, Any]:
    from datetime import datetime, timezone
    return {"id": row.id, "at": datetime.fromtimestamp(row.at, timezone.utc).isoformat().replace("+00:00", "Z"),
            "actor": row.actor, "org_id": row.org_id, "action": row.action, "target": row.target,
            "mailbox": row.mailbox, "result": row.result, "detail": row.detail}
