"""Administration: API tokens, the audit trail, retention, the bootstrap summary, and (the operator's)
outbound queue and suppression list."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import mxd
from mxd import access, retention
from mxd import address as addr
from mxd.access import Principal
from mxd.config import parse_hostport
from mxd.defences import counters, gate
from mxd.errors import MxdError
from mxd.service import Services, shapes
from mxd.service.directory import domain_dict, mailbox_dict
from mxd.service.mail import page
from mxd.store import audit, directory, suppression, tokens
from mxd.store import queue as outqueue
from mxd.store.models import Mailbox, Organization


async def health(s: Services) -> dict:
    """The server answers and its store too; and what the inbound defences are and did since start."""
    await s.db.read(lambda: Mailbox.select().limit(1).count())
    return {"status": "ok", "hostname": s.cfg.hostname, "defences": dict(gate.describe(s.cfg), **counters.snapshot())}


# ---------------------------------------------------------------- tokens
def _grant(principal: Principal, org: Any, scopes: Any, mailboxes: Any) -> tuple[str | None, Any]:
    """(org_id, mailboxes) for a new token, no wider than the caller: an organisation's admin grants
    scopes and mailboxes of its own organisation only. Runs in a reader or the writer."""
    org_id = access.org_for_new(principal, org)
    if principal.is_operator:
        return org_id, mailboxes
    if isinstance(scopes, list) and not principal.is_admin and not set(scopes) <= principal.scopes:
        raise MxdError("forbidden", "a token cannot grant scopes it does not hold itself")
    if isinstance(mailboxes, list):
        for ref in mailboxes:
            if not isinstance(ref, str):
                raise MxdError("bad_request", "mailboxes must be a list of addresses")
            access.mailbox(principal, ref)           # 404 for a mailbox outside the organisation
    elif principal.mailboxes is not None and not principal.is_admin:
        raise MxdError("forbidden", "this token is limited to mailboxes; list the mailboxes of the new token")
    return org_id, mailboxes


async def tokens_of(s: Services, principal: Principal) -> list[dict]:
    rows = await s.db.read(tokens.list_tokens, principal.org_id, principal.is_operator)
    return [shapes.token(t) for t in rows]


async def create_token(s: Services, principal: Principal, name: Any, scopes: Any, mailboxes: Any = None,
                       org: Any = None) -> dict:
    """A new token (its secret under "token", shown this once), no wider than the caller's."""
    def work() -> tuple:
        org_id, boxes = _grant(principal, org, scopes, mailboxes)
        return tokens.create(name, scopes, boxes, org_id)
    row, secret = await s.db.write(work)
    return dict(shapes.token(row), token=secret)


async def revoke_token(s: Services, principal: Principal, token_id: str) -> None:
    await s.db.write(tokens.revoke, token_id, principal.org_id, principal.is_operator)


# ---------------------------------------------------------------- audit
async def audit_page(s: Services, principal: Principal, *, mailbox: str | None, actor: str | None,
                     action: str | None, since: float | None, until: float | None, result: str | None,
                     limit: int, cursor: str | None) -> dict:
    """Audit rows, newest first. An organisation's token sees its organisation's rows; the operator's tokens
    every row; a token limited to mailboxes only the rows of one of its mailboxes (`mailbox`: an address)."""
    if mailbox:
        parsed = addr.try_parse(mailbox)
        mailbox = parsed.key if parsed else mailbox.lower()
    if principal.mailboxes is not None and not principal.is_admin:
        if not mailbox:
            raise MxdError("bad_request", "this token is limited to mailboxes: add ?mailbox= with one of them")
        if mailbox not in principal.mailboxes:
            raise MxdError("not_found", f"mailbox {mailbox!r} not found")
    rows = await s.db.read(lambda: audit.query(
        org_id=principal.org_id, everyone=principal.org_id is None, actor=actor, mailbox=mailbox, action=action,
        since=since, until=until, result=result, limit=limit, cursor=cursor))
    return page([shapes.audit_entry(r) for r in rows], limit, len(rows), rows[-1].id if rows else None)


# ---------------------------------------------------------------- retention
async def run_retention(s: Services, principal: Principal, mailbox: str | None = None) -> dict:
    """Apply retention now: every mailbox the caller administers, or the one named."""
    if mailbox:
        ids: list[str] | None = [(await s.db.read(access.mailbox, principal, mailbox)).id]
    else:
        ids = await s.db.read(access.visible_mailbox_ids, principal)        # None for the operator: everything
    report = await retention.run(s.cfg, s.db, ids)
    report["ran_at"] = datetime.fromtimestamp(report["ran_at"], timezone.utc).isoformat().replace("+00:00", "Z")
    return report


# ---------------------------------------------------------------- bootstrap
def _port(listen: str) -> int | None:
    if not listen:
        return None
    try:
        return parse_hostport(listen)[1]
    except Exception:
        return None


def _bootstrap(principal: Principal, cfg: Any) -> dict:
    """Runs in a reader: everything a new operator or agent needs, in one answer."""
    domains = directory.list_domains(principal.org_id, principal.is_operator)
    boxes = directory.list_mailboxes(access.visible_mailbox_ids(principal))
    org = Organization.get_or_none(Organization.id == principal.org_id) if principal.org_id else None
    steps: list[str] = []
    if principal.is_admin and not domains:
        steps.append('Create a domain: POST /api/domains {"domain": "example.com"}')
    for d in domains:
        if not d.ready:
            steps.append(f"Publish DNS for {d.name}: GET /api/domains/{d.name}/dns-plan, then "
                         f"POST /api/domains/{d.name}/verify")
    own = [b for b in boxes if not b.address.startswith(("postmaster@", "abuse@"))]
    if principal.is_admin and domains and not own:
        steps.append(f'Create a mailbox: POST /api/mailboxes {{"address": "agent@{domains[0].name}"}}')
    if principal.is_admin and own:
        steps.append('Give each agent a token limited to its mailbox: POST /api/tokens '
                     f'{{"name": "agent", "scopes": ["read", "search", "draft", "send"], "mailboxes": ["{own[0].address}"]}}')
    if not principal.has("send"):
        steps.append("This token cannot send mail (read never implies send); ask for a token with the 'send' scope.")
    elif boxes and any(d.ready for d in domains):
        steps.append('Send: POST /api/send {"from": ..., "to": [...], "subject": ..., "text": ...}')
    if boxes:
        steps.append(f"Read mail: GET /api/messages?mailbox={boxes[0].address}, or poll and acknowledge")
    return {
        "server": {"hostname": cfg.hostname, "version": mxd.__version__,
                   "default_retention_days": cfg.default_retention_days,
                   "default_domain": cfg.default_domain or (domains[0].name if domains else None)},
        "principal": {"token_id": principal.token_id, "name": principal.name, "scopes": sorted(principal.scopes),
                      "mailboxes": sorted(principal.mailboxes) if principal.mailboxes is not None else None,
                      "org_id": principal.org_id, "operator": principal.is_operator},
        "organization": {"id": org.id, "name": org.name, "slug": org.slug} if org else None,
        "domains": [dict(domain_dict(d), dns_plan=f"/api/domains/{d.name}/dns-plan") for d in domains],
        "mailboxes": [mailbox_dict(b, cfg) for b in boxes],
        "ports": {"mx": _port(cfg.mx_listen), "submission": _port(cfg.submission_listen),
                  "submissions": _port(cfg.submissions_listen), "http": _port(cfg.http_listen)},
        "endpoints": {"openapi": "/openapi.json", "mcp": "/mcp", "messages": "/api/messages",
                      "send": "/api/send", "audit": "/api/audit"},
        "next_steps": steps,
    }


async def bootstrap(s: Services, principal: Principal) -> dict:
    """What a new operator or agent needs in one call: server, caller, domains, mailboxes, ports, next steps."""
    return await s.db.read(_bootstrap, principal, s.cfg)


# ---------------------------------------------------------------- queue and suppressions (the operator's)
async def queue_page(s: Services, status: str | None, limit: int, cursor: str | None) -> dict:
    rows = await s.db.read(outqueue.list_entries, status, limit, cursor)
    return page([shapes.queue_entry(r) for r in rows], limit, len(rows), rows[-1].id if rows else None)


async def queue_get(s: Services, entry_id: str) -> dict:
    """One queue entry: its state, the last reply, and the transport policy its last attempt was held to."""
    return shapes.queue_entry(await s.db.read(outqueue.get, entry_id))


QUEUE_ACTIONS = {"retry": outqueue.retry_now, "hold": outqueue.hold, "release": outqueue.release}


async def queue_action(s: Services, action: str, entry_id: str) -> dict:
    """retry (now), hold or release a queue entry; wakes the delivery workers."""
    entry = await s.db.write(QUEUE_ACTIONS[action], entry_id)
    s.queued()
    return shapes.queue_entry(entry)


async def queue_drop(s: Services, entry_id: str) -> None:
    await s.db.write(outqueue.drop, entry_id)


def _suppression_org(value: Any) -> str | None:
    """organization_id of a suppression call: an organisation's id, or null/"" for the operator's own mailboxes."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or Organization.get_or_none(Organization.id == value) is None:
        raise MxdError("not_found", f"organisation {value!r} not found")
    return value


async def suppressions_page(s: Services, organization: str | None, limit: int, cursor: str | None) -> dict:
    """Suppressions of one organisation ("" or None with every_org False: the operator's), or of all (None)."""
    rows = await s.db.read(suppression.list_all, limit, cursor, organization or None, organization is None)
    return page([shapes.suppression(r) for r in rows], limit, len(rows),
                suppression.cursor(rows[-1]) if rows else None)


async def suppress(s: Services, address: str, reason: str, detail: str, organization: Any) -> dict:
    """Suppress an address for one organisation, or for the operator's own mailboxes."""
    def work() -> Any:
        return suppression.add(address, reason, detail, _suppression_org(organization))
    return shapes.suppression(await s.db.write(work))


async def unsuppress(s: Services, address: str, organization: str | None) -> None:
    """Lift a suppression for every organisation (None), or for that one only."""
    await s.db.write(suppression.remove, address, organization or None, organization is None)
