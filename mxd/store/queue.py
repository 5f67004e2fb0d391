"""The outbound queue: one durable row per recipient; add, lease, record outcomes, hold, release, retry, drop.

Every function runs inside a `Database.write` (or `read`) call. A row is
leased before delivery (lease_until), so a crash leaves it due again once the
lease runs out; nothing accepted for delivery is lost.
"""
from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import time
import weakref
from typing import Any

from mxd.db import execute, executemany, proxy
from mxd.errors import MxdError
from mxd.ids import ALPHABET, new_id
from mxd.store import events, rows
from mxd.store.models import Message, Meta, QueueEntry

LEASE_SECONDS = 300.0
ACTIVE = ("queued", "deferred")


VERP_PREFIX = "bounces+"
_TAG_CHARS = 16                                  # 80 bits of HMAC-SHA256: not guessable over SMTP
_SECRET_KEY = "verp_secret"
_secrets: "weakref.WeakKeyDictionary[Any, bytes]" = weakref.WeakKeyDictionary()


def verp_secret(create: bool = False) -> bytes | None:
    """The server's key for VERP tags, kept in the store (one for all nodes); made on first use in the
    writer (`create`), None in a reader before it exists. Cached per database."""
    db = proxy.obj
    cached = _secrets.get(db)
    if cached is not None:
        return cached
    row = Meta.get_or_none(Meta.key == _SECRET_KEY)
    if row is None:
        if not create:
            return None
        # Not cached yet: the transaction that makes it may still roll back (migration 5 makes it at start).
        Meta.insert(key=_SECRET_KEY, value=secrets.token_hex(32)).on_conflict_ignore().execute()
        return bytes.fromhex(Meta.get(Meta.key == _SECRET_KEY).value)
    _secrets[db] = bytes.fromhex(row.value)
    return _secrets[db]


def verp_tag(secret: bytes, entry_id: str, domain: str) -> str:
    digest = hmac.new(secret, f"{entry_id.lower()}@{domain.lower()}".encode(), hashlib.sha256).digest()
    value = int.from_bytes(digest[:10], "big")
    return "".join(ALPHABET[(value >> shift) & 31] for shift in range(75, -1, -5))[:_TAG_CHARS]


def return_path(entry_id: str, sender_domain: str, secret: bytes) -> str:
    """VERP: bounces+<entry id>.<tag>@domain names its queue entry (message and recipient); the tag, an
    HMAC of id and domain under the server's secret, proves mxd wrote it, so no one can make up (or work
    out from their own) the return path of a message they did not receive."""
    return f"{VERP_PREFIX}{entry_id}.{verp_tag(secret, entry_id, sender_domain)}@{sender_domain}"


def is_return_path(local_part: str) -> bool:
    """Whether a local part is in the VERP namespace (bounces+...): such an address is a queue entry's
    return path or nothing; it never falls back to plus-addressing a mailbox called bounces."""
    return local_part.lower().startswith(VERP_PREFIX)


def entry_from_return_path(local_part: str, domain: str, secret: bytes | None) -> str | None:
    """The queue entry id of a VERP local part whose tag checks out, else None."""
    if not is_return_path(local_part) or secret is None:
        return None
    entry_id, dot, tag = local_part[len(VERP_PREFIX):].lower().rpartition(".")
    if not dot or not entry_id.startswith("q_") or len(tag) != _TAG_CHARS:
        return None
    return entry_id if hmac.compare_digest(tag, verp_tag(secret, entry_id, domain)) else None


def bounce_target(local_part: str, domain: str) -> tuple[str, str] | None:
    """(entry id, sender mailbox id) for a VERP return path with a valid tag whose entry is still in the
    queue, or None (refused at RCPT). Runs in a reader."""
    entry_id = entry_from_return_path(local_part, domain, verp_secret())
    if not entry_id:
        return None
    entry = QueueEntry.get_or_none(QueueEntry.id == entry_id)
    if entry is None or entry.return_path.lower() != f"{local_part}@{domain}".lower():
        return None
    mailbox_id = Message.select(Message.mailbox).where(Message.id == entry.message_id).scalar()
    return (entry.id, mailbox_id) if mailbox_id else None


_INSERT = ('INSERT INTO "queue_entry" ("id", "message_id", "inbound_id", "mail_from", "return_path", "recipient", '
           '"domain", "status", "attempts", "created_at", "next_attempt_at", "expires_at", "lease_until", '
           '"last_reply", "last_host", "delay_notified", "hold_reason", "tls") '
           'VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, 0, ?, ?, ?, ?, \'\')')


def add(message_id: str, mailbox_id: str, inbound_id: str, mail_from: str, sender_domain: str,
        recipients: list[str], lifetime: float, hold_reason: str | None = None) -> list[dict]:
    """One queued (or held) row per recipient, with its event; returns {"address", "status", "queue_id"}."""
    now = time.time()
    status = "held" if hold_reason else "queued"
    out = []
    secret = verp_secret(create=True)
    for rcpt in recipients:
        entry_id = new_id("q", unguessable=True)
        execute(_INSERT, (entry_id, message_id, inbound_id, mail_from, return_path(entry_id, sender_domain, secret), rcpt,
                          rcpt.rsplit("@", 1)[1].lower(), status, now, now, now + lifetime, "", "", False,
                          hold_reason))
        events.emit("message.held" if hold_reason else "message.queued", mailbox_id=mailbox_id,
                    message_id=message_id, recipient=rcpt, **({"reason": hold_reason} if hold_reason else {}))
        out.append({"address": rcpt, "status": status, "queue_id": entry_id})
    return out


_FIELDS = [f for f in QueueEntry._meta.sorted_fields]
_LEASE_SELECT = ('SELECT ' + ", ".join(f'"{f.column_name}"' for f in _FIELDS) + ' FROM "queue_entry" '
                 'WHERE "status" IN (?, ?) AND "next_attempt_at" <= ? AND "lease_until" < ? '
                 'ORDER BY "next_attempt_at" LIMIT ?')


def lease(limit: int, now: float | None = None, seconds: float = LEASE_SECONDS) -> list[QueueEntry]:
    """Due entries, oldest first, leased for `seconds` so no other worker takes them (hand-written SQL)."""
    now = time.time() if now is None else now
    rows = [QueueEntry(**{f.name: value for f, value in zip(_FIELDS, row)})
            for row in execute(_LEASE_SELECT, (*ACTIVE, now, now, limit)).fetchall()]
    if rows:
        execute(f'UPDATE "queue_entry" SET "lease_until" = ? WHERE "id" IN ({",".join("?" * len(rows))})',
                (now + seconds, *[r.id for r in rows]))
    return rows


def release_leases() -> int:
    """At start: leases held by a previous run of this node (killed mid-delivery) end now.

    mxd runs one delivery scheduler per store; several nodes on one PostgreSQL
    will need an owner per lease instead.
    """
    return QueueEntry.update(lease_until=0).where(QueueEntry.status.in_(ACTIVE) & (QueueEntry.lease_until > 0)).execute()


def next_due() -> float | None:
    """When the next active entry may be leased: the earliest of max(next attempt, lease end)."""
    row = execute('SELECT MIN(CASE WHEN "lease_until" > "next_attempt_at" THEN "lease_until" '
                  'ELSE "next_attempt_at" END) FROM "queue_entry" WHERE "status" IN (?, ?)', ACTIVE).fetchone()
    return row[0] if row else None


def _event_args(entry: QueueEntry) -> dict:
    row = execute('SELECT "mailbox_id" FROM "message" WHERE "id" = ?', (entry.message_id,)).fetchone()
    return {"mailbox_id": row[0] if row else None, "message_id": entry.message_id, "recipient": entry.recipient}


def delivered(entry: QueueEntry, reply: str, host: str, relayed: bool = False) -> None:
    """The remote side took the message: "delivered" when it was the recipient's MX, "sent" when it
    was a smart host (which delivers on from there, so final delivery is not known here)."""
    status = "sent" if relayed else "delivered"
    execute('UPDATE "queue_entry" SET "status" = ?, "last_reply" = ?, "last_host" = ?, "last_attempt_at" = ?, '
            '"attempts" = "attempts" + 1, "lease_until" = 0 WHERE "id" = ?',
            (status, reply, host, time.time(), entry.id))
    events.emit(f"message.{status}", reply=reply, host=host, **_event_args(entry))


def delivered_many(batch: list[tuple[QueueEntry, str, str]], relayed: bool, tls: str = "") -> None:
    """`delivered` for many entries: one UPDATE statement for all and one look-up of their mailboxes;
    each entry still gets its own event."""
    if not batch:
        return
    status, now = ("sent" if relayed else "delivered"), time.time()
    executemany('UPDATE "queue_entry" SET "status" = ?, "last_reply" = ?, "last_host" = ?, "last_attempt_at" = ?, '
                '"attempts" = "attempts" + 1, "lease_until" = 0, "tls" = ? WHERE "id" = ?',
                [(status, reply, host, now, tls, entry.id) for entry, reply, host in batch])
    message_ids = sorted({entry.message_id for entry, _, _ in batch})
    mailboxes: dict[str, str] = {}
    for start in range(0, len(message_ids), 500):
        part = message_ids[start:start + 500]
        mailboxes.update(execute(f'SELECT "id", "mailbox_id" FROM "message" WHERE "id" IN ({",".join("?" * len(part))})',
                                 part).fetchall())
    for entry, reply, host in batch:
        events.emit(f"message.{status}", reply=reply, host=host, mailbox_id=mailboxes.get(entry.message_id),
                    message_id=entry.message_id, recipient=entry.recipient)


def deferred(entry_id: str, reply: str, host: str, delays: list[float], tls: str = "") -> tuple[QueueEntry, bool]:
    """Schedule the next attempt; returns (entry, expired). An expired entry is left for `failed`."""
    entry = QueueEntry.get_by_id(entry_id)
    now = time.time()
    attempts = entry.attempts + 1
    delay = delays[min(attempts - 1, len(delays) - 1)] * random.uniform(0.9, 1.1)   # jitter spreads retries
    expired = now >= entry.expires_at
    QueueEntry.update(status="deferred", last_reply=reply, last_host=host, last_attempt_at=now, attempts=attempts,
                      next_attempt_at=now + delay, lease_until=0, tls=tls).where(QueueEntry.id == entry_id).execute()
    if not expired:
        events.emit("message.deferred", reply=reply, host=host, attempts=attempts, next_attempt_at=now + delay,
                    **_event_args(entry))
    entry = QueueEntry.get_by_id(entry_id)
    return entry, expired


def failed(entry_id: str, reply: str, host: str, tls: str | None = None) -> QueueEntry:
    entry = QueueEntry.get_by_id(entry_id)
    QueueEntry.update(status="failed", last_reply=reply, last_host=host, last_attempt_at=time.time(),
                      tls=entry.tls if tls is None else tls,
                      attempts=QueueEntry.attempts + (0 if entry.status == "failed" else 1), lease_until=0
                      ).where(QueueEntry.id == entry_id).execute()
    events.emit("message.failed", reply=reply, host=host, **_event_args(entry))
    return QueueEntry.get_by_id(entry_id)


def mark_delay_notified(entry_id: str) -> None:
    QueueEntry.update(delay_notified=True).where(QueueEntry.id == entry_id).execute()


# ---------------------------------------------------------------- operator controls
def get(entry_id: str) -> QueueEntry:
    return rows.get(QueueEntry, entry_id, "queue entry")


def retry_now(entry_id: str) -> QueueEntry:
    entry = get(entry_id)
    if entry.status not in ACTIVE:
        raise MxdError("conflict", f"entry is {entry.status}; only queued or deferred entries can be retried",
                       status=409)
    QueueEntry.update(next_attempt_at=time.time(), lease_until=0).where(QueueEntry.id == entry_id).execute()
    return get(entry_id)


def hold(entry_id: str, reason: str = "operator") -> QueueEntry:
    entry = get(entry_id)
    if entry.status not in ACTIVE:
        raise MxdError("conflict", f"entry is {entry.status}; only queued or deferred entries can be held", status=409)
    QueueEntry.update(status="held", hold_reason=reason).where(QueueEntry.id == entry_id).execute()
    events.emit("message.held", reason=reason, **_event_args(entry))
    return get(entry_id)


def release(entry_id: str) -> QueueEntry:
    entry = get(entry_id)
    if entry.status != "held":
        raise MxdError("conflict", f"entry is {entry.status}, not held", status=409)
    now = time.time()
    QueueEntry.update(status="queued", hold_reason=None, next_attempt_at=now, lease_until=0,
                      expires_at=max(entry.expires_at, now + (entry.expires_at - entry.created_at))
                      ).where(QueueEntry.id == entry_id).execute()
    events.emit("message.released", **_event_args(entry))
    return get(entry_id)


def drop(entry_id: str) -> None:
    entry = get(entry_id)
    if entry.status in ("delivered", "sent", "failed"):
        raise MxdError("conflict", f"entry is {entry.status} already", status=409)
    QueueEntry.update(status="failed", last_reply="deleted by the operator", lease_until=0).where(
        QueueEntry.id == entry_id).execute()
    events.emit("message.failed", reply="deleted by the operator", host="", **_event_args(entry))


def list_entries(status: str | None, limit: int, before: str | None) -> list[QueueEntry]:
    query = QueueEntry.select().order_by(QueueEntry.id.desc())
    if status:
        query = query.where(QueueEntry.status == status)
    if before:
        query = query.where(QueueEntry.id < before)
    return list(query.limit(limit))

