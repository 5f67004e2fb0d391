"""/api/threads: conversations, latest activity first, and one thread with its messages."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, page_params
from mxd.api.schemas import PAGED, TAG_MESSAGES, page_of, ref
from mxd.service import mail


@endpoint("GET", "/api/threads", "listThreads", "Threads, latest activity first", TAG_MESSAGES, "read",
          query=PAGED + ("mailbox",), response=page_of("Thread"))
async def threads_list(request: Request, principal: Principal) -> Response:
    limit, cursor = page_params(request)
    return JSONResponse(await mail.thread_page(ctx(request), principal, mailbox=request.query_params.get("mailbox"),
                                               limit=limit, cursor=cursor))


@endpoint("GET", "/api/threads/{id}", "getThread", "A thread with its messages", TAG_MESSAGES, "read",
          response=ref("ThreadDetail"))
async def thread_get(request: Request, principal: Principal) -> Response:
    return JSONResponse(await mail.thread_detail(ctx(request), principal, request.path_params["id"]))
