"""The OpenAPI 3.1 description of the HTTP API: one table of operations (scope, parameters, bodies,
responses) and the component schemas, turned into `/openapi.json` at request time from the app's own routes.

The table is the single place that says which scope each route demands; tests/test_scopes.py walks it
against a real daemon, so a route without an entry here fails the tests.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Host, Mount, Route

from mxd import tokens

PUBLIC: str | None = None       # no token needed
ANY = "any"                     # any valid token, whatever its scopes
ALIAS_PREFIX = "/api/v1"        # /api/v1/... serves the same operations as /v1/...
ERRORS = (400, 401, 403, 404, 409, 413, 422, 429)
_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content", 400: "Bad request",
                401: "Missing or invalid bearer token", 403: "The token lacks the scope or the right",
                404: "Not found, or not visible to this token", 409: "Conflict", 413: "Payload too large",
                422: "Not possible in the current state", 429: "Rate limited (see Retry-After)",
                503: "Outbound mail is disabled on this server"}


# ---------------------------------------------------------------- schema helpers
def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def null(schema: dict) -> dict:
    """schema or null (OpenAPI 3.1 is JSON Schema 2020-12: no `nullable`)."""
    if "type" in schema and "$ref" not in schema and len(schema) <= 3:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return dict(schema, type=kinds + ["null"])
    return {"anyOf": [schema, {"type": "null"}]}


def obj(required: Iterable[str] = (), **props: dict) -> dict:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


def arr(items: dict, **kw: Any) -> dict:
    return {"type": "array", "items": items, **kw}


STR = {"type": "string"}
NSTR = {"type": ["string", "null"]}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
NTIME = {"type": ["string", "null"], "format": "date-time"}
ANYOBJ = {"type": "object"}
ADDRESSES = {"oneOf": [STR, arr(STR)], "description": "an address or a list of addresses"}


def page_of(name: str) -> dict:
    """The list wrapper of paged routes: `limit` + `cursor` -> `next_cursor` (null on the last page)."""
    return obj(["data", "next_cursor"], data=arr(ref(name)), next_cursor=NSTR)


def list_of(name: str) -> dict:
    return obj(["data"], data=arr(ref(name)))


_SEND_PROPS: dict[str, dict] = {
    "from": dict(oneOf=[STR, obj(["address"], address=STR)], description="a mailbox of this server the token may send as"),
    "from_name": STR, "to": ADDRESSES, "cc": ADDRESSES, "bcc": ADDRESSES, "reply_to": ADDRESSES, "subject": STR,
    "text": STR, "html": STR, "headers": {"type": "object", "additionalProperties": STR},
    "attachments": arr(obj(["filename", "content_base64"], filename=STR,
                           content_base64=dict(STR, description="base64 (also accepted as `content`)"),
                           content_type=STR, content_id=STR, inline=BOOL)),
}

SCHEMAS: dict[str, dict] = {
    "Error": obj(["error"], error=obj(
        ["code", "message", "fix", "hard_stop"], code=dict(STR, description="stable machine-readable code"),
        message=STR, fix=dict(STR, description="what to do about it"),
        hard_stop=dict(BOOL, description="true when retrying the same request cannot succeed"),
        retry_after=dict(INT, description="seconds to wait (429)"))),
    "Address": obj(["address"], name=NSTR, address=STR),
    "Health": obj(["status"], status={"const": "ok"}, hostname=STR),
    "Domain": obj(["id", "name", "ready"], id=STR, name=STR, ready=BOOL,
                  ready_source=dict(NSTR, description="operator | dns"), created_at=NTIME),
    "DnsRecord": obj(["name", "type", "value"], name=STR, type=STR, value=STR, purpose=STR),
    "DnsCheck": {"allOf": [ref("DnsRecord"), obj(["status"], status={"enum": ["found", "missing", "wrong", "error"]},
                                                 found=arr(STR))]},
    "DnsPlan": obj(["domain", "records"], domain=STR, records=arr(ref("DnsRecord"))),
    "DomainStatus": {"allOf": [ref("Domain"), obj(["dns_ok", "records"], dns_ok=BOOL, records=arr(ref("DnsCheck")))]},
    "Mailbox": obj(["id", "address", "domain"], id=STR, address=STR, domain=STR, display_name=NSTR,
                   retention_days=null(INT), created_at=NTIME),
    "Alias": obj(["address", "targets"], address=STR, targets=arr(STR)),
    "Catchall": obj(["domain", "target"], domain=STR, target=NSTR),
    "MessageSummary": obj(
        ["id", "thread_id", "mailbox", "direction"], id=STR, thread_id=NSTR, mailbox=STR,
        direction={"enum": ["in", "out"]}, message_id=NSTR, subject=NSTR, **{"from": null(ref("Address"))},
        to=arr(ref("Address")), cc=arr(ref("Address")), date=NTIME, received_at=NTIME, snippet=STR, size=INT,
        plus_tag=NSTR, has_parse_errors=BOOL),
    "AttachmentInfo": obj(["id", "content_type", "size", "url"], id=STR, filename=NSTR, content_type=STR, size=INT,
                          content_id=NSTR, disposition=NSTR, url=STR),
    "DeliveryState": obj(["recipient", "status"], recipient=STR, status=STR, attempts=INT, last_reply=NSTR,
                         last_host=NSTR, queue_id=STR),
    "Message": {"allOf": [ref("MessageSummary"), obj(
        ["text", "attachments"], in_reply_to=arr(STR), references=arr(STR), reply_to=arr(ref("Address")),
        envelope=obj(mail_from=NSTR, rcpt_to=NSTR), text=NSTR, html=NSTR, attachments=arr(ref("AttachmentInfo")),
        authentication_results=NSTR, auth=null(ANYOBJ), parse_errors=arr({}),
        delivery=dict(arr(ref("DeliveryState")), description="outgoing messages: each recipient's state"))]},
    "Thread": obj(["id", "mailbox", "message_count"], id=STR, mailbox=STR, subject=NSTR, message_count=INT,
                  first_at=NTIME, last_at=NTIME),
    "ThreadDetail": {"allOf": [ref("Thread"), obj(["messages"], messages=arr({"allOf": [
        ref("MessageSummary"), obj(text=NSTR)]}))]},
    "Token": obj(["id", "name", "scopes"], id=STR, name=STR, hint=STR, scopes=arr({"enum": list(tokens.SCOPES)}),
                 mailboxes=null(arr(STR)), org_id=NSTR, created_at=NUM, last_used_at=null(NUM)),
    "TokenCreated": {"allOf": [ref("Token"), obj(["token"], token=dict(STR, description="the secret, shown once"))]},
    "SendRecipient": obj(["address", "status"], address=STR, status=STR, queue_id=NSTR),
    "SendResult": obj(["id", "status", "recipients"], id=STR, thread_id=NSTR, message_id=NSTR,
                      status={"enum": ["queued", "held"]}, hold_reason=NSTR, recipients=arr(ref("SendRecipient")),
                      idempotent_replay=dict(BOOL, description="true when an Idempotency-Key replayed the answer")),
    "Draft": dict(obj(["id", "mailbox"], id=STR, mailbox=STR, thread_id=NSTR, created_at=NTIME, updated_at=NTIME,
                      sent_message_id=NSTR),
                  description="The saved send request (from, to, subject, text, ...) with these fields."),
    "QueueEntry": obj(["id", "message_id", "recipient", "status"], id=STR, message_id=STR, recipient=STR, domain=STR,
                      status=STR, attempts=INT, created_at=NTIME, next_attempt_at=NTIME, last_attempt_at=NTIME,
                      expires_at=NTIME, last_reply=NSTR, last_host=NSTR, hold_reason=NSTR),
    "Suppression": obj(["address", "reason"], address=STR, reason=STR, detail=NSTR, created_at=NTIME),
    "AuditEntry": obj(["id", "at", "actor", "action", "result"], id=STR, at=TIME, actor=STR, org_id=NSTR,
                      action=STR, target=NSTR, mailbox=NSTR, result=STR, detail=ANYOBJ),
    "SendRequest": obj(["from", "to"], **_SEND_PROPS),
    "ReplyRequest": dict(obj(**_SEND_PROPS, reply_all=dict(BOOL, description="also copy the other recipients")),
                         description="Every field is optional: to, subject and the sender come from the parent."),
    "DraftRequest": obj(["from"], **_SEND_PROPS),
}


# ---------------------------------------------------------------- parameters
PATH_PARAMS: dict[str, dict] = {
    "domain": dict(STR, description="domain name"),
    "mailbox": dict(STR, description="mailbox address or id"),
    "alias": dict(STR, description="alias address"),
    "address": dict(STR, description="an address"),
    "id": dict(STR, description="object id"),
    "att": dict(STR, description="attachment id"),
}

QUERY_PARAMS: dict[str, dict] = {
    "limit": {"schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
              "description": "page size"},
    "cursor": {"schema": STR, "description": "next_cursor of the previous page"},
    "mailbox": {"schema": STR, "description": "only this mailbox (address or id)"},
    "thread_id": {"schema": STR, "description": "only this thread"},
    "q": {"schema": dict(STR, minLength=1), "required": True,
          "description": "words, \"phrases\", prefix*, from:, to:, subject:"},
    "status": {"schema": STR, "description": "only entries in this state (queued, deferred, held, ...)"},
}
PAGED = ("limit", "cursor")


# ---------------------------------------------------------------- the table
@dataclass(frozen=True)
class Op:
    """One operation: what it is, the scope it demands, and what goes in and comes out."""
    method: str
    path: str
    op_id: str
    summary: str
    tag: str
    scope: str | None                   # PUBLIC, ANY or one of tokens.SCOPES
    operator: bool = False              # only the server operator's admin token
    query: tuple[str, ...] = ()
    body: dict | None = None            # JSON request body schema
    example: dict | None = None         # a valid request body
    status: int = 200
    response: dict | None = None        # success body schema; None: no content
    media: str = "application/json"
    also: tuple[tuple[int, dict], ...] = ()   # further success statuses and their schemas
    errors: tuple[int, ...] = ERRORS
    headers: tuple[str, ...] = ()       # request headers: "Idempotency-Key"

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path


_SEND = dict(errors=ERRORS + (503,), headers=("Idempotency-Key",), status=202, response=ref("SendResult"),
             also=((200, ref("SendResult")),))
_SEND_EXAMPLE = {"from": "agent@example.test", "to": ["someone@example.org"], "subject": "Hello",
                 "text": "Hello from mxd."}

OPS: tuple[Op, ...] = (
    # system
    Op("GET", "/api/health", "health", "Liveness and the server's hostname", "System", PUBLIC,
       response=ref("Health"), errors=()),
    Op("GET", "/openapi.json", "openapi", "This OpenAPI document", "System", PUBLIC, response=ANYOBJ, errors=()),
    # domains
    Op("GET", "/api/domains", "listDomains", "Domains served here", "Domains", "read", response=list_of("Domain")),
    Op("POST", "/api/domains", "createDomain", "Serve a domain (creates its DKIM keys)", "Domains", "admin",
       operator=True, body=obj(["domain"], domain=STR, name=dict(STR, description="alias of domain")),
       example={"domain": "example.org"}, status=201, response=ref("Domain"), also=((200, ref("Domain")),)),
    Op("GET", "/api/domains/{domain}", "getDomain", "One domain", "Domains", "read", response=ref("Domain")),
    Op("DELETE", "/api/domains/{domain}", "deleteDomain", "Stop serving a domain", "Domains", "admin",
       operator=True, status=204),
    Op("PUT", "/api/domains/{domain}/readiness", "setDomainReadiness", "Mark a domain ready (or not) for outbound mail",
       "Domains", "admin", operator=True, body=obj(["ready"], ready=BOOL), example={"ready": True},
       response=ref("Domain")),
    Op("GET", "/api/domains/{domain}/dns-plan", "domainDnsPlan", "The DNS records to publish", "Domains", "read",
       response=ref("DnsPlan")),
    Op("GET", "/api/domains/{domain}/status", "domainStatus", "The DNS records as found now", "Domains", "read",
       response=ref("DomainStatus")),
    Op("POST", "/api/domains/{domain}/verify", "verifyDomain", "Check DNS and mark the domain ready when it holds",
       "Domains", "admin", operator=True, response=ref("DomainStatus")),
    # mailboxes and routing
    Op("GET", "/api/mailboxes", "listMailboxes", "Mailboxes this token sees", "Mailboxes and routing", "read",
       response=list_of("Mailbox")),
    Op("POST", "/api/mailboxes", "createMailbox", "Create a mailbox", "Mailboxes and routing", "admin", operator=True,
       body=obj(["address"], address=STR, display_name=STR, retention_days=null({"type": "integer", "minimum": 1})),
       example={"address": "new@example.test"}, status=201, response=ref("Mailbox"), also=((200, ref("Mailbox")),)),
    Op("GET", "/api/mailboxes/{mailbox}", "getMailbox", "One mailbox", "Mailboxes and routing", "read",
       response=ref("Mailbox")),
    Op("DELETE", "/api/mailboxes/{mailbox}", "deleteMailbox", "Delete a mailbox and its mail",
       "Mailboxes and routing", "admin", operator=True, status=204),
    Op("GET", "/api/aliases", "listAliases", "Aliases", "Mailboxes and routing", "admin", operator=True,
       response=list_of("Alias")),
    Op("POST", "/api/aliases", "createAlias", "Create an alias delivering to mailboxes", "Mailboxes and routing",
       "admin", operator=True, body=obj(["address", "targets"], address=STR, targets=ADDRESSES,
                                        target=dict(STR, description="one target (instead of targets)")),
       example={"address": "team@example.test", "targets": ["agent@example.test"]}, status=201,
       response=ref("Alias")),
    Op("DELETE", "/api/aliases/{alias}", "deleteAlias", "Delete an alias", "Mailboxes and routing", "admin",
       operator=True, status=204),
    Op("GET", "/api/catchalls/{domain}", "getCatchall", "A domain's catch-all mailbox", "Mailboxes and routing",
       "admin", operator=True, response=ref("Catchall")),
    Op("PUT", "/api/catchalls/{domain}", "setCatchall", "Set (or clear, with null) a domain's catch-all",
       "Mailboxes and routing", "admin", operator=True, body=obj(target=NSTR, mailbox=dict(STR, description="alias")),
       example={"target": "agent@example.test"}, response=ref("Catchall")),
    # messages and threads
    Op("GET", "/api/messages", "listMessages", "Messages, newest first", "Messages and threads", "read",
       query=PAGED + ("mailbox", "thread_id"), response=page_of("MessageSummary")),
    Op("GET", "/api/messages/search", "searchMessages", "Full-text search", "Messages and threads", "search",
       query=PAGED + ("q", "mailbox"), response=page_of("MessageSummary")),
    Op("GET", "/api/messages/{id}", "getMessage", "A parsed message", "Messages and threads", "read",
       response=ref("Message")),
    Op("GET", "/api/messages/{id}/raw", "getMessageRaw", "The stored bytes (RFC 5322)", "Messages and threads", "read",
       response={"type": "string"}, media="message/rfc822"),
    Op("GET", "/api/messages/{id}/attachments/{att}", "getAttachment", "One attachment's content",
       "Messages and threads", "read", response={"type": "string"}, media="application/octet-stream"),
    Op("GET", "/api/threads", "listThreads", "Threads, latest activity first", "Messages and threads", "read",
       query=PAGED + ("mailbox",), response=page_of("Thread")),
    Op("GET", "/api/threads/{id}", "getThread", "A thread with its messages", "Messages and threads", "read",
       response=ref("ThreadDetail")),
    Op("POST", "/api/messages/{id}/reply", "replyToMessage", "Reply to a message (threading headers set by mxd)",
       "Messages and threads", "send",
       body=ref("ReplyRequest"),
       example={"text": "Thanks, noted."}, **_SEND),
    Op("POST", "/api/threads/{id}/reply", "replyToThread", "Reply to the newest message of a thread",
       "Messages and threads", "send",
       body=ref("ReplyRequest"),
       example={"text": "Thanks, noted."}, **_SEND),
    Op("POST", "/api/threads/{id}/drafts", "createThreadDraft", "Save a reply draft in a thread",
       "Drafts and sending", "draft", body=ref("ReplyRequest"), example={"text": "A reply to review."}, status=201,
       response=ref("Draft")),
    # drafts and sending
    Op("GET", "/api/drafts", "listDrafts", "Drafts, newest first", "Drafts and sending", "draft",
       query=PAGED + ("mailbox",), response=page_of("Draft")),
    Op("POST", "/api/drafts", "createDraft", "Save a draft", "Drafts and sending", "draft", body=ref("DraftRequest"),
       example=_SEND_EXAMPLE, status=201, response=ref("Draft")),
    Op("GET", "/api/drafts/{id}", "getDraft", "One draft", "Drafts and sending", "draft", response=ref("Draft")),
    Op("POST", "/api/drafts/{id}/send", "sendDraft", "Send a draft", "Drafts and sending", "send", **_SEND),
    Op("POST", "/api/send", "send", "Send a message (the one preflight: scope, sender, domain, caps, suppression)",
       "Drafts and sending", "send", body=ref("SendRequest"), example=_SEND_EXAMPLE, **_SEND),
    # queue and suppressions
    Op("GET", "/api/queue", "listQueue", "The outbound queue", "Queue and suppressions", "admin", operator=True,
       query=PAGED + ("status",), response=page_of("QueueEntry")),
    Op("POST", "/api/queue/{id}/retry", "retryQueueEntry", "Retry a queue entry now", "Queue and suppressions",
       "admin", operator=True, response=ref("QueueEntry")),
    Op("POST", "/api/queue/{id}/hold", "holdQueueEntry", "Hold a queue entry", "Queue and suppressions", "admin",
       operator=True, response=ref("QueueEntry")),
    Op("POST", "/api/queue/{id}/release", "releaseQueueEntry", "Release a held queue entry",
       "Queue and suppressions", "admin", operator=True, response=ref("QueueEntry")),
    Op("DELETE", "/api/queue/{id}", "dropQueueEntry", "Drop a queue entry", "Queue and suppressions", "admin",
       operator=True, status=204),
    Op("GET", "/api/suppressions", "listSuppressions", "The suppression list", "Queue and suppressions", "admin",
       operator=True, query=PAGED, response=page_of("Suppression")),
    Op("POST", "/api/suppressions", "addSuppression", "Suppress an address", "Queue and suppressions", "admin",
       operator=True, body=obj(["address"], address=STR, reason=STR, detail=STR),
       example={"address": "bounced@example.org"}, status=201, response=ref("Suppression")),
    Op("DELETE", "/api/suppressions/{address}", "deleteSuppression", "Remove an address from the suppression list",
       "Queue and suppressions", "admin", operator=True, status=204),
    # tokens
    Op("GET", "/api/tokens", "listTokens", "Live tokens", "Tokens, audit, retention", "admin", operator=True,
       response=list_of("Token")),
    Op("POST", "/api/tokens", "createToken", "Create a scoped token (the secret is shown once)",
       "Tokens, audit, retention", "admin", operator=True,
       body=obj(["name", "scopes"], name=dict(STR, minLength=1, maxLength=200),
                scopes=arr({"enum": list(tokens.SCOPES)}, minItems=1), mailboxes=null(arr(STR))),
       example={"name": "agent", "scopes": ["read", "send"], "mailboxes": ["agent@example.test"]}, status=201,
       response=ref("TokenCreated")),
    Op("DELETE", "/api/tokens/{id}", "revokeToken", "Revoke a token", "Tokens, audit, retention", "admin",
       operator=True, status=204),
)

BY_KEY: dict[tuple[str, str], Op] = {op.key: op for op in OPS}


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
        params.append({"name": name, "in": "query", "required": spec.get("required", False),
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
        if op.scope is PUBLIC and status in (401, 403):
            continue
        out["responses"][str(status)] = _error_response(status)
    if params:
        out["parameters"] = params
    if op.body is not None:
        content: dict[str, Any] = {"schema": op.body}
        if op.example is not None:
            content["example"] = op.example
        out["requestBody"] = {"required": True, "content": {"application/json": content}}
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
        "info": {"title": "mxd", "version": _version(),
                 "description": "The HTTP API of mxd, a self-hosted mail server. Two dialects share one core: "
                                "the LiteMX-style `/api/...` routes and the LoftBox-style `/v1/...` routes, "
                                "which are also served under `/api/v1/...` (same operations, not listed twice). "
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


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("mxd")
    except metadata.PackageNotFoundError:
        return "0"


async def serve(request: Request) -> Response:
    base = str(request.base_url).rstrip("/")
    return JSONResponse(document(request.app.routes, base))
