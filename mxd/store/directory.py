"""The directory: domains, mailboxes, aliases and catch-alls, and how an address resolves to mailboxes.

Functions taking no `db` argument run inside a `Database.write`/`read` call.
`Directory` keeps an in-memory snapshot so that RCPT TO resolves without a query.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from mxd import address as addr
from mxd.errors import MxdError
from mxd.ids import new_id
from mxd.store.models import Alias, Domain, Mailbox

# RFC 5321 4.5.1 and RFC 2142: these exist for every served domain.
REQUIRED_LOCALS = ("postmaster", "abuse")


def _address(text: str) -> addr.Address:
    try:
        return addr.parse(text)
    except addr.AddressError as exc:
        raise MxdError("invalid_address", f"{text!r} is not a valid address: {exc}") from None


# ---------------------------------------------------------------- domains
def create_domain(name: str) -> tuple[Domain, bool]:
    """Create a domain with its postmaster@ mailbox and abuse@ alias; returns (domain, created)."""
    try:
        key = addr.normalize_domain(name)
    except addr.AddressError as exc:
        raise MxdError("bad_request", f"{name!r} is not a valid domain: {exc}") from None
    existing = Domain.get_or_none(Domain.name == key)
    if existing:
        return existing, False
    domain = Domain.create(id=new_id("dom"), name=key)
    postmaster = Mailbox.create(id=new_id("mbx"), address=f"postmaster@{key}", domain=domain,
                                display_name="Postmaster")
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


def list_domains() -> list[Domain]:
    return list(Domain.select().order_by(Domain.name))


def delete_domain(name: str) -> None:
    domain = get_domain(name)
    Alias.delete().where(Alias.mailbox.in_(Mailbox.select(Mailbox.id).where(Mailbox.domain == domain))).execute()
    domain.delete_instance(recursive=True)


def set_readiness(name: str, ready: bool, source: str = "operator") -> Domain:
    domain = get_domain(name)
    domain.ready, domain.ready_source, domain.ready_at = ready, source, time.time()
    domain.save()
    return domain


# ---------------------------------------------------------------- mailboxes
def create_mailbox(address: str, display_name: str = "", retention_days: int | None = None) -> tuple[Mailbox, bool]:
    parsed = _address(address)
    if parsed.tag is not None:
        raise MxdError("invalid_address", f"{address!r} holds a +tag; create the base address instead",
                       fix="Mail to local+tag@domain reaches local@domain by itself.")
    domain = Domain.get_or_none(Domain.name == parsed.domain)
    if domain is None:
        raise MxdError("domain_not_served", f"mxd does not serve the domain {parsed.domain}")
    existing = Mailbox.get_or_none(Mailbox.address == parsed.key)
    if existing:
        return existing, False
    box = Mailbox.create(id=new_id("mbx"), address=parsed.key, domain=domain,
                         display_name=display_name or "", retention_days=retention_days)
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
def create_alias(address: str, targets: list[str]) -> list[Alias]:
    parsed = _address(address)
    if not Domain.get_or_none(Domain.name == parsed.domain):
        raise MxdError("domain_not_served", f"mxd does not serve the domain {parsed.domain}")
    if Mailbox.get_or_none(Mailbox.address == parsed.key):
        raise MxdError("conflict", f"{parsed.key} is a mailbox already")
    if not targets:
        raise MxdError("bad_request", "an alias needs at least one target mailbox")
    boxes = [get_mailbox(t) for t in targets]
    rows = []
    for box in boxes:
        row = Alias.get_or_none((Alias.address == parsed.key) & (Alias.mailbox == box))
        rows.append(row or Alias.create(id=new_id("als"), address=parsed.key, mailbox=box))
    return rows


def list_aliases() -> dict[str, list[Mailbox]]:
    out: dict[str, list[Mailbox]] = {}
    for row in Alias.select(Alias, Mailbox).join(Mailbox).order_by(Alias.address, Mailbox.address):
        out.setdefault(row.address, []).append(row.mailbox)
    return out


def delete_alias(address: str) -> None:
    parsed = addr.try_parse(address)
    deleted = Alias.delete().where(Alias.address == (parsed.key if parsed else address)).execute() if parsed else 0
    if not deleted:
        raise MxdError("not_found", f"alias {address!r} not found")


def set_catchall(domain_name: str, target: str | None) -> Domain:
    domain = get_domain(domain_name)
    domain.catchall_mailbox_id = get_mailbox(target).id if target else None
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

    def resolve(self, parsed: addr.Address) -> Resolution:
        if parsed.domain not in self.domains:
            return Resolution("foreign")
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
    snap.domains = {d.name for d in Domain.select(Domain.name)}
    snap.mailboxes = {m.address: m.id for m in Mailbox.select(Mailbox.address, Mailbox.id)}
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
