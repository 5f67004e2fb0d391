"""The /api/... sending routes: send, drafts, replies, the queue and the suppression list.

Each route turns JSON into a letter (mxd.service.send.Letter) and hands it to the one send path
(`mxd.service.send.send`), which runs the one preflight.
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mxd.api.http import MAIL_BODY, authenticate, client_ip, ctx, json_body, note_audit, page_params
from mxd.errors import MxdError
from mxd.service import admin, send
from mxd.access import Principal


async def _send(request: Request, principal: Principal, letter: send.Letter, body: dict) -> dict:
    draft = send.compose_draft(letter)
    note_audit(request, mailbox=draft.from_addr.lower())
    return await send.send(ctx(request), principal, draft, idempotency_key=request.headers.get("idempotency-key"),
                           idempotency_body=body, remote_ip=client_ip(request))


def _answer(result: dict) -> Response:
    return JSONResponse(result, status_code=200 if result.get("idempotent_replay") else 202)


async def api_send(request: Request) -> Response:
    principal = await authenticate(request, "send")
    body = await json_body(request, MAIL_BODY)
    return _answer(await _send(request, principal, send.letter_from_body(body), body))


# ---------------------------------------------------------------- replies
async def _reply(request: Request, message_id: str | None, thread_id: str | None) -> Response:
    principal = await authenticate(request, "send")
    body = await json_body(request, MAIL_BODY)
    rc = await send.reply_context_of(ctx(request), principal, message_id, thread_id)
    letter = send.reply_letter(send.letter_from_body(body), rc, bool(body.get("reply_all")))
    return _answer(await _send(request, principal, letter, body))


async def message_reply(request: Request) -> Response:
    return await _reply(request, request.path_params["id"], None)


async def thread_reply(request: Request) -> Response:
    return await _reply(request, None, request.path_params["id"])


# ---------------------------------------------------------------- drafts
async def drafts_create(request: Request) -> Response:
    principal = await authenticate(request, "draft")
    body = await json_body(request, MAIL_BODY)
    return JSONResponse(await send.save_draft(ctx(request), principal, send.letter_from_body(body)), status_code=201)


async def thread_drafts_create(request: Request) -> Response:
    principal = await authenticate(request, "draft")
    body = await json_body(request, MAIL_BODY)
    return JSONResponse(await send.save_draft(ctx(request), principal, send.letter_from_body(body),
                                              reply_to_thread=request.path_params["id"]), status_code=201)


async def drafts_list(request: Request) -> Response:
    principal = await authenticate(request, "draft")
    limit, cursor = page_params(request)
    return JSONResponse(await send.draft_page(ctx(request), principal, mailbox=request.query_params.get("mailbox"),
                                              limit=limit, cursor=cursor))


async def draft_get(request: Request) -> Response:
    principal = await authenticate(request, "draft")
    return JSONResponse(await send.get_draft(ctx(request), principal, request.path_params["id"]))


async def draft_send(request: Request) -> Response:
    principal = await authenticate(request, "send")
    c = ctx(request)
    stored = await send.stored_draft(c, principal, request.path_params["id"])
    draft = stored.to_send()
    note_audit(request, mailbox=draft.from_addr.lower())
    result = await send.send_draft(c, principal, stored, draft, idempotency_key=request.headers.get("idempotency-key"),
                                   remote_ip=client_ip(request))
    return JSONResponse(result, status_code=202)


# ---------------------------------------------------------------- queue and suppressions (operator)
async def queue_list(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    limit, cursor = page_params(request)
    return JSONResponse(await admin.queue_page(ctx(request), request.query_params.get("status"), limit, cursor))


def queue_action(action: str):
    async def handler(request: Request) -> Response:
        await authenticate(request, "admin", operator=True)
        return JSONResponse(await admin.queue_action(ctx(request), action, request.path_params["id"]))
    return handler


async def queue_delete(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    await admin.queue_drop(ctx(request), request.path_params["id"])
    return Response(status_code=204)


async def suppressions_list(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    limit, cursor = page_params(request)
    return JSONResponse(await admin.suppressions_page(ctx(request), request.query_params.get("organization_id"),
                                                      limit, cursor))


async def suppressions_add(request: Request) -> Response:
    """Suppress an address for one organisation (organization_id), or for the operator's own mailboxes."""
    await authenticate(request, "admin", operator=True)
    body = await json_body(request)
    if not isinstance(body.get("address"), str):
        raise MxdError("bad_request", "body must hold {\"address\": ...}")
    out = await admin.suppress(ctx(request), body["address"], str(body.get("reason") or "operator"),
                               str(body.get("detail") or ""), body.get("organization_id"))
    return JSONResponse(out, status_code=201)


async def suppression_delete(request: Request) -> Response:
    """Lift a suppression for every organisation, or with ?organization_id= for that one only."""
    await authenticate(request, "admin", operator=True)
    await admin.unsuppress(ctx(request), request.path_params["address"], request.query_params.get("organization_id"))
    return Response(status_code=204)


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
        Route("/api/queue/{id}/retry", queue_action("retry"), methods=["POST"]),
        Route("/api/queue/{id}/hold", queue_action("hold"), methods=["POST"]),
        Route("/api/queue/{id}/release", queue_action("release"), methods=["POST"]),
        Route("/api/queue/{id}", queue_delete, methods=["DELETE"]),
        Route("/api/suppressions", suppressions_list, methods=["GET"]),
        Route("/api/suppressions", suppressions_add, methods=["POST"]),
        Route("/api/suppressions/{address}", suppression_delete, methods=["DELETE"]),
    ]
