"""The one way a message comes in: line endings made safe, then the raw bytes and envelope made durable.

Every path (SMTP MX, API injection, local delivery of mxd's own outbound mail)
calls `ingest`; its return means the transaction is committed to disk. Parsing,
authentication, threading and indexing happen after, in `mxd.pipeline`.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from email.utils import format_datetime
from datetime import datetime, timezone

from mxd.db import Database, execute
from mxd.ids import new_id

_BARE = re.compile(rb"\r\n|\r|\n")


@dataclass
class Recipient:
    address: str                 # as the client wrote it
    mailbox_ids: tuple[str, ...]
    tag: str | None = None
    bounce_entry: str | None = None   # set when the address is a VERP return path of a queue entry
    send: dict | None = None          # a sent copy: what is left to do once it is signed (mxd.sending)

    def to_json(self) -> dict:
        out = {"address": self.address, "mailbox_ids": list(self.mailbox_ids), "tag": self.tag}
        if self.bounce_entry:
            out["bounce_entry"] = self.bounce_entry
        if self.send is not None:
            out["send"] = self.send
        return out


@dataclass
class Envelope:
    mail_from: str
    rcpts: list[Recipient]
    data: bytes
    remote_ip: str = ""
    helo: str = ""
    tls: bool = False
    source: str = "smtp"
    received: str = ""           # the Received field this hop adds (without the trailing CRLF)
    received_at: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: new_id("inb"))


@dataclass
class InboundRow:
    """An Inbound row as plain data (what `store` wrote), read without the ORM on hot paths."""
    id: str
    received_at: float
    source: str
    mail_from: str
    rcpts: list[dict]
    remote_ip: str
    helo: str
    data: bytes
    trace: str


def has_bare_line_endings(data: bytes) -> bool:
    """True when data holds a CR or LF that is not part of CRLF, or a NUL."""
    crlf = data.count(b"\r\n")
    return b"\0" in data or data.count(b"\r") != crlf or data.count(b"\n") != crlf


def normalize_line_endings(data: bytes) -> bytes:
    """Every bare CR and bare LF becomes CRLF and NUL is removed (RFC 5321 2.3.8, 4.1.4).

    What is stored (and later DKIM-verified or signed) is then exactly what any
    conforming peer would see; no smuggled line ending survives.
    """
    if not has_bare_line_endings(data):
        return data
    return _BARE.sub(b"\r\n", data.replace(b"\0", b""))


def received_header(*, helo: str, remote_ip: str, hostname: str, protocol: str, rcpt: str | None,
                    queue_id: str, when: float) -> str:
    """A Received field (RFC 5321 4.4): from, by, with, id, for; date."""
    stamp = format_datetime(datetime.fromtimestamp(when, timezone.utc))
    helo = "".join(c for c in helo if 32 < ord(c) < 127)[:200] or "unknown"
    parts = [f"Received: from {helo} ([{remote_ip}])", f"by {hostname} (mxd) with {protocol} id {queue_id}"]
    if rcpt:
        parts.append(f"for <{rcpt}>")
    return "\r\n\t".join(parts) + f"; {stamp}"


_INSERT = ('INSERT INTO "inbound" ("id", "received_at", "source", "mail_from", "rcpts", "remote_ip", "helo", "tls", '
           '"data", "trace", "processed", "receipt") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')


def with_trace(trace: str, data: bytes) -> bytes:
    """The message as stored whole: the header fields mxd put in front (trace: Received and
    Authentication-Results on the way in, DKIM-Signature on the way out), then the bytes taken in."""
    return (trace or "").encode("utf-8", "surrogateescape") + bytes(data)


def as_row(env: Envelope) -> InboundRow:
    return InboundRow(env.id, env.received_at, env.source, env.mail_from, [r.to_json() for r in env.rcpts],
                      env.remote_ip, env.helo, normalize_line_endings(env.data),
                      (env.received + "\r\n") if env.received else "")


_HEADER_SCAN = 65536          # the Message-ID is looked for in this much of the header block, no further


def message_id_of(data: bytes) -> bytes | None:
    """The Message-ID field's value (unfolded, stripped), found by a bounded scan without regular expressions."""
    end = data.find(b"\r\n\r\n", 0, _HEADER_SCAN)
    head = data[:end if end >= 0 else _HEADER_SCAN]
    lower = head.lower()
    start = 0 if lower.startswith(b"message-id:") else lower.find(b"\r\nmessage-id:")
    if start < 0:
        return None
    start = lower.index(b":", start) + 1
    value = bytearray()
    while True:
        stop = head.find(b"\r\n", start)
        value += head[start:stop if stop >= 0 else len(head)]
        if stop < 0 or head[stop + 2:stop + 3] not in (b" ", b"\t"):
            break
        start = stop + 2
    return bytes(value).strip() or None


def receipt_key(env: Envelope) -> str | None:
    """What makes a retried transmission of the same message recognisable: the client, the envelope, the
    Message-ID and the size. None without a Message-ID (two such messages may be meant as two)."""
    message_id = message_id_of(env.data)
    if message_id is None:
        return None
    parts = [env.remote_ip.encode(), env.mail_from.lower().encode("utf-8", "surrogateescape"),
             *sorted(r.address.lower().encode("utf-8", "surrogateescape") for r in env.rcpts),
             message_id, str(len(env.data)).encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:40]


def store(env: Envelope, processed: bool = False, receipt: str | None = None) -> str:
    """Insert one Inbound row; runs inside the writer's transaction (hand-written SQL: this is the hot path)."""
    execute(_INSERT, (env.id, env.received_at, env.source, env.mail_from,
                      json.dumps([r.to_json() for r in env.rcpts], separators=(",", ":")), env.remote_ip,
                      env.helo[:512], env.tls, normalize_line_endings(env.data),
                      (env.received + "\r\n") if env.received else "", processed, receipt))
    return env.id


async def ingest(db: Database, env: Envelope) -> str:
    """Make the message durable; returns its inbound id once committed."""
    return await db.write(store, env)


def store_once(env: Envelope, key: str | None, since: float) -> tuple[str, bool]:
    """Insert the row unless the same transmission (`receipt_key`) was stored after `since`:
    (inbound id, True) for a repeat, whose first copy stands."""
    if key is not None:
        row = execute('SELECT "id" FROM "inbound" WHERE "receipt" = ? AND "received_at" > ? LIMIT 1',
                      (key, since)).fetchone()
        if row is not None:
            return row[0], True
    store(env, receipt=key)
    return env.id, False


async def ingest_once(db: Database, env: Envelope, window: float) -> tuple[str, bool]:
    """`ingest` for SMTP clients, which retry a message whose 250 they did not see: a transmission
    repeated within `window` seconds is not stored again (RFC 5321 6.1 leaves this duplicate to the
    receiver to avoid). Returns (inbound id, whether it was a repeat) once committed."""
    key = receipt_key(env) if window > 0 else None
    return await db.write(store_once, env, key, env.received_at - window)
