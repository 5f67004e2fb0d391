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
from datetime import datetime, timezone
from email.utils import format_datetime

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
    checks: dict | None = None   # what the MX's checks before the 250 found (mxd.defences.gate), stored as is
    auth_results: str = ""       # the Authentication-Results field body those checks produced ("" = none)

    @property
    def trace(self) -> str:
        """The fields this hop puts in front of the message: Authentication-Results, then Received."""
        out = f"Authentication-Results: {self.auth_results}\r\n" if self.auth_results else ""
        return out + (self.received + "\r\n" if self.received else "")


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
    checks: dict | None = None   # Inbound.checks: the MX's findings before the 250 (None: none were made)


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
           '"data", "trace", "processed", "receipt", "checks") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')


def with_trace(trace: str, data: bytes) -> bytes:
    """The message as stored whole: the header fields mxd put in front (trace: Received and
    Authentication-Results on the way in, DKIM-Signature on the way out), then the bytes taken in."""
    return (trace or "").encode("utf-8", "surrogateescape") + bytes(data)


def as_row(env: Envelope) -> InboundRow:
    return InboundRow(env.id, env.received_at, env.source, env.mail_from, [r.to_json() for r in env.rcpts],
                      env.remote_ip, env.helo, normalize_line_endings(env.data), env.trace, env.checks)


_HEADER_SCAN = 65536          # the Message-ID is looked for in this much of the header block, no further


def message_id_of(data: bytes) -> bytes | None:
    """The Message-ID field's value (unfolded, stripped), found by a bounded scan without regular expressions.

    Only a key for recognising a repeated transmission (`receipt_key`), never who or what the message
    is: any deterministic reading serves, and this one costs a tenth of `mxd.mime.header.split` on the
    DATA path."""
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
    return transmission_key(env.remote_ip, env.mail_from, [r.address for r in env.rcpts], env.data)


def transmission_key(client: str, mail_from: str, rcpts: list[str], data: bytes) -> str | None:
    """`receipt_key` from its parts (`client`: the IP address, and for a login its token)."""
    message_id = message_id_of(data)
    if message_id is None:
        return None
    parts = [client.encode("utf-8", "surrogateescape"), mail_from.lower().encode("utf-8", "surrogateescape"),
             *sorted(r.lower().encode("utf-8", "surrogateescape") for r in rcpts),
             message_id, str(len(data)).encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:40]


def stored_receipt(key: str, since: float) -> tuple[str, list[dict]] | None:
    """(inbound id, recipients) of the row stored under `key` after `since`; runs in the writer."""
    row = execute('SELECT "id", "rcpts" FROM "inbound" WHERE "receipt" = ? AND "received_at" > ? LIMIT 1',
                  (key, since)).fetchone()
    return None if row is None else (row[0], json.loads(row[1]) if isinstance(row[1], str) else row[1])


def store(env: Envelope, processed: bool = False, receipt: str | None = None) -> str:
    """Insert one Inbound row; runs inside the writer's transaction (hand-written SQL: this is the hot path)."""
    execute(_INSERT, (env.id, env.received_at, env.source, env.mail_from,
                      json.dumps([r.to_json() for r in env.rcpts], separators=(",", ":")), env.remote_ip,
                      env.helo[:512], env.tls, normalize_line_endings(env.data), env.trace, processed, receipt,
                      None if env.checks is None else json.dumps(env.checks, separators=(",", ":"))))
    return env.id


_AR_NAME = b"authentication-results"


def _skip_cfws(text: str, i: int) -> int:
    """The index after the folding white space and (nested) comments at text[i:] (RFC 5322 3.2.2)."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and depth:
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth and c not in " \t\r\n":
            break
        i += 1
    return i


def authserv_id_of(value: str) -> str:
    """The authserv-id an Authentication-Results field body starts with (RFC 8601 2.2: a token or a
    quoted-string after optional CFWS), lower case, without a final dot; "" when there is none."""
    i = _skip_cfws(value, 0)
    if value[i:i + 1] == '"':
        out = []
        i += 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\":
                i += 1
            out.append(value[i:i + 1])
            i += 1
        found = "".join(out)
    else:
        end = i
        while end < len(value) and value[end] not in ' \t\r\n;()"':
            end += 1
        found = value[i:end]
    return found.strip().rstrip(".").lower()


def _head_length(data: bytes) -> int:
    """Where the header block ends (after the CRLF of its last field), given CRLF line ends."""
    end = data.find(b"\r\n\r\n")
    return len(data) if end < 0 else end + 2


def remove_auth_results(data: bytes, own_id: str) -> bytes:
    """The message without the Authentication-Results fields that claim to come from `own_id`
    (RFC 8601 5: mxd's own verdict is added after, and a receiver must be able to trust every
    field with its name). Field names and ids are compared case-insensitively; folded fields go
    whole; fields of other authserv-ids, the body and DKIM signatures that do not cover these
    fields (they normally do not) are left as they were.

    `data` is as it came in: returned as it is when its header does not mention the field name (the
    everyday message costs one search of its header), else with its line ends normalised first, so
    that a bare CR or LF cannot hide a field that the store would then show."""
    region = data[:_head_length(data)]       # at least the header, after normalisation too
    if b"\0" in region:
        region = region.replace(b"\0", b"")
    if _AR_NAME not in region.lower():
        return data
    data = normalize_line_endings(data)
    if data.startswith(b"\r\n"):             # no header at all
        return data
    head_len = _head_length(data)
    own = own_id.strip().rstrip(".").lower()
    kept: list[bytes] = []
    field: list[bytes] = []
    removed = False

    def flush() -> None:
        nonlocal removed
        if not field:
            return
        first = field[0]
        colon = first.find(b":")
        if colon > 0 and first[:colon].rstrip(b" \t").lower() == _AR_NAME:
            value = (first[colon + 1:] + b"".join(field[1:])).decode("latin-1")
            if authserv_id_of(value) == own:
                removed = True
                field.clear()
                return
        kept.extend(field)
        field.clear()

    pos = 0
    while pos < head_len:
        nl = data.find(b"\r\n", pos, head_len)
        line_end = head_len if nl < 0 else nl + 2
        line = data[pos:line_end]
        if line[:1] not in (b" ", b"\t"):        # a new field starts; a continuation line joins the one before
            flush()
        field.append(line)
        pos = line_end
    flush()
    if not removed:
        return data
    return b"".join(kept) + data[head_len:]


async def ingest(db: Database, env: Envelope, *, authserv_id: str = "") -> str:
    """Make the message durable; returns its inbound id once committed.

    `authserv_id`, for mail from outside: the Authentication-Results fields naming it are removed
    first (`remove_auth_results`), here rather than in the writer thread."""
    if authserv_id:
        env.data = remove_auth_results(env.data, authserv_id)
    return await db.write(store, env)


def store_once(env: Envelope, key: str | None, since: float) -> tuple[str, bool]:
    """Insert the row unless the same transmission (`receipt_key`) was stored after `since`:
    (inbound id, True) for a repeat, whose first copy stands."""
    if key is not None:
        first = stored_receipt(key, since)
        if first is not None:
            return first[0], True
    store(env, receipt=key)
    return env.id, False


async def ingest_once(db: Database, env: Envelope, window: float, *, authserv_id: str = "") -> tuple[str, bool]:
    """`ingest` for SMTP clients, which retry a message whose 250 they did not see: a transmission
    repeated within `window` seconds is not stored again (RFC 5321 6.1 leaves this duplicate to the
    receiver to avoid). Returns (inbound id, whether it was a repeat) once committed."""
    key = receipt_key(env) if window > 0 else None
    if authserv_id:
        env.data = remove_auth_results(env.data, authserv_id)
    return await db.write(store_once, env, key, env.received_at - window)
