"""Inbound injection: a simulated message, and an Amazon SES receipt notification (parsed by a pure
function, then ingested). Both go through the same ingest as the MX: the raw message and its envelope are
made durable, then the pipeline parses, threads, indexes and announces it."""
from __future__ import annotations

import asyncio
import base64
import binascii
import email.errors
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, make_msgid, parseaddr
from typing import Any

from mxd import address as addr
from mxd.access import Principal
from mxd.errors import MxdError
from mxd.ingest import Envelope, Recipient, ingest, received_header, remove_auth_results, store
from mxd.sending import replay_record
from mxd.service import Services
from mxd.store.models import Idempotency, Mailbox, Message
from mxd.store.queue import is_return_path

MAX_INJECT_RECIPIENTS = 100


# ---------------------------------------------------------------- recipients and storing
def _recipients(principal: Principal, s: Services, addresses: list[str]) -> tuple[list[Recipient], list[dict]]:
    """Resolve envelope recipients like RCPT TO at the MX, limited to what the caller may see.
    Runs in a reader. Returns (accepted, refused with the reason)."""
    if s.directory.stale():
        s.directory.refresh()
    accepted, refused = [], []
    for text in addresses:
        parsed = addr.try_parse(text)
        if parsed is None:
            refused.append({"address": text, "code": "invalid_address"})
            continue
        found = s.directory.resolve(parsed)
        if found.kind != "local" or is_return_path(parsed.local):     # a return path is no mailbox's plus-address
            refused.append({"address": text, "code": "domain_not_served" if found.kind == "foreign"
                            else "unknown_recipient"})
            continue
        boxes = list(Mailbox.select().where(Mailbox.id.in_(list(found.mailbox_ids))))
        visible = tuple(b.id for b in boxes if principal.sees(b.address, b.org_id))
        if not visible:
            refused.append({"address": text, "code": "unknown_recipient"})
            continue
        accepted.append(Recipient(str(parsed), visible, found.tag))
    return accepted, refused


async def _accepted(s: Services, principal: Principal, addresses: list[str]) -> tuple[list[Recipient], list[dict]]:
    accepted, refused = await s.db.read(_recipients, principal, s, addresses)
    if not accepted:
        codes = {r["code"] for r in refused}
        code = "domain_not_served" if codes == {"domain_not_served"} else "unknown_recipient"
        raise MxdError(code, "no recipient is served here: " + ", ".join(f"{r['address']} ({r['code']})"
                                                                         for r in refused[:20]),
                       fix="Send to a mailbox, alias or catch-all of a domain this server serves (GET /api/mailboxes).")
    return accepted, refused


def _store_once(key: str, env: Envelope) -> str | None:
    """Runs in the writer: store env unless `key` was stored within the replay window; the first inbound id if so."""
    row = replay_record(key)
    if row is not None:
        return str(row.response.get("inbound_id"))
    store(env)
    Idempotency.create(key=key, body_hash="", status=202, response={"inbound_id": env.id})
    return None


async def _store(s: Services, env: Envelope, protocol: str, once_key: str | None = None) -> str | None:
    """Make the message durable and wake the pipeline. With `once_key`, a message stored under that key
    in the last 24 hours is not stored again: returns the first one's inbound id (else None)."""
    env.data = remove_auth_results(env.data, s.cfg.hostname)    # RFC 8601 5: no forged verdict of ours, as at the MX
    env.received = received_header(helo=env.helo or "api", remote_ip=env.remote_ip or "127.0.0.1",
                                   hostname=s.cfg.hostname, protocol=protocol,
                                   rcpt=env.rcpts[0].address if len(env.rcpts) == 1 else None,
                                   queue_id=env.id, when=env.received_at)
    if once_key is None:
        await ingest(s.db, env)
        first = None
    else:
        first = await s.db.write(_store_once, once_key, env)
    if first is None:
        s.queued()                   # wakes the pipeline, which parses, threads, indexes and announces it
    return first


def _message_ids(inbound_id: str) -> list[str]:
    return [m.id for m in Message.select(Message.id).where(Message.inbound == inbound_id).order_by(Message.id)]


async def _wait_processed(s: Services, inbound_id: str, seconds: float = 10.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        ids = await s.db.read(_message_ids, inbound_id)
        if ids or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- simulate
@dataclass
class Simulation:
    """A message to inject as if the MX had received it: composed from sender, subject and bodies, or `raw`
    (base64 or the text of a whole message). mail_from None: the sender's address (for raw, its From).
    The fields other than `to` are as the caller gave them (JSON values, None: not given): `simulate`
    checks them, in the order its errors have always been given."""
    to: list[str]
    sender: object = None
    mail_from: str | None = None
    subject: object = None
    text: object = None
    html: object = None
    raw: object = None
    wait: bool = False


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def raw_bytes(value: str) -> bytes:
    """A whole RFC 5322 message given as base64 or as text."""
    compact = "".join(value.split())
    if compact and ":" not in value.split("\n", 1)[0]:
        try:
            return base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            pass
    return value.encode("utf-8")


def compose_simple(sender: str, to: list[str], subject: str, text: str, html: str | None, hostname: str) -> bytes:
    msg = EmailMessage()
    try:
        for field, value in (("From", sender), ("To", ", ".join(to)), ("Subject", subject)):
            if "\r" in value or "\n" in value:
                raise MxdError("header_injection", f"{field} holds CR or LF")
            msg[field] = value
        msg["Date"] = format_datetime(datetime.now(timezone.utc))
        msg["Message-ID"] = make_msgid(domain=hostname)
        msg.set_content(text)
        if html:
            msg.add_alternative(html, subtype="html")
        return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    except (ValueError, TypeError, IndexError, email.errors.MessageError) as exc:
        raise MxdError("bad_request", f"the message cannot be composed: {exc}") from None


async def simulate(s: Services, principal: Principal, sim: Simulation, remote_ip: str = "") -> dict:
    """Inject a message as if it came from the MX, to the recipients the principal may see. Answers the
    inbound id, recipients accepted and refused (and the message ids once processed, with `wait`)."""
    if not sim.to:
        raise MxdError("bad_request", 'body must name the recipients: {"to": ["agent@example.com"]} or {"mailbox": ...}')
    if len(sim.to) > MAX_INJECT_RECIPIENTS:
        raise MxdError("bad_request", f"at most {MAX_INJECT_RECIPIENTS} recipients per message")
    sender = sim.sender or "simulated@example.invalid"
    if isinstance(sender, dict):
        sender = sender.get("address")
    if not isinstance(sender, str) or len(sender) > 500:
        raise MxdError("bad_request", "from must be an address")
    envelope_from = sim.mail_from if sim.mail_from is not None else parseaddr(sender)[1]
    if len(envelope_from) > 500:
        raise MxdError("bad_request", "mail_from is too long")
    accepted, refused = await _accepted(s, principal, sim.to)
    if sim.raw is not None:
        if not isinstance(sim.raw, str):
            raise MxdError("bad_request", "raw must be a string: base64 or the text of a whole message")
        data = raw_bytes(sim.raw)
        if not sim.sender and sim.mail_from is None:      # the raw From, as a sender would
            header = BytesHeaderParser().parsebytes(data).get("From") or ""
            envelope_from = parseaddr(str(header))[1][:500]
    else:
        fields = {"subject": sim.subject, "text": sim.text, "html": sim.html}
        for name, value in fields.items():
            if value is not None and not isinstance(value, str):
                raise MxdError("bad_request", f"{name} must be a string")
        data = compose_simple(sender, [t for t in sim.to if addr.try_parse(t) is not None],
                              _text(sim.subject), _text(sim.text), _text(sim.html) or None, s.cfg.hostname)
    env = Envelope(mail_from=envelope_from or "", rcpts=accepted, data=data, source="api",
                   remote_ip=remote_ip, helo="api")
    await _store(s, env, "HTTP")
    out: dict[str, Any] = {"inbound_id": env.id, "status": "accepted",
                           "recipients": [r.address for r in accepted], "refused": refused}
    if sim.wait:
        out["message_ids"] = await _wait_processed(s, env.id)
    return out


# ---------------------------------------------------------------- SES
@dataclass(frozen=True)
class SesControl:
    """An SNS subscription (or unsubscription) confirmation: mxd does not fetch its URL."""
    type: str
    subscribe_url: str | None


@dataclass(frozen=True)
class SesMessage:
    """An SES receipt notification: the message, its envelope, and SES's id for it (None: none given)."""
    data: bytes
    recipients: list[str]
    source: str
    message_id: str | None


def _ses_fail(message: str, fix: str | None = None) -> MxdError:
    return MxdError("invalid_notification", message, fix=fix)


def parse_ses(body: dict) -> SesControl | SesMessage:
    """An Amazon SNS notification of an SES receipt ("Receive and publish to SNS", encoding BASE64), read
    without side effects; raises MxdError invalid_notification for anything else."""
    kind = body.get("Type")
    if kind in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
        url = body.get("SubscribeURL")
        return SesControl(kind, url if isinstance(url, str) else None)
    if kind != "Notification":
        raise _ses_fail(f"Type must be Notification or SubscriptionConfirmation, not {kind!r}")
    try:
        inner = json.loads(body.get("Message") or "")
    except (TypeError, ValueError):
        raise _ses_fail("Message is not the JSON of an SES notification") from None
    if not isinstance(inner, dict) or not isinstance(inner.get("mail"), dict):
        raise _ses_fail('Message must be an SES receipt notification with a "mail" object')
    if inner.get("notificationType", "Received") != "Received":
        raise _ses_fail(f"notificationType {inner.get('notificationType')!r} is not an inbound message")
    content = inner.get("content")
    if not isinstance(content, str) or not content:
        raise _ses_fail("the notification carries no content",
                        fix="Use the SES receipt rule action 'Publish to Amazon SNS topic' with encoding BASE64; "
                            "messages over 150 KB are only stored in S3, which mxd cannot fetch.")
    found = inner.get("receipt")
    receipt: dict[str, Any] = found if isinstance(found, dict) else {}
    try:
        data = base64.b64decode("".join(content.split()), validate=True)
    except (binascii.Error, ValueError):
        given = receipt.get("action")
        action: dict[str, Any] = given if isinstance(given, dict) else {}
        if action.get("encoding") == "UTF8":
            data = content.encode("utf-8")
        else:
            raise _ses_fail("content is not base64", fix="Set the SNS action's encoding to BASE64.") from None
    mail = inner["mail"]
    recipients = receipt.get("recipients") or mail.get("destination")
    if not isinstance(recipients, list) or not recipients or not all(isinstance(r, str) for r in recipients) \
            or len(recipients) > MAX_INJECT_RECIPIENTS:
        raise _ses_fail('mail.destination (or receipt.recipients) must list the recipients')
    source = mail.get("source") if isinstance(mail.get("source"), str) and len(mail["source"]) <= 500 else ""
    ses_id = mail.get("messageId") if isinstance(mail.get("messageId"), str) and mail["messageId"] else None
    return SesMessage(data, recipients, source, ses_id)


async def ingest_ses(s: Services, principal: Principal, note: SesMessage, remote_ip: str = "") -> dict:
    """Store an SES message for the recipients the principal may see. SNS delivers at least once: the same
    SES message again (a retry, or a second topic) is stored once, per organisation (the id is the caller's
    word, so one tenant's ids never make another's "duplicates")."""
    accepted, refused = await _accepted(s, principal, note.recipients)
    env = Envelope(mail_from=note.source, rcpts=accepted, data=note.data, source="ses", helo="amazonses.com",
                   remote_ip=remote_ip)
    once_key = f"ses:{principal.org_id or '-'}:{note.message_id[:250]}" if note.message_id else None
    first = await _store(s, env, "SES", once_key=once_key)
    return {"inbound_id": first or env.id, "status": "accepted", "ses_message_id": note.message_id,
            "duplicate": first is not None, "recipients": [r.address for r in accepted], "refused": refused}
