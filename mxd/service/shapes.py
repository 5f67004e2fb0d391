"""The JSON shape of the store's rows as every door answers them: organisations, agents, tokens, audit
entries, queue entries, suppressions and webhooks (never a webhook's secrets). Times are written by
mxd.timefmt.iso, except a token's, which the API has always given as epoch seconds."""
from __future__ import annotations

import json
import time
from typing import Any

from mxd.store.models import Agent, Audit, Organization, QueueEntry, Suppression, Token, Webhook
from mxd.store.queue import ACTIVE
from mxd.timefmt import iso


def agent(agent: Agent) -> dict:
    return {"id": agent.id, "organization_id": agent.org_id, "name": agent.name, "slug": agent.slug,
            "external_id": agent.external_id, "description": agent.description, "purpose": agent.purpose,
            "owner_label": agent.owner_label, "policy_scope": agent.policy_scope,
            "created_at": iso(agent.created_at)}


def audit_entry(row: Audit) -> dict[str, Any]:
    return {"id": row.id, "at": iso(row.at),
            "actor": row.actor, "org_id": row.org_id, "action": row.action, "target": row.target,
            "mailbox": row.mailbox, "result": row.result, "detail": row.detail}


def organization(org: Organization) -> dict:
    return {"id": org.id, "name": org.name, "slug": org.slug, "owner_email": org.owner_email,
            "verified": org.verified_at is not None, "verified_at": iso(org.verified_at),
            "daily_send_cap": org.daily_send_cap, "created_at": iso(org.created_at)}


def queue_entry(entry: QueueEntry) -> dict:
    return {"id": entry.id, "message_id": entry.message_id, "recipient": entry.recipient, "domain": entry.domain,
            "status": entry.status, "attempts": entry.attempts, "created_at": iso(entry.created_at),
            "next_attempt_at": iso(entry.next_attempt_at) if entry.status in ACTIVE else None,
            "last_attempt_at": iso(entry.last_attempt_at), "expires_at": iso(entry.expires_at),
            "last_reply": entry.last_reply, "last_host": entry.last_host, "hold_reason": entry.hold_reason,
            "tls": _tls(entry.tls or "")}


def _tls(value: str) -> dict | None:
    """The transport policy the last attempt was held to: {"policy", "mode", "host", "detail"} (None before one)."""
    if not value:
        return None
    try:
        found = json.loads(value)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def suppression(row: Suppression) -> dict:
    return {"address": row.address, "organization_id": row.org_id or None, "reason": row.reason,
            "detail": row.detail, "created_at": iso(row.created_at)}


def token(row: Token) -> dict:
    return {"id": row.id, "name": row.name, "hint": row.hint, "scopes": row.scopes,
            "mailboxes": row.mailboxes, "org_id": row.org_id, "created_at": row.created_at,
            "last_used_at": row.last_used_at}


def webhook(hook: Webhook, mailbox_address: str | None = None, now: float | None = None) -> dict:
    """The public view of a webhook: never its secrets."""
    now = time.time() if now is None else now
    rotating = hook.previous_secret is not None and (hook.previous_expires_at or 0) > now
    return {"id": hook.id, "url": hook.url, "event_types": hook.event_types, "org_id": hook.org_id,
            "agent_id": hook.agent_id, "mailbox_id": hook.mailbox_id, "mailbox": mailbox_address,
            "enabled": hook.enabled, "disabled_reason": hook.disabled_reason,
            "previous_secret_expires_at": iso(hook.previous_expires_at) if rotating else None,
            "created_at": iso(hook.created_at)}
