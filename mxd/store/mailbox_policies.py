"""The mailbox_policy table: each mailbox's normalised policy document (mxd.mailpolicy), read, written
and removed. A mailbox without a row has the default policy (`mailpolicy.EMPTY`).

`get` is a point lookup by primary key, cheap enough to run for every send: nothing is cached, so a
change is in force for the next message. Run inside a `Database.read`/`write` call."""
from __future__ import annotations

import json
import time

from mxd.db import execute
from mxd.store.models import MailboxPolicy


def get(mailbox_id: str) -> dict | None:
    """The stored document of this mailbox, or None (the default policy)."""
    row = execute('SELECT "policy" FROM "mailbox_policy" WHERE "mailbox_id" = ?', (mailbox_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    return json.loads(row[0]) if isinstance(row[0], (str, bytes)) else row[0]


def updated_at(mailbox_id: str) -> float | None:
    row = execute('SELECT "updated_at" FROM "mailbox_policy" WHERE "mailbox_id" = ?', (mailbox_id,)).fetchone()
    return row[0] if row else None


def put(mailbox_id: str, policy: dict) -> dict:
    """Store `policy` (already normalised) as this mailbox's; answers it."""
    MailboxPolicy.insert(mailbox=mailbox_id, policy=policy, updated_at=time.time()).on_conflict(
        conflict_target=[MailboxPolicy.mailbox],
        update={MailboxPolicy.policy: policy, MailboxPolicy.updated_at: time.time()}).execute()
    return policy


def delete(mailbox_id: str) -> bool:
    """Back to the default policy; whether there was a policy of its own."""
    return MailboxPolicy.delete().where(MailboxPolicy.mailbox == mailbox_id).execute() > 0
