"""The OpenAPI 3.1 description of the HTTP API, turned into `/openapi.json` at request time from the app's own
routes: the operations declared next to their handlers (mxd.api.endpoint, every /api route), the /v1 and /mcp
operations not yet declared that way (LEGACY below), and the component schemas (mxd.api.schemas).

Each operation names the scope it demands; tests/test_scopes.py walks them against a real daemon, so a route
without a declaration fails the tests.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Host, Mount, Route

import mxd
from mxd.api import endpoint, pages, rest
from mxd.api.endpoint import ANY, PUBLIC, Op
from mxd.api.schemas import (ANYOBJ, ERRORS, INT, PAGED, PATH_PARAMS, QUERY_PARAMS, SCHEMAS, STR,
                             TAG_MESSAGES, TAG_ROUTING, TAG_SENDING, arr, list_of, obj, page_of, ref)

# what tests and tools read here: the operations, and the names they are written with
__all__ = ["ANY", "PUBLIC", "Op", "OPS", "BY_KEY", "LEGACY", "PATH_PARAMS", "QUERY_PARAMS", "SCHEMAS", "routes",
           "document", "serve", "app_routes", "documented_routes"]
ALIAS_PREFIX = "/api/v1"        # /api/v1/... serves the same operations as /v1/...
_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content", 400: "Bad request",
                401: "Missing or invalid bearer token", 403: "Refused: the token lacks the scope or the right",
                404: "Not found, or not visible to this token", 405: "Method not allowed", 406: "Not acceptable",
                409: "Conflict", 413: "Payload too large", 422: "Not possible in the current state",
                429: "Rate limited (see Retry-After)",
                503: "Unavailable: outbound mail is disabled, or the service is starting or stopping"}


@endpoint.endpoint("GET", "/openapi.json", "openapi", "This OpenAPI document", "System", PUBLIC, response=ANYOBJ,
                   errors=())
async def serve(request: Request, principal: None) -> Response:
    return JSONResponse(document(request.app.routes, pages.base_url(request)))   # never the raw Host header


# Operations of routes not declared with mxd.api.endpoint yet (/v1, /mcp): their entries stay here until
# their modules declare them.
LEGACY: tuple[Op, ...] = (
    Op("GET", "/health", "healthV1", "Liveness and the server's hostname", "System", PUBLIC,
       response=ref("Health"), errors=()),
    Op("GET", "/mcp", "mcpStream", "No server-sent event stream: the MCP endpoint is stateless (405)", "MCP", ANY,
       status=405, response=ref("Error"), errors=(401, 503)),
    Op("POST", "/mcp", "mcp", "MCP over streamable HTTP (JSON-RPC 2.0); tools check the same scopes as the API",
       "MCP", ANY, body=ANYOBJ, example={"jsonrpc": "2.0", "id": 1, "method": "ping"}, response=ANYOBJ,
       also=((202, None),),            # a notification or a response from the client: accepted, no body
       errors=(400, 401, 406, 503)),
    Op("POST", "/v1/auth/signup", "signup", "Create an organisation; the owner gets a 6-digit code by email",
       "Organisations", PUBLIC,
       body=obj(["email", "organization_name"], email=dict(STR, format="email"),
                organization_name=dict(STR, minLength=1, maxLength=200),
                slug=dict(STR, pattern=r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$",
                          description="default: made from organization_name")),
       example={"email": "owner@example.org", "organization_name": "Example Agents", "slug": "example-agents"},
       status=201, response=ref("Signup"), also=((200, ref("Signup")),), errors=(400, 401, 403, 409, 413, 422, 429)),
    Op("POST", "/v1/auth/signup/verify", "signupVerify", "Verify the owner's code; the first API key, shown once",
       "Organisations", PUBLIC, body=obj(["email", "verification_token"], email=dict(STR, format="email"),
                                          verification_token=dict(STR, description="the 6-digit code")),
       example={"email": "owner@example.org", "verification_token": "123456"}, status=201,
       response=ref("SignupVerified"), errors=(400, 403, 404, 409, 413, 422, 429)),
    Op("GET", "/v1/organization", "getOrganization", "The caller's organisation and limits", "Organisations", "read",
       response=ref("OrganizationView")),
    Op("GET", "/v1/agents", "listAgents", "Agents", "Agents", "read", query=PAGED + ("external_id",),
       response=page_of("Agent")),
    Op("POST", "/v1/agents", "createAgent", "Create an agent (idempotent on external_id)", "Agents", "admin",
       body=ref("AgentRequest"),
       example={"name": "Support Agent", "slug": "support-agent", "external_id": "hermes:support-agent"},
       status=201, response=ref("Agent"), also=((200, ref("Agent")),)),
    Op("GET", "/v1/agents/{agent_id}", "getAgent", "One agent", "Agents", "read", response=ref("Agent")),
    Op("GET", "/v1/agents/{agent_id}/mailboxes", "listAgentMailboxes", "An agent's mailboxes", "Agents", "read",
       response=list_of("V1Mailbox")),
    Op("POST", "/v1/agents/{agent_id}/mailboxes", "createAgentMailbox",
       "Create an agent's mailbox (on the default domain unless domain_id)", "Agents", "admin",
       body=obj(["local_part"], local_part=STR, display_name=STR, domain_id=STR,
                retention_days={"type": "integer", "minimum": 1, "maximum": 3650}),
       example={"local_part": "support-agent", "display_name": "Support Agent", "retention_days": 7}, status=201,
       response=ref("V1Mailbox"), also=((200, ref("V1Mailbox")),)),
    Op("GET", "/v1/agents/{agent_id}/webhooks", "listAgentWebhooks", "An agent's webhooks", "Webhooks", "admin",
       query=PAGED, response=page_of("Webhook")),
    Op("POST", "/v1/agents/{agent_id}/webhooks", "createAgentWebhook", "Create an agent's webhook (secret shown once)",
       "Webhooks", "admin", body=ref("WebhookRequest"),
       example={"url": "https://hooks.example.org/loftbox", "event_types": ["message.inbound", "message.delivered"]},
       status=201, response=ref("WebhookCreated")),
    Op("GET", "/v1/webhooks/{id}", "getWebhookV1", "One webhook", "Webhooks", "admin", response=ref("Webhook")),
    Op("DELETE", "/v1/webhooks/{id}", "deleteWebhookV1", "Delete a webhook", "Webhooks", "admin", status=204),
    Op("GET", "/v1/webhooks/{id}/attempts", "listWebhookAttemptsV1", "Delivery attempts, newest first", "Webhooks",
       "admin", query=PAGED, response=page_of("WebhookAttempt")),
    Op("GET", "/v1/domains", "listDomainsV1", "Domains", "Domains", "read", response=list_of("V1Domain")),
    Op("POST", "/v1/domains", "createDomainV1", "Start custom-domain onboarding", "Domains", "admin",
       body=obj(["domain"], domain=STR, name=dict(STR, description="alias of domain"),
                organization_id=dict(STR, description="operator only")),
       example={"domain": "mail.example.org"}, status=201, response=ref("V1DomainCreated"),
       also=((200, ref("V1DomainCreated")),)),
    Op("GET", "/v1/domains/{domain_id}", "getDomainV1", "One domain", "Domains", "read", response=ref("V1Domain")),
    Op("GET", "/v1/domains/{domain_id}/dns", "domainDnsV1", "The DNS records to publish", "Domains", "read",
       response=ref("V1DnsPlan")),
    Op("POST", "/v1/domains/{domain_id}/verify", "verifyDomainV1",
       "Check DNS; the domain becomes verified when it holds", "Domains", "admin", response=ref("V1DomainVerified")),
    Op("GET", "/v1/mailboxes", "listMailboxesV1", "Mailboxes", TAG_ROUTING, "read", response=list_of("V1Mailbox")),
    Op("GET", "/v1/mailboxes/{mailbox_id}", "getMailboxV1", "One mailbox", TAG_ROUTING, "read",
       response=ref("V1Mailbox")),
    Op("GET", "/v1/mailboxes/{mailbox_id}/inbox", "pollInbox", "Unacknowledged inbound messages, oldest first",
       "Inbox", "read", query=("inbox_limit",), response=ref("Inbox")),
    Op("POST", "/v1/mailboxes/{mailbox_id}/inbox/ack", "ackInbox", "Acknowledge processed messages", "Inbox", "read",
       body=obj(["message_ids"], message_ids=arr(dict(STR, minLength=1, maxLength=100), minItems=1, maxItems=1000)),
       example={"message_ids": ["msg_0000000000000000000000"]}, response=ref("InboxAck")),
    Op("POST", "/v1/messages", "sendV1", "Send from an agent mailbox", TAG_SENDING, "send", body=ref("V1SendRequest"),
       example={"mailbox_id": "mbx_0000000000000000000000", "to": ["recipient@example.org"], "subject": "Hello",
                "body_text": "Thanks for your message."},
       errors=ERRORS + (503,), headers=("Idempotency-Key",), status=201, response=ref("V1SendResult"),
       also=((200, ref("V1SendResult")),)),
    Op("GET", "/v1/messages/{message_id}", "getMessageV1", "A message with its delivery state", TAG_MESSAGES, "read",
       response=ref("V1Message")),
)

OPS: tuple[Op, ...] = tuple(endpoint.ops_of(*rest.MODULES)) + (serve.op,) + LEGACY
BY_KEY: dict[tuple[str, str], Op] = {op.key: op for op in OPS}


def routes() -> list[Route]:
    """The route of this document."""
    return [Route(serve.op.path, serve, methods=[serve.op.method])]


# ---------------------------------------------------------------- the app's routes
def _clean(path: str) -> str:
    """Starlette's `{id:int}` convertor syntax to OpenAPI's `{id}`."""
    return re.sub(r"{([^}:]+):[^}]+}", r"{\1}", path)


def app_routes(routes: Iterable[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route, Mounts included; HEAD (implied by GET) left out."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Route):
            for method in route.methods or ("GET",):
                if method != "HEAD":
                    found.add((method, _clean(prefix + route.path)))
        elif isinstance(route, Mount):
            inner = route.routes
            if inner:
                found |= app_routes(inner, prefix + route.path)
            else:                       # an ASGI app mounted whole: whatever the table says it answers
                path = _clean(prefix + route.path) or "/"
                found |= {(op.method, op.path) for op in OPS if op.path == path}
        elif isinstance(route, Host):
            found |= app_routes(route.routes, prefix)
        elif hasattr(route, "path"):    # a WebSocketRoute or another kind: no HTTP methods
            continue
    return found


def documented_routes(routes: Iterable[BaseRoute]) -> set[tuple[str, str]]:
    """The app's routes less the /api/v1/... aliases of /v1/... routes."""
    found = app_routes(routes)
    return {(m, p) for m, p in found
            if not (p.startswith(ALIAS_PREFIX + "/") and (m, p[len("/api"):]) in found)}


# ---------------------------------------------------------------- the document
def _error_response(status: int) -> dict:
    out: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "Error"),
                           "content": {"application/json": {"schema": ref("Error")}}}
    if status in (429, 503):
        out["headers"] = {"Retry-After": {"schema": INT, "description": "seconds to wait"}}
    return out


def _success(status: int, schema: dict | None, media: str) -> dict:
    out: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "Success")}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    return out


def operation(op: Op) -> dict:
    params: list[dict] = [{"name": name, "in": "path", "required": True, "schema": PATH_PARAMS.get(name, STR)}
                          for name in re.findall(r"{([^}]+)}", op.path)]
    for name in op.query:
        spec = QUERY_PARAMS[name]
        params.append({"name": spec.get("name", name), "in": "query", "required": spec.get("required", False),
                       "schema": spec["schema"], "description": spec["description"]})
    for name in op.headers:
        params.append({"name": name, "in": "header", "required": False, "schema": dict(STR, maxLength=200),
                       "description": "replays the answer for the same key and body within 24 h; "
                                      "409 for another body"})
    if op.scope is PUBLIC:
        who = "No token needed."
    elif op.scope == ANY:
        who = "Any valid token."
    else:
        who = f"Scope: `{op.scope}`" + (" (the server operator's admin token)." if op.operator else ".")
    dialect = "LoftBox dialect (/v1)" if op.path.startswith("/v1") else (
        "LiteMX dialect (/api)" if op.path.startswith("/api") else "Documents")
    out: dict[str, Any] = {
        "operationId": op.op_id, "summary": op.summary, "description": who, "tags": [op.tag, dialect],
        "x-mxd-scope": op.scope, "x-mxd-operator": op.operator,
        "security": [] if op.scope is PUBLIC else [{"bearer": []}],
        "responses": {str(op.status): _success(op.status, op.response, op.media)},
    }
    for status, schema in op.also:
        out["responses"][str(status)] = _success(status, schema, "application/json")
    for status in op.errors:
        out["responses"][str(status)] = _error_response(status)
    if params:
        out["parameters"] = params
    if op.body is not None:
        content: dict[str, Any] = {"schema": op.body}
        if op.example is not None:
            content["example"] = op.example
        out["requestBody"] = {"required": not op.body_optional, "content": {"application/json": content}}
    return out


def document(routes: Iterable[BaseRoute], server_url: str) -> dict:
    """The OpenAPI 3.1 document of the operations the app really serves."""
    served = documented_routes(routes)
    paths: dict[str, dict] = {}
    for op in OPS:
        if op.key in served:
            paths.setdefault(op.path, {})[op.method.lower()] = operation(op)
    tags = sorted({op.tag for op in OPS if op.key in served})
    return {
        "openapi": "3.1.0",
        "info": {"title": "mxd", "version": mxd.__version__,
                 "description": "The HTTP API of mxd, a self-hosted mail server. Two dialects share one core: "
                                "the LiteMX-style `/api/...` routes and the LoftBox-style `/v1/...` routes, "
                                "which are also served under `/api/v1/...` (same operations, not listed "
                                "twice; likewise `/api/openapi.json`, `/api/llms.txt` and `/api/install.sh`). "
                                "Authenticate with `Authorization: Bearer <token>`; each operation names the "
                                "scope it needs (`x-mxd-scope`). Scopes: read, search, draft, send, audit, admin; "
                                "read never implies send. Errors are `{\"error\": {\"code\", \"message\", "
                                "\"fix\", \"hard_stop\"}}`. Lists take `limit` and `cursor` and return "
                                "`next_cursor`. /mcp speaks MCP (streamable HTTP), not the JSON shapes here."},
        "servers": [{"url": server_url}],
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "an mxd token (mxd_...)"}}},
    }
