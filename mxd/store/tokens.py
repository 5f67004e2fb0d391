"""API tokens: created with scopes and an optional mailbox list, shown once, stored as SHA-256 hashes.

Secrets are 256-bit random strings, so a fast hash is enough (no password
stretching needed) and lookups are by hash. `read` never implies `send`.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from mxd import address as addr
from mxd.errors import MxdError
from mxd.ids import new_id
from mxd.store.models import Meta, Token

SCOPES = ("read", "search", "draft", "send", "audit", "admin")
# `admin` manages every mailbox (of the organisation), so it cannot be limited to some: a token with
# mailboxes lists the scopes it needs instead.
LIMITABLE = tuple(s for s in SCOPES if s != "admin")
PREFIX = "mxd_"
_LAST_USED_EVERY = 60.0   # seconds between last_used_at writes for one token


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling. A token with org_id None is the operator's; one with an org_id sees only that
    organisation's objects, and its `admin` scope administers that organisation, not the server."""
    token_id: str
    name: str
    scopes: frozenset[str]
    mailboxes: frozenset[str] | None      # address keys; None = every mailbox (of the organisation)
    org_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    @property
    def is_operator(self) -> bool:
        """The server's administrator: sees and controls everything, every organisation."""
        return self.is_admin and self.org_id is None

    def has(self, scope: str) -> bool:
        return self.is_admin or scope in self.scopes

    def owns(self, org_id: str | None) -> bool:
        """May act on an object of organisation `org_id` (None: the operator's own objects)."""
        return self.is_operator or self.org_id == org_id

    def sees(self, mailbox_address: str, mailbox_org: str | None) -> bool:
        if self.is_operator:
            return True
        if self.org_id != mailbox_org:
            return False
        return self.is_admin or self.mailboxes is None or mailbox_address in self.mailboxes


def create(name: str, scopes: list[str], mailboxes: list[str] | None = None,
           org_id: str | None = None) -> tuple[Token, str]:
    """Create a token; returns the row and the secret, which is never stored or shown again."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise MxdError("bad_request", "name must be a non-empty string of at most 200 characters")
    if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
        raise MxdError("bad_request", f"scopes must be a non-empty list drawn from {', '.join(SCOPES)}")
    keys = None
    if mailboxes is not None and "admin" in scopes:
        raise MxdError("admin_with_mailboxes", "the admin scope covers every mailbox and cannot be limited to some")
    if mailboxes is not None:
        if not isinstance(mailboxes, list) or not all(isinstance(m, str) for m in mailboxes):
            raise MxdError("bad_request", "mailboxes must be a list of addresses")
        try:
            keys = sorted({addr.parse(m).key for m in mailboxes})
        except addr.AddressError as exc:
            raise MxdError("invalid_address", f"bad mailbox address: {exc}") from None
    secret = PREFIX + secrets.token_urlsafe(32)
    row = Token.create(id=new_id("tok"), name=name.strip(), secret_hash=hash_secret(secret),
                       hint=secret[:10], scopes=sorted(set(scopes)), mailboxes=keys, org_id=org_id)
    return row, secret


def lookup(secret: str) -> Token | None:
    """The live token with this secret, or None."""
    if not secret or len(secret) > 200:
        return None
    row = Token.get_or_none(Token.secret_hash == hash_secret(secret))
    if row is None or row.revoked_at is not None:
        return None
    return row


def needs_touch(last_used_at: float | None) -> bool:
    """last_used_at is written at most once a minute per token, not on every request."""
    return last_used_at is None or time.time() - last_used_at > _LAST_USED_EVERY


def touch(token_id: str, last_used_at: float | None) -> None:
    if needs_touch(last_used_at):
        Token.update(last_used_at=time.time()).where(Token.id == token_id).execute()


def limited_scopes(scopes: list[str]) -> list[str]:
    """What a token limited to mailboxes may do: `admin` (from before it was refused with mailboxes) becomes
    the scopes it implied, all kept to those mailboxes; it never administers anything."""
    return sorted((set(scopes) - {"admin"}) | set(LIMITABLE)) if "admin" in scopes else sorted(set(scopes))


def principal(row: Token) -> Principal:
    if row.mailboxes is None:
        return Principal(row.id, row.name, frozenset(row.scopes), None, row.org_id)
    return Principal(row.id, row.name, frozenset(limited_scopes(row.scopes)), frozenset(row.mailboxes), row.org_id)


def list_tokens(org_id: str | None = None, everyone: bool = False) -> list[Token]:
    """Live tokens of one organisation (None: the operator's), or of everyone."""
    query = Token.select().where(Token.revoked_at.is_null())
    if not everyone:
        query = query.where(Token.org_id.is_null() if org_id is None else Token.org_id == org_id)
    return list(query.order_by(Token.created_at))


def revoke(token_id: str, org_id: str | None = None, everyone: bool = False) -> None:
    cond = (Token.id == token_id) & Token.revoked_at.is_null()
    if not everyone:
        cond &= Token.org_id.is_null() if org_id is None else Token.org_id == org_id
    updated = Token.update(revoked_at=time.time()).where(cond).execute()
    if not updated:
        raise MxdError("not_found", f"token {token_id!r} not found")




def ensure_admin() -> str | None:
    """Create the operator's admin token once; returns its secret the one time it is made."""
    if Meta.get_or_none(Meta.key == "admin_token_id"):
        return None
    row, secret = create("admin", ["admin"])
    Meta.create(key="admin_token_id", value=row.id)
    return secret
