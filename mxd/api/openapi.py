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

import mxd
from mxd.store import tokens
from mxd.api import pages
from mxd.store.webhook_rows import EVENT_TYPES

PUBLIC: str | None = None       # no token needed
ANY = "any"                     # any valid token, whatever its scopes
ALIAS_PREFIX = "/api/v1"        # /api/v1/... serves the same operations as /v1/...
ERRORS = (400, 401, 403, 404, 409, 413, 422, 429)
_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content", 400: "Bad request",
                401: "Missing or invalid bearer token", 403: "Refused: the token lacks the scope or the right",
                404: "Not found, or not visible to this token", 405: "Method not allowed", 406: "Not acceptable",
                409: "Conflict", 413: "Payload too large", 422: "Not possible in the current state",
                429: "Rate limited (see Retry-After)",
                503: "Unavailable: outbound mail is disabled, or the service is starting or stopping"}


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
    "from": dict(oneOf=[STR, obj(["address"], address=STR)],
                 description="a mailbox of this server the token may send as"),
    "from_name": STR, "to": ADDRESSES, "cc": ADDRESSES, "bcc": ADDRESSES, "reply_to": ADDRESSES, "subject": STR,
    "text": STR, "html": STR, "headers": {"type": "object", "additionalProperties": STR},
    "attachments": arr(obj(["filename", "content_base64"], filename=STR,
                           content_base64=dict(STR, description="base64 (also accepted as `content`)"),
                           content_type=STR, content_id=STR, inline=BOOL)),
}

_OWNED = dict(BOOL, description="mail for the domain is routed here: the operator's, or an organisation's whose "
                                "ownership record (TXT _mxd-verify.<domain>) was found")
_DOMAIN_FIELDS = dict(id=STR, name=STR, org_id=NSTR, ready=BOOL, ready_source=dict(NSTR, description="operator | dns"),
                      ownership_verified=_OWNED, created_at=NTIME)
_V1_DOMAIN_FIELDS = dict(id=STR, domain=STR, organization_id=NSTR, status={"enum": ["verified", "pending"]},
                         inbound_status=STR, outbound_status=STR, ready_source=NSTR, ownership_verified=_OWNED,
                         created_at=NTIME, verified_at=NTIME)
_CHECK_FIELDS = dict(domain=STR, dns_ok=BOOL, records=arr(ref("DnsCheck")))

SCHEMAS: dict[str, dict] = {
    "Error": obj(["error"], error=obj(
        ["code", "message", "fix", "hard_stop"], code=dict(STR, description="stable machine-readable code"),
        message=STR, fix=dict(STR, description="what to do about it"),
        hard_stop=dict(BOOL, description="true when retrying the same request cannot succeed"),
        retry_after=dict(INT, description="seconds to wait (429)"))),
    "Address": obj(["address"], name=NSTR, address=STR),
    "Health": obj(["status"], status={"const": "ok"}, hostname=STR),
    "Domain": obj(["id", "name", "ready"], **_DOMAIN_FIELDS),
    "DnsRecord": obj(["name", "type", "value"], name=STR, type=STR, value=STR, purpose=STR),
    "PlannedRecord": {"allOf": [ref("DnsRecord"), obj(kind=STR, required=BOOL, return_path=BOOL, zone_line=STR)]},
    "DnsCheck": {"allOf": [ref("PlannedRecord"), obj(
        ["status"], expected=NSTR, status={"enum": ["found", "missing", "wrong", "error"]}, found=arr(STR),
        error=STR)]},
    "DnsPlan": obj(["domain", "records"], domain=STR, records=arr(ref("PlannedRecord")), return_path=ANYOBJ,
                   mta_sts=ANYOBJ),
    "DomainStatus": obj(["id", "name", "ready", "dns_ok", "records"], **dict(_DOMAIN_FIELDS, **_CHECK_FIELDS),
                        verified_now=dict(BOOL, description="verify: true when this call made the domain ready")),
    "Mailbox": obj(["id", "address", "domain"], id=STR, address=STR, domain=STR, display_name=NSTR,
                   retention_days=null(INT), effective_retention_days=INT, org_id=NSTR, agent_id=NSTR,
                   created_at=NTIME),
    "Retention": obj(["mailbox", "effective_retention_days"], mailbox=STR, mailbox_id=STR,
                     retention_days=null(INT), effective_retention_days=INT, default_retention_days=INT,
                     source={"enum": ["mailbox", "default"]}),
    "RetentionReport": obj(["messages"], messages=INT, attachments=INT, threads=INT, raw_bytes=INT,
                           inbound_rows=INT, search_entries=INT, audit_rows=INT, mailboxes=ANYOBJ,
                           ran_at=TIME),
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
    "Suppression": obj(["address", "reason"], address=STR, organization_id=NSTR, reason=STR, detail=NSTR,
                       created_at=NTIME),
    "AuditEntry": obj(["id", "at", "actor", "action", "result"], id=STR, at=TIME, actor=STR, org_id=NSTR,
                      action=STR, target=NSTR, mailbox=NSTR, result=STR, detail=ANYOBJ),
    "SendRequest": obj(["from", "to"], **_SEND_PROPS),
    "ReplyRequest": dict(obj(**_SEND_PROPS, reply_all=dict(BOOL, description="also copy the other recipients")),
                         description="Every field is optional: to, subject and the sender come from the parent."),
    "DraftRequest": obj(["from"], **_SEND_PROPS),
    "Bootstrap": obj(["server", "principal", "domains", "mailboxes", "next_steps"], server=ANYOBJ,
                     principal=obj(["token_id", "scopes"], token_id=STR, name=STR, scopes=arr(STR),
                                   mailboxes=null(arr(STR)), org_id=NSTR, operator=BOOL),
                     organization=null(ANYOBJ), domains=arr(ref("Domain")), mailboxes=arr(ref("Mailbox")),
                     ports=ANYOBJ, endpoints=ANYOBJ, next_steps=arr(STR)),
    "InboundAccepted": obj(["inbound_id", "status", "recipients"], inbound_id=STR, status={"const": "accepted"},
                           recipients=arr(STR), refused=arr(obj(["address", "code"], address=STR, code=STR)),
                           message_ids=dict(arr(STR), description="with \"wait\": the stored messages"),
                           ses_message_id=NSTR, duplicate=dict(BOOL, description=(
                               "SES: this SES message was stored already (an SNS retry); inbound_id is the first one"))),
    "Webhook": obj(["id", "url", "event_types", "enabled"], id=STR, url=STR, event_types=arr(STR), org_id=NSTR,
                   agent_id=NSTR, mailbox_id=NSTR, mailbox=NSTR, enabled=BOOL, disabled_reason=NSTR,
                   previous_secret_expires_at=NTIME, created_at=NTIME),
    "WebhookCreated": {"allOf": [ref("Webhook"), obj(["secret"], secret=dict(
        STR, description="whsec_...: the signing secret (Standard Webhooks), shown once"))]},
    "WebhookAttempt": obj(["id", "event_id", "status"], id=STR, delivery_id=STR, event_id=STR, event_type=STR,
                          at=NTIME, status=dict(null(INT), description="HTTP status; null when no answer"),
                          error=NSTR, duration_ms=INT),
    "WebhookRequest": obj(["url", "event_types"], url=dict(STR, pattern="^https?://", description="https:// endpoint"),
                          event_types=arr({"enum": list(EVENT_TYPES)}, minItems=1), mailbox=NSTR, agent_id=NSTR),
    "Organization": obj(["id", "name", "slug"], id=STR, name=STR, slug=STR, owner_email=STR, verified=BOOL,
                        verified_at=NTIME, daily_send_cap=null(INT), created_at=NTIME),
    "Limits": obj(daily_send_cap=null(INT), retention_days=INT, max_recipients_per_send=INT),
    "OrganizationView": obj(["organization", "operator"], organization=null(ref("Organization")), operator=BOOL,
                            limits=ref("Limits")),
    "Signup": obj(["organization", "status"], organization=ref("Organization"), status=STR,
                  verification=obj(sent_to=STR, expires_in=INT, max_attempts=INT, message_id=NSTR), next=STR),
    "SignupVerified": obj(["organization", "api_key", "api_key_id", "scopes"], organization=ref("Organization"),
                          api_key=dict(STR, description="the organisation's first key, shown once"),
                          api_key_id=STR, scopes=arr(STR), limits=ref("Limits"), welcome_notice=ANYOBJ),
    "Agent": obj(["id", "name", "slug"], id=STR, organization_id=NSTR, name=STR, slug=STR, external_id=NSTR,
                 description=NSTR, purpose=NSTR, owner_label=NSTR, policy_scope=NSTR, created_at=NTIME),
    "AgentRequest": obj(["name"], name=STR, slug=STR, external_id=STR, description=STR, purpose=STR,
                        owner_label=STR, policy_scope=STR, organization_id=dict(STR, description="operator only")),
    "V1Domain": obj(["id", "domain", "status"], **_V1_DOMAIN_FIELDS),
    "V1DomainCreated": obj(["id", "domain", "status"], **_V1_DOMAIN_FIELDS, dns_records=arr(ref("PlannedRecord"))),
    "V1DomainVerified": obj(["id", "domain", "status", "dns_ok", "records"], **dict(_V1_DOMAIN_FIELDS, **_CHECK_FIELDS),
                            verified_now=BOOL),
    "V1DnsPlan": {"allOf": [ref("DnsPlan"), obj(["domain_id"], domain_id=STR)]},
    "V1Mailbox": obj(["id", "address", "domain"], id=STR, address=STR, local_part=STR, domain=STR, domain_id=NSTR,
                     agent_id=NSTR, organization_id=NSTR, display_name=NSTR, retention_days=null(INT),
                     created_at=NTIME),
    "V1Message": {"allOf": [ref("Message"), obj(["mailbox_id"], mailbox_id=STR, acknowledged=BOOL)]},
    "V1SendRequest": obj(
        ["mailbox_id", "to"], mailbox_id=STR, to=ADDRESSES, cc=ADDRESSES, bcc=ADDRESSES, reply_to=ADDRESSES,
        subject=STR, body_text=STR, body_html=STR, text=STR, html=STR, from_name=STR,
        attachments=_SEND_PROPS["attachments"], headers=_SEND_PROPS["headers"],
        in_reply_to=dict(STR, description="id of a message of this mailbox to reply to"),
        metadata={"type": "object", "additionalProperties": dict(STR, maxLength=500), "maxProperties": 20}),
    "V1SendResult": obj(["id", "object", "mailbox_id", "status"], id=STR, object={"const": "message"},
                        mailbox_id=STR, **{"from": STR}, thread_id=NSTR, message_id=NSTR,
                        status={"enum": ["queued", "held"]}, hold_reason=NSTR,
                        recipients=arr(ref("SendRecipient")), metadata=ANYOBJ, idempotent_replay=BOOL),
    "Inbox": obj(["mailbox_id", "data", "count", "has_more"], mailbox_id=STR, data=arr(ref("V1Message")),
                 count=INT, has_more=BOOL),
    "InboxAck": obj(["mailbox_id", "acknowledged", "not_found"], mailbox_id=STR, acknowledged=arr(STR),
                    not_found=arr(STR)),
}


# ---------------------------------------------------------------- parameters
PATH_PARAMS: dict[str, dict] = {
    "domain": dict(STR, description="domain name"),
    "mailbox": dict(STR, description="mailbox address or id"),
    "alias": dict(STR, description="alias address"),
    "address": dict(STR, description="an address"),
    "id": dict(STR, description="object id"),
    "att": dict(STR, description="attachment id"),
    "agent_id": dict(STR, description="agent id (agt_...)"),
    "domain_id": dict(STR, description="domain id (dom_...)"),
    "mailbox_id": dict(STR, description="mailbox id (mbx_...)"),
    "message_id": dict(STR, description="message id (msg_...)"),
}


def _limit(most: int, default: int) -> dict:
    return {"schema": {"type": "integer", "minimum": 1, "maximum": most, "default": default},
            "description": "page size"}


QUERY_PARAMS: dict[str, dict] = {
    "limit": _limit(500, 50),
    "audit_limit": dict(_limit(1000, 100), name="limit"),
    "inbox_limit": dict(_limit(100, 20), name="limit"),
    "cursor": {"schema": STR, "description": "next_cursor of the previous page"},
    "mailbox": {"schema": STR, "description": "only this mailbox (address or id)"},
    "thread_id": {"schema": STR, "description": "only this thread"},
    "q": {"schema": dict(STR, minLength=1, pattern=r"\S"), "required": True,
          "description": "words, \"phrases\", prefix*, from:, to:, subject:"},
    "status": {"schema": STR, "description": "only entries in this state (queued, deferred, held, ...)"},
    "external_id": {"schema": STR, "description": "only the agent with this external id"},
    "actor": {"schema": STR, "description": "token id, \"system\" or \"anonymous\""},
    "action": {"schema": STR, "description": "exact, or a prefix ending in *"},
    "result": {"schema": STR, "description": "ok, denied, or an error code"},
    "since": {"schema": STR, "description": "ISO 8601 or epoch seconds"},
    "until": {"schema": STR, "description": "ISO 8601 or epoch seconds"},
    "organization_id": {"schema": STR, "description": "only this organisation's (empty: the operator's own)"},
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
    operator: bool = False              # only the server operator's admin token (not an organisation's)
    query: tuple[str, ...] = ()
    body: dict | None = None            # JSON request body schema
    example: dict | None = None         # a valid request body
    body_optional: bool = False         # an empty body means {}
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
_TEXT = {"type": "string"}
_ADMIN = "Tokens, audit, retention"
_ROUTING = "Mailboxes and routing"
_MSGS = "Messages and threads"
_SENDING = "Drafts and sending"
_QUEUE = "Queue and suppressions"

OPS: tuple[Op, ...] = (
    # system and documents
    Op("GET", "/api/health", "health", "Liveness and the server's hostname", "System", PUBLIC,
       response=ref("Health"), errors=()),
    Op("GET", "/health", "healthV1", "Liveness and the server's hostname", "System", PUBLIC,
       response=ref("Health"), errors=()),
    Op("GET", "/openapi.json", "openapi", "This OpenAPI document", "System", PUBLIC, response=ANYOBJ, errors=()),
    Op("GET", "/llms.txt", "llmsTxt", "A plain-text guide to this API for language models", "System", PUBLIC,
       response=_TEXT, media="text/plain", errors=()),
    Op("GET", "/install.sh", "installSh", "Installer of the agent mail skills (sh)", "System", PUBLIC,
       response=_TEXT, media="text/x-shellscript", errors=()),
    Op("GET", "/api/bootstrap", "bootstrap", "Server, caller, domains, mailboxes, ports and next steps in one answer",
       "System", ANY, response=ref("Bootstrap"), errors=(401,)),
    Op("GET", "/mcp", "mcpStream", "No server-sent event stream: the MCP endpoint is stateless (405)", "MCP", ANY,
       status=405, response=ref("Error"), errors=(401, 503)),
    Op("POST", "/mcp", "mcp", "MCP over streamable HTTP (JSON-RPC 2.0); tools check the same scopes as the API",
       "MCP", ANY, body=ANYOBJ, example={"jsonrpc": "2.0", "id": 1, "method": "ping"}, response=ANYOBJ,
       errors=(400, 401, 406, 503)),
    # domains
    Op("GET", "/api/domains", "listDomains", "Domains of this organisation (all, for the operator)", "Domains", "read",
       response=list_of("Domain")),
    Op("POST", "/api/domains", "createDomain", "Serve a domain (creates its DKIM keys)", "Domains", "admin",
       body=obj(["domain"], domain=STR, name=dict(STR, description="alias of domain"),
                org_id=dict(STR, description="operator only: the organisation it belongs to")),
       example={"domain": "example.net"}, status=201, response=ref("Domain"), also=((200, ref("Domain")),)),
    Op("GET", "/api/domains/{domain}", "getDomain", "One domain", "Domains", "read", response=ref("Domain")),
    Op("DELETE", "/api/domains/{domain}", "deleteDomain", "Stop serving a domain", "Domains", "admin", status=204),
    Op("PUT", "/api/domains/{domain}/readiness", "setDomainReadiness",
       "Mark a domain ready (or not) for outbound mail, overriding DNS", "Domains", "admin", operator=True,
       body=obj(["ready"], ready=BOOL), example={"ready": True}, response=ref("Domain")),
    Op("GET", "/api/domains/{domain}/dns-plan", "domainDnsPlan", "The DNS records to publish", "Domains", "read",
       response=ref("DnsPlan")),
    Op("GET", "/api/domains/{domain}/status", "domainStatus", "The DNS records as found now", "Domains", "read",
       response=ref("DomainStatus")),
    Op("POST", "/api/domains/{domain}/verify", "verifyDomain", "Check DNS and mark the domain ready when it holds",
       "Domains", "admin", response=ref("DomainStatus")),
    # mailboxes and routing
    Op("GET", "/api/mailboxes", "listMailboxes", "Mailboxes this token sees", _ROUTING, "read",
       response=list_of("Mailbox")),
    Op("POST", "/api/mailboxes", "createMailbox", "Create a mailbox", _ROUTING, "admin",
       body=obj(["address"], address=STR, display_name=STR, retention_days=null({"type": "integer", "minimum": 1}),
                org_id=dict(STR, description="operator only"), agent_id=STR),
       example={"address": "new@example.test"}, status=201, response=ref("Mailbox"), also=((200, ref("Mailbox")),)),
    Op("GET", "/api/mailboxes/{mailbox}", "getMailbox", "One mailbox", _ROUTING, "read", response=ref("Mailbox")),
    Op("DELETE", "/api/mailboxes/{mailbox}", "deleteMailbox", "Delete a mailbox and its mail", _ROUTING, "admin",
       status=204),
    Op("GET", "/api/mailboxes/{mailbox}/retention", "getRetention", "How long a mailbox keeps messages", _ROUTING,
       "read", response=ref("Retention")),
    Op("PUT", "/api/mailboxes/{mailbox}/retention", "setRetention",
       "Set a mailbox's retention in days (0 or null: the server default)", _ROUTING, "admin",
       body=obj(["retention_days"], retention_days=null({"type": "integer", "minimum": 0, "maximum": 36500})),
       example={"retention_days": 30}, response=ref("Retention")),
    Op("GET", "/api/aliases", "listAliases", "Aliases", _ROUTING, "admin", response=list_of("Alias")),
    Op("POST", "/api/aliases", "createAlias", "Create an alias delivering to mailboxes", _ROUTING, "admin",
       body=obj(["address", "targets"], address=STR, targets=ADDRESSES,
                target=dict(STR, description="one target (instead of targets)")),
       example={"address": "team@example.test", "targets": ["agent@example.test"]}, status=201,
       response=ref("Alias")),
    Op("DELETE", "/api/aliases/{alias}", "deleteAlias", "Delete an alias", _ROUTING, "admin", status=204),
    Op("GET", "/api/catchalls/{domain}", "getCatchall", "A domain's catch-all mailbox", _ROUTING, "admin",
       response=ref("Catchall")),
    Op("PUT", "/api/catchalls/{domain}", "setCatchall", "Set (or clear, with null) a domain's catch-all", _ROUTING,
       "admin", body=obj(target=NSTR, mailbox=dict(STR, description="alias of target")),
       example={"target": "agent@example.test"}, body_optional=True, response=ref("Catchall")),
    # messages and threads
    Op("GET", "/api/messages", "listMessages", "Messages, newest first", _MSGS, "read",
       query=PAGED + ("mailbox", "thread_id"), response=page_of("MessageSummary")),
    Op("GET", "/api/messages/search", "searchMessages", "Full-text search", _MSGS, "search",
       query=PAGED + ("q", "mailbox"), response=page_of("MessageSummary")),
    Op("GET", "/api/messages/{id}", "getMessage", "A parsed message", _MSGS, "read", response=ref("Message")),
    Op("GET", "/api/messages/{id}/raw", "getMessageRaw", "The stored bytes (RFC 5322)", _MSGS, "read",
       response=_TEXT, media="message/rfc822"),
    Op("GET", "/api/messages/{id}/attachments/{att}", "getAttachment", "One attachment's content", _MSGS, "read",
       response=_TEXT, media="*/*"),
    Op("GET", "/api/threads", "listThreads", "Threads, latest activity first", _MSGS, "read",
       query=PAGED + ("mailbox",), response=page_of("Thread")),
    Op("GET", "/api/threads/{id}", "getThread", "A thread with its messages", _MSGS, "read",
       response=ref("ThreadDetail")),
    Op("POST", "/api/messages/{id}/reply", "replyToMessage", "Reply to a message (threading headers set by mxd)",
       _MSGS, "send", body=ref("ReplyRequest"), example={"text": "Thanks, noted."}, body_optional=True, **_SEND),
    Op("POST", "/api/threads/{id}/reply", "replyToThread", "Reply to the newest message of a thread", _MSGS, "send",
       body=ref("ReplyRequest"), example={"text": "Thanks, noted."}, body_optional=True, **_SEND),
    Op("POST", "/api/threads/{id}/drafts", "createThreadDraft", "Save a reply draft in a thread", _SENDING, "draft",
       body=ref("ReplyRequest"), example={"text": "A reply to review."}, body_optional=True, status=201,
       response=ref("Draft")),
    # drafts and sending
    Op("GET", "/api/drafts", "listDrafts", "Drafts, newest first", _SENDING, "draft", query=PAGED + ("mailbox",),
       response=page_of("Draft")),
    Op("POST", "/api/drafts", "createDraft", "Save a draft", _SENDING, "draft", body=ref("DraftRequest"),
       example=_SEND_EXAMPLE, status=201, response=ref("Draft")),
    Op("GET", "/api/drafts/{id}", "getDraft", "One draft", _SENDING, "draft", response=ref("Draft")),
    Op("POST", "/api/drafts/{id}/send", "sendDraft", "Send a draft", _SENDING, "send", **_SEND),
    Op("POST", "/api/send", "send", "Send a message (the one preflight: scope, sender, domain, caps, suppression)",
       _SENDING, "send", body=ref("SendRequest"), example=_SEND_EXAMPLE, **_SEND),
    # queue and suppressions
    Op("GET", "/api/queue", "listQueue", "The outbound queue", _QUEUE, "admin", operator=True,
       query=PAGED + ("status",), response=page_of("QueueEntry")),
    Op("POST", "/api/queue/{id}/retry", "retryQueueEntry", "Retry a queue entry now", _QUEUE, "admin", operator=True,
       response=ref("QueueEntry")),
    Op("POST", "/api/queue/{id}/hold", "holdQueueEntry", "Hold a queue entry", _QUEUE, "admin", operator=True,
       response=ref("QueueEntry")),
    Op("POST", "/api/queue/{id}/release", "releaseQueueEntry", "Release a held queue entry", _QUEUE, "admin",
       operator=True, response=ref("QueueEntry")),
    Op("DELETE", "/api/queue/{id}", "dropQueueEntry", "Drop a queue entry", _QUEUE, "admin", operator=True,
       status=204),
    Op("GET", "/api/suppressions", "listSuppressions", "The suppression lists (each organisation's, the operator's)",
       _QUEUE, "admin", operator=True, query=(*PAGED, "organization_id"), response=page_of("Suppression")),
    Op("POST", "/api/suppressions", "addSuppression", "Suppress an address for one organisation (or the operator's "
       "own mailboxes)", _QUEUE, "admin", operator=True,
       body=obj(["address"], address=STR, organization_id=NSTR, reason=STR, detail=STR),
       example={"address": "bounced@example.org"}, status=201, response=ref("Suppression")),
    Op("DELETE", "/api/suppressions/{address}", "deleteSuppression", "Remove an address from the suppression lists "
       "(every organisation's, or organization_id's)", _QUEUE, "admin", operator=True,
       query=("organization_id",), status=204),
    # tokens, audit, retention
    Op("GET", "/api/tokens", "listTokens", "Live tokens of this organisation (all, for the operator)", _ADMIN,
       "admin", response=list_of("Token")),
    Op("POST", "/api/tokens", "createToken", "Create a scoped token (the secret is shown once)", _ADMIN, "admin",
       body=obj(["name", "scopes"], name=dict(STR, minLength=1, maxLength=200),
                scopes=arr({"enum": list(tokens.SCOPES)}, minItems=1), mailboxes=null(arr(STR)),
                org_id=dict(STR, description="operator only: a token of that organisation")),
       example={"name": "agent", "scopes": ["read", "send"], "mailboxes": ["agent@example.test"]}, status=201,
       response=ref("TokenCreated")),
    Op("DELETE", "/api/tokens/{id}", "revokeToken", "Revoke a token", _ADMIN, "admin", status=204),
    Op("GET", "/api/audit", "listAudit", "Audit rows, newest first", _ADMIN, "audit",
       query=("audit_limit", "cursor", "actor", "mailbox", "action", "since", "until", "result"),
       response=page_of("AuditEntry")),
    Op("POST", "/api/retention/run", "runRetention", "Apply retention now (every mailbox administered, or one)",
       _ADMIN, "admin", body=obj(mailbox=STR), example={"mailbox": "agent@example.test"}, body_optional=True,
       response=ref("RetentionReport")),
    # inbound
    Op("POST", "/api/inbound/simulate", "simulateInbound", "Inject a message as if it came from the MX", "Inbound",
       "admin", body=obj(to=ADDRESSES, mailbox=ADDRESSES, **{"from": STR}, mail_from=STR, subject=STR, text=STR,
                         html=STR, raw=dict(STR, description="a whole message, base64 or text"),
                         wait=dict(BOOL, description="answer once the message is stored")),
       example={"to": ["agent@example.test"], "from": "someone@example.org", "subject": "Hi", "text": "Hello"},
       status=202, response=ref("InboundAccepted")),
    Op("POST", "/api/inbound/ses", "sesInbound",
       "An Amazon SNS notification of an SES receipt (Bearer, or Basic with the token as password)", "Inbound",
       "admin", body=obj(["Type"], Type={"enum": ["Notification", "SubscriptionConfirmation",
                                                  "UnsubscribeConfirmation"]},
                         Message=dict(STR, description="the SES notification as JSON text"), SubscribeURL=STR),
       example={"Type": "SubscriptionConfirmation", "SubscribeURL": "https://sns.example/confirm"}, status=202,
       response=ref("InboundAccepted"), also=((200, obj(["status"], status=STR, type=STR, subscribe_url=NSTR,
                                                        message=STR)),)),
    # webhooks (/api)
    Op("GET", "/api/webhooks", "listWebhooks", "Webhooks", "Webhooks", "admin", query=PAGED,
       response=page_of("Webhook")),
    Op("POST", "/api/webhooks", "createWebhook", "Create a webhook (the secret is shown once)", "Webhooks", "admin",
       body=ref("WebhookRequest"),
       example={"url": "https://hooks.example.org/mxd", "event_types": ["message.inbound"]}, status=201,
       response=ref("WebhookCreated")),
    Op("GET", "/api/webhooks/{id}", "getWebhook", "One webhook", "Webhooks", "admin", response=ref("Webhook")),
    Op("DELETE", "/api/webhooks/{id}", "deleteWebhook", "Delete a webhook", "Webhooks", "admin", status=204),
    Op("POST", "/api/webhooks/{id}/rotate", "rotateWebhookSecret",
       "New signing secret (the previous one still signs for 24 h)", "Webhooks", "admin",
       response=ref("WebhookCreated")),
    Op("POST", "/api/webhooks/{id}/enable", "enableWebhook", "Re-enable a disabled webhook", "Webhooks", "admin",
       response=ref("Webhook")),
    Op("GET", "/api/webhooks/{id}/attempts", "listWebhookAttempts", "Delivery attempts, newest first", "Webhooks",
       "admin", query=PAGED, response=page_of("WebhookAttempt")),
    # LoftBox /v1
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
    Op("GET", "/v1/mailboxes", "listMailboxesV1", "Mailboxes", _ROUTING, "read", response=list_of("V1Mailbox")),
    Op("GET", "/v1/mailboxes/{mailbox_id}", "getMailboxV1", "One mailbox", _ROUTING, "read",
       response=ref("V1Mailbox")),
    Op("GET", "/v1/mailboxes/{mailbox_id}/inbox", "pollInbox", "Unacknowledged inbound messages, oldest first",
       "Inbox", "read", query=("inbox_limit",), response=ref("Inbox")),
    Op("POST", "/v1/mailboxes/{mailbox_id}/inbox/ack", "ackInbox", "Acknowledge processed messages", "Inbox", "read",
       body=obj(["message_ids"], message_ids=arr(dict(STR, minLength=1, maxLength=100), minItems=1, maxItems=1000)),
       example={"message_ids": ["msg_0000000000000000000000"]}, response=ref("InboxAck")),
    Op("POST", "/v1/messages", "sendV1", "Send from an agent mailbox", _SENDING, "send", body=ref("V1SendRequest"),
       example={"mailbox_id": "mbx_0000000000000000000000", "to": ["recipient@example.org"], "subject": "Hello",
                "body_text": "Thanks for your message."},
       errors=ERRORS + (503,), headers=("Idempotency-Key",), status=201, response=ref("V1SendResult"),
       also=((200, ref("V1SendResult")),)),
    Op("GET", "/v1/messages/{message_id}", "getMessageV1", "A message with its delivery state", _MSGS, "read",
       response=ref("V1Message")),
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


async def serve(request: Request) -> Response:
    return JSONResponse(document(request.app.routes, pages.base_url(request)))   # never the raw Host header
