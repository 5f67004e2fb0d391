"""DMARC (RFC 7489): the RFC5322.From domain, policy discovery, alignment, and the policy to apply.

From handling: no From field, two or more From fields, no usable address, or
addresses in different domains give "permerror" and no policy (RFC 7489 6.6.1
leaves this to the receiver; a message that cannot name one author domain
cannot pass). Several addresses in one From field in the same domain are
evaluated as that domain.
"""
from __future__ import annotations

import functools
import random
import re
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

from mxd.mime.header import Header, split
from mxd.mime.parse import authors
from mxd.resolver import DNSError, Resolver

MAX_HEADER_BYTES = 1 << 20  # look no further than this for the header section


@dataclass(frozen=True)
class DmarcResult:
    result: str             # pass fail none temperror permerror (RFC 7489 11.2)
    from_domain: str
    policy: str | None      # none quarantine reject: what the domain asks for this message
    reason: str = ""
    record_domain: str = ""  # where the policy record was found


# --- RFC5322.From ---

def header_of(raw: bytes) -> Header:
    """The header section as `mxd.mime.header.split` (mxd's one header splitter) finds it, looked at no
    further than MAX_HEADER_BYTES."""
    return split(raw, 0, min(len(raw), MAX_HEADER_BYTES))


def header_fields(raw: bytes, name: bytes, head: Header | None = None) -> list[bytes]:
    """Unfolded bodies of every header field called `name` (case-insensitive), in order (`head`: the
    message's `header_of`, when it was split already)."""
    head = head if head is not None else header_of(raw)
    return [b"".join(lines).strip() for lines in head.values(name)]


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_\-]{0,61}[a-z0-9_])?\Z")


def normalize_domain(domain: str) -> str:
    """Lower-case A-label form of a host name, or "" when it is not one."""
    domain = domain.strip().rstrip(".").lower()
    if not domain.isascii():
        try:
            import idna
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except Exception:
            return ""
    if not domain or len(domain) > 253 or not all(_LABEL.match(x) for x in domain.split(".")):
        return ""
    return domain


_AUTHORS: dict[bytes, tuple[str, str]] = {}      # the answer for a From field seen recently
_AUTHORS_SIZE = 4096


def author_domain(raw: bytes, head: Header | None = None) -> tuple[str, str]:
    """(RFC5322.From domain, "") or ("", why there is none). The From addresses are the parser's
    (`mxd.mime.parse.authors`), so the domain evaluated is the one every reader of the message shows.
    The answer depends on the From field alone, so one seen recently is answered from memory."""
    head = head if head is not None else header_of(raw)
    fields = head.values(b"from")
    if not fields:
        return "", "no From field"
    if len(fields) > 1:
        return "", "several From fields"  # RFC 5322 3.6: exactly one
    key = b"".join(fields[0])
    found = _AUTHORS.get(key)
    if found is None:
        found = _author_domain(raw, head)
        if len(_AUTHORS) >= _AUTHORS_SIZE:
            _AUTHORS.clear()
        _AUTHORS[key] = found
    return found


def _author_domain(raw: bytes, head: Header) -> tuple[str, str]:
    addresses = [a.address for a in authors(raw, head) if a.address]
    if not addresses:
        return "", "no address in From"
    domains = {normalize_domain(a.rpartition("@")[2]) for a in addresses}
    if len(domains) > 1:
        return "", "From addresses in several domains"  # RFC 7489 6.6.1
    domain = domains.pop()
    return (domain, "") if domain else ("", "bad domain in From")


# --- organizational domain (RFC 7489 3.2) ---

_psl = None
_psl_lock = threading.Lock()


@functools.lru_cache(maxsize=8192)
def org_domain(domain: str) -> str:
    """The registered domain per the Public Suffix List (offline); a public suffix is its own org domain.
    Kept for the domains seen recently: every message asks it for its author domain."""
    global _psl
    if _psl is None:
        with _psl_lock:
            if _psl is None:
                from publicsuffixlist import PublicSuffixList
                _psl = PublicSuffixList()
    return _psl.privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """RFC 7489 3.1.1 / 3.1.2: strict = same name, relaxed = same organizational domain."""
    a, b = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not a or not b:
        return False
    if a == b:
        return True
    return mode != "s" and org_domain(a) == org_domain(b)


# --- policy record (RFC 7489 6.3, 6.4, 6.6.3) ---

_VERSION = re.compile(r"v\s*=\s*DMARC1\s*(;|\Z)")
_POLICIES = ("none", "quarantine", "reject")


def parse_record(txt: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in txt.split(";"):
        k, eq, v = part.partition("=")
        if eq:
            tags.setdefault(k.strip().lower(), v.strip())
    return tags


def discover(domain: str, resolver: Resolver) -> tuple[dict[str, str] | None, str]:
    """(record tags, where found); the From domain first, then its organizational domain. DNSError propagates."""
    candidates = [domain]
    org = org_domain(domain)
    if org != domain:
        candidates.append(org)
    for name in candidates:
        # RFC 7489 6.6.3 step 3: only records that start with v=DMARC1
        records = [t for t in resolver.txt(f"_dmarc.{name}") if _VERSION.match(t)]
        if len(records) == 1:
            return parse_record(records[0]), name
        if len(records) > 1:
            return None, name  # RFC 7489 6.6.3 step 4: several records = no DMARC
    return None, ""


def _has_mailto(rua: str) -> bool:
    """Whether rua= (RFC 7489 6.4: URIs separated by commas) names a mailto: address; read per URI, not
    by a search that rescans the rest of the record from every "mailto:"."""
    for uri in rua.split(","):
        uri = uri.strip()
        if uri[:7].lower() == "mailto:":
            target = uri[7:].split("!", 1)[0]           # "!" starts a size limit (RFC 7489 6.2)
            if "@" in target[1:] and not any(c.isspace() for c in target):
                return True
    return False


_DOWNGRADE = {"reject": "quarantine", "quarantine": "none", "none": "none"}


def evaluate(from_domain: str, spf: str, spf_domain: str, dkim_passes: Iterable[str], resolver: Resolver,
             *, from_error: str = "", sample: Callable[[], float] = random.random) -> DmarcResult:
    """DMARC result for one message. `dkim_passes` are the d= of signatures that verified."""
    if not from_domain:
        return DmarcResult("permerror", "", None, from_error or "no From domain")
    try:
        tags, found_at = discover(from_domain, resolver)
    except DNSError as e:
        return DmarcResult("temperror", from_domain, None, str(e))  # RFC 7489 6.6.3 step 5
    if tags is None:
        return DmarcResult("none", from_domain, None, "no policy record" if not found_at else "several records")
    p = tags.get("p", "").lower()
    sp = tags.get("sp", "").lower()
    if p not in _POLICIES or (sp and sp not in _POLICIES):
        # RFC 7489 6.6.3 step 6: a usable rua= turns a bad p=/sp= into p=none; otherwise no DMARC.
        if _has_mailto(tags.get("rua", "")):
            p, sp = "none", ""
        else:
            return DmarcResult("permerror", from_domain, None, "record without a valid p=", found_at)
    # RFC 7489 6.3 sp=: the policy for subdomains, applied when the record came from the org domain
    policy = sp if (sp and found_at != from_domain) else p
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    # RFC 7489 3.1, 4.2: pass when an authenticated identifier aligns with the From domain
    if spf == "pass" and aligned(spf_domain, from_domain, aspf):
        return DmarcResult("pass", from_domain, policy, "spf aligned", found_at)
    for d in dkim_passes:
        if aligned(d, from_domain, adkim):
            return DmarcResult("pass", from_domain, policy, "dkim aligned", found_at)
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    if pct < 100 and sample() * 100 >= pct:
        # RFC 7489 6.6.4 / 6.3 pct=: messages outside the sample get the next milder policy
        policy = _DOWNGRADE[policy]
    return DmarcResult("fail", from_domain, policy, "no aligned identifier", found_at)
