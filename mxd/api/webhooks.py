"""Webhook endpoints over the API: create (secret shown once), list, delete, rotate the secret, re-enable,
list delivery attempts; in the /api dialect and the LoftBox /v1 agent dialect. The `admin` scope manages
webhooks; an organisation's token sees and manages only its organisation's."""
from __future__ import annotations


from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mxd.api.http import authenticate, ctx, json_body, note_audit, page_params
from mxd.service import webhooks


async def _create(request: Request, agent_id: str | None = None) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    view = await webhooks.create(ctx(request), principal, body.get("url"), body.get("event_types"), body.get("mailbox"),
                                 body.get("agent_id") if agent_id is None else agent_id)
    if view["mailbox"]:
        note_audit(request, mailbox=view["mailbox"])
    note_audit(request, webhook_id=view["id"])
    return JSONResponse(view, status_code=201)


async def _list(request: Request, agent_id: str | None = None) -> Response:
    principal = await authenticate(request, "admin")
    limit, cursor = page_params(request)
    return JSONResponse(await webhooks.hooks_page(ctx(request), principal, limit, cursor, agent_id))


# ---------------------------------------------------------------- /api
async def create(request: Request) -> Response:
    return await _create(request)


async def list_all(request: Request) -> Response:
    return await _list(request)


async def get_one(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    return JSONResponse(await webhooks.get(ctx(request), principal, request.path_params["id"]))


async def delete(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    await webhooks.delete(ctx(request), principal, request.path_params["id"])
    return Response(status_code=204)


async def rotate(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    return JSONResponse(await webhooks.rotate(ctx(request), principal, request.path_params["id"]))


async def enable(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    return JSONResponse(await webhooks.enable(ctx(request), principal, request.path_params["id"]))


async def attempts(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    limit, cursor = page_params(request)
    return JSONResponse(await webhooks.attempts_page(ctx(request), principal, request.path_params["id"], limit, cursor))


# ---------------------------------------------------------------- /v1 (LoftBox)
async def agent_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    await webhooks.check_agent(ctx(request), principal, request.path_params["agent_id"])
    return await _create(request, request.path_params["agent_id"])


async def agent_list(request: Request) -> Response:
    return await _list(request, request.path_params["agent_id"])


def routes() -> list[BaseRoute]:
    return [
        Route("/api/webhooks", list_all, methods=["GET"]),
        Route("/api/webhooks", create, methods=["POST"]),
        Route("/api/webhooks/{id}", get_one, methods=["GET"]),
        Route("/api/webhooks/{id}", delete, methods=["DELETE"]),
        Route("/api/webhooks/{id}/rotate", rotate, methods=["POST"]),
        Route("/api/webhooks/{id}/enable", enable, methods=["POST"]),
        Route("/api/webhooks/{id}/attempts", attempts, methods=["GET"]),
        Route("/v1/agents/{agent_id}/webhooks", agent_create, methods=["POST"]),
        Route("/v1/agents/{agent_id}/webhooks", agent_list, methods=["GET"]),
        Route("/v1/webhooks/{id}", get_one, methods=["GET"]),
        Route("/v1/webhooks/{id}", delete, methods=["DELETE"]),
        Route("/v1/webhooks/{id}/attempts", attempts, methods=["GET"]),
    ]
