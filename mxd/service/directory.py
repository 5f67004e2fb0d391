"""The directory: domains (with their DKIM keys and DNS checks), mailboxes, aliases and catch-alls.

Every change is written, then the in-memory snapshot RCPT TO resolves against is refreshed (`change`),
so the MX accepts mail for a new mailbox at once.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from mxd import access, dnsrecords, domaincheck, keys
from mxd.access import Principal
from mxd.address import AddressError, normalize_domain
from mxd.config import Config
from mxd.db import Database
from mxd.errors import MxdError
from mxd.service import Services
from mxd.store import directory
from mxd.store.models import Agent, Domain, Mailbox
from mxd.timefmt import iso

UNSET: Any = object()       # create_mailbox: no organisation named, the mailbox belongs to its domain's owner


# ---------------------------------------------------------------- shapes (/api)
def effective_retention(box: Mailbox, cfg: Config) -> int:
    """Days this mailbox keeps messages (0: forever): its own setting, else the server's default."""
    return box.retention_days if box.retention_days else cfg.default_retention_days


def mailbox_dict(box: Mailbox, cfg: Config | None = None) -> dict:
    out = {"id": box.id, "address": box.address, "domain": box.address.split("@", 1)[1],
           "display_name": box.display_name, "retention_days": box.retention_days,
           "org_id": box.org_id, "agent_id": box.agent_id, "created_at": iso(box.created_at)}
    if cfg is not None:
        out["effective_retention_days"] = effective_retention(box, cfg)
    return out


def domain_dict(d: Domain) -> dict:
    return {"id": d.id, "name": d.name, "org_id": d.org_id, "ready": d.ready, "ready_source": d.ready_source,
            "ownership_verified": d.org_id is None or d.owner_verified_at is not None,
            "mta_sts_mode": d.mta_sts_mode, "created_at": iso(d.created_at)}


def retention_dict(box: Mailbox, cfg: Config) -> dict:
    return {"mailbox": box.address, "mailbox_id": box.id, "retention_days": box.retention_days,
            "effective_retention_days": effective_retention(box, cfg),
            "default_retention_days": cfg.default_retention_days,
            "source": "mailbox" if box.retention_days else "default"}


# ---------------------------------------------------------------- writing
async def change(s: Services, fn: Callable[..., Any], *args: Any) -> Any:
    """Write a directory change, then reload the in-memory snapshot RCPT TO resolves against."""
    result = await s.db.write(fn, *args)
    await s.db.read(s.directory.refresh)
    return result


# ---------------------------------------------------------------- domains
async def domains(s: Services, principal: Principal) -> list[Domain]:
    """The principal's organisation's domains by name (the operator: every domain)."""
    return await s.db.read(directory.list_domains, principal.org_id, principal.is_operator)


async def create_domain(s: Services, principal: Principal, name: str, org: Any = None, *,
                        only_same_org: bool = False, org_field: str = "org_id") -> tuple[Domain, bool]:
    """Register a domain for the organisation the caller names (access.org_for_new) and make its DKIM keys:
    (domain, created). A domain registered already is the caller's answer only if it owns it (409 otherwise;
    `only_same_org`: only if it is of that very organisation). `org_field`: the body's key naming `org`."""
    def work() -> tuple[Domain, bool]:
        org_id = access.org_for_new(principal, org, org_field)
        domain, created = directory.create_domain(name, org_id, s.cfg.hostname)
        if not created and only_same_org and domain.org_id != org_id:
            raise MxdError("conflict", f"{domain.name} is served here for someone else",
                           fix="Use a domain (or subdomain) you control that no one else registered here.")
        if not created and not principal.owns(domain.org_id):
            raise MxdError("conflict", f"the domain {domain.name} is registered already",
                           fix="Use a domain you control that is not yet on this server.")
        return domain, created
    domain, created = await change(s, work)
    await asyncio.get_running_loop().run_in_executor(None, keys.generate_dkim_keys, s.cfg.dkim_dir, domain.name)
    return domain, created


def setup_domain(db: Database, cfg: Config, name: str) -> tuple[Domain, list[keys.DkimKey]]:
    """The operator's domain at setup (`mxd init`, before the daemon runs): registered, with its DKIM keys."""
    domain, _ = db.write_sync(directory.create_domain, name)
    return domain, keys.generate_dkim_keys(cfg.dkim_dir, domain.name)


async def domain(s: Services, principal: Principal, name: str) -> Domain:
    """A domain by name, if the principal's organisation owns it (404 otherwise)."""
    return await s.db.read(access.domain, principal, name)


async def domain_by_id(s: Services, principal: Principal, domain_id: str) -> Domain:
    return await s.db.read(access.visible, Domain, domain_id, principal, f"domain {domain_id!r} not found")


async def delete_domain(s: Services, principal: Principal, name: str) -> None:
    def work() -> None:
        directory.delete_domain(access.domain(principal, name).name)
    await change(s, work)


async def set_readiness(s: Services, name: str, ready: bool) -> Domain:
    """The operator's override; an organisation's domain made ready is routed from now on."""
    return await change(s, directory.set_readiness, name, ready)


async def set_mta_sts_mode(s: Services, principal: Principal, name: str, mode: object) -> Domain:
    """The MTA-STS policy a domain serves: "off" (none), "testing" (senders report, deliver anyway) or "enforce"
    (senders deliver only over verified TLS to our MX). Its _mta-sts TXT id changes with it (the DNS plan)."""
    if not isinstance(mode, str) or mode not in dnsrecords.MTA_STS_MODES:
        raise MxdError("bad_request", f"mta_sts_mode must be one of {', '.join(dnsrecords.MTA_STS_MODES)}",
                       fix="Start with \"testing\"; switch to \"enforce\" once verify says enforce_ready.")

    def work() -> Domain:
        domain = access.domain(principal, name)
        if domain.mta_sts_mode != mode:
            domain.mta_sts_mode = mode
            domain.save()
        return domain
    return await s.db.write(work)


async def mta_sts_policy(s: Services, host: str) -> str | None:
    """The MTA-STS policy text served for the request host mta-sts.<domain> (RFC 8461 3.3), or None when the
    domain is not ours or its MTA-STS is off."""
    label, _, rest = host.lower().rstrip(".").partition(".")
    if label != dnsrecords.MTA_STS_LABEL or not rest:
        return None
    try:
        name = normalize_domain(rest)
    except AddressError:
        return None
    row = await s.db.read(lambda: Domain.get_or_none(Domain.name == name))
    if row is None or row.mta_sts_mode not in ("testing", "enforce"):
        return None
    return dnsrecords.mta_sts_policy(name, s.cfg.hostname, row.mta_sts_mode, s.cfg.mta_sts_max_age)


def dns_plan(s: Services, domain: Domain) -> dict:
    """The DNS records the domain needs, with the ownership proof of an organisation's domain."""
    return domaincheck.plan_json(s.cfg, domain.name, domaincheck.ownership(domain), domain.mta_sts_mode)


async def check(s: Services, domain: Domain) -> domaincheck.DomainCheck:
    """The domain's DNS as published now, against its plan, and its MTA-STS policy as senders fetch it."""
    return await domaincheck.check(s.cfg, domain.name, s.resolver, domaincheck.ownership(domain),
                                   domain.mta_sts_mode)


def mx_found(result: domaincheck.DomainCheck) -> bool:
    """Whether the check found the domain's MX record pointing here."""
    return any(x.record.type == "MX" and x.status == domaincheck.FOUND for x in result.checks)


async def verify(s: Services, domain: Domain) -> tuple[Domain, domaincheck.DomainCheck, bool]:
    """Check the domain's DNS and record the outcome: (domain, the check, whether it became ready now)."""
    result = await check(s, domain)
    domain, newly = await s.db.write(domaincheck.record_verification, domain.name, result.ok,
                                     result.definitely_broken, result.owner_found)
    await s.db.read(s.directory.refresh)
    return domain, result, newly


# ---------------------------------------------------------------- mailboxes
async def mailboxes(s: Services, principal: Principal, *, by_id: bool = False) -> list[Mailbox]:
    """The mailboxes the principal may see, by address (or by id)."""
    def work() -> list[Mailbox]:
        if not by_id:
            return directory.list_mailboxes(access.visible_mailbox_ids(principal))
        query = access.scoped(Mailbox.select().order_by(Mailbox.id), Mailbox, principal)
        return [b for b in query if principal.sees(b.address, b.org_id)]
    return await s.db.read(work)


async def mailbox(s: Services, principal: Principal, ref: str) -> Mailbox:
    """A mailbox by address or id, if the principal may see it (404 otherwise)."""
    return await s.db.read(access.mailbox, principal, ref)


async def mailbox_by_id(s: Services, principal: Principal, mailbox_id: str) -> Mailbox:
    return await s.db.read(access.visible, Mailbox, mailbox_id, principal)


async def create_mailbox(s: Services, principal: Principal, address: str, display_name: str = "",
                         retention_days: int | None = None, *, org: Any = UNSET,
                         agent_id: str | None = None) -> tuple[Mailbox, bool]:
    """A mailbox on a domain the caller owns: (mailbox, created). It belongs to its domain's owner, or to the
    organisation named (access.org_for_new), or to its agent's organisation."""
    def work() -> tuple[Mailbox, bool]:
        domain_name = address.rsplit("@", 1)[-1]
        if not principal.is_operator:
            access.domain(principal, domain_name)          # 404 for a domain it does not own
        org_id = access.org_for_new(principal, org) if org is not UNSET else None
        if agent_id is not None:
            agent = Agent.get_or_none(Agent.id == agent_id)
            if agent is None or not principal.owns(agent.org_id):
                raise MxdError("not_found", f"agent {agent_id!r} not found")
            org_id = agent.org_id
        if org is not UNSET or agent_id is not None:
            box, created = directory.create_mailbox(address, display_name, retention_days, org_id, agent_id)
        else:
            box, created = directory.create_mailbox(address, display_name, retention_days)
        if not created and not principal.sees(box.address, box.org_id):
            raise MxdError("conflict", f"the mailbox {box.address} exists already")
        return box, created
    return await change(s, work)


async def delete_mailbox(s: Services, principal: Principal, ref: str) -> str:
    """Delete a mailbox the principal may see; answers its address."""
    def work() -> str:
        box = access.mailbox(principal, ref)
        directory.delete_mailbox(box.id)
        return box.address
    return await change(s, work)


async def set_retention(s: Services, principal: Principal, ref: str, days: int | None) -> Mailbox:
    """A mailbox's own retention in days (None: the server's default)."""
    def work() -> Mailbox:
        box = access.mailbox(principal, ref)
        return directory.set_retention(box.id, days)
    return await s.db.write(work)


# ---------------------------------------------------------------- aliases, catch-alls
async def aliases(s: Services, principal: Principal) -> list[dict]:
    rows = await s.db.read(directory.list_aliases, principal)
    return [{"address": a, "targets": [b.address for b in boxes]} for a, boxes in rows.items()]


async def create_alias(s: Services, principal: Principal, address: str, targets: list[str]) -> dict:
    rows = await change(s, directory.create_alias, address, targets, principal)
    return {"address": rows[0].address, "targets": await s.db.read(lambda: [r.mailbox.address for r in rows])}


async def delete_alias(s: Services, principal: Principal, address: str) -> None:
    await change(s, directory.delete_alias, address, principal)


def _catchall_dict(domain: Domain) -> dict:
    target = Mailbox.get_or_none(Mailbox.id == domain.catchall_mailbox_id) if domain.catchall_mailbox_id else None
    return {"domain": domain.name, "target": target.address if target else None}


async def catchall(s: Services, principal: Principal, domain_name: str) -> dict:
    return await s.db.read(lambda: _catchall_dict(access.domain(principal, domain_name)))


async def set_catchall(s: Services, principal: Principal, domain_name: str, target: str | None) -> dict:
    domain = await change(s, directory.set_catchall, domain_name, target, principal)
    return await s.db.read(_catchall_dict, domain)
