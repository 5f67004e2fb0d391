"""The /api/... dialect (litemx-api.txt): domains, mailboxes, aliases, catch-alls, messages, threads and
tokens, as thin translations of HTTP onto mxd.service."""
from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mxd.api.http import authenticate, ctx, download_headers, json_body, note_audit, page_params
from mxd.errors import MxdError
from mxd.service import admin, directory, mail


# ---------------------------------------------------------------- system
async def health(request: Request) -> Response:
    return JSONResponse(await admin.health(ctx(request)))


# ---------------------------------------------------------------- domains
async def domains_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    rows = await directory.domains(ctx(request), principal)
    return JSONResponse({"data": [directory.domain_dict(d) for d in rows]})


async def domains_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    name = body.get("domain") or body.get("name")
    if not isinstance(name, str):
        raise MxdError("bad_request", "body must hold {\"domain\": \"example.com\"}")
    domain, created = await directory.create_domain(ctx(request), principal, name, body.get("org_id"))
    return JSONResponse(directory.domain_dict(domain), status_code=201 if created else 200)


async def domain_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    domain = await directory.domain(ctx(request), principal, request.path_params["domain"])
    return JSONResponse(directory.domain_dict(domain))


async def domain_delete(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    await directory.delete_domain(ctx(request), principal, request.path_params["domain"])
    return Response(status_code=204)


async def domain_readiness(request: Request) -> Response:
    """The operator's override; an organisation's domain becomes ready through DNS verification only."""
    await authenticate(request, "admin", operator=True)
    body = await json_body(request)
    if not isinstance(body.get("ready"), bool):
        raise MxdError("bad_request", "body must hold {\"ready\": true|false}")
    note_audit(request, ready=body["ready"], override=True)
    domain = await directory.set_readiness(ctx(request), request.path_params["domain"], body["ready"])
    return JSONResponse(directory.domain_dict(domain))


async def domain_dns_plan(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    domain = await directory.domain(c, principal, request.path_params["domain"])
    return JSONResponse(directory.dns_plan(c, domain))


async def domain_status(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    domain = await directory.domain(c, principal, request.path_params["domain"])
    result = await directory.check(c, domain)
    return JSONResponse(dict(directory.domain_dict(domain), **result.to_json()))


async def domain_verify(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    c = ctx(request)
    domain = await directory.domain(c, principal, request.path_params["domain"])
    domain, result, newly = await directory.verify(c, domain)
    note_audit(request, dns_ok=result.ok, ready=domain.ready)
    return JSONResponse(dict(directory.domain_dict(domain), **result.to_json(), verified_now=newly))


# ---------------------------------------------------------------- mailboxes
async def mailboxes_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    rows = await directory.mailboxes(c, principal)
    return JSONResponse({"data": [directory.mailbox_dict(b, c.cfg) for b in rows]})


def positive_int(value, name: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise MxdError("bad_request", f"{name} must be a positive integer")
    return value


async def mailboxes_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    address = body.get("address")
    if not isinstance(address, str):
        raise MxdError("bad_request", "body must hold {\"address\": \"agent@example.com\"}")
    display = body.get("display_name") or ""
    if not isinstance(display, str):
        raise MxdError("bad_request", "display_name must be a string")
    retention = positive_int(body.get("retention_days"), "retention_days")
    agent_id = body.get("agent_id")
    if agent_id is not None and not isinstance(agent_id, str):
        raise MxdError("bad_request", "agent_id must be a string")
    c = ctx(request)
    box, created = await directory.create_mailbox(c, principal, address, display, retention,
                                                  org=body["org_id"] if "org_id" in body else directory.UNSET,
                                                  agent_id=agent_id)
    note_audit(request, mailbox=box.address)
    return JSONResponse(directory.mailbox_dict(box, c.cfg), status_code=201 if created else 200)


async def mailbox_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    box = await directory.mailbox(c, principal, request.path_params["mailbox"])
    return JSONResponse(directory.mailbox_dict(box, c.cfg))


async def mailbox_delete(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    note_audit(request, mailbox=await directory.delete_mailbox(ctx(request), principal,
                                                               request.path_params["mailbox"]))
    return Response(status_code=204)


# ---------------------------------------------------------------- aliases, catch-alls
async def aliases_list(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    return JSONResponse({"data": await directory.aliases(ctx(request), principal)})


async def aliases_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    address, targets = body.get("address"), body.get("targets", body.get("target"))
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(address, str) or not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise MxdError("bad_request", "body must hold {\"address\": ..., \"targets\": [mailbox addresses]}")
    return JSONResponse(await directory.create_alias(ctx(request), principal, address, targets), status_code=201)


async def alias_delete(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    await directory.delete_alias(ctx(request), principal, request.path_params["alias"])
    return Response(status_code=204)


async def catchall_get(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    return JSONResponse(await directory.catchall(ctx(request), principal, request.path_params["domain"]))


async def catchall_put(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    target = body.get("target", body.get("mailbox"))
    if target is not None and not isinstance(target, str):
        raise MxdError("bad_request", "body must hold {\"target\": \"mailbox@domain\"} or {\"target\": null}")
    return JSONResponse(await directory.set_catchall(ctx(request), principal, request.path_params["domain"], target))


# ---------------------------------------------------------------- messages
async def messages_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    limit, cursor = page_params(request)
    q = request.query_params
    return JSONResponse(await mail.message_page(ctx(request), principal, mailbox=q.get("mailbox"),
                                                thread_id=q.get("thread_id"), limit=limit, cursor=cursor))


async def messages_search(request: Request) -> Response:
    principal = await authenticate(request, "search")
    limit, cursor = page_params(request)
    q = request.query_params.get("q", "")
    if not q.strip():
        raise MxdError("bad_request", "q must not be empty", fix="GET /api/messages/search?q=invoice")
    return JSONResponse(await mail.search_page(ctx(request), principal, q, mailbox=request.query_params.get("mailbox"),
                                               limit=limit, cursor=cursor))


async def message_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    return JSONResponse(await mail.message_detail(ctx(request), principal, request.path_params["id"]))


async def message_raw(request: Request) -> Response:
    principal = await authenticate(request, "read")
    data = await mail.raw(ctx(request), principal, request.path_params["id"])
    return Response(data, media_type="message/rfc822", headers=download_headers(f"{request.path_params['id']}.eml"))


async def message_attachment(request: Request) -> Response:
    principal = await authenticate(request, "read")
    found = await mail.attachment(ctx(request), principal, request.path_params["id"], request.path_params["att"])
    content = await asyncio.to_thread(found.content)
    # Bytes from outside senders: never rendered by a browser on this origin, whatever they claim to be
    # (their declared type is in the message's attachment list).
    return Response(content, media_type="application/octet-stream",
                    headers=download_headers(found.row.filename or f"attachment-{found.row.part_index}"))


# ---------------------------------------------------------------- threads
async def threads_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    limit, cursor = page_params(request)
    return JSONResponse(await mail.thread_page(ctx(request), principal, mailbox=request.query_params.get("mailbox"),
                                               limit=limit, cursor=cursor))


async def thread_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    return JSONResponse(await mail.thread_detail(ctx(request), principal, request.path_params["id"]))


# ---------------------------------------------------------------- tokens
async def tokens_list(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    return JSONResponse({"data": await admin.tokens_of(ctx(request), principal)})


async def tokens_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    out = await admin.create_token(ctx(request), principal, body.get("name"), body.get("scopes"),
                                   body.get("mailboxes"), body.get("org_id"))
    return JSONResponse(out, status_code=201)


async def token_delete(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    await admin.revoke_token(ctx(request), principal, request.path_params["id"])
    return Response(status_code=204)


def routes() -> list[Route]:
    return [
        Route("/api/health", health),
        Route("/api/domains", domains_list, methods=["GET"]),
        Route("/api/domains", domains_create, methods=["POST"]),
        Route("/api/domains/{domain}", domain_get, methods=["GET"]),
        Route("/api/domains/{domain}", domain_delete, methods=["DELETE"]),
        Route("/api/domains/{domain}/readiness", domain_readiness, methods=["PUT"]),
        Route("/api/domains/{domain}/dns-plan", domain_dns_plan, methods=["GET"]),
        Route("/api/domains/{domain}/status", domain_status, methods=["GET"]),
        Route("/api/domains/{domain}/verify", domain_verify, methods=["POST"]),
        Route("/api/mailboxes", mailboxes_list, methods=["GET"]),
        Route("/api/mailboxes", mailboxes_create, methods=["POST"]),
        Route("/api/mailboxes/{mailbox}", mailbox_get, methods=["GET"]),
        Route("/api/mailboxes/{mailbox}", mailbox_delete, methods=["DELETE"]),
        Route("/api/aliases", aliases_list, methods=["GET"]),
        Route("/api/aliases", aliases_create, methods=["POST"]),
        Route("/api/aliases/{alias}", alias_delete, methods=["DELETE"]),
        Route("/api/catchalls/{domain}", catchall_get, methods=["GET"]),
        Route("/api/catchalls/{domain}", catchall_put, methods=["PUT"]),
        Route("/api/messages", messages_list, methods=["GET"]),
        Route("/api/messages/search", messages_search, methods=["GET"]),
        Route("/api/messages/{id}", message_get, methods=["GET"]),
        Route("/api/messages/{id}/raw", message_raw, methods=["GET"]),
        Route("/api/messages/{id}/attachments/{att}", message_attachment, methods=["GET"]),
        Route("/api/threads", threads_list, methods=["GET"]),
        Route("/api/threads/{id}", thread_get, methods=["GET"]),
        Route("/api/tokens", tokens_list, methods=["GET"]),
        Route("/api/tokens", tokens_create, methods=["POST"]),
        Route("/api/tokens/{id}", token_delete, methods=["DELETE"]),
    ]
