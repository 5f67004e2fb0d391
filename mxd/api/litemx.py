"""The /api/... dialect (litemx-api.txt): thin translations onto the store's functions."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import asyncio

from mxd import domaincheck, keys, tokens
from mxd.api.outbound import delivery_status
from mxd.api.app import authenticate, ctx, json_body, page, page_params
from mxd.errors import MxdError
from mxd.mime.parse import attachment as attachment_bytes
from mxd.store import directory, messages, search, threads
from mxd.store.models import Attachment, Mailbox, Message, Thread
from mxd.tokens import Principal


# ---------------------------------------------------------------- helpers
def _mailbox_dict(box: Mailbox) -> dict:
    return {"id": box.id, "address": box.address, "domain": box.address.split("@", 1)[1],
            "display_name": box.display_name, "retention_days": box.retention_days,
            "created_at": messages._iso(box.created_at)}


def _domain_dict(d) -> dict:
    return {"id": d.id, "name": d.name, "ready": d.ready, "ready_source": d.ready_source,
            "created_at": messages._iso(d.created_at)}


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
async def domains_list(request: Request) -> Response:
    await authenticate(request, "read")
    rows = await ctx(request).db.read(directory.list_domains)
    return JSONResponse({"data": [_domain_dict(d) for d in rows]})


async def domains_create(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    body = await json_body(request)
    name = body.get("domain") or body.get("name")
    if not isinstance(name, str):
        raise MxdError("bad_request", "body must hold {\"domain\": \"example.com\"}")
    c = ctx(request)
    domain, created = await _change_directory(request, directory.create_domain, name)
    await asyncio.get_running_loop().run_in_executor(None, keys.generate_dkim_keys, c.cfg.dkim_dir, domain.name)
    return JSONResponse(_domain_dict(domain), status_code=201 if created else 200)


async def domain_get(request: Request) -> Response:
    await authenticate(request, "read")
    domain = await ctx(request).db.read(directory.get_domain, request.path_params["domain"])
    return JSONResponse(_domain_dict(domain))


async def domain_delete(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    await _change_directory(request, directory.delete_domain, request.path_params["domain"])
    return Response(status_code=204)


async def domain_readiness(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    body = await json_body(request)
    if not isinstance(body.get("ready"), bool):
        raise MxdError("bad_request", "body must hold {\"ready\": true|false}")
    domain = await ctx(request).db.write(directory.set_readiness, request.path_params["domain"], body["ready"])
    return JSONResponse(_domain_dict(domain))


async def domain_dns_plan(request: Request) -> Response:
    await authenticate(request, "read")
    c = ctx(request)
    domain = await c.db.read(directory.get_domain, request.path_params["domain"])
    return JSONResponse({"domain": domain.name,
                         "records": [r.to_json() for r in domaincheck.plan(c.cfg, domain.name)]})


async def domain_status(request: Request) -> Response:
    await authenticate(request, "read")
    c = ctx(request)
    domain = await c.db.read(directory.get_domain, request.path_params["domain"])
    dns_ok, checks = await domaincheck.check(c.cfg, domain.name, c.resolver)
    return JSONResponse(dict(_domain_dict(domain), dns_ok=dns_ok, records=[x.to_json() for x in checks]))


async def domain_verify(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    c = ctx(request)
    domain = await c.db.read(directory.get_domain, request.path_params["domain"])
    dns_ok, checks = await domaincheck.check(c.cfg, domain.name, c.resolver)
    if dns_ok and not domain.ready:
        domain = await c.db.write(directory.set_readiness, domain.name, True, "dns")
    return JSONResponse(dict(_domain_dict(domain), dns_ok=dns_ok, records=[x.to_json() for x in checks]))


# ---------------------------------------------------------------- mailboxes
async def mailboxes_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    rows = await ctx(request).db.read(directory.list_mailboxes, await ctx(request).db.read(_visible_ids, principal))
    return JSONResponse({"data": [_mailbox_dict(b) for b in rows]})


async def mailboxes_create(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    body = await json_body(request)
    address = body.get("address")
    if not isinstance(address, str):
        raise MxdError("bad_request", "body must hold {\"address\": \"agent@example.com\"}")
    display = body.get("display_name") or ""
    retention = body.get("retention_days")
    if not isinstance(display, str) or (retention is not None and (not isinstance(retention, int)
                                                                    or isinstance(retention, bool) or retention < 1)):
        raise MxdError("bad_request", "display_name must be a string and retention_days a positive integer")
    box, created = await _change_directory(request, directory.create_mailbox, address, display, retention)
    return JSONResponse(_mailbox_dict(box), status_code=201 if created else 200)


async def mailbox_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    box = await ctx(request).db.read(directory.get_mailbox, request.path_params["mailbox"])
    if not principal.sees(box.address, box.org_id):
        raise MxdError("not_found", "mailbox not found")
    return JSONResponse(_mailbox_dict(box))


async def mailbox_delete(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    await _change_directory(request, directory.delete_mailbox, request.path_params["mailbox"])
    return Response(status_code=204)


# ---------------------------------------------------------------- aliases, catch-alls
async def aliases_list(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    rows = await ctx(request).db.read(directory.list_aliases)
    return JSONResponse({"data": [{"address": a, "targets": [b.address for b in boxes]} for a, boxes in rows.items()]})


async def aliases_create(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    body = await json_body(request)
    address, targets = body.get("address"), body.get("targets", body.get("target"))
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(address, str) or not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise MxdError("bad_request", "body must hold {\"address\": ..., \"targets\": [mailbox addresses]}")
    c = ctx(request)
    rows = await _change_directory(request, directory.create_alias, address, targets)
    return JSONResponse({"address": rows[0].address,
                         "targets": await c.db.read(lambda: [r.mailbox.address for r in rows])}, status_code=201)


async def alias_delete(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    await _change_directory(request, directory.delete_alias, request.path_params["alias"])
    return Response(status_code=204)


def _catchall_dict(domain) -> dict:
    target = Mailbox.get_or_none(Mailbox.id == domain.catchall_mailbox_id) if domain.catchall_mailbox_id else None
    return {"domain": domain.name, "target": target.address if target else None}


async def catchall_get(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    db = ctx(request).db
    return JSONResponse(await db.read(lambda: _catchall_dict(directory.get_domain(request.path_params["domain"]))))


async def catchall_put(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    body = await json_body(request)
    target = body.get("target", body.get("mailbox"))
    if target is not None and not isinstance(target, str):
        raise MxdError("bad_request", "body must hold {\"target\": \"mailbox@domain\"} or {\"target\": null}")
    c = ctx(request)
    domain = await _change_directory(request, directory.set_catchall, request.path_params["domain"], target)
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

    def work() -> dict:
        msg, address = _visible_message(principal, request.path_params["id"])
        out = messages.detail(msg, address, list(msg.attachments.order_by(Attachment.part_index)))
        if msg.direction == "out":
            out["delivery"] = delivery_status(msg.id)
        return out
    return JSONResponse(await ctx(request).db.read(work))


async def message_raw(request: Request) -> Response:
    principal = await authenticate(request, "read")

    def work() -> bytes:
        msg, _ = _visible_message(principal, request.path_params["id"])
        return messages.raw(msg)
    return Response(await ctx(request).db.read(work), media_type="message/rfc822")


async def message_attachment(request: Request) -> Response:
    principal = await authenticate(request, "read")

    def work() -> tuple[bytes, Attachment]:
        msg, _ = _visible_message(principal, request.path_params["id"])
        att = Attachment.get_or_none((Attachment.id == request.path_params["att"]) & (Attachment.message == msg.id))
        if att is None:
            raise MxdError("not_found", "attachment not found")
        return messages.raw(msg), att
    raw, att = await ctx(request).db.read(work)
    found = attachment_bytes(raw, att.part_index)
    if found is None:
        raise MxdError("not_found", "attachment not found in the stored message")
    filename = (att.filename or f"attachment-{att.part_index}").replace('"', "").replace("\r", "").replace("\n", "")
    return Response(found[1], media_type=att.content_type if "/" in att.content_type else "application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"',
                             "X-Content-Type-Options": "nosniff"})


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

    def work() -> dict:
        thread = Thread.get_or_none(Thread.id == request.path_params["id"])
        box = Mailbox.get_or_none(Mailbox.id == thread.mailbox_id) if thread else None
        if thread is None or box is None or not principal.sees(box.address, box.org_id):
            raise MxdError("not_found", "thread not found")
        rows = list(Message.select().where(Message.thread == thread.id).order_by(Message.date, Message.id))
        out = messages.thread_dict(thread, box.address)
        out["messages"] = [dict(messages.summary(m, box.address), text=m.text) for m in rows]
        return out
    return JSONResponse(await ctx(request).db.read(work))


# ---------------------------------------------------------------- tokens
async def tokens_list(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    rows = await ctx(request).db.read(tokens.list_tokens)
    return JSONResponse({"data": [tokens.to_dict(t) for t in rows]})


async def tokens_create(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    body = await json_body(request)
    row, secret = await ctx(request).db.write(
        tokens.create, body.get("name"), body.get("scopes"), body.get("mailboxes"))
    out = tokens.to_dict(row)
    out["token"] = secret
    return JSONResponse(out, status_code=201)


async def token_delete(request: Request) -> Response:
    await authenticate(request, "admin", operator=True)
    await ctx(request).db.write(tokens.revoke, request.path_params["id"])
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
