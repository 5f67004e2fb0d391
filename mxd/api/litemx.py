"""The /api/... dialect (litemx-api.txt): thin translations onto the store's functions."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import asyncio
import urllib.parse

from mxd import domaincheck, keys
from mxd.store import tokens
from mxd.api.outbound import delivery_status
from mxd.api.http import authenticate, ctx, json_body, note_audit, page, page_params
from mxd.config import Config
from mxd.errors import MxdError
from mxd.timefmt import iso
from mxd.mime.parse import attachment as attachment_bytes
from mxd.store import directory, messages, search, threads
from mxd.store.models import Agent, Attachment, Mailbox, Message, Organization, Thread
from mxd.store.tokens import Principal


# ---------------------------------------------------------------- helpers
def effective_retention(box: Mailbox, cfg: Config) -> int:
    """Days this mailbox keeps messages (0: forever): its own setting, else the server's default."""
    return box.retention_days if box.retention_days else cfg.default_retention_days


def _mailbox_dict(box: Mailbox, cfg: Config | None = None) -> dict:
    out = {"id": box.id, "address": box.address, "domain": box.address.split("@", 1)[1],
           "display_name": box.display_name, "retention_days": box.retention_days,
           "org_id": box.org_id, "agent_id": box.agent_id, "created_at": iso(box.created_at)}
    if cfg is not None:
        out["effective_retention_days"] = effective_retention(box, cfg)
    return out


def _domain_dict(d) -> dict:
    return {"id": d.id, "name": d.name, "org_id": d.org_id, "ready": d.ready, "ready_source": d.ready_source,
            "ownership_verified": d.org_id is None or d.owner_verified_at is not None,
            "created_at": iso(d.created_at)}


def _visible_ids(principal: Principal) -> list[str] | None:
    """Mailbox ids a principal may see; None means all."""
    if principal.is_operator:
        return None
    query = Mailbox.select(Mailbox.id).where(
        Mailbox.org_id.is_null() if principal.org_id is None else Mailbox.org_id == principal.org_id)
    if principal.mailboxes is not None and not principal.is_admin:
        query = query.where(Mailbox.address.in_(list(principal.mailboxes)))
    return [m.id for m in query]


def _mailbox_scope(principal: Principal, mailbox_ref: str | None) -> tuple[list[str] | None, dict[str, str]]:
    """(mailbox ids to filter on, id -> address) for a list call, honouring the token's mailboxes."""
    if mailbox_ref:
        try:
            box = directory.get_mailbox(mailbox_ref)
        except MxdError:
            raise MxdError("not_found", f"mailbox {mailbox_ref!r} not found") from None
        if not principal.sees(box.address, box.org_id):
            raise MxdError("not_found", f"mailbox {mailbox_ref!r} not found")
        return [box.id], {box.id: box.address}
    ids = _visible_ids(principal)
    boxes = directory.list_mailboxes(ids)
    return ids, {b.id: b.address for b in boxes}


def _visible_message(principal: Principal, message_id: str) -> tuple[Message, str]:
    msg = messages.get(message_id)
    box = Mailbox.get_or_none(Mailbox.id == msg.mailbox_id) if msg else None
    if msg is None or box is None or not principal.sees(box.address, box.org_id):
        raise MxdError("not_found", f"message {message_id!r} not found")
    return msg, box.address


def _message_detail(principal: Principal, message_id: str) -> dict:
    """GET /api/messages/{id} (and the MCP get_message): the parsed message, its delivery state if outgoing."""
    msg, address = _visible_message(principal, message_id)
    out = messages.detail(msg, address, list(msg.attachments.order_by(Attachment.part_index)))
    if msg.direction == "out":
        out["delivery"] = delivery_status(msg.id)
    return out


def _visible_attachment(principal: Principal, message_id: str, att_id: str) -> tuple[bytes, Attachment]:
    """The stored bytes of a message the token may read, and one of its attachments."""
    msg, _ = _visible_message(principal, message_id)
    att = Attachment.get_or_none((Attachment.id == att_id) & (Attachment.message == msg.id))
    if att is None:
        raise MxdError("not_found", "attachment not found")
    return messages.raw(msg), att


def _thread_detail(principal: Principal, thread_id: str) -> dict:
    """GET /api/threads/{id} (and the MCP get_thread): a thread's messages oldest first, with their text."""
    thread = Thread.get_or_none(Thread.id == thread_id)
    box = Mailbox.get_or_none(Mailbox.id == thread.mailbox_id) if thread else None
    if thread is None or box is None or not principal.sees(box.address, box.org_id):
        raise MxdError("not_found", "thread not found")
    rows = messages.in_thread(thread.id)
    out = messages.thread_dict(thread, box.address)
    out["messages"] = [dict(messages.summary(m, box.address), text=m.text) for m in rows]
    return out


async def _change_directory(request: Request, fn, *args):
    """Write a directory change, then reload the in-memory snapshot RCPT TO resolves against."""
    c = ctx(request)
    result = await c.db.write(fn, *args)
    await c.db.read(c.directory.refresh)
    return result


# ---------------------------------------------------------------- system
async def health(request: Request) -> Response:
    db = ctx(request).db
    await db.read(lambda: Mailbox.select().limit(1).count())
    return JSONResponse({"status": "ok", "hostname": ctx(request).cfg.hostname})


# ---------------------------------------------------------------- domains
def _org_from_body(principal: Principal, body: dict) -> str | None:
    """The organisation a new object belongs to: the caller's own, or (operator only) body "org_id"."""
    wanted = body.get("org_id")
    if wanted is None or wanted == principal.org_id:
        return principal.org_id
    if not principal.is_operator or not isinstance(wanted, str):
        raise MxdError("forbidden", "only the server operator may create objects for another organisation")
    if Organization.get_or_none(Organization.id == wanted) is None:
        raise MxdError("not_found", f"organisation {wanted!r} not found")
    return wanted


async def domains_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    rows = await ctx(request).db.read(directory.list_domains, principal.org_id, principal.is_operator)
    return JSONResponse({"data": [_domain_dict(d) for d in rows]})


async def domains_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    name = body.get("domain") or body.get("name")
    if not isinstance(name, str):
        raise MxdError("bad_request", "body must hold {\"domain\": \"example.com\"}")
    c = ctx(request)

    def work() -> tuple:
        domain, created = directory.create_domain(name, _org_from_body(principal, body), c.cfg.hostname)
        if not created and not principal.owns(domain.org_id):
            raise MxdError("conflict", f"the domain {domain.name} is registered already",
                           fix="Use a domain you control that is not yet on this server.")
        return domain, created
    domain, created = await _change_directory(request, work)
    await asyncio.get_running_loop().run_in_executor(None, keys.generate_dkim_keys, c.cfg.dkim_dir, domain.name)
    return JSONResponse(_domain_dict(domain), status_code=201 if created else 200)


async def domain_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    domain = await ctx(request).db.read(directory.owned_domain, principal, request.path_params["domain"])
    return JSONResponse(_domain_dict(domain))


async def domain_delete(request: Request) -> Response:
    principal = await authenticate(request, "admin")

    def work() -> None:
        directory.delete_domain(directory.owned_domain(principal, request.path_params["domain"]).name)
    await _change_directory(request, work)
    return Response(status_code=204)


async def domain_readiness(request: Request) -> Response:
    """The operator's override; an organisation's domain becomes ready through DNS verification only."""
    await authenticate(request, "admin", operator=True)
    body = await json_body(request)
    if not isinstance(body.get("ready"), bool):
        raise MxdError("bad_request", "body must hold {\"ready\": true|false}")
    note_audit(request, ready=body["ready"], override=True)
    # an organisation's domain made ready is routed from now on: reload what RCPT TO resolves against
    domain = await _change_directory(request, directory.set_readiness, request.path_params["domain"], body["ready"])
    return JSONResponse(_domain_dict(domain))


async def domain_dns_plan(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    domain = await c.db.read(directory.owned_domain, principal, request.path_params["domain"])
    return JSONResponse(domaincheck.plan_json(c.cfg, domain.name, domaincheck.ownership(domain)))


async def domain_status(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    domain = await c.db.read(directory.owned_domain, principal, request.path_params["domain"])
    result = await domaincheck.check(c.cfg, domain.name, c.resolver, domaincheck.ownership(domain))
    return JSONResponse(dict(_domain_dict(domain), **result.to_json()))


async def domain_verify(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    c = ctx(request)
    domain = await c.db.read(directory.owned_domain, principal, request.path_params["domain"])
    result = await domaincheck.check(c.cfg, domain.name, c.resolver, domaincheck.ownership(domain))
    domain, newly = await c.db.write(domaincheck.record_verification, domain.name, result.ok,
                                     result.definitely_broken, result.owner_found)
    await c.db.read(c.directory.refresh)
    note_audit(request, dns_ok=result.ok, ready=domain.ready)
    return JSONResponse(dict(_domain_dict(domain), **result.to_json(), verified_now=newly))


# ---------------------------------------------------------------- mailboxes
async def mailboxes_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    rows = await ctx(request).db.read(directory.list_mailboxes, await ctx(request).db.read(_visible_ids, principal))
    cfg = ctx(request).cfg
    return JSONResponse({"data": [_mailbox_dict(b, cfg) for b in rows]})


def _positive_int(value, name: str) -> int | None:
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
    retention = _positive_int(body.get("retention_days"), "retention_days")
    agent_id = body.get("agent_id")
    if agent_id is not None and not isinstance(agent_id, str):
        raise MxdError("bad_request", "agent_id must be a string")

    def work() -> tuple:
        domain_name = address.rsplit("@", 1)[-1]
        if not principal.is_operator:
            directory.owned_domain(principal, domain_name)          # 404 for a domain it does not own
        org_id = _org_from_body(principal, body) if "org_id" in body else None
        if agent_id is not None:
            agent = Agent.get_or_none(Agent.id == agent_id)
            if agent is None or not principal.owns(agent.org_id):
                raise MxdError("not_found", f"agent {agent_id!r} not found")
            org_id = agent.org_id
        if "org_id" in body or agent_id is not None:
            box, created = directory.create_mailbox(address, display, retention, org_id, agent_id)
        else:
            box, created = directory.create_mailbox(address, display, retention)
        if not created and not principal.sees(box.address, box.org_id):
            raise MxdError("conflict", f"the mailbox {box.address} exists already")
        return box, created
    box, created = await _change_directory(request, work)
    note_audit(request, mailbox=box.address)
    return JSONResponse(_mailbox_dict(box, ctx(request).cfg), status_code=201 if created else 200)


async def mailbox_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    box = await ctx(request).db.read(directory.owned_mailbox, principal, request.path_params["mailbox"])
    return JSONResponse(_mailbox_dict(box, ctx(request).cfg))


async def mailbox_delete(request: Request) -> Response:
    principal = await authenticate(request, "admin")

    def work() -> str:
        box = directory.owned_mailbox(principal, request.path_params["mailbox"])
        directory.delete_mailbox(box.id)
        return box.address
    note_audit(request, mailbox=await _change_directory(request, work))
    return Response(status_code=204)


# ---------------------------------------------------------------- aliases, catch-alls
async def aliases_list(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    rows = await ctx(request).db.read(directory.list_aliases, principal)
    return JSONResponse({"data": [{"address": a, "targets": [b.address for b in boxes]} for a, boxes in rows.items()]})


async def aliases_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    address, targets = body.get("address"), body.get("targets", body.get("target"))
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(address, str) or not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise MxdError("bad_request", "body must hold {\"address\": ..., \"targets\": [mailbox addresses]}")
    c = ctx(request)
    rows = await _change_directory(request, directory.create_alias, address, targets, principal)
    return JSONResponse({"address": rows[0].address,
                         "targets": await c.db.read(lambda: [r.mailbox.address for r in rows])}, status_code=201)


async def alias_delete(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    await _change_directory(request, directory.delete_alias, request.path_params["alias"], principal)
    return Response(status_code=204)


def _catchall_dict(domain) -> dict:
    target = Mailbox.get_or_none(Mailbox.id == domain.catchall_mailbox_id) if domain.catchall_mailbox_id else None
    return {"domain": domain.name, "target": target.address if target else None}


async def catchall_get(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    db = ctx(request).db
    return JSONResponse(await db.read(
        lambda: _catchall_dict(directory.owned_domain(principal, request.path_params["domain"]))))


async def catchall_put(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    target = body.get("target", body.get("mailbox"))
    if target is not None and not isinstance(target, str):
        raise MxdError("bad_request", "body must hold {\"target\": \"mailbox@domain\"} or {\"target\": null}")
    c = ctx(request)
    domain = await _change_directory(request, directory.set_catchall, request.path_params["domain"], target,
                                     principal)
    return JSONResponse(await c.db.read(_catchall_dict, domain))


# ---------------------------------------------------------------- messages
async def messages_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    limit, cursor = page_params(request)

    def work() -> dict:
        ids, names = _mailbox_scope(principal, request.query_params.get("mailbox"))
        rows = messages.list_messages(ids, limit, cursor, request.query_params.get("thread_id"))
        return page([messages.summary(m, names.get(m.mailbox_id, "")) for m in rows], limit, len(rows),
                    rows[-1].id if rows else None)
    return JSONResponse(await ctx(request).db.read(work))


async def messages_search(request: Request) -> Response:
    principal = await authenticate(request, "search")
    limit, cursor = page_params(request)
    q = request.query_params.get("q", "")
    if not q.strip():
        raise MxdError("bad_request", "q must not be empty", fix="GET /api/messages/search?q=invoice")

    def work() -> dict:
        ids, names = _mailbox_scope(principal, request.query_params.get("mailbox"))
        db = Message._meta.database.obj
        found = messages.by_ids(search.search(db, q, ids, limit, cursor))
        return page([messages.summary(m, names.get(m.mailbox_id, "")) for m in found], limit, len(found),
                    found[-1].id if found else None)
    return JSONResponse(await ctx(request).db.read(work))


async def message_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    return JSONResponse(await ctx(request).db.read(_message_detail, principal, request.path_params["id"]))


async def message_raw(request: Request) -> Response:
    principal = await authenticate(request, "read")

    def work() -> bytes:
        msg, _ = _visible_message(principal, request.path_params["id"])
        return messages.raw(msg)
    return Response(await ctx(request).db.read(work), media_type="message/rfc822",
                    headers=download_headers(f"{request.path_params['id']}.eml"))


async def message_attachment(request: Request) -> Response:
    principal = await authenticate(request, "read")
    raw, att = await ctx(request).db.read(_visible_attachment, principal, request.path_params["id"],
                                          request.path_params["att"])
    found = attachment_bytes(raw, att.part_index)
    if found is None:
        raise MxdError("not_found", "attachment not found in the stored message")
    # Bytes from outside senders: never rendered by a browser on this origin, whatever they claim to be
    # (their declared type is in the message's attachment list).
    return Response(found[1], media_type="application/octet-stream",
                    headers=download_headers(att.filename or f"attachment-{att.part_index}"))


def content_disposition(filename: str) -> str:
    """`attachment` with the file name as RFC 6266 says: an ASCII `filename` fallback, and `filename*`
    (RFC 8187, UTF-8, percent-encoded) when the name is anything else."""
    name = "".join(c for c in filename if c >= " " and c != "\x7f").strip() or "attachment"
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\%;' else "_" for c in name)
    header = f'attachment; filename="{fallback}"'
    if fallback != name:
        header += "; filename*=UTF-8''" + urllib.parse.quote(name, safe="")
    return header


def download_headers(filename: str) -> dict[str, str]:
    """Headers of a download of stored mail: a file to save, never a page (no sniffing, no scripts)."""
    return {"Content-Disposition": content_disposition(filename), "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox", "Cache-Control": "private, no-store"}


# ---------------------------------------------------------------- threads
async def threads_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    limit, cursor = page_params(request)

    def work() -> dict:
        ids, names = _mailbox_scope(principal, request.query_params.get("mailbox"))
        rows = threads.list_threads(ids, limit, cursor)
        return page([messages.thread_dict(t, names.get(t.mailbox_id, "")) for t in rows], limit, len(rows),
                    rows[-1].id if rows else None)
    return JSONResponse(await ctx(request).db.read(work))


async def thread_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    return JSONResponse(await ctx(request).db.read(_thread_detail, principal, request.path_params["id"]))


# ---------------------------------------------------------------- tokens
def _token_grant(principal: Principal, body: dict) -> tuple[str | None, list | None]:
    """(org_id, mailboxes) for a new token, no wider than the caller: an organisation's admin grants
    scopes and mailboxes of its own organisation only. Runs in a reader or the writer."""
    org_id = _org_from_body(principal, body)
    scopes, mailboxes = body.get("scopes"), body.get("mailboxes")
    if principal.is_operator:
        return org_id, mailboxes
    if isinstance(scopes, list) and not principal.is_admin and not set(scopes) <= principal.scopes:
        raise MxdError("forbidden", "a token cannot grant scopes it does not hold itself")
    if isinstance(mailboxes, list):
        for ref in mailboxes:
            if not isinstance(ref, str):
                raise MxdError("bad_request", "mailboxes must be a list of addresses")
            directory.owned_mailbox(principal, ref)           # 404 for a mailbox outside the organisation
    elif principal.mailboxes is not None and not principal.is_admin:
        raise MxdError("forbidden", "this token is limited to mailboxes; list the mailboxes of the new token")
    return org_id, mailboxes


async def tokens_list(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    rows = await ctx(request).db.read(tokens.list_tokens, principal.org_id, principal.is_operator)
    return JSONResponse({"data": [tokens.to_dict(t) for t in rows]})


async def tokens_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)

    def work() -> tuple:
        org_id, mailboxes = _token_grant(principal, body)
        return tokens.create(body.get("name"), body.get("scopes"), mailboxes, org_id)
    row, secret = await ctx(request).db.write(work)
    out = tokens.to_dict(row)
    out["token"] = secret
    return JSONResponse(out, status_code=201)


async def token_delete(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    await ctx(request).db.write(tokens.revoke, request.path_params["id"], principal.org_id, principal.is_operator)
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
