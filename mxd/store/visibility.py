"""Which messages the readers show: the one rule that keeps quarantined mail out of message lists, inbox polls,
acknowledgements, searches and threads unless a caller asks for it (`include=quarantined`).

A quarantined message is an ordinary row with `quarantine` (its reasons) and `quarantined_at` set; the rule
reads `quarantined_at` alone (set exactly while the message is quarantined, and indexed), so every reader
asks the same question the same way.
"""
from __future__ import annotations

from typing import Any

import peewee as pw

from mxd.store.models import Message

# A row readers show by default. The unary + keeps SQLite from reading the quarantined_at index for a condition
# nearly every row meets (it would then sort the whole table for a list's ORDER BY "id" LIMIT n).
SHOWN_SQL = '+"quarantined_at" IS NULL'
# A quarantined row, as a range on the quarantined_at index (a time, so > 0; SQLite answers IS NOT NULL by
# scanning the table).
QUARANTINED_SQL = '"quarantined_at" > 0'


def shown_sql(include_quarantined: bool = False) -> str | None:
    """The WHERE fragment of the rule for a query on "message"; None: nothing to filter."""
    return None if include_quarantined else SHOWN_SQL


def shown(include_quarantined: bool = False) -> Any:
    """The rule as a peewee condition on Message (None: nothing to filter)."""
    return None if include_quarantined else pw.SQL(SHOWN_SQL)


def quarantined() -> Any:
    """The quarantined messages, as a peewee condition on Message (a range on the quarantined_at index)."""
    return Message.quarantined_at > 0


def is_shown(msg: Any, include_quarantined: bool = False) -> bool:
    """The rule for one message already read."""
    return include_quarantined or getattr(msg, "quarantined_at", None) is None
