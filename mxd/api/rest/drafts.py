"""/api/drafts: letters kept to send later (also as replies in a thread), and sending one, once."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import MAIL_BODY, client_ip, ctx, json_body, note_audit, page_params
from mxd.api.schemas import PAGED, SEND_EXAMPLE, SENDS, TAG_SENDING, page_of, ref
from mxd.service import send


@endpoint("GET", "/api/drafts", "listDrafts", "Drafts, newest first", TAG_SENDING, "draft", query=PAGED + ("mailbox",),
          response=page_of("Draft"))
async def drafts_list(request: Request, principal: Principal) -> Response:
    limit, cursor = page_params(request)
    return JSONResponse(await send.draft_page(ctx(request), principal, mailbox=request.query_params.get("mailbox"),
                                              limit=limit, cursor=cursor))


@endpoint("POST", "/api/drafts", "createDraft", "Save a draft", TAG_SENDING, "draft", body=ref("DraftRequest"),
          example=SEND_EXAMPLE, status=201, response=ref("Draft"))
async def drafts_create(request: Request, principal: Principal) -> Response:
    body = await json_body(request, MAIL_BODY)
    return JSONResponse(await send.save_draft(ctx(request), principal, send.letter_from_body(body)), status_code=201)


@endpoint("POST", "/api/threads/{id}/drafts", "createThreadDraft", "Save a reply draft in a thread", TAG_SENDING,
          "draft", body=ref("ReplyRequest"), example={"text": "A reply to review."}, body_optional=True, status=201,
          response=ref("Draft"))
async def thread_drafts_create(request: Request, principal: Principal) -> Response:
    body = await json_body(request, MAIL_BODY)
    return JSONResponse(await send.save_draft(ctx(request), principal, send.letter_from_body(body),
                                              reply_to_thread=request.path_params["id"]), status_code=201)


@endpoint("GET", "/api/drafts/{id}", "getDraft", "One draft", TAG_SENDING, "draft", response=ref("Draft"))
async def draft_get(request: Request, principal: Principal) -> Response:
    return JSONResponse(await send.get_draft(ctx(request), principal, request.path_params["id"]))


@endpoint("POST", "/api/drafts/{id}/send", "sendDraft", "Send a draft", TAG_SENDING, "send", **SENDS)
async def draft_send(request: Request, principal: Principal) -> Response:
    c = ctx(request)
    stored = await send.stored_draft(c, principal, request.path_params["id"])
    draft = stored.to_send()
    note_audit(request, mailbox=draft.from_addr.lower())
    result = await send.send_draft(c, principal, stored, draft, idempotency_key=request.headers.get("idempotency-key"),
                                   remote_ip=client_ip(request))
    return JSONResponse(result, status_code=202)
