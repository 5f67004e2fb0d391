"""The /v1/... dialect (loftbox-api.txt) and its /api/v1/... alias: thin translations of HTTP onto mxd.service.

Owner sign-up and verification, agents, an organisation's domains, agent mailboxes, sending (the one send
path, mxd.service.send), inbox polling and /health. An organisation's key sees its own objects only; the
operator's admin token sees all. Their operations are described in mxd.api.openapi (LEGACY).
"""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mxd import webhook_sender
from mxd.api.http import MAIL_BODY, authenticate, client_ip, ctx, json_body, note_audit, page, page_params, \
    principal_of
from mxd.errors import MxdError
from mxd.service import admin, directory, mail, orgs, send, webhooks
from mxd.store.models import Domain, Mailbox
from mxd.timefmt import iso

INBOX_DEFAULT, INBOX_MOST = 20, 100
MAX_ACK = 1000
METADATA_KEYS, METADATA_KEY_LEN, METADATA_VALUE_LEN = 20, 40, 500


class ApiV1Alias:
    """Serves /api/v1/... as /v1/...: the prefix-stripping proxy path of loftbox-api.txt, for every /v1 route
    (and the documents it names, /api/openapi.json, /api/llms.txt, /api/install.sh; /api/health is /api's own)."""

    PREFIX = "/api/v1/"
    DOCUMENTS = frozenset({"/api/openapi.json", "/api/llms.txt", "/api/install.sh"})

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and (scope["path"].startswith(self.PREFIX)
                                                        or scope["path"] in self.DOCUMENTS):
            scope = dict(scope, path=scope["path"][4:])
            raw = scope.get("raw_path")
            if raw is not None and raw.startswith(b"/api/"):
                scope["raw_path"] = raw[4:]
        await self.app(scope, receive, send)


# ---------------------------------------------------------------- shapes
def domain_dict(d: Domain) -> dict:
    state = "verified" if d.ready else "pending"
    owned = d.org_id is None or d.owner_verified_at is not None       # mail for it is routed here
    inbound = state if d.org_id is None else ("verified" if owned else "pending")
    return {"id": d.id, "domain": d.name, "organization_id": d.org_id, "status": state,
            "inbound_status": inbound, "outbound_status": state, "ready_source": d.ready_source,
            "ownership_verified": owned,
            "created_at": iso(d.created_at), "verified_at": iso(d.ready_at) if d.ready else None}


def mailbox_dict(box: Mailbox, cfg_retention: int) -> dict:
    local, domain = box.address.split("@", 1)
    return {"id": box.id, "address": box.address, "local_part": local, "domain": domain, "domain_id": box.domain_id,
            "agent_id": box.agent_id, "organization_id": box.org_id, "display_name": box.display_name,
            "retention_days": box.retention_days if box.retention_days is not None else cfg_retention,
            "created_at": iso(box.created_at)}


# ---------------------------------------------------------------- system
async def health(request: Request) -> Response:
    return JSONResponse(await admin.health(ctx(request)))


# ---------------------------------------------------------------- sign-up
async def signup(request: Request) -> Response:
    operator = False
    if request.headers.get("authorization"):
        operator = (await principal_of(request)).is_operator
    body = await json_body(request) if ctx(request).cfg.signup_enabled or operator else {}
    out, created = await orgs.signup(ctx(request), body.get("email"), body.get("organization_name"), body.get("slug"),
                                     client_ip=client_ip(request), operator=operator)
    return JSONResponse(out, status_code=201 if created else 200)


async def signup_verify(request: Request) -> Response:
    body = await json_body(request)
    return JSONResponse(await orgs.verify_signup(ctx(request), body.get("email"), body.get("verification_token")),
                        status_code=201)


async def organization_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    return JSONResponse(await orgs.organization(ctx(request), principal))


# ---------------------------------------------------------------- agents
async def agents_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    limit, cursor = page_params(request)
    items, fetched, last = await orgs.agent_page(ctx(request), principal, request.query_params.get("external_id"),
                                                 limit, cursor)
    return JSONResponse(page(items, limit, fetched, last))


async def agents_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    agent, created = await orgs.create_agent(ctx(request), principal, body.get("organization_id"), body)
    return JSONResponse(agent, status_code=201 if created else 200)


async def agent_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    return JSONResponse(await orgs.agent(ctx(request), principal, request.path_params["agent_id"]))


# ---------------------------------------------------------------- agent mailboxes
async def agent_mailboxes_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    c = ctx(request)
    want = orgs.AgentMailbox(body.get("local_part"), body.get("display_name") or "", body.get("retention_days"),
                             body.get("domain_id"))
    box, created = await orgs.create_agent_mailbox(c, principal, request.path_params["agent_id"], want)
    note_audit(request, mailbox=box.address)
    return JSONResponse(mailbox_dict(box, c.cfg.default_retention_days), status_code=201 if created else 200)


async def agent_mailboxes_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    rows = await orgs.agent_mailboxes(c, principal, request.path_params["agent_id"])
    return JSONResponse({"data": [mailbox_dict(b, c.cfg.default_retention_days) for b in rows]})


async def mailboxes_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    rows = await directory.mailboxes(c, principal, by_id=True)
    return JSONResponse({"data": [mailbox_dict(b, c.cfg.default_retention_days) for b in rows]})


async def mailbox_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    box = await directory.mailbox_by_id(c, principal, request.path_params["mailbox_id"])
    return JSONResponse(mailbox_dict(box, c.cfg.default_retention_days))


# ---------------------------------------------------------------- domains
async def domains_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    name = body.get("domain") or body.get("name")
    if not isinstance(name, str):
        raise MxdError("bad_request", "body must hold {\"domain\": \"mail.example.com\"}")
    c = ctx(request)
    domain, created = await directory.create_domain(c, principal, name, body.get("organization_id"),
                                                    only_same_org=True)
    out = domain_dict(domain)
    out["dns_records"] = directory.dns_plan(c, domain)["records"]
    return JSONResponse(out, status_code=201 if created else 200)


async def domains_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    return JSONResponse({"data": [domain_dict(d) for d in await directory.domains(ctx(request), principal)]})


async def domain_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    return JSONResponse(domain_dict(await directory.domain_by_id(ctx(request), principal,
                                                                 request.path_params["domain_id"])))


async def domain_dns(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    domain = await directory.domain_by_id(c, principal, request.path_params["domain_id"])
    return JSONResponse(dict(directory.dns_plan(c, domain), domain_id=domain.id))


async def domain_verify(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    c = ctx(request)
    domain = await directory.domain_by_id(c, principal, request.path_params["domain_id"])
    domain, result, newly = await directory.verify(c, domain)
    note_audit(request, dns_ok=result.ok, ready=domain.ready)
    out = dict(domain_dict(domain), **result.to_json(), verified_now=newly)
    inbound = (directory.mx_found(result) or domain.ready) and out["ownership_verified"]     # an unproven domain gets no mail
    out.update(domain=domain.name, inbound_status="verified" if inbound else "pending")
    return JSONResponse(out)


# ---------------------------------------------------------------- messages
def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if (not isinstance(value, dict) or len(value) > METADATA_KEYS
            or not all(isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= METADATA_KEY_LEN
                       and len(v) <= METADATA_VALUE_LEN for k, v in value.items())):
        raise MxdError("bad_request", f"metadata must be an object of at most {METADATA_KEYS} strings "
                                      f"(keys up to {METADATA_KEY_LEN}, values up to {METADATA_VALUE_LEN} characters)")
    return value


async def messages_send(request: Request) -> Response:
    principal = await authenticate(request, "send")
    body = await json_body(request, MAIL_BODY)
    metadata = _metadata(body.get("metadata"))
    c = ctx(request)
    letter = send.Letter(None, to=body.get("to"), cc=body.get("cc"), bcc=body.get("bcc"),
                         reply_to=body.get("reply_to"), subject=body.get("subject"),
                         attachments=body.get("attachments"), headers=body.get("headers"),
                         text=body.get("body_text", body.get("text")), html=body.get("body_html", body.get("html")),
                         from_name=body.get("from_name"))
    box, letter = await send.mailbox_letter(c, principal, body.get("mailbox_id"), body.get("in_reply_to"), letter)
    draft = send.compose_draft(letter)
    note_audit(request, mailbox=box.address, metadata=metadata)
    result = await send.send(c, principal, draft, idempotency_key=request.headers.get("idempotency-key"),
                             idempotency_body=body, remote_ip=client_ip(request), source="api")
    replay = bool(result.pop("idempotent_replay", False))
    out = {"id": result["id"], "object": "message", "mailbox_id": box.id, "from": box.address,
           "thread_id": result.get("thread_id"), "message_id": result.get("message_id"),
           "status": result.get("status"), "hold_reason": result.get("hold_reason"),
           "recipients": result.get("recipients", []), "metadata": metadata, "idempotent_replay": replay}
    return JSONResponse(out, status_code=200 if replay else 201)


async def message_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    view = await mail.message_view(ctx(request), principal, request.path_params["message_id"])
    out = dict(view.detail, mailbox_id=view.mailbox_id, acknowledged=view.acknowledged)
    if "delivery" in out:                       # after the two above, as the answer always had it
        out["delivery"] = out.pop("delivery")
    return JSONResponse(out)


# ---------------------------------------------------------------- inbox polling
async def inbox_poll(request: Request) -> Response:
    principal = await authenticate(request, "read")
    limit, _ = page_params(request, INBOX_DEFAULT, INBOX_MOST)
    out = await mail.inbox(ctx(request), principal, request.path_params["mailbox_id"], limit, by_id=True,
                           shape=mail.full_detail)
    data = [dict(m, mailbox_id=out["mailbox_id"]) for m in out["data"]]
    return JSONResponse({"mailbox_id": out["mailbox_id"], "data": data, "count": len(data),
                         "has_more": out["has_more"]})


async def inbox_ack(request: Request) -> Response:
    principal = await authenticate(request, "read")
    body = await json_body(request)
    ids = body.get("message_ids")
    if (not isinstance(ids, list) or not ids or len(ids) > MAX_ACK
            or not all(isinstance(i, str) and 0 < len(i) <= 100 for i in ids)):
        raise MxdError("bad_request", f"message_ids must be a list of 1 to {MAX_ACK} message ids",
                       fix='{"message_ids": ["msg_..."]}')
    out = await mail.acknowledge(ctx(request), principal, request.path_params["mailbox_id"], ids, by_id=True)
    note_audit(request, acknowledged=len(out["acknowledged"]))
    return JSONResponse({"mailbox_id": out["mailbox_id"], "acknowledged": out["acknowledged"],
                         "not_found": out["not_found"]})


# ---------------------------------------------------------------- webhooks
async def agent_webhook_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    agent_id = request.path_params["agent_id"]
    await webhooks.check_agent(ctx(request), principal, agent_id)
    body = await json_body(request)
    view = await webhooks.create(ctx(request), principal, body.get("url"), body.get("event_types"),
                                 body.get("mailbox"), agent_id, check_url=webhook_sender.check_url)
    if view["mailbox"]:
        note_audit(request, mailbox=view["mailbox"])
    note_audit(request, webhook_id=view["id"])
    return JSONResponse(view, status_code=201)


async def agent_webhook_list(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    limit, cursor = page_params(request)
    return JSONResponse(await webhooks.hooks_page(ctx(request), principal, limit, cursor,
                                                  request.path_params["agent_id"]))


async def webhook_get(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    return JSONResponse(await webhooks.get(ctx(request), principal, request.path_params["id"]))


async def webhook_delete(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    await webhooks.delete(ctx(request), principal, request.path_params["id"])
    return Response(status_code=204)


async def webhook_attempts(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    limit, cursor = page_params(request)
    return JSONResponse(await webhooks.attempts_page(ctx(request), principal, request.path_params["id"], limit, cursor))


def routes() -> list[Route]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/v1/auth/signup", signup, methods=["POST"]),
        Route("/v1/auth/signup/verify", signup_verify, methods=["POST"]),
        Route("/v1/organization", organization_get, methods=["GET"]),
        Route("/v1/agents", agents_list, methods=["GET"]),
        Route("/v1/agents", agents_create, methods=["POST"]),
        Route("/v1/agents/{agent_id}", agent_get, methods=["GET"]),
        Route("/v1/agents/{agent_id}/mailboxes", agent_mailboxes_list, methods=["GET"]),
        Route("/v1/agents/{agent_id}/mailboxes", agent_mailboxes_create, methods=["POST"]),
        Route("/v1/domains", domains_list, methods=["GET"]),
        Route("/v1/domains", domains_create, methods=["POST"]),
        Route("/v1/domains/{domain_id}", domain_get, methods=["GET"]),
        Route("/v1/domains/{domain_id}/dns", domain_dns, methods=["GET"]),
        Route("/v1/domains/{domain_id}/verify", domain_verify, methods=["POST"]),
        Route("/v1/mailboxes", mailboxes_list, methods=["GET"]),
        Route("/v1/mailboxes/{mailbox_id}", mailbox_get, methods=["GET"]),
        Route("/v1/mailboxes/{mailbox_id}/inbox", inbox_poll, methods=["GET"]),
        Route("/v1/mailboxes/{mailbox_id}/inbox/ack", inbox_ack, methods=["POST"]),
        Route("/v1/messages", messages_send, methods=["POST"]),
        Route("/v1/messages/{message_id}", message_get, methods=["GET"]),
        Route("/v1/agents/{agent_id}/webhooks", agent_webhook_create, methods=["POST"]),
        Route("/v1/agents/{agent_id}/webhooks", agent_webhook_list, methods=["GET"]),
        Route("/v1/webhooks/{id}", webhook_get, methods=["GET"]),
        Route("/v1/webhooks/{id}", webhook_delete, methods=["DELETE"]),
        Route("/v1/webhooks/{id}/attempts", webhook_attempts, methods=["GET"]),
    ]
