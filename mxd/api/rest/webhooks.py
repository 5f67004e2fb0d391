"""/api/webhooks: create (secret shown once), list, get, delete, rotate the secret, re-enable, delivery attempts.
The `admin` scope manages webhooks; an organisation's token sees and manages only its organisation's."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, json_body, note_audit, page_params
from mxd.api.schemas import PAGED, page_of, ref
from mxd.service import webhooks

TAG = "Webhooks"


@endpoint("GET", "/api/webhooks", "listWebhooks", "Webhooks", TAG, "admin", query=PAGED, response=page_of("Webhook"))
async def list_all(request: Request, principal: Principal) -> Response:
    limit, cursor = page_params(request)
    return JSONResponse(await webhooks.hooks_page(ctx(request), principal, limit, cursor))


@endpoint("POST", "/api/webhooks", "createWebhook", "Create a webhook (the secret is shown once)", TAG, "admin",
          body=ref("WebhookRequest"),
          example={"url": "https://hooks.example.org/mxd", "event_types": ["message.inbound"]}, status=201,
          response=ref("WebhookCreated"))
async def create(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    view = await webhooks.create(ctx(request), principal, body.get("url"), body.get("event_types"),
                                 body.get("mailbox"), body.get("agent_id"))
    if view["mailbox"]:
        note_audit(request, mailbox=view["mailbox"])
    note_audit(request, webhook_id=view["id"])
    return JSONResponse(view, status_code=201)


@endpoint("GET", "/api/webhooks/{id}", "getWebhook", "One webhook", TAG, "admin", response=ref("Webhook"))
async def get_one(request: Request, principal: Principal) -> Response:
    return JSONResponse(await webhooks.get(ctx(request), principal, request.path_params["id"]))


@endpoint("DELETE", "/api/webhooks/{id}", "deleteWebhook", "Delete a webhook", TAG, "admin", status=204)
async def delete(request: Request, principal: Principal) -> Response:
    await webhooks.delete(ctx(request), principal, request.path_params["id"])
    return Response(status_code=204)


@endpoint("POST", "/api/webhooks/{id}/rotate", "rotateWebhookSecret",
          "New signing secret (the previous one still signs for 24 h)", TAG, "admin", response=ref("WebhookCreated"))
async def rotate(request: Request, principal: Principal) -> Response:
    return JSONResponse(await webhooks.rotate(ctx(request), principal, request.path_params["id"]))


@endpoint("POST", "/api/webhooks/{id}/enable", "enableWebhook", "Re-enable a disabled webhook", TAG, "admin",
          response=ref("Webhook"))
async def enable(request: Request, principal: Principal) -> Response:
    return JSONResponse(await webhooks.enable(ctx(request), principal, request.path_params["id"]))


@endpoint("GET", "/api/webhooks/{id}/attempts", "listWebhookAttempts", "Delivery attempts, newest first", TAG,
          "admin", query=PAGED, response=page_of("WebhookAttempt"))
async def attempts(request: Request, principal: Principal) -> Response:
    limit, cursor = page_params(request)
    return JSONResponse(await webhooks.attempts_page(ctx(request), principal, request.path_params["id"], limit, cursor))
