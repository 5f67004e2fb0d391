"""Organisations: public sign-up and its verification (with mxd's own notices by mail), the caller's
organisation and limits, agents and their mailboxes."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mxd import access
from mxd.access import Principal
from mxd.errors import MxdError
from mxd.service import Services, shapes
from mxd.service.directory import change
from mxd.service.send import system_mail
from mxd.store import agents, directory, orgs
from mxd.store.models import Domain, Mailbox, Organization

log = logging.getLogger("mxd.service.orgs")


def limits(s: Services, org: Organization | None) -> dict:
    cap = org.daily_send_cap if org is not None and org.daily_send_cap is not None else s.cfg.daily_send_cap
    return {"daily_send_cap": cap, "retention_days": s.cfg.default_retention_days,
            "max_recipients_per_send": s.cfg.max_recipients_per_send}


def public_base(s: Services) -> str:
    """The configured public_url for links in mail mxd sends (empty: the mail names paths only). Never the
    request's Host header: a stranger would choose the link mxd signs and mails."""
    return s.cfg.public_url.rstrip("/")


# ---------------------------------------------------------------- sign-up
async def signup(s: Services, email: Any, name: Any, slug: Any, *, client_ip: str,
                 operator: bool) -> tuple[dict, bool]:
    """Sign up an organisation (unverified) and mail its owner the verification code: (answer, created)."""
    if not s.cfg.signup_enabled and not operator:
        raise MxdError("signup_disabled", "public sign-up is switched off on this server")
    org, code, created = await s.db.write(orgs.signup, email, name, slug, "" if operator else client_ip, None,
                                          s.cfg.signup_rate_per_ip_per_hour, s.cfg.signup_rate_per_hour)
    minutes = orgs.CODE_SECONDS // 60
    # Only mxd's own words: the organisation's name and slug, and the address as typed, are a stranger's
    # text, which this mail (signed for the server's domain) must not carry to the address it names.
    text = (f"Someone asked to sign up an organisation on {s.cfg.hostname} with this email address as its owner.\n\n"
            f"The verification code is:\n\n"
            f"    {code}\n\n"
            f"It expires in {minutes} minutes and allows {orgs.MAX_ATTEMPTS} attempts. Verify with:\n\n"
            f"    POST {public_base(s)}/v1/auth/signup/verify\n"
            f"    {{\"email\": \"<this address>\", \"verification_token\": \"<the code>\"}}\n\n"
            "If you did not ask for this, ignore this message: nothing happens without the code.\n")
    try:
        sent = await system_mail(s, org.owner_email, f"Your verification code: {code}", text)
    except MxdError as exc:            # the organisation waits unverified; signing up again retries the mail
        raise MxdError(exc.code, f"the verification email could not be sent: {exc.message}", fix=exc.fix,
                       status=exc.status, retry_after=exc.retry_after) from None
    return {"organization": shapes.organization(org), "status": "verification_sent",
            "verification": {"sent_to": org.owner_email, "expires_in": orgs.CODE_SECONDS,
                             "max_attempts": orgs.MAX_ATTEMPTS, "message_id": sent["id"]},
            "next": "POST /v1/auth/signup/verify {\"email\", \"verification_token\"}"}, created


async def verify_signup(s: Services, email: Any, code: Any) -> dict:
    """Verify an organisation's owner with the mailed code: its first API key (shown this once) and a
    welcome notice by mail (whose failure never loses the key)."""
    result = await s.db.write(orgs.verify, email, code)
    if result.error is not None:
        raise result.error
    org, row, secret = result.org, result.token, result.secret
    if org is None or row is None or secret is None:          # orgs.verify answers both unless it answers an error
        raise MxdError("internal", "the verification answered no organisation or key")
    lim = limits(s, org)
    base = public_base(s)
    text = (f"Welcome to {s.cfg.hostname}. The organisation this address signed up is verified.\n\n"
            f"Its first API key was shown once, in the answer to the verification call; keep it server-side.\n\n"
            f"Limits:\n"
            f"  - {lim['daily_send_cap']} outgoing recipients per rolling 24 hours\n"
            f"  - at most {lim['max_recipients_per_send']} recipients per message\n"
            f"  - mailboxes keep messages {lim['retention_days']} days unless set otherwise\n\n"
            + (f"API guide: {base}/llms.txt\nAgent skills: curl -fsSL {base}/install.sh | sh\n\n" if base else
               "API guide: GET /llms.txt on this server's API\nAgent skills: GET /install.sh on this server's API\n\n")
            + "Larger limits, more keys and billing are arranged with the server's operator.\n")
    try:
        sent = await system_mail(s, org.owner_email, f"Welcome to {s.cfg.hostname}", text)
        welcome = {"status": sent["status"], "message_id": sent["id"]}
    except MxdError as exc:            # the key is shown once: a failed notice must not lose it
        log.warning("welcome notice to %s not sent: %s", org.owner_email, exc.message)
        welcome = {"status": "failed", "error": exc.code}
    return {"organization": shapes.organization(org), "api_key": secret, "api_key_id": row.id,
            "scopes": row.scopes, "limits": lim, "welcome_notice": welcome}


async def organization(s: Services, principal: Principal) -> dict:
    """The caller's organisation and its limits (the operator's tokens have none)."""
    if principal.org_id is None:
        return {"organization": None, "operator": principal.is_operator, "limits": limits(s, None)}
    org = await s.db.read(orgs.get, principal.org_id)
    return {"organization": shapes.organization(org), "operator": False, "limits": limits(s, org)}


# ---------------------------------------------------------------- agents
async def agent_page(s: Services, principal: Principal, external_id: str | None, limit: int,
                     cursor: str | None) -> tuple[list[dict], int, str | None]:
    rows = await s.db.read(agents.list_agents, principal, external_id, limit, cursor)
    return [shapes.agent(a) for a in rows], len(rows), rows[-1].id if rows else None


async def create_agent(s: Services, principal: Principal, org: Any, fields: dict) -> tuple[dict, bool]:
    """An agent of the organisation named (access.org_for_new; /v1's organization_id); (agent, created)."""
    def work() -> tuple[Any, bool]:
        return agents.create(access.org_for_new(principal, org, "organization_id"), fields)
    agent, created = await s.db.write(work)
    return shapes.agent(agent), created


async def agent(s: Services, principal: Principal, agent_id: str) -> dict:
    return shapes.agent(await s.db.read(agents.get, principal, agent_id))


@dataclass
class AgentMailbox:
    """A new agent mailbox: the part before @, optionally a domain (by id), display name and retention."""
    local_part: Any
    display_name: Any = ""
    retention_days: Any = None
    domain_id: Any = None


def _create_agent_mailbox(principal: Principal, agent_id: str, want: AgentMailbox,
                          cfg_default: str) -> tuple[Mailbox, bool]:
    agent_row = agents.get(principal, agent_id)
    local = want.local_part
    if not isinstance(local, str) or not local or "@" in local or "+" in local:
        raise MxdError("bad_request", "local_part must be the part before @, without @ or +",
                       fix='{"local_part": "support-agent", "display_name": "Support Agent"}')
    display = want.display_name or ""
    retention = want.retention_days
    if not isinstance(display, str) or len(display) > 200:
        raise MxdError("bad_request", "display_name must be a string of at most 200 characters")
    if retention is not None and (not isinstance(retention, int) or isinstance(retention, bool)
                                  or not 1 <= retention <= 3650):
        raise MxdError("bad_request", "retention_days must be an integer from 1 to 3650")
    default = orgs.default_domain(cfg_default)
    if want.domain_id is None:
        domain = default
    else:
        found = Domain.get_or_none(Domain.id == want.domain_id) if isinstance(want.domain_id, str) else None
        # An organisation uses its own domains and the default one; the operator also its own (org NULL).
        if found is None or not (found.org_id == agent_row.org_id or found.id == default.id
                                 or (found.org_id is None and principal.is_operator)):
            raise MxdError("not_found", f"domain {want.domain_id!r} not found",
                           fix="Use a domain of this organisation (GET /v1/domains), or omit domain_id.")
        domain = found
    box, created = directory.create_mailbox(f"{local}@{domain.name}", display, retention,
                                            org_id=agent_row.org_id, agent_id=agent_row.id)
    if not created and box.agent_id != agent_row.id:
        raise MxdError("conflict", f"{box.address} exists already", fix="Choose another local_part.")
    return box, created


async def create_agent_mailbox(s: Services, principal: Principal, agent_id: str,
                               want: AgentMailbox) -> tuple[Mailbox, bool]:
    """A mailbox of an agent, on its organisation's domain or the default one; the MX accepts mail for it at once."""
    return await change(s, _create_agent_mailbox, principal, agent_id, want, s.cfg.default_domain)


async def agent_mailboxes(s: Services, principal: Principal, agent_id: str) -> list[Mailbox]:
    def work() -> list[Mailbox]:
        agent_row = agents.get(principal, agent_id)
        return [b for b in agents.mailboxes(agent_row.id) if principal.sees(b.address, b.org_id)]
    return await s.db.read(work)
