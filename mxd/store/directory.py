"""The directory: domains, mailboxes, aliases and catch-alls, and how an address resolves to mailboxes.

Functions taking no `db` argument run inside a `Database.write`/`read` call.
`Directory` keeps an in-memory snapshot so that RCPT TO resolves without a query.

Ownership: every domain and mailbox has an org_id (None: the operator's). The
`owned_*` functions take the caller (anything with `owns(org_id)` and
`sees(address, org_id)`, i.e. a `mxd.store.tokens.Principal`) and answer 404 for what
it may not see, so an organisation never learns of another's objects.

Tenant boundaries: on the operator's domains (shared with organisations) the role
addresses of RFC 2142 and those certificate authorities mail for domain validation
stay the operator's; an organisation cannot register the server's hostname, the
operator's domains or a subdomain of either; and an organisation's domain is routed
(the MX, simulate, local delivery) only once its ownership proof, a TXT record
`_mxd-verify.<domain>` holding `mxd-verify=<token>`, has been found.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from mxd import address as addr
from mxd.db import execute
from mxd.errors import MxdError
from mxd.ids import new_id
from mxd.store.models import Alias, Domain, Mailbox

# RFC 5321 4.5.1 and RFC 2142: these exist for every served domain.
REQUIRED_LOCALS = ("postmaster", "abuse")
_DOMAIN_ORG = object()      # create_mailbox: the mailbox belongs to its domain's owner
# Local parts an organisation may not hold on the operator's (shared) domains: mail to them speaks for the
# server. RFC 2142 (business, network operations and service mailboxes); the CA/Browser Forum Baseline
# Requirements 3.2.2.4.4 (admin, administrator, webmaster, hostmaster, postmaster validate certificates);
# the names certificate authorities and mail software also use; and mxd's own return path (bounces+<id>@).
RESERVED_LOCALS = frozenset({
    "info", "marketing", "sales", "support", "abuse", "noc", "security", "postmaster", "hostmaster",
    "usenet", "news", "webmaster", "www", "uucp", "ftp",
    "admin", "administrator", "root", "sysadmin", "ssladmin", "ssl-admin", "ssladministrator", "sslwebmaster",
    "mailer-daemon", "daemon", "nobody", "noreply", "no-reply", "donotreply", "do-not-reply",
    "bounce", "bounces", "dmarc", "tls-rpt",
})
VERIFY_LABEL = "_mxd-verify"     # the ownership proof: TXT _mxd-verify.<domain> "mxd-verify=<token>"
# Domains whose mail is routed here: the operator's, and organisations' whose ownership is proven.
ROUTED_SQL = '("org_id" IS NULL OR "owner_verified_at" IS NOT NULL)'


class Caller(Protocol):
    @property
    def org_id(self) -> str | None: ...

    @property
    def is_operator(self) -> bool: ...
    def owns(self, org_id: str | None) -> bool: ...
    def sees(self, mailbox_address: str, mailbox_org: str | None) -> bool: ...


def _address(text: str) -> addr.Address:
    try:
        return addr.parse(text)
    except addr.AddressError as exc:
        raise MxdError("invalid_address", f"{text!r} is not a valid address: {exc}") from None


# ---------------------------------------------------------------- domains
def _under(name: str, parent: str) -> bool:
    return name == parent or name.endswith("." + parent)


def check_org_domain(name: str, hostname: str) -> None:
    """Refuse as an organisation's domain the server's hostname, its parents and subdomains, and the
    operator's domains and their subdomains: mail for them is the server's (and its operator's)."""
    host = addr.normalize_domain(hostname) if hostname else ""
    if host and (_under(name, host) or _under(host, name)):
        raise MxdError("domain_reserved", f"{name} is this server's hostname, or a parent or subdomain of it")
    labels = name.split(".")
    parents = [".".join(labels[i:]) for i in range(len(labels))]
    if Domain.select(Domain.id).where(Domain.name.in_(parents) & Domain.org_id.is_null()).exists():
        raise MxdError("domain_reserved", f"{name} is one of the operator's domains, or a subdomain of one")


def create_domain(name: str, org_id: str | None = None, hostname: str = "") -> tuple[Domain, bool]:
    """Create a domain (owned by `org_id`, None: the operator) with its postmaster@ mailbox and abuse@
    alias; returns (domain, created). An existing domain is returned as it is, whoever owns it. An
    organisation's domain must not be the server's (`hostname`, the operator's domains) and gets the
    token of its ownership proof."""
    try:
        key = addr.normalize_domain(name)
    except addr.AddressError as exc:
        raise MxdError("bad_request", f"{name!r} is not a valid domain: {exc}") from None
    existing = Domain.get_or_none(Domain.name == key)
    if existing and existing.org_id == org_id:
        return existing, False
    if org_id is not None:
        check_org_domain(key, hostname)
    if existing:
        return existing, False
    domain = Domain.create(id=new_id("dom"), name=key, org_id=org_id,
                           verify_token=secrets.token_hex(16) if org_id is not None else None)
    postmaster = Mailbox.create(id=new_id("mbx"), address=f"postmaster@{key}", domain=domain,
                                display_name="Postmaster", org_id=org_id)
    Alias.create(id=new_id("als"), address=f"abuse@{key}", mailbox=postmaster)
    return domain, True


def get_domain(name: str) -> Domain:
    try:
        key = addr.normalize_domain(name)
    except addr.AddressError:
        raise MxdError("not_found", f"domain {name!r} not found") from None
    domain = Domain.get_or_none(Domain.name == key)
    if domain is None:
        raise MxdError("not_found", f"domain {name!r} not found")
    return domain


def list_domains(org_id: str | None = None, everyone: bool = True) -> list[Domain]:
    """Every domain, or (everyone=False) those of one organisation (None: the operator's own)."""
    query = Domain.select().order_by(Domain.name)
    if not everyone:
        query = query.where(Domain.org_id.is_null() if org_id is None else Domain.org_id == org_id)
    return list(query)


def owned_domain(caller: Caller, name: str) -> Domain:
    """The domain if the caller owns it (the operator owns every one); 404 otherwise."""
    domain = get_domain(name)
    if not caller.owns(domain.org_id):
        raise MxdError("not_found", f"domain {name!r} not found")
    return domain


def delete_domain(name: str) -> None:
    domain = get_domain(name)
    Alias.delete().where(Alias.mailbox.in_(Mailbox.select(Mailbox.id).where(Mailbox.domain == domain))).execute()
    domain.delete_instance(recursive=True)


def set_readiness(name: str, ready: bool, source: str = "operator") -> Domain:
    """The operator's override; marking an organisation's domain ready also vouches for its ownership."""
    domain = get_domain(name)
    domain.ready, domain.ready_source, domain.ready_at = ready, source, time.time()
    if ready and domain.org_id is not None and domain.owner_verified_at is None:
        domain.owner_verified_at = domain.ready_at
    domain.save()
    return domain


def routed(names: list[str]) -> set[str]:
    """Of these domain names, those whose mail is routed here (hand-written SQL: it runs for every send)."""
    if not names:
        return set()
    marks = ",".join("?" * len(names))
    return {r[0] for r in execute(f'SELECT "name" FROM "domain" WHERE "name" IN ({marks}) AND {ROUTED_SQL}',
                                  list(names)).fetchall()}


def reserved_on_shared(parsed: addr.Address, domain: Domain, owner: str | None) -> None:
    """Refuse a role or certificate-validation address on the operator's domain for anyone but the operator."""
    if domain.org_id is None and owner is not None and parsed.base_local.lower() in RESERVED_LOCALS:
        raise MxdError("reserved_address", f"{parsed.key} is reserved for the server's operator")


# ---------------------------------------------------------------- mailboxes
def create_mailbox(address: str, display_name: str = "", retention_days: int | None = None,
                   org_id: Any = _DOMAIN_ORG, agent_id: str | None = None) -> tuple[Mailbox, bool]:
    """Create a mailbox on a served domain; it belongs to `org_id` (by default its domain's owner).
    Returns (mailbox, created); an existing mailbox is returned as it is."""
    parsed = _address(address)
    if parsed.tag is not None:
        raise MxdError("invalid_address", f"{address!r} holds a +tag; create the base address instead",
                       fix="Mail to local+tag@domain reaches local@domain by itself.")
    domain = Domain.get_or_none(Domain.name == parsed.domain)
    if domain is None:
        raise MxdError("domain_not_served", f"mxd does not serve the domain {parsed.domain}")
    owner = domain.org_id if org_id is _DOMAIN_ORG else org_id
    reserved_on_shared(parsed, domain, owner)
    existing = Mailbox.get_or_none(Mailbox.address == parsed.key)
    if existing:
        return existing, False
    # RFC 5321 4.5.1 / RFC 2142: postmaster@ and abuse@ reach the domain's owner, never a tenant of it
    if parsed.local.lower() in REQUIRED_LOCALS and owner != domain.org_id:
        raise MxdError("conflict", f"{parsed.key} is reserved for the domain's owner", status=409)
    if Alias.select().where(Alias.address == parsed.key).exists():      # a mailbox would shadow the alias
        raise MxdError("conflict", f"{parsed.key} is an alias already", status=409,
                       fix="Delete the alias first (DELETE /api/aliases/{alias}), or choose another address.")
    box = Mailbox.create(id=new_id("mbx"), address=parsed.key, domain=domain,
                         display_name=display_name or "", retention_days=retention_days,
                         org_id=owner, agent_id=agent_id)
    return box, True


def get_mailbox(ref: str) -> Mailbox:
    """A mailbox by id or by address."""
    if ref.startswith("mbx_"):
        box = Mailbox.get_or_none(Mailbox.id == ref)
    else:
        parsed = addr.try_parse(ref)
        box = Mailbox.get_or_none(Mailbox.address == parsed.key) if parsed else None
    if box is None:
        raise MxdError("not_found", f"mailbox {ref!r} not found")
    return box


def owned_mailbox(caller: Caller, ref: str) -> Mailbox:
    """The mailbox if the caller may see it (its organisation's and within its token's mailboxes); 404 otherwise."""
    try:
        box = get_mailbox(ref)
    except MxdError:
        raise MxdError("not_found", f"mailbox {ref!r} not found") from None
    if not caller.sees(box.address, box.org_id):
        raise MxdError("not_found", f"mailbox {ref!r} not found")
    return box


def set_retention(ref: str, days: int | None) -> Mailbox:
    """A mailbox's own retention in days; None: the server's default_retention_days."""
    box = get_mailbox(ref)
    box.retention_days = days
    box.save()
    return box


def list_mailboxes(ids: list[str] | None = None) -> list[Mailbox]:
    query = Mailbox.select().order_by(Mailbox.address)
    if ids is not None:
        query = query.where(Mailbox.id.in_(ids))
    return list(query)


def delete_mailbox(ref: str) -> None:
    box = get_mailbox(ref)
    Domain.update(catchall_mailbox_id=None).where(Domain.catchall_mailbox_id == box.id).execute()
    box.delete_instance(recursive=True)


# ---------------------------------------------------------------- aliases and catch-alls
def create_alias(address: str, targets: list[str], caller: Caller | None = None) -> list[Alias]:
    """An alias from `address` to one or more mailboxes; with a caller, on its own domain and mailboxes."""
    parsed = _address(address)
    domain = Domain.get_or_none(Domain.name == parsed.domain)
    if domain is None or (caller is not None and not caller.owns(domain.org_id)):
        raise MxdError("domain_not_served", f"mxd does not serve the domain {parsed.domain}",
                       fix="Create the domain first (POST /api/domains), or use one of your own.")
    if caller is not None and not caller.is_operator:
        reserved_on_shared(parsed, domain, caller.org_id)
    if Mailbox.get_or_none(Mailbox.address == parsed.key):
        raise MxdError("conflict", f"{parsed.key} is a mailbox already")
    if not targets:
        raise MxdError("bad_request", "an alias needs at least one target mailbox")
    boxes = [get_mailbox(t) if caller is None else owned_mailbox(caller, t) for t in targets]
    rows = []
    for box in boxes:
        row = Alias.get_or_none((Alias.address == parsed.key) & (Alias.mailbox == box))
        rows.append(row or Alias.create(id=new_id("als"), address=parsed.key, mailbox=box))
    return rows


def list_aliases(caller: Caller | None = None) -> dict[str, list[Mailbox]]:
    """Aliases and their target mailboxes; with a caller, only aliases on domains it owns."""
    out: dict[str, list[Mailbox]] = {}
    query = Alias.select(Alias, Mailbox).join(Mailbox).order_by(Alias.address, Mailbox.address)
    names = None
    if caller is not None and not caller.is_operator:
        names = {d.name for d in list_domains(caller.org_id, everyone=False)}
    for row in query:
        if names is not None and row.address.rsplit("@", 1)[-1] not in names:
            continue
        out.setdefault(row.address, []).append(row.mailbox)
    return out


def delete_alias(address: str, caller: Caller | None = None) -> None:
    parsed = addr.try_parse(address)
    if parsed is not None and caller is not None:
        domain = Domain.get_or_none(Domain.name == parsed.domain)
        if domain is None or not caller.owns(domain.org_id):
            raise MxdError("not_found", f"alias {address!r} not found")
    deleted = Alias.delete().where(Alias.address == (parsed.key if parsed else address)).execute() if parsed else 0
    if not deleted:
        raise MxdError("not_found", f"alias {address!r} not found")


def set_catchall(domain_name: str, target: str | None, caller: Caller | None = None) -> Domain:
    """Where mail to unknown local parts of a domain goes (None: nowhere, 550 5.1.1)."""
    domain = get_domain(domain_name) if caller is None else owned_domain(caller, domain_name)
    if not target:
        domain.catchall_mailbox_id = None
    else:
        domain.catchall_mailbox_id = (get_mailbox(target) if caller is None else owned_mailbox(caller, target)).id
    domain.save()
    return domain


# ---------------------------------------------------------------- resolution
@dataclass(frozen=True)
class Resolution:
    kind: str                       # "local" | "unknown" (served domain, no such user) | "foreign"
    mailbox_ids: tuple[str, ...] = ()
    tag: str | None = None


@dataclass
class Snapshot:
    domains: set[str] = field(default_factory=set)
    mailboxes: dict[str, str] = field(default_factory=dict)        # address key -> mailbox id
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    catchalls: dict[str, str] = field(default_factory=dict)        # domain -> mailbox id
    shared: set[str] = field(default_factory=set)                  # the operator's domains
    tenant_boxes: set[str] = field(default_factory=set)            # ids of organisations' mailboxes

    def resolve(self, parsed: addr.Address) -> Resolution:
        if parsed.domain not in self.domains:
            return Resolution("foreign")
        found = self._resolve(parsed)
        # A reserved name on the operator's domain never reaches an organisation, whatever routes it
        # there (a mailbox or alias from before the names were reserved, a catch-all).
        if found.kind == "local" and parsed.domain in self.shared and parsed.base_local.lower() in RESERVED_LOCALS:
            kept = tuple(i for i in found.mailbox_ids if i not in self.tenant_boxes)
            return Resolution("local", kept, found.tag) if kept else Resolution("unknown")
        return found

    def _resolve(self, parsed: addr.Address) -> Resolution:
        for key, tag in ((parsed.key, None), (parsed.base_key, parsed.tag)):
            if key in self.mailboxes:
                return Resolution("local", (self.mailboxes[key],), tag)
            if key in self.aliases:
                return Resolution("local", self.aliases[key], tag)
            if tag is None and parsed.tag is None:
                break
        if parsed.domain in self.catchalls:
            return Resolution("local", (self.catchalls[parsed.domain],), None)
        return Resolution("unknown")


def load_snapshot() -> Snapshot:
    snap = Snapshot()
    snap.domains = {r[0] for r in execute(f'SELECT "name" FROM "domain" WHERE {ROUTED_SQL}').fetchall()}
    snap.shared = {r[0] for r in execute('SELECT "name" FROM "domain" WHERE "org_id" IS NULL').fetchall()}
    for m in Mailbox.select(Mailbox.address, Mailbox.id, Mailbox.org_id):
        snap.mailboxes[m.address] = m.id
        if m.org_id is not None:
            snap.tenant_boxes.add(m.id)
    aliases: dict[str, list[str]] = {}
    for row in Alias.select(Alias.address, Alias.mailbox):
        aliases.setdefault(row.address, []).append(row.mailbox_id)
    snap.aliases = {k: tuple(v) for k, v in aliases.items()}
    snap.catchalls = {d.name: d.catchall_mailbox_id for d in Domain.select() if d.catchall_mailbox_id}
    return snap


class Directory:
    """An in-memory snapshot of the directory, reloaded after local changes and every `ttl` seconds
    (so that nodes sharing one PostgreSQL see each other's changes)."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._snap = Snapshot()
        self._loaded_at = 0.0

    def refresh(self) -> None:
        self._snap = load_snapshot()
        self._loaded_at = time.monotonic()

    def stale(self) -> bool:
        return time.monotonic() - self._loaded_at > self.ttl

    def resolve(self, parsed: addr.Address) -> Resolution:
        return self._snap.resolve(parsed)

    @property
    def domains(self) -> set[str]:
        return self._snap.domains
