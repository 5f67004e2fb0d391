"""The one send path: preflight, DKIM-sign, store the sent copy, queue remote recipients, ingest local ones.

The HTTP API (and MCP and the CLI) hand a finished message to `send`, SMTP
submission to `submit`; both take the same two steps, `accept` and `complete`
(see below), and nothing else puts mail on the queue.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxd import dkimsign, keys, policy
from mxd.config import Config
from mxd.db import Database, execute
from mxd.errors import MxdError
from mxd.ids import new_id
from mxd.ingest import (
    Envelope,
    Recipient,
    as_row,
    normalize_line_endings,
    received_header,
    store,
    stored_receipt,
    transmission_key,
)
from mxd.mime.header import split, strict_problems, unfold
from mxd.mime.parse import authors as parse_authors
from mxd.mime.parse import parse
from mxd.store import audit, correspondents, events, messages
from mxd.store import queue as outqueue
from mxd.store.models import Idempotency
from mxd.store.tokens import Principal

IDEMPOTENCY_SECONDS = 86400.0


@dataclass
class Outgoing:
    mail_from: str                 # the envelope sender: an address of a mailbox on this server
    recipients: list[str]          # envelope recipients (To, Cc and Bcc)
    data: bytes                    # the message, unsigned
    source: str                    # "api" | "submission"
    remote_ip: str = ""


class Signers:
    """DKIM signers per domain, keys loaded once and again when the key manifest changes
    (`mxd dkim rotate`). Keys are made when a domain is created (API or `mxd init`);
    a domain without keys sends unsigned."""

    def __init__(self, dkim_dir: Path) -> None:
        self.dkim_dir = dkim_dir
        self._cache: dict[str, tuple[float, dkimsign.Signer | None]] = {}
        self._lock = threading.Lock()

    def fields(self, data: bytes, domain: str) -> bytes:
        """The DKIM-Signature fields for `data` (b"" when the domain has no active key)."""
        stamp = keys.manifest_mtime(self.dkim_dir, domain)
        with self._lock:
            cached = self._cache.get(domain)
            if cached is None or cached[0] != stamp:
                active = [k for k in keys.load_dkim_keys(self.dkim_dir, domain) if k.state == keys.ACTIVE] \
                    if stamp else []
                cached = self._cache[domain] = (stamp, dkimsign.Signer(active) if active else None)
        signer = cached[1]
        return signer.sign(data, domain) if signer else b""


_signers: dict[str, Signers] = {}


def prepare(dkim_dir: str, data: bytes, domain: str) -> tuple[str, Any]:
    """(the DKIM-Signature fields for the message, the parsed message): CPU work, run in a worker process
    beside the event loop. The fields go in front of the line-end-normalised message; "" for a domain
    without keys. Raises ValueError for a message that cannot be signed (no From, a broken header)."""
    data = normalize_line_endings(data)
    signers = _signers.get(dkim_dir)
    if signers is None:
        signers = _signers[dkim_dir] = Signers(Path(dkim_dir))
    fields = signers.fields(data, domain) if domain else b""
    return fields.decode("ascii"), parse(data)


MAX_HEADER = 128 * 1024        # a submitted header section longer than this is refused before it is read
MAX_FROM = 2000                # the From fields of a submitted message, unfolded, at most (characters)

_ATOM = r"[A-Za-z0-9!#$&'*+/=?^_`{|}~-]++"
_SIMPLE_ADDRESS = _ATOM + r"(?:\." + _ATOM + r")*+@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)++"
_NAME_WORD = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]++"
# One From field in its everyday forms: addr, <addr>, Name <addr>, "Name" <addr>, with an ASCII name of
# words (no comment, group, second address, escape or encoded quoting to get wrong). Every quantifier is
# possessive and no two adjacent ones take the same characters, so a failing match never backtracks:
# the time is linear in the (bounded, stripped) value.
SIMPLE_FROM = re.compile(r'(?:(?:"[^"\\\r\n]*+"|' + _NAME_WORD + r"(?:[ \t]++" + _NAME_WORD + r")*+)[ \t]*+)?+<("
                         + _SIMPLE_ADDRESS + r")>|(" + _SIMPLE_ADDRESS + r")")


def authors_of(data: bytes) -> list[str]:
    """The From addresses of a message mxd is to sign, read from its header alone, exactly as every other
    reader in mxd reads them: the header split by `mxd.mime.header.split` (the parser, DKIM signing and
    DMARC split it so), the addresses by the parser's own reader, `mxd.mime.parse.authors` (the everyday
    forms directly, with the same answer). `data` has normalised line ends.

    A header that another reader could split differently is refused (ValueError): white space before
    a colon (`From : ceo@...` is a From field to mxd and to relaxed DKIM, no field to others), an mbox
    "From " line, a folded first line, a line that is no field, an overlong line, bytes that are not
    UTF-8. So are a header section over MAX_HEADER and From fields over MAX_FROM: both are bounded
    before anything is matched. Returns [] for a message without From (the preflight refuses it)."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEADER + 4)
    if end < 0:
        if len(data) > MAX_HEADER and not data.startswith(b"\r\n"):
            raise ValueError(f"the header section is longer than {MAX_HEADER} bytes")
        end = len(data)
    else:
        end += 4
    head = split(data, 0, end)
    problems = strict_problems(head, data, end)
    if problems:
        raise ValueError(problems[0])
    froms = head.values(b"from")
    if sum(len(line) for lines in froms for line in lines) > MAX_FROM:
        raise ValueError(f"the From field is longer than {MAX_FROM} characters")
    if len(froms) == 1:
        value = unfold(froms[0])
        if value.isascii():
            simple = SIMPLE_FROM.fullmatch(value.decode("ascii"))
            if simple:
                return [simple.group(1) or simple.group(2)]
    return [a.address for a in parse_authors(data, head)]


async def checked_authors(data: bytes) -> list[str]:
    """`authors_of` for a send, on the event loop (the work is linear in a bounded header); raises MxdError."""
    try:
        return authors_of(data)
    except ValueError as exc:
        raise MxdError("ambiguous_header", f"the message header is refused: {exc}") from None


# ---------------------------------------------------------------- the two steps of a send
# accept: preflight, then the unsigned message (with what is left to do) stored as a sent copy not yet
#         processed, and the send counted. Once that commits the message is ours: SMTP says 250.
# complete: with its DKIM fields and parse, the sent copy becomes a message in the sender's mailbox
#         (thread, index), one queue entry per remote recipient, an inbound row per local one; the send
#         is audited (at the time it was accepted).
# POST /api/send (and MCP, CLI) signs first and runs both in one transaction, for an answer that names the
# thread and queue entries; SMTP submission runs accept alone and the inbound pipeline completes the sent
# copy in batches (after a crash too: it is an unprocessed inbound row like any other).

def accept(cfg: Config, principal: Principal | None, out: Outgoing, authors: list[str],
           receipt: str | None = None) -> tuple[Any, dict]:
    """Runs in the writer: preflight and the durable unsigned copy; returns (its inbound row, the answer so far)."""
    decision = policy.preflight(cfg, principal, out.mail_from, out.recipients, authors)
    sender, box = str(decision.sender), decision.mailbox
    message_id = new_id("msg")
    plan = {"message_id": message_id, "mailbox_id": box.mailbox_id, "domain": box.domain,
            "remote": decision.remote, "hold": decision.hold_reason,
            "local": [[rcpt, list(found.mailbox_ids), found.tag] for rcpt, found in decision.local],
            "actor": principal.token_id if principal else "mxd", "org_id": box.org_id,
            "mailbox": box.mailbox_address, "source": out.source}
    copy = Envelope(mail_from=sender, rcpts=[Recipient(box.mailbox_address, (box.mailbox_id,), send=plan)],
                    data=out.data, remote_ip=out.remote_ip, source="outbound")
    store(copy, receipt=receipt)
    if decision.remote:
        policy.record(box, decision.remote)
    status = "held" if decision.hold_reason else "queued"
    return as_row(copy), {"id": message_id, "status": status, "hold_reason": decision.hold_reason}


def complete(cfg: Config, row: Any, dkim: str, parsed: Any) -> dict | None:
    """Runs in the writer: a sent copy accepted earlier becomes a message and queue entries.

    `row` is its ingest.InboundRow, `dkim` the DKIM-Signature fields (kept as the row's trace, so the
    signed message is trace + data everywhere it is read), `parsed` its parse or None. Returns
    {"thread_id", "recipients"}, or None when it was completed already."""
    plan = row.rcpts[0]["send"]
    created = messages.deliver(row, parsed, None, dkim, cfg.thread_subject_window_days * 86400.0,
                               direction="out", message_id=plan["message_id"])
    if created is None:
        return None
    entries = outqueue.add(plan["message_id"], plan["mailbox_id"], row.id, row.mail_from, plan["domain"],
                           plan["remote"], cfg.seconds("queue_lifetime"), plan["hold"])
    # Whoever this mailbox writes to is a correspondent of it from now on (trust signals: first_contact).
    correspondents.record(plan["mailbox_id"], [*plan["remote"], *(rcpt for rcpt, _, _ in plan["local"])],
                          row.received_at)
    signed = dkim.encode("ascii") + row.data
    now = time.time()
    for rcpt, mailbox_ids, tag in plan["local"]:
        env = Envelope(mail_from=row.mail_from, rcpts=[Recipient(rcpt, tuple(mailbox_ids), tag)],
                       data=signed, remote_ip=row.remote_ip, source="local")
        env.received = received_header(helo=cfg.hostname, remote_ip=row.remote_ip or "127.0.0.1",
                                       hostname=cfg.hostname, protocol="LOCAL", rcpt=rcpt, queue_id=env.id,
                                       when=now)
        store(env)
    audit.record(plan["actor"], "send", org_id=plan["org_id"], target=plan["message_id"], mailbox=plan["mailbox"],
                 result="held" if plan["hold"] else "queued", at=row.received_at,
                 detail={"source": plan["source"], "remote": len(plan["remote"]), "local": len(plan["local"]),
                         "hold_reason": plan["hold"]})
    return {"thread_id": created[0][1] if created else None,
            "recipients": entries + [{"address": rcpt, "status": "delivered", "queue_id": None}
                                     for rcpt, _, _ in plan["local"]]}


def replay_record(key: str) -> Idempotency | None:
    """Runs in the writer: what was answered under `key` (an Idempotency-Key, an SES message id) within
    IDEMPOTENCY_SECONDS, or None; an older record is dropped, so the key is free again."""
    row = Idempotency.get_or_none(Idempotency.key == key)
    if row is not None and row.created_at <= time.time() - IDEMPOTENCY_SECONDS:
        row.delete_instance()
        return None
    return row


def _send_now(cfg: Config, principal: Principal | None, out: Outgoing, dkim: str, parsed: Any,
              idem: tuple[str, str] | None) -> dict:
    """Runs in the writer: idempotency, then accept and complete in one transaction."""
    row = replay_record(idem[0]) if idem is not None else None
    if row is not None:
        if row.body_hash != idem[1]:
            raise MxdError("idempotency_conflict", "this Idempotency-Key was used with a different body")
        return dict(row.response, idempotent_replay=True)
    authors = [a.address for a in parsed.from_] if parsed is not None else []
    copy, answer = accept(cfg, principal, out, authors)
    done = complete(cfg, copy, dkim, parsed)
    assert done is not None
    result = {"id": answer["id"], "thread_id": done["thread_id"],
              "message_id": parsed.message_id if parsed else None, "status": answer["status"],
              "hold_reason": answer["hold_reason"], "recipients": done["recipients"]}
    if idem is not None:
        Idempotency.create(key=idem[0], body_hash=idem[1], status=202, response=result)
    return result


def _accept_submitted(cfg: Config, principal: Principal | None, out: Outgoing, authors: list[str],
                      receipt: str | None, since: float) -> dict:
    """Runs in the writer: accept for SMTP submission, with the From addresses `submit` read (the
    writer never reads the message itself). A transmission already accepted under `receipt` after
    `since` (the client retrying after a lost 250) is answered with the first one's id, not sent again."""
    if receipt is not None:
        first = stored_receipt(receipt, since)
        if first is not None:
            plan = (first[1][0].get("send") or {}) if first[1] else {}
            return {"id": plan.get("message_id", first[0]), "status": "duplicate", "hold_reason": None}
    return accept(cfg, principal, out, authors, receipt)[1]


def body_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


async def send(cfg: Config, db: Database, cpu: concurrent.futures.Executor, principal: Principal | None,
               out: Outgoing, idempotency_key: str | None = None, idempotency_body: Any = None) -> dict:
    """Sign and persist one outgoing message; returns once it is durably queued, with its thread and
    queue entries (the HTTP API, MCP and the CLI). `cpu` runs the signing and parsing (mxd's worker processes).
    The header goes through the same check as a submission's, so no way in sends what it would refuse."""
    domain = out.mail_from.rsplit("@", 1)[-1].lower()
    out = dataclasses.replace(out, data=await _normalized(out.data))
    await checked_authors(out.data)
    try:
        args = (prepare, os.path.join(cfg.data_dir, "dkim"), out.data, domain)   # cfg.dkim_dir, without a Path per send
        run = getattr(cpu, "run", None)        # mxd.workerpool.WorkerProcesses: straight to the worker process
        dkim, parsed = await (run(*args) if run else asyncio.get_running_loop().run_in_executor(cpu, *args))
    except ValueError as exc:           # no From, or a header that cannot be parsed
        raise MxdError("bad_request", f"the message cannot be signed: {exc}") from None
    idem = None
    if idempotency_key:
        owner = principal.token_id if principal else "mxd"
        idem = (f"{owner}:{idempotency_key[:200]}", body_hash(idempotency_body))
    return await _refusals_recorded(db, principal, out, db.write(_send_now, cfg, principal, out, dkim, parsed, idem))


async def submit(cfg: Config, db: Database, principal: Principal | None, out: Outgoing) -> dict:
    """Accept one message from SMTP submission: returns {"id", "status", "hold_reason"} once the
    unsigned message and the preflight's decision are committed; the inbound pipeline signs and queues it.

    The From addresses are read here, before the writer is asked for anything, from the message as it
    will be stored and signed (line ends normalised first: a bare CR must not hide a second From field
    from this check and then become one)."""
    out = dataclasses.replace(out, data=await _normalized(out.data))
    authors = await checked_authors(out.data)
    window = cfg.seconds("duplicate_window")
    client = f"{out.remote_ip}/{principal.token_id if principal else ''}"
    receipt = transmission_key(client, out.mail_from, out.recipients, out.data) if window > 0 else None
    return await _refusals_recorded(db, principal, out, db.write(_accept_submitted, cfg, principal, out, authors,
                                                                 receipt, time.time() - window))


async def _normalized(data: bytes) -> bytes:
    """`normalize_line_endings`, off the event loop for a large message."""
    if len(data) < 256 * 1024:
        return normalize_line_endings(data)
    return await asyncio.to_thread(normalize_line_endings, data)


async def _refusals_recorded(db: Database, principal: Principal | None, out: Outgoing, write: Any) -> dict:
    try:
        return await write
    except MxdError as exc:
        if exc.code in BLOCKING_CODES:
            await db.write(_blocked, principal, out, exc)
        raise


# Preflight refusals that are recorded as a message.blocked event (a bad request is not).
BLOCKING_CODES = frozenset({"domain_not_ready", "outbound_disabled", "too_many_recipients", "daily_cap_reached",
                            "rate_limited", "recipient_suppressed", "sender_not_allowed", "forbidden"})


def _blocked(principal: Principal | None, out: Outgoing, exc: MxdError) -> None:
    """Record a refused send for the caller's organisation only: a sender mailbox of another organisation
    (the very reason it was refused) is not named, so nothing lands in that organisation's log or webhooks."""
    row = execute('SELECT "id", "org_id" FROM "mailbox" WHERE "address" = ?', (out.mail_from.lower(),)).fetchone()
    org_id = row[1] if row else None
    if principal is not None and not principal.is_operator:
        if row is not None and row[1] != principal.org_id:
            row = None
        org_id = principal.org_id
    events.emit("message.blocked", mailbox_id=row[0] if row else None, sender=out.mail_from,
                recipients=out.recipients[:100], code=exc.code, reason=exc.message, source=out.source,
                org_id=org_id)
    audit.record(principal.token_id if principal else "mxd", "send", org_id=org_id,
                 mailbox=out.mail_from.lower(), result=audit.result_of(exc.status, exc.code),
                 detail={"code": exc.code, "source": out.source, "recipients": len(out.recipients), "reason": exc.message})
