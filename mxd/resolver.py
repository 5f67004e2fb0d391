"""DNS behind one interface: the Resolver protocol, a dnspython resolver from config, an in-memory one for tests.

Every lookup answers a plain list: NXDOMAIN and NODATA are an empty list, a
temporary failure (SERVFAIL, timeout, no reachable nameserver) raises
`DNSError`, which callers map to "temperror" (RFC 7208 2.6.6, RFC 8601 2.7).

The DNSSEC-aware lookups (`atlsa`, `asecure`, for DANE) also say whether the answer is secure: the
configured resolver set the AD bit on it (RFC 4035 3.2.3, RFC 6840 5.7), which only a validating
resolver on the host should be trusted to do (RFC 7672 8.1, as Postfix does). A bogus answer is a
SERVFAIL from such a resolver, so it raises DNSError like any temporary failure.
"""
from __future__ import annotations

import ipaddress
import time
from typing import Any, Mapping, Protocol

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename


class DNSError(Exception):
    """A temporary DNS failure (SERVFAIL, timeout, no nameserver answered)."""


class Resolver(Protocol):
    """Sync methods are called from worker threads, async twins from the event loop."""

    def txt(self, name: str) -> list[str]: ...
    def mx(self, name: str) -> list[tuple[int, str]]: ...
    def a(self, name: str) -> list[str]: ...
    def aaaa(self, name: str) -> list[str]: ...
    def ptr(self, ip: str) -> list[str]: ...
    async def atxt(self, name: str) -> list[str]: ...
    async def amx(self, name: str) -> list[tuple[int, str]]: ...
    async def aa(self, name: str) -> list[str]: ...
    async def aaaaa(self, name: str) -> list[str]: ...
    async def atlsa(self, name: str) -> tuple[list[TlsaRecord], bool]: ...
    async def asecure(self, name: str, rdtype: str) -> bool: ...
    async def acanonical(self, name: str) -> tuple[str, bool]: ...


TlsaRecord = tuple[int, int, int, bytes]
"""A TLSA record (RFC 6698 2.1): usage, selector, matching type, certificate association data."""


def _host(name: Any) -> str:
    """A target name without its trailing dot; the root (null MX, RFC 7505) stays "."."""
    text = name.to_text(omit_final_dot=True)
    return text.lower() if text != "." else "."


def _convert(rdtype: str, rrset: Any) -> list:
    if rdtype == "TXT":
        # RFC 7208 3.3: the character-strings of one TXT RR are concatenated without spaces.
        return [b"".join(r.strings).decode("latin-1") for r in rrset]
    if rdtype == "MX":
        return sorted((r.preference, _host(r.exchange)) for r in rrset)
    if rdtype == "PTR":
        return [_host(r.target) for r in rrset]
    if rdtype == "TLSA":
        return [(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in rrset]
    return [r.address for r in rrset]


def _negative_ttl(response: Any) -> int:
    """How long a negative answer may be cached (RFC 2308 5): the SOA's TTL bounded by its minimum."""
    for rrset in getattr(response, "authority", None) or []:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return min(rrset.ttl, rrset[0].minimum)
    return 0


def _reverse(ip: str) -> str | None:
    try:
        return dns.reversename.from_address(ip).to_text()
    except (ValueError, dns.exception.DNSException):
        return None


def split_nameserver(value: str) -> tuple[str, int]:
    """"host", "host:port", "[v6]" or "[v6]:port"; a bare IPv6 address keeps port 53."""
    value = value.strip()
    if value.startswith("["):
        end = value.index("]")
        host, rest = value[1:end], value[end + 1:]
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, 53


class DNSPythonResolver:
    """dnspython stub resolver with a shared, bounded, TTL-respecting cache.

    dnspython's LRUCache takes a lock on every get/put, so one cache serves the
    worker threads and the event loop alike; it also keeps negative answers
    (RFC 2308) for the SOA minimum.
    """

    def __init__(self, nameservers: list[str], timeout: float = 5.0, cache_size: int = 4096) -> None:
        cache = dns.resolver.LRUCache(cache_size) if cache_size > 0 else None
        self._sync = dns.resolver.Resolver(configure=False)
        self._async = dns.asyncresolver.Resolver(configure=False)
        servers: list[Any] = [dns.nameserver.Do53Nameserver(*split_nameserver(ns)) for ns in nameservers]
        if not servers:
            try:  # empty list = the system resolver (/etc/resolv.conf)
                servers = list(dns.resolver.Resolver(configure=True).nameservers)
            except dns.resolver.NoResolverConfiguration:
                servers = []  # every query then fails with DNSError
        for r in (self._sync, self._async):
            r.nameservers = servers
            r.lifetime = timeout
            r.timeout = min(timeout, 2.0) if len(servers) > 1 else timeout
            r.cache = cache
            r.use_search_by_default = False
        self._front: dict[tuple[str, str], tuple[float, list]] = {}
        self._front_size = cache_size
        # DNSSEC-aware lookups ask with the DO bit and AD (RFC 6840 5.7) through a resolver of their own:
        # dnspython's cache does not key on flags, and the plain lookups' answers carry no AD.
        self._dnssec = dns.asyncresolver.Resolver(configure=False)
        self._dnssec.nameservers = servers
        self._dnssec.lifetime, self._dnssec.timeout = self._async.lifetime, self._async.timeout
        self._dnssec.use_search_by_default = False
        self._dnssec.use_edns(0, dns.flags.DO, 1232)
        self._dnssec.flags = dns.flags.RD | dns.flags.AD
        self._secure: dict[tuple[str, str], tuple[float, list, bool, str]] = {}

    def _cached(self, key: tuple[str, str]) -> list | None:
        hit = self._front.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def _remember(self, key: tuple[str, str], answer: Any, result: list) -> list:
        if answer.rrset is not None and answer.rrset.ttl > 0 and self._front_size:
            if len(self._front) >= self._front_size:
                self._front.clear()
            self._front[key] = (time.monotonic() + min(answer.rrset.ttl, 3600), result)
        return result

    # A plain dict in front of dnspython's cache: mail asks the same few names (SPF, DMARC, the
    # destination's MX) again and again, and dnspython's own lookup path is costly per call.
    def _query(self, name: str, rdtype: str) -> list:
        key = (name.lower(), rdtype)
        hit = self._cached(key)
        if hit is not None:
            return hit
        try:
            answer = self._sync.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except Exception as e:
            return self._failure(name, rdtype, e)
        return self._remember(key, answer, _convert(rdtype, answer.rrset or []))

    async def _aquery(self, name: str, rdtype: str) -> list:
        key = (name.lower(), rdtype)
        hit = self._cached(key)
        if hit is not None:
            return hit
        try:
            answer = await self._async.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except Exception as e:
            return self._failure(name, rdtype, e)
        return self._remember(key, answer, _convert(rdtype, answer.rrset or []))

    @staticmethod
    def _failure(name: str, rdtype: str, e: Exception) -> list:
        if isinstance(e, (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)):
            return []
        if isinstance(e, (dns.exception.SyntaxError, dns.name.NameTooLong, dns.name.EmptyLabel,
                          dns.name.LabelTooLong, UnicodeError, ValueError)):
            return []  # a name that cannot be written in DNS cannot exist
        raise DNSError(f"{rdtype} {name}: {e.__class__.__name__}: {e}") from e

    def txt(self, name: str) -> list[str]:
        return self._query(name, "TXT")

    def mx(self, name: str) -> list[tuple[int, str]]:
        return self._query(name, "MX")

    def a(self, name: str) -> list[str]:
        return self._query(name, "A")

    def aaaa(self, name: str) -> list[str]:
        return self._query(name, "AAAA")

    def ptr(self, ip: str) -> list[str]:
        rev = _reverse(ip)
        return self._query(rev, "PTR") if rev else []

    async def atxt(self, name: str) -> list[str]:
        return await self._aquery(name, "TXT")

    async def amx(self, name: str) -> list[tuple[int, str]]:
        return await self._aquery(name, "MX")

    async def aa(self, name: str) -> list[str]:
        return await self._aquery(name, "A")

    async def aaaaa(self, name: str) -> list[str]:
        return await self._aquery(name, "AAAA")

    async def _dnssec_query(self, name: str, rdtype: str) -> tuple[list, bool, str]:
        """(records, secure, canonical name); NXDOMAIN and NODATA are ([], secure of the denial, name);
        SERVFAIL (a bogus answer, when the resolver validates) and timeouts raise DNSError. Cached for
        the answer's TTL, or a negative answer's (RFC 2308), at most an hour."""
        key = (name.lower(), rdtype)
        hit = self._secure.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1], hit[2], hit[3]
        response: Any = None
        canonical = name.lower().rstrip(".")
        try:
            answer = await self._dnssec.resolve(name, rdtype, raise_on_no_answer=False, search=False)
            response = answer.response
            records = _convert(rdtype, answer.rrset or [])
            ttl = answer.rrset.ttl if answer.rrset is not None else _negative_ttl(response)
            canonical = _host(answer.canonical_name)
        except dns.resolver.NXDOMAIN as e:
            responses = e.responses()
            response = next(iter(responses.values()), None) if responses else None
            records, ttl = [], _negative_ttl(response)
        except Exception as e:
            return self._failure(name, rdtype, e), False, canonical
        secure = bool(response is not None and response.flags & dns.flags.AD)
        if ttl > 0 and self._front_size:
            if len(self._secure) >= self._front_size:
                self._secure.clear()
            self._secure[key] = (time.monotonic() + min(ttl, 3600), records, secure, canonical)
        return records, secure, canonical

    async def atlsa(self, name: str) -> tuple[list[TlsaRecord], bool]:
        """The TLSA records at name (RFC 6698) and whether the answer was DNSSEC-validated (AD)."""
        records, secure, _ = await self._dnssec_query(name, "TLSA")
        return records, secure

    async def asecure(self, name: str, rdtype: str) -> bool:
        """Whether the RRset (or its denial) at name was DNSSEC-validated: the secure MX RRset and
        address records RFC 7672 2.2 requires before TLSA records are looked up."""
        return (await self._dnssec_query(name, rdtype))[1]

    async def acanonical(self, name: str) -> tuple[str, bool]:
        """The name its CNAME chain leads to (itself without one), from its A lookup, and whether that
        answer was secure: RFC 7672 2.2.2's CNAME-expanded TLSA base domain."""
        _, secure, canonical = await self._dnssec_query(name, "A")
        return canonical, secure


def make_resolver(nameservers: list[str], timeout: float = 5.0, cache_size: int = 4096) -> Resolver:
    """A dnspython resolver asking `nameservers` ("host", "host:port", "[v6]:port"); empty = /etc/resolv.conf."""
    return DNSPythonResolver(nameservers, timeout, cache_size)


class StaticResolver:
    """In-memory resolver for unit tests, reading the same zone dict as tests.support.dnsserver.

    {"example.com": {"MX": [(10, "mx.example.com")], "TXT": ["v=spf1 -all"], "A": ["127.0.0.2"]},
     "broken.example": "SERVFAIL"}. A TXT entry may be a list of strings (one RR,
    several character-strings); a "CNAME" entry (one target) is followed; PTR
    records live under the reverse name or under the IP address itself.
    TLSA records are (usage, selector, matching type, data as bytes or hex). Answers are insecure
    (no AD) unless their name is in or under one of the `secure` zones.
    """

    def __init__(self, zone: Mapping[str, Any] | None = None, secure: tuple[str, ...] | list[str] = ()) -> None:
        self.zone: dict[str, Any] = {k.lower().rstrip("."): v for k, v in (zone or {}).items()}
        self.secure_zones = [z.lower().rstrip(".") for z in secure]
        self.queries: list[tuple[str, str]] = []

    def _lookup(self, name: str, rdtype: str) -> list:
        name = name.lower().rstrip(".")
        self.queries.append((name, rdtype))
        for _ in range(9):  # CNAME chain bound
            entry = self.zone.get(name)
            if isinstance(entry, str):
                raise DNSError(f"{rdtype} {name}: {entry}")
            if entry is None:
                return []
            if rdtype in entry or "CNAME" not in entry:
                return list(entry.get(rdtype, []))
            target = entry["CNAME"]
            name = (target[0] if isinstance(target, (list, tuple)) else target).lower().rstrip(".")
        raise DNSError(f"{rdtype} {name}: CNAME loop")

    def txt(self, name: str) -> list[str]:
        out = []
        for rr in self._lookup(name, "TXT"):
            parts = rr if isinstance(rr, (list, tuple)) else [rr]
            out.append("".join(p.decode("latin-1") if isinstance(p, bytes) else p for p in parts))
        return out

    def mx(self, name: str) -> list[tuple[int, str]]:
        return sorted((int(p), h.lower().rstrip(".") or ".") for p, h in self._lookup(name, "MX"))

    def a(self, name: str) -> list[str]:
        return self._lookup(name, "A")

    def aaaa(self, name: str) -> list[str]:
        return [str(ipaddress.IPv6Address(x)) for x in self._lookup(name, "AAAA")]

    def ptr(self, ip: str) -> list[str]:
        rev = _reverse(ip)
        if rev is None:
            return []
        found = self._lookup(rev, "PTR") or (self._lookup(ip, "PTR") if ip.lower() in self.zone else [])
        return [h.lower().rstrip(".") for h in found]

    async def atxt(self, name: str) -> list[str]:
        return self.txt(name)

    async def amx(self, name: str) -> list[tuple[int, str]]:
        return self.mx(name)

    async def aa(self, name: str) -> list[str]:
        return self.a(name)

    async def aaaaa(self, name: str) -> list[str]:
        return self.aaaa(name)

    def _is_secure(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        return any(name == z or name.endswith("." + z) for z in self.secure_zones)

    async def atlsa(self, name: str) -> tuple[list[TlsaRecord], bool]:
        found = [(int(u), int(s), int(m), d if isinstance(d, bytes) else bytes.fromhex(d))
                 for u, s, m, d in self._lookup(name, "TLSA")]
        return found, self._is_secure(name)

    async def asecure(self, name: str, rdtype: str) -> bool:
        self._lookup(name, rdtype)          # a failing name raises DNSError, as the real lookup would
        return self._is_secure(name)

    async def acanonical(self, name: str) -> tuple[str, bool]:
        secure = self._is_secure(name)
        name = name.lower().rstrip(".")
        for _ in range(9):
            entry = self.zone.get(name)
            if isinstance(entry, str):
                raise DNSError(f"A {name}: {entry}")
            if not isinstance(entry, dict) or "CNAME" not in entry:
                return name, secure
            target = entry["CNAME"]
            name = (target[0] if isinstance(target, (list, tuple)) else target).lower().rstrip(".")
            secure = secure and self._is_secure(name)
        raise DNSError(f"A {name}: CNAME loop")
