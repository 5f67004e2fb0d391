"""The /v1/... dialect (loftbox-api.txt) and its /api/v1/... alias: thin translations onto the same core as /api.

Owner sign-up and verification (mxd.store.orgs), agents (mxd.store.agents), an organisation's domains, agent
mailboxes, sending (the one send path, mxd.api.outbound.send_draft), inbox polling (mxd.store.acks) and
/health. An organisation's key sees its own objects only; the operator's admin token sees all.
Webhook routes under /v1 live in mxd.api.webhooks.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mxd import domaincheck, keys
from mxd.store import acks, agents, orgs
from mxd.api.http import MAIL_BODY, Context, authenticate, ctx, json_body, note_audit, page, page_params, principal_of
from mxd.api.litemx import health
from mxd.api.outbound import delivery_status, draft_from_body, send_draft
from mxd.errors import MxdError
from mxd.timefmt import iso
from mxd.mime.compose import reply_headers, reply_subject
from mxd.store import directory, messages
from mxd.store.models import Attachment, Domain, Mailbox, Message, Organization
from mxd.store.tokens import Principal

log = logging.getLogger("mxd.api.loftbox")
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
def _domain_dict(d: Domain) -> dict:
    state = "verified" if d.ready else "pending"
    owned = d.org_id is None or d.owner_verified_at is not None       # mail for it is routed here
    inbound = state if d.org_id is None else ("verified" if owned else "pending")
    return {"id": d.id, "domain": d.name, "organization_id": d.org_id, "status": state,
            "inbound_status": inbound, "outbound_status": state, "ready_source": d.ready_source,
            "ownership_verified": owned,
            "created_at": iso(d.created_at), "verified_at": iso(d.ready_at) if d.ready else None}


def _mailbox_dict(box: Mailbox, cfg_retention: int) -> dict:
    local, domain = box.address.split("@", 1)
    return {"id": box.id, "address": box.address, "local_part": local, "domain": domain, "domain_id": box.domain_id,
            "agent_id": box.agent_id, "organization_id": box.org_id, "display_name": box.display_name,
            "retention_days": box.retention_days if box.retention_days is not None else cfg_retention,
            "created_at": iso(box.created_at)}


def _limits(c: Context, org: Organization | None) -> dict:
    cap = org.daily_send_cap if org is not None and org.daily_send_cap is not None else c.cfg.daily_send_cap
    return {"daily_send_cap": cap, "retention_days": c.cfg.default_retention_days,
            "max_recipients_per_send": c.cfg.max_recipients_per_send}


def _public_base(c: Context) -> str:
    """The configured public_url for links in mail mxd sends (empty: the mail names paths only). Never the
    request's Host header: a stranger would choose the link mxd signs and mails."""
    return c.cfg.public_url.rstrip("/")


# ---------------------------------------------------------------- mail from mxd itself
def _system_sender(cfg_default: str) -> str:
    """postmaster@ of the default domain: the mailbox mxd's own notices come from (made if missing)."""
    domain = orgs.default_domain(cfg_default)
    box, _ = directory.create_mailbox(f"postmaster@{domain.name}", "Postmaster")
    return box.address


async def system_mail(c: Context, to: str, subject: str, text: str) -> dict:
    """Send a notice from mxd itself through the one send path (principal None: the preflight still
    checks domain readiness, caps and suppression)."""
    sender = await c.db.write(_system_sender, c.cfg.default_domain)
    draft = draft_from_body({"to": [to], "subject": subject, "text": text, "from_name": c.cfg.hostname}, sender)
    return await send_draft(c, None, draft, {}, source="system")


# ---------------------------------------------------------------- sign-up
def _client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


async def signup(request: Request) -> Response:
    c = ctx(request)
    operator = False
    if request.headers.get("authorization"):
        operator = (await principal_of(request)).is_operator
    if not c.cfg.signup_enabled and not operator:
        raise MxdError("signup_disabled", "public sign-up is switched off on this server")
    body = await json_body(request)
    org, code, created = await c.db.write(orgs.signup, body.get("email"), body.get("organization_name"),
                                          body.get("slug"), "" if operator else _client_ip(request), None,
                                          c.cfg.signup_rate_per_ip_per_hour, c.cfg.signup_rate_per_hour)
    minutes = orgs.CODE_SECONDS // 60
    # Only mxd's own words: the organisation's name and slug, and the address as typed, are a stranger's
    # text, which this mail (signed for the server's domain) must not carry to the address it names.
    text = (f"Someone asked to sign up an organisation on {c.cfg.hostname} with this email address as its owner.\n\n"
            f"The verification code is:\n\n"
            f"    {code}\n\n"
            f"It expires in {minutes} minutes and allows {orgs.MAX_ATTEMPTS} attempts. Verify with:\n\n"
            f"    POST {_public_base(c)}/v1/auth/signup/verify\n"
            f"    {{\"email\": \"<this address>\", \"verification_token\": \"<the code>\"}}\n\n"
            "If you did not ask for this, ignore this message: nothing happens without the code.\n")
    try:
        sent = await system_mail(c, org.owner_email, f"Your verification code: {code}", text)
    except MxdError as exc:            # the organisation waits unverified; signing up again retries the mail
        raise MxdError(exc.code, f"the verification email could not be sent: {exc.message}", fix=exc.fix,
                       status=exc.status, retry_after=exc.retry_after) from None
    return JSONResponse({"organization": orgs.to_dict(org), "status": "verification_sent",
                         "verification": {"sent_to": org.owner_email, "expires_in": orgs.CODE_SECONDS,
                                          "max_attempts": orgs.MAX_ATTEMPTS, "message_id": sent["id"]},
                         "next": "POST /v1/auth/signup/verify {\"email\", \"verification_token\"}"},
                        status_code=201 if created else 200)


async def signup_verify(request: Request) -> Response:
    c = ctx(request)
    body = await json_body(request)
    result = await c.db.write(orgs.verify, body.get("email"), body.get("verification_token"))
    if result.error is not None:
        raise result.error
    org, key = result.org, result.token
    limits = _limits(c, org)
    base = _public_base(c)
    text = (f"Welcome to {c.cfg.hostname}. The organisation this address signed up is verified.\n\n"
            f"Its first API key was shown once, in the answer to the verification call; keep it server-side.\n\n"
            f"Limits:\n"
            f"  - {limits['daily_send_cap']} outgoing recipients per rolling 24 hours\n"
            f"  - at most {limits['max_recipients_per_send']} recipients per message\n"
            f"  - mailboxes keep messages {limits['retention_days']} days unless set otherwise\n\n"
            + (f"API guide: {base}/llms.txt\nAgent skills: curl -fsSL {base}/install.sh | sh\n\n" if base else
               "API guide: GET /llms.txt on this server's API\nAgent skills: GET /install.sh on this server's API\n\n")
            + "Larger limits, more keys and billing are arranged with the server's operator.\n")
    try:
        sent = await system_mail(c, org.owner_email, f"Welcome to {c.cfg.hostname}", text)
        welcome = {"status": sent["status"], "message_id": sent["id"]}
    except MxdError as exc:            # the key is shown once: a failed notice must not lose it
        log.warning("welcome notice to %s not sent: %s", org.owner_email, exc.message)
        welcome = {"status": "failed", "error": exc.code}
    return JSONResponse({"organization": orgs.to_dict(org), "api_key": key["token"], "api_key_id": key["id"],
                         "scopes": key["scopes"], "limits": limits, "welcome_notice": welcome},
                        status_code=201)


async def organization_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    if principal.org_id is None:
        return JSONResponse({"organization": None, "operator": principal.is_operator, "limits": _limits(c, None)})
    org = await c.db.read(orgs.get, principal.org_id)
    return JSONResponse({"organization": orgs.to_dict(org), "operator": False, "limits": _limits(c, org)})


# ---------------------------------------------------------------- agents
def _target_org(principal: Principal, body: dict) -> str | None:
    """The organisation a new object belongs to: the caller's, or for the operator, organization_id if given."""
    wanted = body.get("organization_id")
    if wanted is None or wanted == principal.org_id:
        return principal.org_id
    if not principal.is_operator:
        raise MxdError("not_found", f"organisation {wanted!r} not found", fix="Omit organization_id.")
    if not isinstance(wanted, str) or Organization.get_or_none(Organization.id == wanted) is None:
        raise MxdError("not_found", f"organisation {wanted!r} not found")
    return wanted


async def agents_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    limit, cursor = page_params(request)
    rows = await ctx(request).db.read(agents.list_agents, principal, request.query_params.get("external_id"),
                                      limit, cursor)
    return JSONResponse(page([agents.to_dict(a) for a in rows], limit, len(rows), rows[-1].id if rows else None))


async def agents_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)

    def work() -> tuple[Any, bool]:
        return agents.create(_target_org(principal, body), body)
    agent, created = await ctx(request).db.write(work)
    return JSONResponse(agents.to_dict(agent), status_code=201 if created else 200)


async def agent_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    agent = await ctx(request).db.read(agents.get, principal, request.path_params["agent_id"])
    return JSONResponse(agents.to_dict(agent))


# ---------------------------------------------------------------- agent mailboxes
def _create_agent_mailbox(principal: Principal, agent_id: str, body: dict, cfg_default: str) -> tuple[Mailbox, bool]:
    agent = agents.get(principal, agent_id)
    local = body.get("local_part")
    if not isinstance(local, str) or not local or "@" in local or "+" in local:
        raise MxdError("bad_request", "local_part must be the part before @, without @ or +",
                       fix='{"local_part": "support-agent", "display_name": "Support Agent"}')
    display = body.get("display_name") or ""
    retention = body.get("retention_days")
    if not isinstance(display, str) or len(display) > 200:
        raise MxdError("bad_request", "display_name must be a string of at most 200 characters")
    if retention is not None and (not isinstance(retention, int) or isinstance(retention, bool)
                                  or not 1 <= retention <= 3650):
        raise MxdError("bad_request", "retention_days must be an integer from 1 to 3650")
    default = orgs.default_domain(cfg_default)
    domain_id = body.get("domain_id")
    if domain_id is None:
        domain = default
    else:
        domain = Domain.get_or_none(Domain.id == domain_id) if isinstance(domain_id, str) else None
        # An organisation uses its own domains and the default one; the operator also its own (org NULL).
        allowed = domain is not None and (domain.org_id == agent.org_id or domain.id == default.id
                                          or (domain.org_id is None and principal.is_operator))
        if not allowed:
            raise MxdError("not_found", f"domain {domain_id!r} not found",
                           fix="Use a domain of this organisation (GET /v1/domains), or omit domain_id.")
    box, created = directory.create_mailbox(f"{local}@{domain.name}", display, retention,
                                            org_id=agent.org_id, agent_id=agent.id)
    if not created and box.agent_id != agent.id:
        raise MxdError("conflict", f"{box.address} exists already", fix="Choose another local_part.")
    return box, created


async def agent_mailboxes_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    c = ctx(request)
    box, created = await c.db.write(_create_agent_mailbox, principal, request.path_params["agent_id"], body,
                                    c.cfg.default_domain)
    await c.db.read(c.directory.refresh)          # the MX accepts mail for it at once
    note_audit(request, mailbox=box.address)
    return JSONResponse(_mailbox_dict(box, c.cfg.default_retention_days), status_code=201 if created else 200)


async def agent_mailboxes_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)

    def work() -> list[dict]:
        agent = agents.get(principal, request.path_params["agent_id"])
        return [_mailbox_dict(b, c.cfg.default_retention_days) for b in agents.mailboxes(agent.id)
                if principal.sees(b.address, b.org_id)]
    return JSONResponse({"data": await c.db.read(work)})


def _visible_mailbox(principal: Principal, mailbox_id: str) -> Mailbox:
    box = Mailbox.get_or_none(Mailbox.id == mailbox_id)
    if box is None or not principal.sees(box.address, box.org_id):
        raise MxdError("not_found", f"mailbox {mailbox_id!r} not found")
    return box


async def mailboxes_list(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)

    def work() -> list[dict]:
        query = Mailbox.select().order_by(Mailbox.id)
        if not principal.is_operator:
            query = query.where(Mailbox.org_id.is_null() if principal.org_id is None
                                else Mailbox.org_id == principal.org_id)
        return [_mailbox_dict(b, c.cfg.default_retention_days) for b in query if principal.sees(b.address, b.org_id)]
    return JSONResponse({"data": await c.db.read(work)})


async def mailbox_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    box = await c.db.read(_visible_mailbox, principal, request.path_params["mailbox_id"])
    return JSONResponse(_mailbox_dict(box, c.cfg.default_retention_days))


# ---------------------------------------------------------------- domains
def _visible_domain(principal: Principal, domain_id: str) -> Domain:
    domain = Domain.get_or_none(Domain.id == domain_id)
    if domain is None or not principal.owns(domain.org_id):
        raise MxdError("not_found", f"domain {domain_id!r} not found")
    return domain


def _create_domain(principal: Principal, body: dict, hostname: str) -> tuple[Domain, bool]:
    name = body.get("domain") or body.get("name")
    if not isinstance(name, str):
        raise MxdError("bad_request", "body must hold {\"domain\": \"mail.example.com\"}")
    org_id = _target_org(principal, body)
    domain, created = directory.create_domain(name, org_id, hostname)
    if not created and domain.org_id != org_id:
        raise MxdError("conflict", f"{domain.name} is served here for someone else",
                       fix="Use a domain (or subdomain) you control that no one else registered here.")
    return domain, created


async def domains_create(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    body = await json_body(request)
    c = ctx(request)
    domain, created = await c.db.write(_create_domain, principal, body, c.cfg.hostname)
    await c.db.read(c.directory.refresh)
    await asyncio.get_running_loop().run_in_executor(None, keys.generate_dkim_keys, c.cfg.dkim_dir, domain.name)
    out = _domain_dict(domain)
    out["dns_records"] = domaincheck.plan_json(c.cfg, domain.name, domaincheck.ownership(domain))["records"]
    return JSONResponse(out, status_code=201 if created else 200)


async def domains_list(request: Request) -> Response:
    principal = await authenticate(request, "read")

    def work() -> list[dict]:
        query = Domain.select().order_by(Domain.name)
        if not principal.is_operator:
            query = query.where(Domain.org_id.is_null() if principal.org_id is None
                                else Domain.org_id == principal.org_id)
        return [_domain_dict(d) for d in query]
    return JSONResponse({"data": await ctx(request).db.read(work)})


async def domain_get(request: Request) -> Response:
    principal = await authenticate(request, "read")
    return JSONResponse(_domain_dict(await ctx(request).db.read(_visible_domain, principal,
                                                                request.path_params["domain_id"])))


async def domain_dns(request: Request) -> Response:
    principal = await authenticate(request, "read")
    c = ctx(request)
    domain = await c.db.read(_visible_domain, principal, request.path_params["domain_id"])
    return JSONResponse(dict(domaincheck.plan_json(c.cfg, domain.name, domaincheck.ownership(domain)),
                             domain_id=domain.id))


async def domain_verify(request: Request) -> Response:
    principal = await authenticate(request, "admin")
    c = ctx(request)
    domain = await c.db.read(_visible_domain, principal, request.path_params["domain_id"])
    result = await domaincheck.check(c.cfg, domain.name, c.resolver, domaincheck.ownership(domain))
    domain, newly = await c.db.write(domaincheck.record_verification, domain.name, result.ok,
                                     result.definitely_broken, result.owner_found)
    await c.db.read(c.directory.refresh)
    note_audit(request, dns_ok=result.ok, ready=domain.ready)
    out = dict(_domain_dict(domain), **result.to_json(), verified_now=newly)
    mx_found = any(x.record.type == "MX" and x.status == domaincheck.FOUND for x in result.checks)
    inbound = (mx_found or domain.ready) and out["ownership_verified"]     # an unproven domain gets no mail
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


def _send_context(principal: Principal, mailbox_id: Any, parent_id: Any) -> tuple[Mailbox, Message | None]:
    if not isinstance(mailbox_id, str):
        raise MxdError("bad_request", "mailbox_id must be the id of a mailbox (mbx_...)",
                       fix="List mailboxes with GET /v1/mailboxes.")
    box = _visible_mailbox(principal, mailbox_id)
    if parent_id is None:
        return box, None
    parent = Message.get_or_none(Message.id == parent_id) if isinstance(parent_id, str) else None
    if parent is None or parent.mailbox_id != box.id:
        raise MxdError("not_found", f"message {parent_id!r} not found in this mailbox")
    return box, parent


async def messages_send(request: Request) -> Response:
    principal = await authenticate(request, "send")
    body = await json_body(request, MAIL_BODY)
    metadata = _metadata(body.get("metadata"))
    c = ctx(request)
    box, parent = await c.db.read(_send_context, principal, body.get("mailbox_id"), body.get("in_reply_to"))
    mapped = {k: body[k] for k in ("to", "cc", "bcc", "reply_to", "subject", "attachments", "headers") if k in body}
    mapped["text"] = body.get("body_text", body.get("text"))
    mapped["html"] = body.get("body_html", body.get("html"))
    mapped["from_name"] = body.get("from_name") or box.display_name
    in_reply_to, references = None, None
    if parent is not None:                      # RFC 5322 3.6.4: a reply names its parent
        in_reply_to, references = reply_headers(parent.message_id, parent.references or [], parent.in_reply_to or [])
        mapped.setdefault("subject", reply_subject(parent.subject or ""))
        if "to" not in mapped:
            source = parent.reply_to or parent.from_addr if parent.direction == "in" else parent.to_addr
            mapped["to"] = [a["address"] for a in source] or [parent.envelope_from]
    draft = draft_from_body(mapped, box.address, in_reply_to=in_reply_to, references=references)
    note_audit(request, mailbox=box.address, metadata=metadata)
    result = await send_draft(c, principal, draft, body, idempotency_key=request.headers.get("idempotency-key"),
                              remote_ip=request.client.host if request.client else "", source="api")
    replay = bool(result.pop("idempotent_replay", False))
    out = {"id": result["id"], "object": "message", "mailbox_id": box.id, "from": box.address,
           "thread_id": result.get("thread_id"), "message_id": result.get("message_id"),
           "status": result.get("status"), "hold_reason": result.get("hold_reason"),
           "recipients": result.get("recipients", []), "metadata": metadata, "idempotent_replay": replay}
    return JSONResponse(out, status_code=200 if replay else 201)


def _message_out(msg: Message, address: str) -> dict:
    return messages.detail(msg, address, list(msg.attachments.order_by(Attachment.part_index)))


async def message_get(request: Request) -> Response:
    principal = await authenticate(request, "read")

    def work() -> dict:
        msg = messages.get(request.path_params["message_id"])
        box = Mailbox.get_or_none(Mailbox.id == msg.mailbox_id) if msg else None
        if msg is None or box is None or not principal.sees(box.address, box.org_id):
            raise MxdError("not_found", "message not found")
        out = dict(_message_out(msg, box.address), mailbox_id=box.id, acknowledged=msg.acked_at is not None)
        if msg.direction == "out":
            out["delivery"] = delivery_status(msg.id)
        return out
    return JSONResponse(await ctx(request).db.read(work))


# ---------------------------------------------------------------- inbox polling
async def inbox_poll(request: Request) -> Response:
    principal = await authenticate(request, "read")
    limit, _ = page_params(request, INBOX_DEFAULT, INBOX_MOST)

    def work() -> dict:
        box = _visible_mailbox(principal, request.path_params["mailbox_id"])
        rows = acks.poll(box.id, limit + 1)
        data = [dict(_message_out(m, box.address), mailbox_id=box.id) for m in rows[:limit]]
        return {"mailbox_id": box.id, "data": data, "count": len(data), "has_more": len(rows) > limit}
    return JSONResponse(await ctx(request).db.read(work))


async def inbox_ack(request: Request) -> Response:
    principal = await authenticate(request, "read")
    body = await json_body(request)
    ids = body.get("message_ids")
    if (not isinstance(ids, list) or not ids or len(ids) > MAX_ACK
            or not all(isinstance(i, str) and 0 < len(i) <= 100 for i in ids)):
        raise MxdError("bad_request", f"message_ids must be a list of 1 to {MAX_ACK} message ids",
                       fix='{"message_ids": ["msg_..."]}')
    c = ctx(request)

    def work() -> dict:
        box = _visible_mailbox(principal, request.path_params["mailbox_id"])
        acked, missing = acks.ack(box.id, ids)
        return {"mailbox_id": box.id, "acknowledged": acked, "not_found": missing}
    out = await c.db.write(work)
    note_audit(request, acknowledged=len(out["acknowledged"]))
    return JSONResponse(out)


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
    ]
