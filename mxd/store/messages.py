"""Messages: turning a processed inbound transaction into per-mailbox messages, and reading them back as rows
(their JSON shapes are the service layer's: mxd.service.mail)."""
from __future__ import annotations

import json
import time
from typing import Any, Callable, NamedTuple

import peewee as pw

from mxd.db import execute, proxy
from mxd.ids import new_id
from mxd.ingest import with_trace
from mxd.store import events, search, threads, visibility
from mxd.store.models import Attachment, Inbound, Message


def _addr_list(addresses: list[Any]) -> list[dict]:
    return [{"name": a.name, "address": a.address} for a in addresses]


_COLUMNS = ("id", "mailbox_id", "inbound_id", "thread_id", "direction", "received_at", "envelope_from", "envelope_to",
            "plus_tag", "message_id", "in_reply_to", "references", "subject", "from_addr", "to_addr", "cc_addr",
            "reply_to", "date", "text", "html", "size", "auth_results", "auth", "parse_errors", "trust", "quarantine",
            "quarantined_at")
_INSERT = ('INSERT INTO "message" (' + ", ".join(f'"{c}"' for c in _COLUMNS) + ") VALUES ("
           + ", ".join("?" * len(_COLUMNS)) + ")")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if value else ("[]" if isinstance(value, list) else "null")


# What the pipeline decided for one target mailbox: (trust document or None, quarantine reasons or None).
Judge = Callable[[str], tuple[dict | None, list[dict] | None]]


def deliver(inbound: Any, parsed: Any, auth: Any, trace: str, window_seconds: float,
            direction: str = "in", message_id: str | None = None,
            judge: Judge | None = None) -> list[tuple[str, str | None]] | None:
    """Create one message per distinct recipient mailbox; returns (message id, thread id) for each,
    or None when the inbound row was processed already (another worker got there first).

    `judge(mailbox_id)` gives the message's trust signals and quarantine reasons for that mailbox
    (mxd.pipeline). A quarantined message (reasons given) is stored unthreaded (thread id None), indexed
    (a search with include=quarantined finds it), and announced as `message.quarantined` with its
    reasons instead of `message.inbound`.

    Runs in the writer's transaction. `inbound` is an ingest.InboundRow (or an Inbound model).

    `parsed` is a mxd.mime.parse.Parsed (or None when parsing itself failed),
    `auth` an AuthResults or None. `message_id` is the id for the (first) message when
    it was handed out already (a sent copy). Marks the inbound row processed. Hand-written
    SQL: this runs for every message that arrives.
    """
    row = execute('SELECT "processed" FROM "inbound" WHERE "id" = ?', (inbound.id,)).fetchone()
    if row is None or row[0]:
        return None
    targets: dict[str, dict] = {}
    for rcpt in inbound.rcpts:
        for mid in rcpt["mailbox_ids"]:
            targets.setdefault(mid, rcpt)
    if targets:
        existing = {r[0] for r in execute('SELECT "id" FROM "mailbox" WHERE "id" IN ('
                                          + ",".join("?" * len(targets)) + ")", tuple(targets)).fetchall()}
    else:
        existing = set()
    if parsed is not None:
        fields = {
            "message_id": parsed.message_id, "in_reply_to": parsed.in_reply_to, "references": parsed.references,
            "subject": parsed.subject, "from_addr": _addr_list(parsed.from_), "to_addr": _addr_list(parsed.to),
            "cc_addr": _addr_list(parsed.cc), "reply_to": _addr_list(parsed.reply_to),
            "date": parsed.date.timestamp() if parsed.date else None, "text": parsed.text, "html": parsed.html,
            "parse_errors": list(parsed.errors)}
    else:
        fields = {"message_id": None, "in_reply_to": [], "references": [], "subject": "", "from_addr": [],
                  "to_addr": [], "cc_addr": [], "reply_to": [], "date": None, "text": "", "html": None,
                  "parse_errors": ["the message could not be parsed; its raw bytes are kept"]}
    when = fields["date"] if fields["date"] is not None else inbound.received_at
    addresses = " ".join(f"{a['name']} {a['address']}" for a in
                         fields["from_addr"] + fields["to_addr"] + fields["cc_addr"]) + " " + inbound.mail_from
    created: list[tuple[str, str | None]] = []
    for mailbox_id, rcpt in targets.items():
        if mailbox_id not in existing:
            continue                                # the mailbox was deleted after RCPT
        msg_id, message_id = message_id or new_id("msg"), None
        trust, reasons = judge(mailbox_id) if judge is not None else (None, None)
        thread_id = None if reasons else threads.assign(
            mailbox_id, fields["message_id"], fields["in_reply_to"], fields["references"], fields["subject"], when,
            window_seconds)
        values = {
            "id": msg_id, "mailbox_id": mailbox_id, "inbound_id": inbound.id, "thread_id": thread_id,
            "direction": direction, "received_at": inbound.received_at, "envelope_from": inbound.mail_from,
            "envelope_to": rcpt["address"], "plus_tag": rcpt.get("tag"), "size": len(inbound.data),
            "auth_results": auth.header_value if auth else "", "auth": _json(auth_dict(auth)) if auth else None,
            "trust": _json(trust) if trust else None, "quarantine": _json(reasons) if reasons else None,
            "quarantined_at": time.time() if reasons else None, **fields}
        for key in ("in_reply_to", "references", "from_addr", "to_addr", "cc_addr", "reply_to", "parse_errors"):
            values[key] = _json(values[key])
        execute(_INSERT, tuple(values[c] for c in _COLUMNS))
        if parsed is not None and parsed.attachments:
            Attachment.insert_many([{
                "id": new_id("att"), "message": msg_id, "part_index": a.index, "filename": a.filename,
                "content_type": a.content_type[:255], "size": a.size, "content_id": (a.content_id or None),
                "disposition": a.disposition} for a in parsed.attachments]).execute()
        search.index(proxy.obj, msg_id, mailbox_id, fields["subject"], addresses, fields["text"])
        if reasons:
            events.emit("message.quarantined", mailbox_id=mailbox_id, message_id=msg_id, reasons=reasons)
        elif direction == "in":
            events.emit("message.inbound", mailbox_id=mailbox_id, message_id=msg_id, thread_id=thread_id)
        created.append((msg_id, thread_id))
    execute('UPDATE "inbound" SET "processed" = ?, "trace" = ? WHERE "id" = ?', (True, trace, inbound.id))
    return created


def auth_dict(auth: Any) -> dict:
    return {
        "spf": auth.spf, "dmarc": auth.dmarc, "dmarc_policy": auth.dmarc_policy,
        "dkim": [{"result": d.result, "domain": d.domain, "selector": d.selector} for d in auth.dkim],
        **auth.arc_json(),
    }


# ---------------------------------------------------------------- reading
class MessageRow(NamedTuple):
    """What a list, a search page or a thread shows of a message: the columns `summary` reads, decoded.

    Lists read these with one hand-written query instead of building full models (the body's HTML,
    headers and authentication results are not read); `get` returns the full Message.
    """
    id: str
    mailbox_id: str
    thread_id: str | None
    direction: str
    message_id: str | None
    subject: str
    from_addr: list
    to_addr: list
    cc_addr: list
    date: float | None
    received_at: float
    size: int
    plus_tag: str | None
    parse_errors: list
    text: str
    trust: dict | None          # {"verdict": ...} only: a list shows the verdict, not every signal
    quarantine: list | None     # the reasons while quarantined
    quarantined_at: float | None


_ROW_COLUMNS = ('"id", "mailbox_id", "thread_id", "direction", "message_id", "subject", "from_addr", "to_addr", '
                '"cc_addr", "date", "received_at", "size", "plus_tag", "parse_errors", "text", {verdict}, '
                '"quarantine", "quarantined_at"')
# The trust verdict alone, read by the database from the JSON (the signals and spam symbols are not decoded
# for a list): JSON1 in SQLite, the json operator in PostgreSQL (the column is text in both).
_VERDICT = {True: """json_extract("trust", '$.verdict')""", False: """CAST("trust" AS json)->>'verdict'"""}


def _row_sql() -> str:
    return f'SELECT {_ROW_COLUMNS.format(verdict=_VERDICT[isinstance(proxy.obj, pw.SqliteDatabase)])} FROM "message"'


def _rows(sql: str, params: tuple | list) -> list[MessageRow]:
    loads = json.loads
    return [MessageRow(r[0], r[1], r[2], r[3], r[4], r[5], None if r[6] is None else loads(r[6]),
                       None if r[7] is None else loads(r[7]), None if r[8] is None else loads(r[8]), r[9], r[10],
                       r[11], r[12], None if r[13] is None else loads(r[13]), r[14],
                       None if r[15] is None else {"verdict": r[15]}, None if r[16] is None else loads(r[16]), r[17])
            for r in execute(_row_sql() + sql, params).fetchall()]


def list_messages(mailbox_ids: list[str] | None, limit: int, before: str | None,
                  thread_id: str | None = None, include_quarantined: bool = False) -> list[MessageRow]:
    """Newest first (by id), at most limit, older than the cursor id `before`; quarantined messages only when
    asked (mxd.store.visibility)."""
    where: list[str] = []
    params: list = []
    shown = visibility.shown_sql(include_quarantined)
    if shown:
        where.append(shown)
    if mailbox_ids is not None:
        if not mailbox_ids:
            return []
        where.append(f'"mailbox_id" IN ({",".join("?" * len(mailbox_ids))})')
        params += mailbox_ids
    if thread_id:
        where.append('"thread_id" = ?')
        params.append(thread_id)
    if before:
        where.append('"id" < ?')
        params.append(before)
    sql = (" WHERE " + " AND ".join(where) if where else "") + ' ORDER BY "id" DESC LIMIT ?'
    return _rows(sql, (*params, int(limit)))


def in_thread(thread_id: str) -> list[MessageRow]:
    """A thread's messages, oldest first (by Date, then id); a quarantined message has no thread, and the
    rule holds here as well."""
    return _rows(f' WHERE "thread_id" = ? AND {visibility.SHOWN_SQL} ORDER BY "date", "id"',
                 (thread_id,))


def get(message_id: str) -> Message | None:
    return Message.get_or_none(Message.id == message_id)


def by_ids(ids: list[str]) -> list[MessageRow]:
    """The messages with these ids, in the order given (ids that do not exist are left out)."""
    if not ids:
        return []
    found = {r.id: r for r in _rows(f' WHERE "id" IN ({",".join("?" * len(ids))})', tuple(ids))}
    return [found[i] for i in ids if i in found]


def raw(msg: Message) -> bytes:
    inbound = Inbound.get_or_none(Inbound.id == msg.inbound_id)
    if inbound is None:
        return b""
    return with_trace(inbound.trace, inbound.data)
