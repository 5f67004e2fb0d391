"""Inbox polling: a mailbox's inbound messages not yet acknowledged, oldest first, and acknowledgement.

An agent without a webhook endpoint polls, processes, then acks. Acknowledgement is a
durable column on the message, so nothing acknowledged comes back and nothing
unacknowledged is skipped, across restarts. Ids are time-ordered, so "oldest first"
is id order.
"""
from __future__ import annotations

import time

from mxd.store.models import Message


def poll(mailbox_id: str, limit: int = 20) -> list[Message]:
    return list(Message.select()
                .where((Message.mailbox == mailbox_id) & (Message.direction == "in") & Message.acked_at.is_null())
                .order_by(Message.id).limit(limit))


def ack(mailbox_id: str, message_ids: list[str]) -> tuple[list[str], list[str]]:
    """Acknowledge messages of this mailbox; returns (acknowledged now or before, not found in this mailbox)."""
    ids = sorted(set(message_ids))
    found = {m.id: m.acked_at for m in Message.select(Message.id, Message.acked_at)
             .where((Message.mailbox == mailbox_id) & (Message.direction == "in") & Message.id.in_(ids))}
    fresh = [i for i, acked in found.items() if acked is None]
    if fresh:
        Message.update(acked_at=time.time()).where(Message.id.in_(fresh)).execute()
    return [i for i in ids if i in found], [i for i in ids if i not in found]
