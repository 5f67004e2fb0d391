"""/v1/agents/{agent_id}/webhooks and /v1/webhooks/{id}: an agent's webhooks (the secret shown once), one webhook,
its deletion and its delivery attempts. The `admin` scope manages webhooks."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, json_body, note_audit, page_params
from mxd.api.schemas import PAGED, page_of, ref
from mxd.service import webhooks

TAG = "Webhooks"


@endpoint("GET", "/v1/agents/{agent_id}/webhooks", "listAgentWebhooks", "An agent's webhooks", TAG, "admin",
          query=PAGED, response=page_of("Webhook"))
async def agent_webhook_list(request: Request, principal: Principal) -> Response:
    limit, cursor = page_params(request)
    return JSONResponse(await webhooks.hooks_page(ctx(request), principal, limit, cursor,
                                                  request.path_params["agent_id"]))


@endpoint("POST", "/v1/agents/{agent_id}/webhooks", "createAgentWebhook", "Create an agent's webhook (secret shown once)",
          TAG, "admin", body=ref("WebhookRequest"),
          example={"url": "https://hooks.example.org/loftbox", "event_types": ["message.inbound", "message.delivered"]},
          status=201, response=ref("WebhookCreated"))
async def agent_webhook_create(request: Request, principal: Principal) -> Response:
    agent_id = request.path_params["agent_id"]
    await webhooks.check_agent(ctx(request), principal, agent_id)
    body = await json_body(request)
    view = await webhooks.create(ctx(request), principal, body.get("url"), body.get("event_types"),
                                 body.get("mailbox"), agent_id)
    if view["mailbox"]:
        note_audit(request, mailbox=view["mailbox"])
    note_audit(request, webhook_id=view["id"])
    return JSONResponse(view, status_code=201)


@endpoint("GET", "/v1/webhooks/{id}", "getWebhookV1", "One webhook", TAG, "admin", response=ref("Webhook"))
async def webhook_get(request: Request, principal: Principal) -> Response:
    return JSONResponse(await webhooks.get(ctx(request), principal, request.path_params["id"]))


@endpoint("DELETE", "/v1/webhooks/{id}", "deleteWebhookV1", "Delete a webhook", TAG, "admin", status=204)
async def webhook_delete(request: Request, principal: Principal) -> Response:
    await webhooks.delete(ctx(request), principal, request.path_params["id"])
    return Response(status_code=204)


@endpoint("GET", "/v1/webhooks/{id}/attempts", "listWebhookAttemptsV1", "Delivery attempts, newest first", TAG,
          "admin", query=PAGED, response=page_of("WebhookAttempt"))
async def webhook_attempts(request: Request, principal: Principal) -> Response:
    limit, cursor = page_params(request)
    return JSONResponse(await webhooks.attempts_page(ctx(request), principal, request.path_params["id"], limit, cursor))
