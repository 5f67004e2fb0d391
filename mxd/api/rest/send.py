"""/api/send and the replies: a JSON body becomes a letter (mxd.service.send.Letter) for the one send path."""
from __future__ import annotations

import dataclasses

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import MAIL_BODY, client_ip, ctx, json_body, note_audit
from mxd.api.schemas import SEND_EXAMPLE, SENDS, TAG_MESSAGES, TAG_SENDING, ref
from mxd.service import send


async def _send(request: Request, principal: Principal, letter: send.Letter, body: dict) -> Response:
    draft = send.compose_draft(letter)
    note_audit(request, mailbox=draft.from_addr.lower())
    result = await send.send(ctx(request), principal, draft, idempotency_key=request.headers.get("idempotency-key"),
                             idempotency_body=body, remote_ip=client_ip(request))
    return JSONResponse(result, status_code=200 if result.get("idempotent_replay") else 202)


@endpoint("POST", "/api/send", "send", "Send a message (the one preflight: scope, sender, domain, caps, suppression)",
          TAG_SENDING, "send", body=ref("SendRequest"), example=SEND_EXAMPLE, **SENDS)
async def api_send(request: Request, principal: Principal) -> Response:
    body = await json_body(request, MAIL_BODY)
    # /api/send sets no threading headers of the caller's (a reply does, from its parent; a draft keeps them)
    letter = dataclasses.replace(send.letter_from_body(body), in_reply_to=None, references=None)
    return await _send(request, principal, letter, body)


async def _reply(request: Request, principal: Principal, message_id: str | None, thread_id: str | None) -> Response:
    body = await json_body(request, MAIL_BODY)
    rc = await send.reply_context_of(ctx(request), principal, message_id, thread_id)
    letter = send.reply_letter(send.letter_from_body(body), rc, bool(body.get("reply_all")))
    return await _send(request, principal, letter, body)


@endpoint("POST", "/api/messages/{id}/reply", "replyToMessage", "Reply to a message (threading headers set by mxd)",
          TAG_MESSAGES, "send", body=ref("ReplyRequest"), example={"text": "Thanks, noted."}, body_optional=True,
          **SENDS)
async def message_reply(request: Request, principal: Principal) -> Response:
    return await _reply(request, principal, request.path_params["id"], None)


@endpoint("POST", "/api/threads/{id}/reply", "replyToThread", "Reply to the newest message of a thread", TAG_MESSAGES,
          "send", body=ref("ReplyRequest"), example={"text": "Thanks, noted."}, body_optional=True, **SENDS)
async def thread_reply(request: Request, principal: Principal) -> Response:
    return await _reply(request, principal, None, request.path_params["id"])
