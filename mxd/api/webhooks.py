"""Webhook endpoints over the API: create (secret shown once), list, delete, rotate the secret, re-enable,
list delivery attempts; in the /api dialect and the LoftBox /v1 agent dialect. The `admin` scope manages
webhooks; an organisation's token sees and manages only its organisation's."""
from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mxd import secretbox, webhook_sender
from mxd.api.http import authenticate, ctx, json_body, note_audit, page, page_params
from mxd.errors import MxdError
from mxd.store import webhook_rows as store
from mxd.store.models import Webhook


async def _views(request: Request, hooks: list[Webhook]) -> list[dict]:
    boxes = await ctx(request).db.read(store.mailbox_addresses, [h.mailbox_id for h in hooks])
    return [store.to_dict(h, boxes.get(h.mailbox_id)) for h in hooks]


async def _create(request: Request, agent_id: str | None = None) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    c = ctx(request)
    event_types = store.validate_event_types(body.get("event_types"))
    url = body.get("url")
    await webhook_sender.check_url(url, c.cfg.webhook_allow_private)
    if agent_id is None:
        agent_id = body.get("agent_id")
        if agent_id is not None and not isinstance(agent_id, str):
            raise MxdError("bad_request", "agent_id must be a string")
    hook, secret = await c.db.write(functools.partial(store.create, box=secretbox.for_dir(c.cfg.data_dir)),
                                    principal, url, event_types, body.get("mailbox"), agent_id)
    view = (await _views(request, [hook]))[0]
    if view["mailbox"]:
        note_audit(request, mailbox=view["mailbox"])
    note_audit(request, webhook_id=hook.id)
    return JSONResponse(dict(view, secret=secret), status_code=201)


async def _list(request: Request, agent_id: str | None = None) -> Response:
    principal = await authenticate(request, "admin")
    limit, cursor = page_params(request)
    db = ctx(request).db
    if agent_id is not None:
        await db.read(store.owned_agent, principal, agent_id)
    hooks = await db.read(store.list_hooks, principal, limit, cursor, agent_id)
    return JSONResponse(page(await _views(request, hooks), limit, len(hooks), hooks[-1].id if hooks else None))


# ---------------------------------------------------------------- /api
async def create(request: Request) -> Response:
    return await _create(request)


async def list_all(request: Request) -> Response:
    return await _list(request)


async def get_one(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    hook = await ctx(request).db.read(store.get, principal, request.path_params["id"])
    return JSONResponse((await _views(request, [hook]))[0])


async def delete(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    await ctx(request).db.write(store.delete, principal, request.path_params["id"])
    return Response(status_code=204)


async def rotate(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    c = ctx(request)
    hook, secret = await c.db.write(functools.partial(store.rotate, box=secretbox.for_dir(c.cfg.data_dir)),
                                    principal, request.path_params["id"])
    return JSONResponse(dict((await _views(request, [hook]))[0], secret=secret))


async def enable(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    hook = await ctx(request).db.write(store.enable, principal, request.path_params["id"])
    return JSONResponse((await _views(request, [hook]))[0])


async def attempts(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    limit, cursor = page_params(request)
    rows = await ctx(request).db.read(store.attempts, principal, request.path_params["id"], limit, cursor)
    return JSONResponse(page([store.attempt_dict(r, t) for r, t in rows], limit, len(rows),
                             rows[-1][0].id if rows else None))


# ---------------------------------------------------------------- /v1 (LoftBox)
async def agent_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    await ctx(request).db.read(store.owned_agent, principal, request.path_params["agent_id"])
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
