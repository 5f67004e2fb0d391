"""/api/queue and /api/suppressions: the operator's outbound queue and suppression lists."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, json_body, page_params
from mxd.api.schemas import NSTR, PAGED, STR, TAG_QUEUE, obj, page_of, ref
from mxd.errors import MxdError
from mxd.service import admin


@endpoint("GET", "/api/queue", "listQueue", "The outbound queue", TAG_QUEUE, "admin", operator=True,
          query=PAGED + ("status",), response=page_of("QueueEntry"))
async def queue_list(request: Request, principal: Principal) -> Response:
    limit, cursor = page_params(request)
    return JSONResponse(await admin.queue_page(ctx(request), request.query_params.get("status"), limit, cursor))


@endpoint("GET", "/api/queue/{id}", "getQueueEntry", "A queue entry", TAG_QUEUE, "admin", operator=True,
          response=ref("QueueEntry"))
async def queue_get(request: Request, principal: Principal) -> Response:
    return JSONResponse(await admin.queue_get(ctx(request), request.path_params["id"]))


async def _act(request: Request, action: str) -> Response:
    return JSONResponse(await admin.queue_action(ctx(request), action, request.path_params["id"]))


@endpoint("POST", "/api/queue/{id}/retry", "retryQueueEntry", "Retry a queue entry now", TAG_QUEUE, "admin",
          operator=True, response=ref("QueueEntry"))
async def queue_retry(request: Request, principal: Principal) -> Response:
    return await _act(request, "retry")


@endpoint("POST", "/api/queue/{id}/hold", "holdQueueEntry", "Hold a queue entry", TAG_QUEUE, "admin", operator=True,
          response=ref("QueueEntry"))
async def queue_hold(request: Request, principal: Principal) -> Response:
    return await _act(request, "hold")


@endpoint("POST", "/api/queue/{id}/release", "releaseQueueEntry", "Release a held queue entry", TAG_QUEUE, "admin",
          operator=True, response=ref("QueueEntry"))
async def queue_release(request: Request, principal: Principal) -> Response:
    return await _act(request, "release")


@endpoint("DELETE", "/api/queue/{id}", "dropQueueEntry", "Drop a queue entry", TAG_QUEUE, "admin", operator=True,
          status=204)
async def queue_delete(request: Request, principal: Principal) -> Response:
    await admin.queue_drop(ctx(request), request.path_params["id"])
    return Response(status_code=204)


@endpoint("GET", "/api/suppressions", "listSuppressions", "The suppression lists (each organisation's, the operator's)",
          TAG_QUEUE, "admin", operator=True, query=(*PAGED, "organization_id"), response=page_of("Suppression"))
async def suppressions_list(request: Request, principal: Principal) -> Response:
    limit, cursor = page_params(request)
    return JSONResponse(await admin.suppressions_page(ctx(request), request.query_params.get("organization_id"),
                                                      limit, cursor))


@endpoint("POST", "/api/suppressions", "addSuppression", "Suppress an address for one organisation (or the "
          "operator's own mailboxes)", TAG_QUEUE, "admin", operator=True,
          body=obj(["address"], address=STR, organization_id=NSTR, reason=STR, detail=STR),
          example={"address": "bounced@example.org"}, status=201, response=ref("Suppression"))
async def suppressions_add(request: Request, principal: Principal) -> Response:
    """Suppress an address for one organisation (organization_id), or for the operator's own mailboxes."""
    body = await json_body(request)
    if not isinstance(body.get("address"), str):
        raise MxdError("bad_request", "body must hold {\"address\": ...}")
    out = await admin.suppress(ctx(request), body["address"], str(body.get("reason") or "operator"),
                               str(body.get("detail") or ""), body.get("organization_id"))
    return JSONResponse(out, status_code=201)


@endpoint("DELETE", "/api/suppressions/{address}", "deleteSuppression", "Remove an address from the suppression "
          "lists (every organisation's, or organization_id's)", TAG_QUEUE, "admin", operator=True,
          query=("organization_id",), status=204)
async def suppression_delete(request: Request, principal: Principal) -> Response:
    """Lift a suppression for every organisation, or with ?organization_id= for that one only."""
    await admin.unsuppress(ctx(request), request.path_params["address"], request.query_params.get("organization_id"))
    return Response(status_code=204)
