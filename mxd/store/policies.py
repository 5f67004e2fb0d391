"""Mailbox policies (table MailboxPolicy): the normalised documents of mxd.mailpolicy, one per mailbox."""
from __future__ import annotations

import json

from mxd.db import execute


def get(mailbox_id: str) -> dict | None:
    """The mailbox's policy document, or None when it has none of its own (then `mailpolicy.EMPTY` applies)."""
    row = execute('SELECT "policy" FROM "mailbox_policy" WHERE "mailbox_id" = ?', (mailbox_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    value = row[0]
    return json.loads(value) if isinstance(value, (str, bytes)) else value
