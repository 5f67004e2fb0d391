"""Organisations and owner sign-up: the 6-digit owner-email code (hashed, expiring, few attempts) and the
organisation's first API key.

An organisation owns agents, mailboxes, domains, tokens and a daily send cap. Sign-up makes an
unverified organisation and a code; verification marks it verified and makes its first token
(scopes ["admin"], org_id set: it administers that organisation, never the server). Functions run
inside `Database.write`/`read`; the mail itself goes out through the API layer's one send path.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from mxd import address as addr
from mxd.db import execute
from mxd.errors import MxdError
from mxd.ids import new_id
from mxd.store import rows, tokens
from mxd.store.models import Domain, Organization, Token

CODE_SECONDS = 15 * 60
MAX_ATTEMPTS = 5                # wrong codes, then the sign-up is locked (a new code does not give more)
LOCK_SECONDS = 3600             # the first lock; each further round of MAX_ATTEMPTS doubles it
MAX_LOCK_SECONDS = 7 * 86400
RESEND_SECONDS = 60             # a new code for the same owner at most this often
SIGNUPS_PER_IP_PER_HOUR = 10    # sign-up calls from one client address (config: signup_rate_per_ip_per_hour)
SIGNUPS_PER_HOUR = 60           # from all clients together (config: signup_rate_per_hour)
SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$")


def _code_hash(org_id: str, code: str) -> str:
    # The organisation id salts the hash; the attempt limit, not the hash, is what stops guessing.
    return hashlib.sha256(f"{org_id}:{code}".encode()).hexdigest()


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:100].strip("-")


def owner_address(email: object) -> str:
    if not isinstance(email, str):
        raise MxdError("bad_request", "email must be the owner's address")
    try:
        parsed = addr.parse(email)
    except addr.AddressError as exc:
        raise MxdError("invalid_address", f"{email!r} is not a valid address: {exc}") from None
    return parsed.key           # lower case, so the owner is found however the address is typed


def _name_and_slug(name: object, slug: object) -> tuple[str, str]:
    if (not isinstance(name, str) or not name.strip() or len(name) > 200
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in name)):
        raise MxdError("bad_request", "organization_name must be one line of at most 200 characters")
    if slug is None or slug == "":
        slug = slugify(name)
    if not isinstance(slug, str) or not SLUG.match(slug):
        raise MxdError("bad_request", "slug must be lower-case letters, digits and hyphens (at most 100)")
    return name.strip(), slug


def _count(key: str, minute: int) -> int:
    row = execute('SELECT COALESCE(SUM("count"), 0) FROM "send_count" WHERE "key" = ? AND "bucket" >= ?',
                  (key, minute - 59)).fetchone()
    return int(row[0])


def _throttle(client_ip: str, now: float, per_ip: int, total: int) -> None:
    """Sign-up mails a stranger's address: bound how often one client, and everyone together, may make it
    do so (the second bound holds however many addresses a client has)."""
    if not client_ip:
        return
    minute = int(now // 60)
    keys = (f"signup:{client_ip}", "signup:*")
    if _count(keys[1], minute) >= total:
        raise MxdError("rate_limited", f"this server takes at most {total} sign-ups per hour; try again later",
                       retry_after=600)
    if _count(keys[0], minute) >= per_ip:
        raise MxdError("rate_limited", f"at most {per_ip} sign-ups per hour from one address", retry_after=600)
    for key in keys:
        execute('INSERT INTO "send_count" ("key", "bucket", "count") VALUES (?, ?, 1) '
                'ON CONFLICT ("key", "bucket") DO UPDATE SET "count" = "send_count"."count" + 1', (key, minute))


def _locked(org: Organization, now: float) -> int:
    """Seconds until a sign-up locked by wrong codes may have a new code (0: not locked)."""
    return int(org.code_locked_until - now) + 1 if org.code_locked_until and org.code_locked_until > now else 0


def signup(email: object, name: object, slug: object, client_ip: str = "",
           now: float | None = None, per_ip: int = SIGNUPS_PER_IP_PER_HOUR,
           total: int = SIGNUPS_PER_HOUR) -> tuple[Organization, str, bool]:
    """Create an unverified organisation with a fresh code, or give an unverified one a new code.

    Returns (organisation, code, created). A verified owner email, or a slug another organisation
    holds, is a 409. A new code for the same owner within RESEND_SECONDS, too many sign-ups from one
    client address (`per_ip` an hour) or from everyone (`total` an hour), or a sign-up locked by
    wrong codes, is a 429 (`client_ip` empty: the operator, not throttled; its new code also lifts a
    lock). A new code never resets the count of wrong codes: each MAX_ATTEMPTS of them lock the
    sign-up, for longer each time."""
    now = time.time() if now is None else now
    owner = owner_address(email)
    name, slug = _name_and_slug(name, slug)
    org = (Organization.select().where(Organization.owner_email == owner)
           .order_by(Organization.verified_at.is_null(), Organization.created_at).first())
    if org is not None and org.verified_at is not None:
        raise MxdError("conflict", f"{owner} already owns a verified organisation",
                       fix="Use that organisation's API key; the operator can issue another one.")
    taken = Organization.get_or_none(Organization.slug == slug)
    if taken is not None and (org is None or taken.id != org.id):
        raise MxdError("conflict", f"the slug {slug!r} is taken", fix="Choose another slug.")
    public = bool(client_ip)          # the operator's own sign-ups are not throttled
    if public and org is not None and _locked(org, now):
        wait = _locked(org, now)
        raise MxdError("rate_limited", f"{MAX_ATTEMPTS} wrong verification codes: this sign-up is locked",
                       fix=f"Ask again in {wait} seconds.", retry_after=wait)
    if public and org is not None and org.code_expires_at \
            and now < org.code_expires_at - CODE_SECONDS + RESEND_SECONDS:
        wait = int(org.code_expires_at - CODE_SECONDS + RESEND_SECONDS - now) + 1
        raise MxdError("rate_limited", "a verification code was sent to this address moments ago",
                       fix=f"Check the mailbox, or ask again in {wait} seconds.", retry_after=wait)
    _throttle(client_ip, now, per_ip, total)
    created = org is None
    if created:
        org = Organization.create(id=new_id("org"), name=name, slug=slug, owner_email=owner)
    else:
        org.name, org.slug = name, slug
    code = f"{secrets.randbelow(10 ** 6):06d}"
    org.code_hash, org.code_expires_at = _code_hash(org.id, code), now + CODE_SECONDS
    if not public:
        org.code_locked_until = None
    org.save()
    return org, code, created


@dataclass
class Verified:
    org: Organization | None
    token: Token | None = None      # the first key's row
    secret: str | None = None       # and its secret, shown once
    error: MxdError | None = None


def verify(email: object, code: object) -> Verified:
    """Check an owner's code. Never raises for a wrong code: the attempt count must be committed,
    so the error comes back in the result."""
    owner = owner_address(email)
    if not isinstance(code, str) or not code.strip():
        raise MxdError("bad_request", "verification_token must be the 6-digit code from the email")
    orgs = list(Organization.select().where(Organization.owner_email == owner))
    if any(o.verified_at is not None for o in orgs):
        return Verified(None, error=MxdError("conflict", f"{owner} is already verified",
                                             fix="The first API key was shown once at verification; "
                                                 "the operator can issue another one."))
    org = max(orgs, key=lambda o: o.created_at, default=None)
    now = time.time()
    if org is not None and org.code_hash is None and org.code_locked_until is not None:
        wait = _locked(org, now)
        return Verified(org, error=MxdError(
            "too_many_attempts", f"{MAX_ATTEMPTS} wrong codes; this code is spent",
            fix=f"Sign up again in {wait} seconds for a new code." if wait else "Sign up again for a new code.",
            retry_after=wait or None))
    if org is None or org.code_hash is None:
        return Verified(None, error=MxdError("not_found", f"no sign-up waits for {owner}",
                                             fix="Sign up first: POST /v1/auth/signup."))
    if org.code_expires_at is None or org.code_expires_at < now:
        return Verified(org, error=MxdError("code_expired", "the verification code has expired"))
    if not hmac.compare_digest(org.code_hash, _code_hash(org.id, code.strip())):
        org.code_attempts += 1
        left = (MAX_ATTEMPTS - org.code_attempts % MAX_ATTEMPTS) % MAX_ATTEMPTS
        if not left:                      # a round of wrong codes: the code is spent and the sign-up locked
            rounds = org.code_attempts // MAX_ATTEMPTS
            org.code_hash = None
            org.code_locked_until = now + min(LOCK_SECONDS * 2 ** (rounds - 1), MAX_LOCK_SECONDS)
        org.save()
        return Verified(org, error=MxdError("invalid_code", f"wrong verification code ({left} attempts left)"))
    org.verified_at, org.code_hash, org.code_expires_at, org.code_attempts = now, None, None, 0
    org.code_locked_until = None
    org.save()
    row, secret = tokens.create(f"{org.slug} owner", ["admin"], None, org_id=org.id)
    return Verified(org, row, secret)


def get(org_id: str) -> Organization:
    return rows.get(Organization, org_id, "organisation")


def default_domain(configured: str) -> Domain:
    """The domain of mailboxes created without domain_id: the configured one, else the first
    domain the operator created (org_id NULL)."""
    if configured:
        try:
            found = Domain.get_or_none(Domain.name == addr.normalize_domain(configured))
        except addr.AddressError:
            found = None
        if found is None:
            raise MxdError("no_default_domain", f"the configured default_domain {configured!r} is not served here")
        return found
    found = (Domain.select().where(Domain.org_id.is_null())
             .order_by(Domain.created_at, Domain.id).first())
    if found is None:
        raise MxdError("no_default_domain", "this server serves no domain yet")
    return found

