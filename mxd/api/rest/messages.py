"""/api/messages: listing, search, one parsed message, its stored bytes and its attachments."""
from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, download_headers, page_params
from mxd.api.schemas import PAGED, TAG_MESSAGES, TEXT, page_of, ref
from mxd.errors import MxdError
from mxd.service import mail


def _quarantined(request: Request) -> bool:
    """Whether the request asks for quarantined mail too (include=quarantined)."""
    return mail.includes_quarantined(request.query_params.get("include"))


@endpoint("GET", "/api/messages", "listMessages", "Messages, newest first", TAG_MESSAGES, "read",
          query=PAGED + ("mailbox", "thread_id", "include"), response=page_of("MessageSummary"))
async def messages_list(request: Request, principal: Principal) -> Response:
    limit, cursor = page_params(request)
    q = request.query_params
    return JSONResponse(await mail.message_page(ctx(request), principal, mailbox=q.get("mailbox"),
                                                thread_id=q.get("thread_id"), limit=limit, cursor=cursor,
                                                include_quarantined=_quarantined(request)))


@endpoint("GET", "/api/messages/search", "searchMessages", "Full-text search", TAG_MESSAGES, "search",
          query=PAGED + ("q", "mailbox", "include"), response=page_of("MessageSummary"))
async def messages_search(request: Request, principal: Principal) -> Response:
    limit, cursor = page_params(request)
    q = request.query_params.get("q", "")
    if not q.strip():
        raise MxdError("bad_request", "q must not be empty", fix="GET /api/messages/search?q=invoice")
    return JSONResponse(await mail.search_page(ctx(request), principal, q, mailbox=request.query_params.get("mailbox"),
                                               limit=limit, cursor=cursor, include_quarantined=_quarantined(request)))


@endpoint("GET", "/api/messages/{id}", "getMessage", "A parsed message, with its trust signals (a quarantined one: "
          "404 unless include=quarantined)", TAG_MESSAGES, "read", query=("include",), response=ref("Message"))
async def message_get(request: Request, principal: Principal) -> Response:
    return JSONResponse(await mail.message_detail(ctx(request), principal, request.path_params["id"],
                                                  include_quarantined=_quarantined(request)))


@endpoint("GET", "/api/messages/{id}/raw", "getMessageRaw", "The stored bytes (RFC 5322)", TAG_MESSAGES, "read",
          query=("include",), response=TEXT, media="message/rfc822")
async def message_raw(request: Request, principal: Principal) -> Response:
    data = await mail.raw(ctx(request), principal, request.path_params["id"], _quarantined(request))
    return Response(data, media_type="message/rfc822", headers=download_headers(f"{request.path_params['id']}.eml"))


@endpoint("GET", "/api/messages/{id}/attachments/{att}", "getAttachment", "One attachment's content", TAG_MESSAGES,
          "read", query=("include",), response=TEXT, media="*/*")
async def message_attachment(request: Request, principal: Principal) -> Response:
    found = await mail.attachment(ctx(request), principal, request.path_params["id"], request.path_params["att"],
                                  _quarantined(request))
    content = await asyncio.to_thread(found.content)
    # Bytes from outside senders: never rendered by a browser on this origin, whatever they claim to be
    # (their declared type is in the message's attachment list).
    return Response(content, media_type="application/octet-stream",
                    headers=download_headers(found.row.filename or f"attachment-{found.row.part_index}"))
