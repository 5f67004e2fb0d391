"""/v1/agents: an organisation's agents (idempotent on external_id) and each agent's mailboxes."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, json_body, note_audit, page, page_params
from mxd.api.schemas import PAGED, STR, list_of, obj, page_of, ref
from mxd.api.v1.shapes import mailbox_dict
from mxd.service import orgs

TAG = "Agents"


@endpoint("GET", "/v1/agents", "listAgents", "Agents", TAG, "read", query=PAGED + ("external_id",),
          response=page_of("Agent"))
async def agents_list(request: Request, principal: Principal) -> Response:
    limit, cursor = page_params(request)
    items, fetched, last = await orgs.agent_page(ctx(request), principal, request.query_params.get("external_id"),
                                                 limit, cursor)
    return JSONResponse(page(items, limit, fetched, last))


@endpoint("POST", "/v1/agents", "createAgent", "Create an agent (idempotent on external_id)", TAG, "admin",
          body=ref("AgentRequest"),
          example={"name": "Support Agent", "slug": "support-agent", "external_id": "hermes:support-agent"},
          status=201, response=ref("Agent"), also=((200, ref("Agent")),))
async def agents_create(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    agent, created = await orgs.create_agent(ctx(request), principal, body.get("organization_id"), body)
    return JSONResponse(agent, status_code=201 if created else 200)


@endpoint("GET", "/v1/agents/{agent_id}", "getAgent", "One agent", TAG, "read", response=ref("Agent"))
async def agent_get(request: Request, principal: Principal) -> Response:
    return JSONResponse(await orgs.agent(ctx(request), principal, request.path_params["agent_id"]))


@endpoint("GET", "/v1/agents/{agent_id}/mailboxes", "listAgentMailboxes", "An agent's mailboxes", TAG, "read",
          response=list_of("V1Mailbox"))
async def agent_mailboxes_list(request: Request, principal: Principal) -> Response:
    c = ctx(request)
    rows = await orgs.agent_mailboxes(c, principal, request.path_params["agent_id"])
    return JSONResponse({"data": [mailbox_dict(b, c.cfg.default_retention_days) for b in rows]})


@endpoint("POST", "/v1/agents/{agent_id}/mailboxes", "createAgentMailbox",
          "Create an agent's mailbox (on the default domain unless domain_id)", TAG, "admin",
          body=obj(["local_part"], local_part=STR, display_name=STR, domain_id=STR,
                   retention_days={"type": "integer", "minimum": 1, "maximum": 3650}),
          example={"local_part": "support-agent", "display_name": "Support Agent", "retention_days": 7}, status=201,
          response=ref("V1Mailbox"), also=((200, ref("V1Mailbox")),))
async def agent_mailboxes_create(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    c = ctx(request)
    want = orgs.AgentMailbox(body.get("local_part"), body.get("display_name") or "", body.get("retention_days"),
                             body.get("domain_id"))
    box, created = await orgs.create_agent_mailbox(c, principal, request.path_params["agent_id"], want)
    note_audit(request, mailbox=box.address)
    return JSONResponse(mailbox_dict(box, c.cfg.default_retention_days), status_code=201 if created else 200)
