"""Correspondents: the addresses and domains a mailbox has received authenticated mail from or sent mail to
(what the trust signals `first_contact` and `lookalike` compare with).

Inbound authors are recorded only when their mail was authenticated and not suspicious (a forged message
must not make its forged sender "known", nor a lookalike domain a reference); the recipients of mail a mailbox sends are recorded always. Addresses are kept
lower case with an A-label domain. Hand-written SQL: this runs in the writer for every message.
"""
from __future__ import annotations

import time
from typing import Iterable

from mxd.db import execute, executemany

MAX_DOMAINS = 500           # domains read for lookalike checks, newest first


def split(address: str) -> tuple[str, str] | None:
    """(address, domain) as kept, or None when `address` has no domain part."""
    address = address.strip().lower().rstrip(".")
    if "@" not in address or len(address) > 320:
        return None
    local, domain = address.rsplit("@", 1)
    if not local or not domain:
        return None
    if not domain.isascii():
        import idna
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
    return f"{local}@{domain}", domain


def known(mailbox_id: str, address: str, domain: str) -> tuple[bool, bool]:
    """(the mailbox knows this address, it knows this domain): two primary-key lookups."""
    sql = 'SELECT 1 FROM "correspondent" WHERE "mailbox_id" = ? AND "kind" = ? AND "value" = ?'
    has_address = bool(address) and execute(sql, (mailbox_id, "address", address)).fetchone() is not None
    has_domain = bool(domain) and execute(sql, (mailbox_id, "domain", domain)).fetchone() is not None
    return has_address, has_domain


def domains(mailbox_id: str, limit: int = MAX_DOMAINS) -> tuple[str, ...]:
    """The domains a mailbox corresponds with, newest first, at most `limit`."""
    rows = execute('SELECT "value" FROM "correspondent" WHERE "mailbox_id" = ? AND "kind" = ? '
                   'ORDER BY "first_at" DESC LIMIT ?', (mailbox_id, "domain", int(limit))).fetchall()
    return tuple(r[0] for r in rows)


def record(mailbox_id: str, addresses: Iterable[str], at: float | None = None) -> None:
    """Remember these addresses and their domains for the mailbox (those known already keep their first time)."""
    when = time.time() if at is None else at
    rows: dict[tuple[str, str], None] = {}
    for raw in addresses:
        found = split(raw)
        if found is not None:
            rows[("address", found[0])] = None
            rows[("domain", found[1])] = None
    executemany('INSERT INTO "correspondent" ("mailbox_id", "kind", "value", "first_at") VALUES (?, ?, ?, ?) '
                'ON CONFLICT ("mailbox_id", "kind", "value") DO NOTHING',
                [(mailbox_id, kind, value, when) for kind, value in rows])
