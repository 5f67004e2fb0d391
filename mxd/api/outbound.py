"""The /api/... sending routes: send, drafts, replies, the queue and the suppression list.

Each route turns JSON into a compose Draft and hands the message to the one
send path (`mxd.sending.send`), which runs the one preflight.
"""
from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mxd import address as addr
from mxd.store import queue as outqueue, suppression
from mxd.api.http import MAIL_BODY, Context, authenticate, ctx, json_body, note_audit, page, page_params
from mxd.errors import MxdError
from mxd.timefmt import iso
from mxd.ids import new_id
from mxd.mime.compose import ComposeError, Draft, OutAttachment, compose, envelope_recipients, reply_headers, \
    reply_subject
from mxd.sending import Outgoing, send
from mxd.store import directory
from mxd.store.models import Draft as DraftRow, Mailbox, Message, Organization, QueueEntry, Thread
from mxd.store.tokens import Principal

MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024


def address_list(value: Any, name: str) -> list[str]:
    """An address or a list of addresses from a JSON body, as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise MxdError("bad_request", f"{name} must be an address or a list of addresses")


def _str(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise MxdError("bad_request", f"{name} must be a string")
    return value


def _attachments(value: Any) -> list[OutAttachment]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MxdError("bad_request", "attachments must be a list")
    out, total = [], 0
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
            raise MxdError("bad_request", f"attachments[{i}] needs a filename and base64 content")
        encoded = item.get("content_base64", item.get("content"))
        if not isinstance(encoded, str):
            raise MxdError("bad_request", f"attachments[{i}].content must be base64 text")
        try:
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise MxdError("bad_request", f"attachments[{i}].content is not valid base64") from None
        total += len(content)
        if total > MAX_ATTACHMENT_BYTES:
            raise MxdError("payload_too_large", "attachments exceed 20 MB in all")
        ctype = item.get("content_type") or "application/octet-stream"
        if not isinstance(ctype, str):
            raise MxdError("bad_request", f"attachments[{i}].content_type must be a string")
        out.append(OutAttachment(item["filename"], ctype, content, item.get("content_id"), bool(item.get("inline"))))
    return out


def draft_from_body(body: dict, sender: str, *, in_reply_to: str | None = None,
                    references: list[str] | None = None) -> Draft:
    headers = body.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise MxdError("bad_request", "headers must be an object of strings")
    return Draft(
        from_addr=sender, from_name=_str(body, "from_name") or "", to=address_list(body.get("to"), "to"),
        cc=address_list(body.get("cc"), "cc"), bcc=address_list(body.get("bcc"), "bcc"),
        reply_to=address_list(body.get("reply_to"), "reply_to"), subject=_str(body, "subject") or "",
        text=_str(body, "text"), html=_str(body, "html"), attachments=_attachments(body.get("attachments")),
        headers=headers, in_reply_to=in_reply_to, references=references or [])


async def send_draft(c: Context, principal: Principal, draft: Draft, body: dict, *,
                     idempotency_key: str | None = None, remote_ip: str = "", source: str = "api") -> dict:
    """Compose and send a draft through the one send path (preflight, sign, queue): for every dialect,
    MCP and the CLI. `body` is what the caller sent, for the idempotency check."""
    try:
        data, _ = compose(draft, message_id_domain=draft.from_addr.rsplit("@", 1)[-1])
        recipients = envelope_recipients(draft)
    except ComposeError as exc:
        raise MxdError(exc.code, f"{exc.field}: {exc.message}") from None
    result = await send(c.cfg, c.db, c.workers, principal, Outgoing(draft.from_addr, recipients, data, source,
                                                                     remote_ip),
                        idempotency_key=idempotency_key, idempotency_body=body if idempotency_key else None)
    c.queued()
    return result


async def _send_draft(request: Request, principal: Principal, draft: Draft, body: dict) -> dict:
    note_audit(request, mailbox=draft.from_addr.lower())
    return await send_draft(ctx(request), principal, draft, body,
                            idempotency_key=request.headers.get("idempotency-key"),
                            remote_ip=request.client.host if request.client else "")


def _sender(body: dict, fallback: str | None = None) -> str:
    sender = body.get("from", fallback)
    if isinstance(sender, dict):
        sender = sender.get("address")
    if not isinstance(sender, str):
        raise MxdError("bad_request", "from must be the address of a mailbox on this server")
    return sender


async def api_send(request: Request) -> Response:
    principal = await authenticate(request, "send")
    body = await json_body(request, MAIL_BODY)
    result = await _send_draft(request, principal, draft_from_body(body, _sender(body)), body)
    return JSONResponse(result, status_code=200 if result.get("idempotent_replay") else 202)


# ---------------------------------------------------------------- replies
def _reply_context(principal: Principal, message_id: str | None = None, thread_id: str | None = None) -> dict:
    """The parent message of a reply (the newest in a thread), checked against the token's mailboxes."""
    if thread_id:
        thread = Thread.get_or_none(Thread.id == thread_id)
        parent = (Message.select().where(Message.thread == thread_id)
                  .order_by(Message.direction == "out", Message.id.desc()).first()) if thread else None
    else:
        parent = Message.get_or_none(Message.id == message_id)
    box = Mailbox.get_or_none(Mailbox.id == parent.mailbox_id) if parent else None
    if parent is None or box is None or not principal.sees(box.address, box.org_id):
        raise MxdError("not_found", "message or thread not found")
    in_reply_to, refs = reply_headers(parent.message_id, parent.references or [], parent.in_reply_to or [])
    if parent.direction == "out":
        to = [a["address"] for a in parent.to_addr]
    else:
        to = [a["address"] for a in (parent.reply_to or parent.from_addr)] or [parent.envelope_from]
    cc = [a["address"] for a in parent.to_addr + parent.cc_addr if a["address"].lower() != box.address]
    return {"mailbox": box.address, "thread_id": parent.thread_id, "to": to, "cc": cc,
            "subject": reply_subject(parent.subject or ""), "in_reply_to": in_reply_to, "references": refs}


def _reply_draft(body: dict, rc: dict) -> Draft:
    merged = dict(body)
    merged.setdefault("to", rc["to"])
    if body.get("reply_all"):
        merged.setdefault("cc", [a for a in rc["cc"] if a not in rc["to"]])
    merged.setdefault("subject", rc["subject"])
    return draft_from_body(merged, _sender(body, rc["mailbox"]), in_reply_to=rc["in_reply_to"],
                           references=rc["references"])


async def message_reply(request: Request) -> Response:
    principal = await authenticate(request, "send")
    body = await json_body(request, MAIL_BODY)
    rc = await ctx(request).db.read(_reply_context, principal, request.path_params["id"], None)
    result = await _send_draft(request, principal, _reply_draft(body, rc), body)
    return JSONResponse(result, status_code=200 if result.get("idempotent_replay") else 202)


async def thread_reply(request: Request) -> Response:
    principal = await authenticate(request, "send")
    body = await json_body(request, MAIL_BODY)
    rc = await ctx(request).db.read(_reply_context, principal, None, request.path_params["id"])
    result = await _send_draft(request, principal, _reply_draft(body, rc), body)
    return JSONResponse(result, status_code=200 if result.get("idempotent_replay") else 202)


# ---------------------------------------------------------------- drafts
def _draft_dict(row: DraftRow, address: str) -> dict:
    return {"id": row.id, "mailbox": address, "thread_id": row.thread_id, "created_at": iso(row.created_at),
            "updated_at": iso(row.updated_at), "sent_message_id": row.sent_message_id, **row.body}


def _save_draft(principal: Principal, body: dict, thread_id: str | None = None, reply: dict | None = None) -> dict:
    sender = _sender(body, reply["mailbox"] if reply else None)
    parsed = addr.try_parse(sender)
    if parsed is None:
        raise MxdError("invalid_address", f"from {sender!r} is not a valid address")
    box = directory.get_mailbox(parsed.base_key)
    if not principal.sees(box.address, box.org_id):
        raise MxdError("not_found", f"mailbox {sender!r} not found")
    stored = dict(body, **{"from": sender})
    if reply:
        stored.setdefault("to", reply["to"])
        stored.setdefault("subject", reply["subject"])
        stored["in_reply_to"], stored["references"] = reply["in_reply_to"], reply["references"]
    draft_from_body(stored, sender)                 # validate now, not only at send time
    row = DraftRow.create(id=new_id("drf"), mailbox=box.id, thread_id=thread_id, body=stored,
                          created_at=time.time(), updated_at=time.time())
    return _draft_dict(row, box.address)


async def drafts_create(request: Request) -> Response:
    principal = await authenticate(request, "draft")
    body = await json_body(request, MAIL_BODY)
    try:
        return JSONResponse(await ctx(request).db.write(_save_draft, principal, body), status_code=201)
    except ComposeError as exc:
        raise MxdError(exc.code, f"{exc.field}: {exc.message}") from None


async def thread_drafts_create(request: Request) -> Response:
    principal = await authenticate(request, "draft")
    body = await json_body(request, MAIL_BODY)
    c = ctx(request)
    rc = await c.db.read(_reply_context, principal, None, request.path_params["id"])
    try:
        return JSONResponse(await c.db.write(_save_draft, principal, body, rc["thread_id"], rc), status_code=201)
    except ComposeError as exc:
        raise MxdError(exc.code, f"{exc.field}: {exc.message}") from None


def _visible_draft(principal: Principal, draft_id: str) -> tuple[DraftRow, str]:
    row = DraftRow.get_or_none(DraftRow.id == draft_id)
    box = Mailbox.get_or_none(Mailbox.id == row.mailbox_id) if row else None
    if row is None or box is None or not principal.sees(box.address, box.org_id):
        raise MxdError("not_found", f"draft {draft_id!r} not found")
    return row, box.address


async def drafts_list(request: Request) -> Response:
    principal = await authenticate(request, "draft")
    limit, cursor = page_params(request)

    def work() -> dict:
        query = DraftRow.select(DraftRow, Mailbox).join(Mailbox).order_by(DraftRow.id.desc())
        mailbox = request.query_params.get("mailbox")
        if mailbox:
            box = directory.get_mailbox(mailbox)
            if not principal.sees(box.address, box.org_id):
                raise MxdError("not_found", "mailbox not found")
            query = query.where(DraftRow.mailbox == box.id)
        elif not principal.is_operator:
            query = query.where(Mailbox.org_id.is_null() if principal.org_id is None
                                else Mailbox.org_id == principal.org_id)
            if not principal.is_admin and principal.mailboxes is not None:
                query = query.where(Mailbox.address.in_(list(principal.mailboxes)))
        if cursor:
            query = query.where(DraftRow.id < cursor)
        rows = list(query.limit(limit))
        return page([_draft_dict(r, r.mailbox.address) for r in rows], limit, len(rows), rows[-1].id if rows else None)
    return JSONResponse(await ctx(request).db.read(work))


async def draft_get(request: Request) -> Response:
    principal = await authenticate(request, "draft")
    row, address = await ctx(request).db.read(_visible_draft, principal, request.path_params["id"])
    return JSONResponse(_draft_dict(row, address))


def _draft_to_send(row: DraftRow) -> Draft:
    """A stored draft as a compose Draft; a draft is sent once (409 after that)."""
    if row.sent_message_id:
        raise MxdError("conflict", f"draft already sent as {row.sent_message_id}", status=409)
    body = row.body
    return draft_from_body(body, body["from"], in_reply_to=body.get("in_reply_to"),
                           references=body.get("references") or [])


def _mark_draft_sent(draft_id: str, message_id: str) -> None:
    DraftRow.update(sent_message_id=message_id, updated_at=time.time()).where(DraftRow.id == draft_id).execute()


async def draft_send(request: Request) -> Response:
    principal = await authenticate(request, "send")
    c = ctx(request)
    row, _ = await c.db.read(_visible_draft, principal, request.path_params["id"])
    result = await _send_draft(request, principal, _draft_to_send(row), row.body)
    await c.db.write(_mark_draft_sent, row.id, result["id"])
    return JSONResponse(result, status_code=202)


# ---------------------------------------------------------------- queue and suppressions (operator)
async def queue_list(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    limit, cursor = page_params(request)
    rows = await ctx(request).db.read(outqueue.list_entries, request.query_params.get("status"), limit, cursor)
    return JSONResponse(page([outqueue.to_dict(r) for r in rows], limit, len(rows), rows[-1].id if rows else None))


def _queue_action(action: str):
    async def handler(request: Request) -> Response:
        await authenticate(request, "admin", operator=True)
        c = ctx(request)
        fn = {"retry": outqueue.retry_now, "hold": outqueue.hold, "release": outqueue.release}[action]
        entry = await c.db.write(fn, request.path_params["id"])
        c.queued()
        return JSONResponse(outqueue.to_dict(entry))
    return handler


async def queue_delete(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    await ctx(request).db.write(outqueue.drop, request.path_params["id"])
    return Response(status_code=204)


def _suppression_org(value: Any) -> str | None:
    """organization_id of a suppression call: an organisation's id, or null/"" for the operator's own mailboxes."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or Organization.get_or_none(Organization.id == value) is None:
        raise MxdError("not_found", f"organisation {value!r} not found")
    return value


async def suppressions_list(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    limit, cursor = page_params(request)
    wanted = request.query_params.get("organization_id")
    rows = await ctx(request).db.read(suppression.list_all, limit, cursor, wanted or None, wanted is None)
    return JSONResponse(page([suppression.to_dict(r) for r in rows], limit, len(rows),
                             suppression.cursor(rows[-1]) if rows else None))


async def suppressions_add(request: Request) -> Response:
    """Suppress an address for one organisation (organization_id), or for the operator's own mailboxes."""
    await authenticate(request, "admin", operator=True)
    body = await json_body(request)
    if not isinstance(body.get("address"), str):
        raise MxdError("bad_request", "body must hold {\"address\": ...}")

    def work() -> Any:
        return suppression.add(body["address"], str(body.get("reason") or "operator"), str(body.get("detail") or ""),
                               _suppression_org(body.get("organization_id")))
    row = await ctx(request).db.write(work)
    return JSONResponse(suppression.to_dict(row), status_code=201)


async def suppression_delete(request: Request) -> Response:
    """Lift a suppression for every organisation, or with ?organization_id= for that one only."""
    await authenticate(request, "admin", operator=True)
    wanted = request.query_params.get("organization_id")
    await ctx(request).db.write(suppression.remove, request.path_params["address"], wanted or None, wanted is None)
    return Response(status_code=204)


def delivery_status(message_id: str) -> list[dict]:
    """Per-recipient delivery state of an outgoing message, for GET /api/messages/{id}."""
    return [{"recipient": e.recipient, "status": e.status, "attempts": e.attempts, "last_reply": e.last_reply,
             "last_host": e.last_host, "queue_id": e.id}
            for e in QueueEntry.select().where(QueueEntry.message == message_id).order_by(QueueEntry.recipient)]


def routes() -> list[Route]:
    return [
        Route("/api/send", api_send, methods=["POST"]),
        Route("/api/messages/{id}/reply", message_reply, methods=["POST"]),
        Route("/api/threads/{id}/reply", thread_reply, methods=["POST"]),
        Route("/api/threads/{id}/drafts", thread_drafts_create, methods=["POST"]),
        Route("/api/drafts", drafts_list, methods=["GET"]),
        Route("/api/drafts", drafts_create, methods=["POST"]),
        Route("/api/drafts/{id}", draft_get, methods=["GET"]),
        Route("/api/drafts/{id}/send", draft_send, methods=["POST"]),
        Route("/api/queue", queue_list, methods=["GET"]),
        Route("/api/queue/{id}/retry", _queue_action("retry"), methods=["POST"]),
        Route("/api/queue/{id}/hold", _queue_action("hold"), methods=["POST"]),
        Route("/api/queue/{id}/release", _queue_action("release"), methods=["POST"]),
        Route("/api/queue/{id}", queue_delete, methods=["DELETE"]),
        Route("/api/suppressions", suppressions_list, methods=["GET"]),
        Route("/api/suppressions", suppressions_add, methods=["POST"]),
        Route("/api/suppressions/{address}", suppression_delete, methods=["DELETE"]),
    ]
