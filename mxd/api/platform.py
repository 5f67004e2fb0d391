"""The /api routes of the platform: bootstrap, mailbox retention, audit, the retention run, inbound simulate and SES.

Inbound injection (simulate, SES) goes through the same ingest as the MX: the
raw message and its envelope are made durable, then the pipeline parses,
threads, indexes and announces it.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import time
from datetime import datetime, timezone
import email.errors
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, make_msgid, parseaddr
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

import mxd
from mxd import address as addr
from mxd import retention
from mxd.store import audit, tokens
from mxd.api.http import authenticate, ctx, json_body, note_audit, page, page_params, principal_of
from mxd.api.litemx import _domain_dict, _mailbox_dict, _visible_ids, effective_retention
from mxd.api.outbound import address_list
from mxd.config import parse_hostport
from mxd.errors import MxdError
from mxd.ingest import Envelope, Recipient, ingest, received_header, remove_auth_results, store
from mxd.store.queue import is_return_path
from mxd.sending import replay_record
from mxd.store import directory
from mxd.store.models import Idempotency, Mailbox, Message, Organization
from mxd.store.tokens import Principal

MAX_RETENTION_DAYS = 36500
MAX_INJECT_RECIPIENTS = 100


# ---------------------------------------------------------------- bootstrap
def _port(listen: str) -> int | None:
    if not listen:
        return None
    try:
        return parse_hostport(listen)[1]
    except Exception:
        return None


def _bootstrap(principal: Principal, cfg: Any) -> dict:
    """Runs in a reader: everything a new operator or agent needs, in one answer."""
    domains = directory.list_domains(principal.org_id, principal.is_operator)
    boxes = directory.list_mailboxes(_visible_ids(principal))
    org = Organization.get_or_none(Organization.id == principal.org_id) if principal.org_id else None
    steps: list[str] = []
    if principal.is_admin and not domains:
        steps.append('Create a domain: POST /api/domains {"domain": "example.com"}')
    for d in domains:
        if not d.ready:
            steps.append(f"Publish DNS for {d.name}: GET /api/domains/{d.name}/dns-plan, then "
                         f"POST /api/domains/{d.name}/verify")
    own = [b for b in boxes if not b.address.startswith(("postmaster@", "abuse@"))]
    if principal.is_admin and domains and not own:
        steps.append(f'Create a mailbox: POST /api/mailboxes {{"address": "agent@{domains[0].name}"}}')
    if principal.is_admin and own:
        steps.append('Give each agent a token limited to its mailbox: POST /api/tokens '
                     f'{{"name": "agent", "scopes": ["read", "search", "draft", "send"], "mailboxes": ["{own[0].address}"]}}')
    if not principal.has("send"):
        steps.append("This token cannot send mail (read never implies send); ask for a token with the 'send' scope.")
    elif boxes and any(d.ready for d in domains):
        steps.append('Send: POST /api/send {"from": ..., "to": [...], "subject": ..., "text": ...}')
    if boxes:
        steps.append(f"Read mail: GET /api/messages?mailbox={boxes[0].address}, or poll and acknowledge")
    return {
        "server": {"hostname": cfg.hostname, "version": mxd.__version__,
                   "default_retention_days": cfg.default_retention_days,
                   "default_domain": cfg.default_domain or (domains[0].name if domains else None)},
        "principal": {"token_id": principal.token_id, "name": principal.name, "scopes": sorted(principal.scopes),
                      "mailboxes": sorted(principal.mailboxes) if principal.mailboxes is not None else None,
                      "org_id": principal.org_id, "operator": principal.is_operator},
        "organization": {"id": org.id, "name": org.name, "slug": org.slug} if org else None,
        "domains": [dict(_domain_dict(d), dns_plan=f"/api/domains/{d.name}/dns-plan") for d in domains],
        "mailboxes": [_mailbox_dict(b, cfg) for b in boxes],
        "ports": {"mx": _port(cfg.mx_listen), "submission": _port(cfg.submission_listen),
                  "submissions": _port(cfg.submissions_listen), "http": _port(cfg.http_listen)},
        "endpoints": {"openapi": "/openapi.json", "mcp": "/mcp", "messages": "/api/messages",
                      "send": "/api/send", "audit": "/api/audit"},
        "next_steps": steps,
    }


async def bootstrap(request: Request) -> Response:
    """What a new operator or agent needs in one call: server, caller, domains, mailboxes, ports, next steps."""
    principal = await principal_of(request)
    c = ctx(request)
    return JSONResponse(await c.db.read(_bootstrap, principal, c.cfg))


# ---------------------------------------------------------------- mailbox retention
def _retention_dict(box: Mailbox, cfg: Any) -> dict:
    return {"mailbox": box.address, "mailbox_id": box.id, "retention_days": box.retention_days,
            "effective_retention_days": effective_retention(box, cfg),
            "default_retention_days": cfg.default_retention_days,
            "source": "mailbox" if box.retention_days else "default"}


async def retention_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    box = await c.db.read(directory.owned_mailbox, principal, request.path_params["mailbox"])
    return JSONResponse(_retention_dict(box, c.cfg))


async def retention_put(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    if "retention_days" not in body:
        raise MxdError("bad_request", 'body must hold {"retention_days": N} (0 or null: the server default)')
    days = body["retention_days"]
    if days is not None and (not isinstance(days, int) or isinstance(days, bool)
                             or not 0 <= days <= MAX_RETENTION_DAYS):
        raise MxdError("bad_request", f"retention_days must be an integer from 1 to {MAX_RETENTION_DAYS}, "
                                      "or 0 or null for the server default")
    c = ctx(request)

    def work() -> Mailbox:
        box = directory.owned_mailbox(principal, request.path_params["mailbox"])
        return directory.set_retention(box.id, days or None)
    box = await c.db.write(work)
    note_audit(request, mailbox=box.address, retention_days=days or None)
    return JSONResponse(_retention_dict(box, c.cfg))


# ---------------------------------------------------------------- retention run
async def retention_run(request: Request) -> Response:
    """Apply retention now (admin): every mailbox the caller administers, or the one in {"mailbox": ...}."""
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    ref = body.get("mailbox")
    if ref is not None and not isinstance(ref, str):
        raise MxdError("bad_request", 'mailbox must be an address or id: {"mailbox": "agent@example.com"}')
    c = ctx(request)
    if ref:
        box = await c.db.read(directory.owned_mailbox, principal, ref)
        ids: list[str] | None = [box.id]
        note_audit(request, mailbox=box.address)
    else:
        ids = await c.db.read(_visible_ids, principal)        # None for the operator: everything
    report = await retention.run(c.cfg, c.db, ids)
    note_audit(request, messages=report["messages"], inbound_rows=report["inbound_rows"])
    report["ran_at"] = datetime.fromtimestamp(report["ran_at"], timezone.utc).isoformat().replace("+00:00", "Z")
    return JSONResponse(report)


# ---------------------------------------------------------------- audit
def _when(value: str | None, name: str) -> float | None:
    """ISO 8601 (a time without zone is UTC) or seconds since the epoch."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise MxdError("bad_request", f"{name} must be a finite time")
        return number
    text = value.strip().replace("Z", "+00:00")
    if "T" in text and text.count(" ") == 1:              # a "+" that arrived unencoded in the query string
        text = text.replace(" ", "+")
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    except (ValueError, OverflowError):
        raise MxdError("bad_request", f"{name} must be ISO 8601 (2026-01-31T12:00:00Z) or epoch seconds") from None


async def audit_list(request: Request) -> Response:
    """Audit rows, newest first: filters actor, mailbox, action (exact or a prefix ending in *), since, until,
    result. An organisation's token sees its organisation's rows; the operator's tokens see every row."""
    principal = await authenticate(request, "audit")
    limit, cursor = page_params(request, default=100, most=1000)
    q = request.query_params
    mailbox = q.get("mailbox") or None
    if mailbox:
        parsed = addr.try_parse(mailbox)
        mailbox = parsed.key if parsed else mailbox.lower()
    if principal.mailboxes is not None and not principal.is_admin:
        if not mailbox:
            raise MxdError("bad_request", "this token is limited to mailboxes: add ?mailbox= with one of them")
        if mailbox not in principal.mailboxes:
            raise MxdError("not_found", f"mailbox {mailbox!r} not found")
    since, until = _when(q.get("since"), "since"), _when(q.get("until"), "until")
    rows = await ctx(request).db.read(lambda: audit.query(
        org_id=principal.org_id, everyone=principal.org_id is None, actor=q.get("actor") or None,
        mailbox=mailbox, action=q.get("action") or None, since=since, until=until,
        result=q.get("result") or None, limit=limit, cursor=cursor))
    return JSONResponse(page([audit.to_dict(r) for r in rows], limit, len(rows), rows[-1].id if rows else None))


# ---------------------------------------------------------------- inbound: simulate and SES
def _recipients(principal: Principal, c: Any, addresses: list[str]) -> tuple[list[Recipient], list[dict]]:
    """Resolve envelope recipients like RCPT TO at the MX, limited to what the caller may see.
    Runs in a reader. Returns (accepted, refused with the reason)."""
    if c.directory.stale():
        c.directory.refresh()
    accepted, refused = [], []
    for text in addresses:
        parsed = addr.try_parse(text)
        if parsed is None:
            refused.append({"address": text, "code": "invalid_address"})
            continue
        found = c.directory.resolve(parsed)
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


def _refuse(refused: list[dict]) -> MxdError:
    codes = {r["code"] for r in refused}
    code = "domain_not_served" if codes == {"domain_not_served"} else "unknown_recipient"
    return MxdError(code, "no recipient is served here: " + ", ".join(f"{r['address']} ({r['code']})"
                                                                     for r in refused[:20]),
                    fix="Send to a mailbox, alias or catch-all of a domain this server serves (GET /api/mailboxes).")


async def _store(request: Request, env: Envelope, protocol: str, once_key: str | None = None) -> str | None:
    """Make the message durable and wake the pipeline. With `once_key`, a message stored under that key
    in the last 24 hours is not stored again: returns the first one's inbound id (else None)."""
    c = ctx(request)
    env.data = remove_auth_results(env.data, c.cfg.hostname)    # RFC 8601 5: no forged verdict of ours, as at the MX
    env.received = received_header(helo=env.helo or "api", remote_ip=env.remote_ip or "127.0.0.1",
                                   hostname=c.cfg.hostname, protocol=protocol,
                                   rcpt=env.rcpts[0].address if len(env.rcpts) == 1 else None,
                                   queue_id=env.id, when=env.received_at)
    if once_key is None:
        await ingest(c.db, env)
        first = None
    else:
        first = await c.db.write(_store_once, once_key, env)
    if first is None:
        c.queued()                   # wakes the pipeline, which parses, threads, indexes and announces it
    return first


def _store_once(key: str, env: Envelope) -> str | None:
    """Runs in the writer: store env unless `key` was stored within the replay window; the first inbound id if so."""
    row = replay_record(key)
    if row is not None:
        return str(row.response.get("inbound_id"))
    store(env)
    Idempotency.create(key=key, body_hash="", status=202, response={"inbound_id": env.id})
    return None


def _message_ids(inbound_id: str) -> list[str]:
    return [m.id for m in Message.select(Message.id).where(Message.inbound == inbound_id).order_by(Message.id)]


async def _wait_processed(request: Request, inbound_id: str, seconds: float = 10.0) -> list[str]:
    db = ctx(request).db
    deadline = time.monotonic() + seconds
    while True:
        ids = await db.read(_message_ids, inbound_id)
        if ids or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.05)


def _raw_bytes(value: str) -> bytes:
    """A whole RFC 5322 message given as base64 or as text."""
    compact = "".join(value.split())
    if compact and ":" not in value.split("\n", 1)[0]:
        try:
            return base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            pass
    return value.encode("utf-8")


def _compose(sender: str, to: list[str], body: dict, hostname: str) -> bytes:
    for name in ("subject", "text", "html"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise MxdError("bad_request", f"{name} must be a string")
    msg = EmailMessage()
    try:
        for field, value in (("From", sender), ("To", ", ".join(to)), ("Subject", body.get("subject") or "")):
            if "\r" in value or "\n" in value:
                raise MxdError("header_injection", f"{field} holds CR or LF")
            msg[field] = value
        msg["Date"] = format_datetime(datetime.now(timezone.utc))
        msg["Message-ID"] = make_msgid(domain=hostname)
        msg.set_content(body.get("text") or "")
        if body.get("html"):
            msg.add_alternative(body["html"], subtype="html")
        return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    except (ValueError, TypeError, IndexError, email.errors.MessageError) as exc:
        raise MxdError("bad_request", f"the message cannot be composed: {exc}") from None


async def inbound_simulate(request: Request) -> Response:
    """Inject a message as if it came from the MX: {"to" or "mailbox", "from", "subject", "text", "html"} or
    {"raw": base64 or text of a whole message}. Returns the inbound id (and the message ids with "wait")."""
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    to = address_list(body.get("to"), "to") + address_list(body.get("mailbox"), "mailbox")
    if not to:
        raise MxdError("bad_request", 'body must name the recipients: {"to": ["agent@example.com"]} or {"mailbox": ...}')
    if len(to) > MAX_INJECT_RECIPIENTS:
        raise MxdError("bad_request", f"at most {MAX_INJECT_RECIPIENTS} recipients per message")
    sender = body.get("from") or "simulated@example.invalid"
    if isinstance(sender, dict):
        sender = sender.get("address")
    if not isinstance(sender, str) or len(sender) > 500:
        raise MxdError("bad_request", "from must be an address")
    envelope_from = body.get("mail_from") if isinstance(body.get("mail_from"), str) else parseaddr(sender)[1]
    if len(envelope_from) > 500:
        raise MxdError("bad_request", "mail_from is too long")
    c = ctx(request)
    accepted, refused = await c.db.read(_recipients, principal, c, to)
    if not accepted:
        raise _refuse(refused)
    if body.get("raw") is not None:
        if not isinstance(body["raw"], str):
            raise MxdError("bad_request", "raw must be a string: base64 or the text of a whole message")
        data = _raw_bytes(body["raw"])
        if not body.get("from") and not isinstance(body.get("mail_from"), str):     # the raw From, as a sender would
            header = BytesHeaderParser().parsebytes(data).get("From") or ""
            envelope_from = parseaddr(str(header))[1][:500]
    else:
        data = _compose(sender, [t for t in to if addr.try_parse(t) is not None], body, c.cfg.hostname)
    env = Envelope(mail_from=envelope_from or "", rcpts=accepted, data=data, source="api",
                   remote_ip=request.client.host if request.client else "", helo="api")
    await _store(request, env, "HTTP")
    note_audit(request, mailbox=",".join(sorted({r.address.lower() for r in accepted}))[:320], inbound_id=env.id)
    out: dict[str, Any] = {"inbound_id": env.id, "status": "accepted",
                           "recipients": [r.address for r in accepted], "refused": refused}
    if body.get("wait"):
        out["message_ids"] = await _wait_processed(request, env.id)
    return JSONResponse(out, status_code=202)


async def _ses_principal(request: Request) -> Principal:
    """SNS can carry credentials only as HTTP Basic in the subscription URL (https://any:TOKEN@host/...):
    the password is the token. A Bearer token works as everywhere else."""
    header = request.headers.get("authorization", "")
    if header[:6].lower() == "basic ":
        try:
            secret = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, ValueError, UnicodeDecodeError):
            secret = ""
        db = ctx(request).db
        row = await db.read(tokens.lookup, secret) if secret else None
        if row is None:
            raise MxdError("unauthorized", "the token is not valid or has been revoked",
                           fix="Subscribe https://mxd:<token>@host/api/inbound/ses with an admin token.")
        if tokens.needs_touch(row.last_used_at):
            await db.write(tokens.touch, row.id, row.last_used_at)
        principal = tokens.principal(row)
        request.scope["mxd.principal"] = principal          # for the audit middleware
        if not principal.has("admin"):
            raise MxdError("forbidden", "this token lacks the 'admin' scope")
        return principal
    return await authenticate(request, "admin")


def _ses_fail(message: str, fix: str | None = None) -> MxdError:
    return MxdError("invalid_notification", message, fix=fix)


async def inbound_ses(request: Request) -> Response:
    """An Amazon SNS notification of an SES receipt ("Receive and publish to SNS", encoding BASE64)."""
    principal = await _ses_principal(request)
    try:
        body = await json_body(request)
    except MxdError as exc:
        if exc.code == "invalid_json":
            raise _ses_fail("the body is not an SNS notification (not a JSON object)") from None
        raise
    kind = body.get("Type")
    if kind in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
        return JSONResponse({"status": "not_followed", "type": kind,
                             "subscribe_url": body.get("SubscribeURL") if isinstance(body.get("SubscribeURL"), str)
                             else None,
                             "message": "mxd does not fetch SubscribeURL (it works offline): open it yourself "
                                        "to confirm the subscription; notifications are then accepted."})
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
    try:
        data = base64.b64decode("".join(content.split()), validate=True)
    except (binascii.Error, ValueError):
        receipt = inner.get("receipt") if isinstance(inner.get("receipt"), dict) else {}
        action = receipt.get("action") if isinstance(receipt.get("action"), dict) else {}
        if action.get("encoding") == "UTF8":
            data = content.encode("utf-8")
        else:
            raise _ses_fail("content is not base64", fix="Set the SNS action's encoding to BASE64.") from None
    mail = inner["mail"]
    receipt = inner.get("receipt") if isinstance(inner.get("receipt"), dict) else {}
    recipients = receipt.get("recipients") or mail.get("destination")
    if not isinstance(recipients, list) or not recipients or not all(isinstance(r, str) for r in recipients) \
            or len(recipients) > MAX_INJECT_RECIPIENTS:
        raise _ses_fail('mail.destination (or receipt.recipients) must list the recipients')
    source = mail.get("source") if isinstance(mail.get("source"), str) and len(mail["source"]) <= 500 else ""
    c = ctx(request)
    accepted, refused = await c.db.read(_recipients, principal, c, recipients)
    if not accepted:
        raise _refuse(refused)
    env = Envelope(mail_from=source, rcpts=accepted, data=data, source="ses", helo="amazonses.com",
                   remote_ip=request.client.host if request.client else "")
    # SNS delivers at least once: the same SES message again (a retry, or a second topic) is stored once,
    # per organisation: the id is the caller's word, so one tenant's ids never make another's "duplicates".
    ses_id = mail.get("messageId") if isinstance(mail.get("messageId"), str) and mail["messageId"] else None
    once_key = f"ses:{principal.org_id or '-'}:{ses_id[:250]}" if ses_id else None
    first = await _store(request, env, "SES", once_key=once_key)
    note_audit(request, mailbox=",".join(sorted({r.address.lower() for r in accepted}))[:320],
               inbound_id=first or env.id, ses_message_id=str(ses_id or "")[:200], duplicate=first is not None)
    return JSONResponse({"inbound_id": first or env.id, "status": "accepted", "ses_message_id": ses_id,
                         "duplicate": first is not None, "recipients": [r.address for r in accepted],
                         "refused": refused}, status_code=202)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/bootstrap", bootstrap, methods=["GET"]),
        Route("/api/mailboxes/{mailbox}/retention", retention_get, methods=["GET"]),
        Route("/api/mailboxes/{mailbox}/retention", retention_put, methods=["PUT"]),
        Route("/api/retention/run", retention_run, methods=["POST"]),
        Route("/api/audit", audit_list, methods=["GET"]),
        Route("/api/inbound/simulate", inbound_simulate, methods=["POST"]),
        Route("/api/inbound/ses", inbound_ses, methods=["POST"]),
    ]
