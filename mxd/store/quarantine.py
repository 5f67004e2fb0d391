"""Quarantine: the messages held back from their mailbox with their reasons, listed for an administrator,
released into the mailbox (threaded then, as if just arrived, with their original time) or deleted.

A quarantined message is an ordinary Message row with `quarantine` ([{"code", "detail"}]) and
`quarantined_at` set and no thread; the pipeline stores it so (indexed, `message.quarantined` emitted,
no `message.inbound`). What readers show of it is mxd.store.visibility's rule. Runs on the store's threads.
"""
from __future__ import annotations

from typing import Any

from mxd.db import execute, proxy
from mxd.errors import MxdError
from mxd.store import events, search, threads, visibility
from mxd.store.models import Message

REASONS = ("dmarc_quarantine", "dmarc_reject", "spam", "sender_blocked", "sender_not_allowed", "unauthenticated",
           "blocked_attachment", "too_large")
_SCAN = 200            # rows read at a time while filtering on a reason


def has_reason(msg: Any, code: str) -> bool:
    return any(isinstance(r, dict) and r.get("code") == code for r in (msg.quarantine or []))


def held(mailbox_ids: list[str] | None, limit: int, before: str | None, reason: str | None = None) -> list[Message]:
    """Quarantined messages newest first (by id), at most `limit`, older than the cursor id `before`; only
    those with a reason of code `reason` when given. Reads the quarantined_at index, never the whole table."""
    if mailbox_ids is not None and not mailbox_ids:
        return []
    found: list[Message] = []
    cursor = before
    while len(found) < limit:
        query = Message.select().where(visibility.quarantined())
        if mailbox_ids is not None:
            query = query.where(Message.mailbox.in_(mailbox_ids))
        if cursor:
            query = query.where(Message.id < cursor)
        batch = list(query.order_by(Message.id.desc()).limit(limit if reason is None else _SCAN))
        found += [m for m in batch if reason is None or has_reason(m, reason)]
        if reason is None or len(batch) < _SCAN:
            break
        cursor = batch[-1].id
    return found[:limit]


def quarantined(message_id: str) -> Message:
    """The message if it is quarantined now; 409 not_quarantined when it exists and is not."""
    msg = Message.get_or_none(Message.id == message_id)
    if msg is None:
        raise MxdError("not_found", f"message {message_id!r} not found")
    if msg.quarantined_at is None:
        raise MxdError("conflict", f"message {message_id!r} is not quarantined (released already, or never held)",
                       fix=f"Read it with GET /api/messages/{message_id}.")
    return msg


def release(message_id: str, window_seconds: float) -> tuple[Message, str]:
    """Runs in the writer: let a quarantined message into its mailbox as if it had just arrived: threaded (by
    its own Date, else its original received_at, which it keeps), unacknowledged, `message.inbound` emitted.
    Returns the message as it is now and its thread id; 409 when it is not quarantined."""
    msg = quarantined(message_id)
    when = msg.date if msg.date is not None else msg.received_at
    thread_id = threads.assign(msg.mailbox_id, msg.message_id, msg.in_reply_to or [], msg.references or [],
                               msg.subject or "", when, window_seconds)
    execute('UPDATE "message" SET "thread_id" = ?, "quarantine" = NULL, "quarantined_at" = NULL, "acked_at" = NULL '
            'WHERE "id" = ?', (thread_id, msg.id))
    events.emit("message.inbound", mailbox_id=msg.mailbox_id, message_id=msg.id, thread_id=thread_id,
                released=True)
    return Message.get_by_id(msg.id), thread_id


def delete(message_id: str) -> Message:
    """Runs in the writer: remove a quarantined message (its attachments, search entry, and its raw bytes when
    no other message or queue entry needs them). Returns the row as it was; 409 when it is not quarantined."""
    msg = quarantined(message_id)
    execute('DELETE FROM "attachment" WHERE "message_id" = ?', (msg.id,))
    search.remove(proxy.obj, [msg.id])
    execute('DELETE FROM "message" WHERE "id" = ?', (msg.id,))
    if msg.inbound_id:
        execute('DELETE FROM "inbound" WHERE "id" = ? '
                'AND NOT EXISTS (SELECT 1 FROM "message" WHERE "inbound_id" = ?) '
                'AND NOT EXISTS (SELECT 1 FROM "queue_entry" WHERE "inbound_id" = ?)',
                (msg.inbound_id, msg.inbound_id, msg.inbound_id))
    return msg
