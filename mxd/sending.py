"""The one send path: preflight, DKIM-sign, store the sent copy, queue remote recipients, ingest local ones.

SMTP submission and the HTTP API (and later MCP and the CLI) hand a finished,
CRLF-normalised message to `send`; nothing else puts mail on the queue.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxd import audit, keys, outbox, outqueue, policy
from mxd.config import Config
from mxd.db import Database, execute
from mxd.dkimsign import Signer
from mxd.errors import MxdError
from mxd.ingest import Envelope, Recipient, as_row, normalize_line_endings, received_header, store
from mxd.mime.parse import parse
from mxd.store import messages
from mxd.store.models import Idempotency
from mxd.tokens import Principal

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
        self._cache: dict[str, tuple[float, Signer | None]] = {}
        self._lock = threading.Lock()

    def sign(self, data: bytes, domain: str) -> bytes:
        stamp = keys.manifest_mtime(self.dkim_dir, domain)
        with self._lock:
            cached = self._cache.get(domain)
            if cached is None or cached[0] != stamp:
                active = [k for k in keys.load_dkim_keys(self.dkim_dir, domain) if k.state == keys.ACTIVE] \
                    if stamp else []
                cached = self._cache[domain] = (stamp, Signer(active) if active else None)
        signer = cached[1]
        return signer.sign(data, domain) + data if signer else data


_signers: dict[str, Signers] = {}


def prepare(dkim_dir: str, data: bytes, domain: str) -> tuple[bytes, Any]:
    """Normalise line ends, sign and parse a message: CPU work, run in a worker process beside the event loop."""
    data = normalize_line_endings(data)
    signers = _signers.get(dkim_dir)
    if signers is None:
        signers = _signers[dkim_dir] = Signers(Path(dkim_dir))
    signed = signers.sign(data, domain) if domain else data
    return signed, parse(data)


def _persist(cfg: Config, principal: Principal | None, out: Outgoing, signed: bytes, parsed: Any,
             idem: tuple[str, str] | None) -> dict:
    """Runs in the writer: idempotency, preflight, then every row of the send in one transaction."""
    if idem is not None:
        row = Idempotency.get_or_none(Idempotency.key == idem[0])
        if row is not None and row.created_at > time.time() - IDEMPOTENCY_SECONDS:
            if row.body_hash != idem[1]:
                raise MxdError("idempotency_conflict", "this Idempotency-Key was used with a different body")
            return dict(row.response, idempotent_replay=True)
        if row is not None:
            row.delete_instance()
    authors = [a.address for a in parsed.from_] if parsed is not None else []
    decision = policy.preflight(cfg, principal, out.mail_from, out.recipients, authors)
    sender, box = str(decision.sender), decision.mailbox
    now = time.time()
    copy = Envelope(mail_from=sender, rcpts=[Recipient(box.mailbox_address, (box.mailbox_id,))], data=signed,
                    remote_ip=out.remote_ip, source="outbound", received_at=now)
    store(copy)
    [(message_id, thread_id)] = messages.deliver(as_row(copy), parsed, None, "",
                                                 cfg.thread_subject_window_days * 86400.0, direction="out")
    entries = outqueue.add(message_id, box.mailbox_id, copy.id, sender, box.domain, decision.remote,
                           cfg.seconds("queue_lifetime"), decision.hold_reason)
    if decision.remote:
        policy.record(box, decision.remote)
    for rcpt, found in decision.local:
        env = Envelope(mail_from=sender, rcpts=[Recipient(rcpt, found.mailbox_ids, found.tag)],
                       data=signed, remote_ip=out.remote_ip, source="local")
        env.received = received_header(helo=cfg.hostname, remote_ip=out.remote_ip or "127.0.0.1",
                                       hostname=cfg.hostname, protocol="LOCAL", rcpt=rcpt, queue_id=env.id,
                                       when=now)
        store(env)
    result = {
        "id": message_id, "thread_id": thread_id, "message_id": parsed.message_id if parsed else None,
        "status": "held" if decision.hold_reason else "queued", "hold_reason": decision.hold_reason,
        "recipients": entries + [{"address": rcpt, "status": "delivered", "queue_id": None}
                                 for rcpt, _ in decision.local],
    }
    audit.record(principal.token_id if principal else "mxd", "send", org_id=box.org_id, target=message_id,
                 mailbox=box.mailbox_address, result=result["status"],
                 detail={"source": out.source, "remote": len(decision.remote), "local": len(decision.local),
                         "hold_reason": decision.hold_reason})
    if idem is not None:
        Idempotency.create(key=idem[0], body_hash=idem[1], status=202, response=result)
    return result


def body_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


async def send(cfg: Config, db: Database, cpu: concurrent.futures.Executor, principal: Principal | None,
               out: Outgoing, idempotency_key: str | None = None, idempotency_body: Any = None) -> dict:
    """Sign and persist one outgoing message; returns once it is durably queued.

    `cpu` runs the signing and parsing (mxd's worker processes).
    """
    domain = out.mail_from.rsplit("@", 1)[-1].lower()
    try:
        args = (prepare, os.path.join(cfg.data_dir, "dkim"), out.data, domain)   # cfg.dkim_dir, without a Path per send
        run = getattr(cpu, "run", None)        # mxd.pipeline.WorkerProcesses: straight to the worker process
        signed, parsed = await (run(*args) if run else asyncio.get_running_loop().run_in_executor(cpu, *args))
    except ValueError as exc:           # no From, or a header that cannot be parsed
        raise MxdError("bad_request", f"the message cannot be signed: {exc}") from None
    idem = None
    if idempotency_key:
        owner = principal.token_id if principal else "mxd"
        idem = (f"{owner}:{idempotency_key[:200]}", body_hash(idempotency_body))
    try:
        return await db.write(_persist, cfg, principal, out, signed, parsed, idem)
    except MxdError as exc:
        if exc.code in BLOCKING_CODES:
            await db.write(_blocked, principal, out, exc)
        raise


# Preflight refusals that are recorded as a message.blocked event (a bad request is not).
BLOCKING_CODES = frozenset({"domain_not_ready", "outbound_disabled", "too_many_recipients", "daily_cap_reached",
                            "rate_limited", "recipient_suppressed", "sender_not_allowed", "forbidden"})


def _blocked(principal: Principal | None, out: Outgoing, exc: MxdError) -> None:
    row = execute('SELECT "id", "org_id" FROM "mailbox" WHERE "address" = ?', (out.mail_from.lower(),)).fetchone()
    outbox.emit("message.blocked", mailbox_id=row[0] if row else None, sender=out.mail_from,
                recipients=out.recipients[:100], code=exc.code, reason=exc.message, source=out.source)
    audit.record(principal.token_id if principal else "mxd", "send", org_id=row[1] if row else None,
                 mailbox=out.mail_from.lower(), result=audit.result_of(exc.status, exc.code),
                 detail={"code": exc.code, "source": out.source, "recipients": len(out.recipients), "reason": exc.message})
