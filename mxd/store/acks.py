"""Inbox polling: a mailbox's inbound messages not yet acknowledged, oldest first, and acknowledgement.

An agent without a webhook endpoint polls, processes, then acks. Acknowledgement is a
durable column on the message, so nothing acknowledged comes back and nothing
unacknowledged is skipped, across restarts. Ids are time-ordered, so "oldest first"
is id order.
"""
from __future__ import annotations

import time
from typing import Any

from mxd.store import visibility
from mxd.store.models import Message


def _inbound_of(mailbox_id: str, include_quarantined: bool) -> Any:
    cond = (Message.mailbox == mailbox_id) & (Message.direction == "in")
    shown = visibility.shown(include_quarantined)
    return cond if shown is None else cond & shown


def poll(mailbox_id: str, limit: int = 20, include_quarantined: bool = False) -> list[Message]:
    """Unacknowledged inbound messages, oldest first; quarantined ones only when asked (a released message
    comes back unacknowledged: mxd.store.quarantine.release)."""
    return list(Message.select()
                .where(_inbound_of(mailbox_id, include_quarantined) & Message.acked_at.is_null())
                .order_by(Message.id).limit(limit))


def ack(mailbox_id: str, message_ids: list[str], include_quarantined: bool = False) -> tuple[list[str], list[str]]:
    """Acknowledge messages of this mailbox; returns (acknowledged now or before, not found in this mailbox).
    A quarantined message is not found unless asked for, as in `poll`."""
    ids = sorted(set(message_ids))
    found = {m.id: m.acked_at for m in Message.select(Message.id, Message.acked_at)
             .where(_inbound_of(mailbox_id, include_quarantined) & Message.id.in_(ids))}
    fresh = [i for i, acked in found.items() if acked is None]
    if fresh:
        Message.update(acked_at=time.time()).where(Message.id.in_(fresh)).execute()
    return [i for i in ids if i in found], [i for i in ids if i not in found]
