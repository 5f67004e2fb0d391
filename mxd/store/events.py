"""The outbox: every state change becomes a durable event row, written in the same transaction as the change."""
from __future__ import annotations

import json
import time
from typing import Any

from mxd.db import execute
from mxd.ids import new_id

TYPES = ("message.inbound", "message.queued", "message.sent", "message.delivered", "message.deferred",
         "message.failed", "message.blocked", "message.held", "message.released", "domain.verified",
         "inbound.unacknowledged", "message.quarantined", "certificate.renewed", "certificate.renewal_failed")


def emit(type_: str, *, mailbox_id: str | None = None, message_id: str | None = None, **data: Any) -> str:
    assert type_ in TYPES, type_
    event_id = new_id("evt")
    execute('INSERT INTO "event" ("id", "type", "created_at", "mailbox_id", "message_id", "data", "fanned_out") '
            'VALUES (?, ?, ?, ?, ?, ?, ?)',
            (event_id, type_, time.time(), mailbox_id, message_id, json.dumps(data, separators=(",", ":")), False))
    return event_id
