"""The /api routes of the platform: bootstrap, mailbox retention, audit, the retention run, inbound simulate and SES.

Inbound injection (simulate, SES) goes through mxd.service.inbound, the same ingest as the MX.
"""
from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mxd import address as addr
from mxd.access import Principal
from mxd.api.http import authenticate, client_ip, ctx, json_body, note_audit, page_params, principal_for_secret, \
    principal_of, require
from mxd.errors import MxdError
from mxd.service import admin, directory, inbound
from mxd.service.send import address_list

MAX_RETENTION_DAYS = 36500


# ---------------------------------------------------------------- bootstrap
async def bootstrap(request: Request) -> Response:
    """What a new operator or agent needs in one call: server, caller, domains, mailboxes, ports, next steps."""
    principal = await principal_of(request)
    return JSONResponse(await admin.bootstrap(ctx(request), principal))


# ---------------------------------------------------------------- mailbox retention
async def retention_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    box = await directory.mailbox(c, principal, request.path_params["mailbox"])
    return JSONResponse(directory.retention_dict(box, c.cfg))


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
    box = await directory.set_retention(c, principal, request.path_params["mailbox"], days or None)
    note_audit(request, mailbox=box.address, retention_days=days or None)
    return JSONResponse(directory.retention_dict(box, c.cfg))


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
        note_audit(request, mailbox=(await directory.mailbox(c, principal, ref)).address)
    report = await admin.run_retention(c, principal, ref or None)
    note_audit(request, messages=report["messages"], inbound_rows=report["inbound_rows"])
    return JSONResponse(report)


# ---------------------------------------------------------------- audit
def when(value: str | None, name: str) -> float | None:
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
    since, until = when(q.get("since"), "since"), when(q.get("until"), "until")
    return JSONResponse(await admin.audit_page(
        ctx(request), principal, mailbox=mailbox, actor=q.get("actor") or None, action=q.get("action") or None,
        since=since, until=until, result=q.get("result") or None, limit=limit, cursor=cursor))


# ---------------------------------------------------------------- inbound: simulate and SES
def _text(body: dict, name: str) -> str | None:
    if body.get(name) is not None and not isinstance(body[name], str):
        raise MxdError("bad_request", f"{name} must be a string")
    return body.get(name)


async def inbound_simulate(request: Request) -> Response:
    """Inject a message as if it came from the MX: {"to" or "mailbox", "from", "subject", "text", "html"} or
    {"raw": base64 or text of a whole message}. Returns the inbound id (and the message ids with "wait")."""
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    to = address_list(body.get("to"), "to") + address_list(body.get("mailbox"), "mailbox")
    sender = body.get("from") or None               # none given: the service's stand-in sender
    if isinstance(sender, dict):
        sender = sender.get("address")
        if not isinstance(sender, str):
            raise MxdError("bad_request", "from must be an address")
    if sender is not None and not isinstance(sender, str):
        raise MxdError("bad_request", "from must be an address")
    if body.get("raw") is not None and not isinstance(body["raw"], str):
        raise MxdError("bad_request", "raw must be a string: base64 or the text of a whole message")
    sim = inbound.Simulation(to=to, sender=sender, raw=body.get("raw"),
                             mail_from=body["mail_from"] if isinstance(body.get("mail_from"), str) else None,
                             subject=_text(body, "subject"), text=_text(body, "text"), html=_text(body, "html"),
                             wait=bool(body.get("wait")))
    out = await inbound.simulate(ctx(request), principal, sim, client_ip(request))
    note_audit(request, mailbox=",".join(sorted({a.lower() for a in out["recipients"]}))[:320],
               inbound_id=out["inbound_id"])
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
        principal = await principal_for_secret(
            request, secret, fix="Subscribe https://mxd:<token>@host/api/inbound/ses with an admin token.")
        if not principal.has("admin"):
            raise MxdError("forbidden", "this token lacks the 'admin' scope")
        return principal
    return require(await principal_of(request), "admin")


async def inbound_ses(request: Request) -> Response:
    """An Amazon SNS notification of an SES receipt ("Receive and publish to SNS", encoding BASE64)."""
    principal = await _ses_principal(request)
    try:
        body = await json_body(request)
    except MxdError as exc:
        if exc.code == "invalid_json":
            raise MxdError("invalid_notification", "the body is not an SNS notification (not a JSON object)") from None
        raise
    note = inbound.parse_ses(body)
    if isinstance(note, inbound.SesControl):
        return JSONResponse({"status": "not_followed", "type": note.type, "subscribe_url": note.subscribe_url,
                             "message": "mxd does not fetch SubscribeURL (it works offline): open it yourself "
                                        "to confirm the subscription; notifications are then accepted."})
    out = await inbound.ingest_ses(ctx(request), principal, note, client_ip(request))
    note_audit(request, mailbox=",".join(sorted({a.lower() for a in out["recipients"]}))[:320],
               inbound_id=out["inbound_id"], ses_message_id=str(note.message_id or "")[:200],
               duplicate=out["duplicate"])
    return JSONResponse(out, status_code=202)


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
