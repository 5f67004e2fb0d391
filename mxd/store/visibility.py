"""Which messages the readers show: the one rule that keeps quarantined mail out of message lists, inbox polls,
acknowledgements, searches and threads unless a caller asks for it (`include=quarantined`).

A quarantined message is an ordinary row with `quarantine` (its reasons) and `quarantined_at` set; the rule
reads `quarantined_at` alone (set exactly while the message is quarantined, and indexed), so every reader
asks the same question the same way.
"""
from __future__ import annotations

from typing import Any

from mxd.store.models import Message

SHOWN_SQL = '"quarantined_at" IS NULL'                          # a row readers show by default
QUARANTINED_IDS_SQL = 'SELECT "id" FROM "message" WHERE "quarantined_at" IS NOT NULL'


def shown_sql(include_quarantined: bool = False) -> str | None:
    """The WHERE fragment of the rule for a query on "message"; None: nothing to filter."""
    return None if include_quarantined else SHOWN_SQL


def shown(include_quarantined: bool = False) -> Any:
    """The rule as a peewee condition on Message (None: nothing to filter)."""
    return None if include_quarantined else Message.quarantined_at.is_null()


def is_shown(msg: Any, include_quarantined: bool = False) -> bool:
    """The rule for one message already read."""
    return include_quarantined or getattr(msg, "quarantined_at", None) is None
