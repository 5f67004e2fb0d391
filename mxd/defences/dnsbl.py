"""DNS block- and allow-lists (RFC 5782) asked about a client IP: zones, their return codes, and answers.

A zone is written "zone" (any answer in 127.0.0.0/8 lists the client) or
"zone=127.0.0.2,127.0.0.4-127.0.0.7" (only those answers do). The query name is the client address
reversed (IPv4 octets, IPv6 nibbles, RFC 5782 2.1 and 2.4) in front of the zone, asked for A records
through mxd's resolver (and its cache).

Only a listing refuses mail. What is not an answer about the client is never one: a timeout or a
SERVFAIL (counted as "not listed" and recorded), an answer outside 127.0.0.0/8 (RFC 5782 2.3), the error
codes blocklists use to say they will not answer (Spamhaus: 127.255.255.252 typo in the zone name,
.254 query through a public resolver, .255 too many queries), and anything malformed. Those are
recorded as a configuration problem (`mxd.defences.counters`), never used to refuse.
"""
from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field

from mxd.config import DnsListZone as Zone
from mxd.defences import counters
from mxd.resolver import DNSError, Resolver

_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_ERROR_CODES = ipaddress.IPv4Network("127.255.255.0/24")     # blocklists' "I will not answer" codes


def query_name(ip: str, zone: str) -> str | None:
    """The name asked for `ip` on `zone` (RFC 5782 2.1, 2.4); None for a value that is not an address."""
    try:
        address = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return ".".join(reversed(str(address).split("."))) + "." + zone
    return ".".join(reversed(address.exploded.replace(":", ""))) + "." + zone


@dataclass(frozen=True)
class Finding:
    zone: str
    status: str           # listed clean error timeout servfail malformed
    detail: str = ""

    @property
    def problem(self) -> bool:
        return self.status not in ("listed", "clean")


def classify(zone: Zone, answers: list[str]) -> Finding:
    """What the A records answered for a client on `zone` mean."""
    listed: list[str] = []
    for text in answers:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return Finding(zone.name, "malformed", f"answer {text[:60]!r} is not an IPv4 address")
        if not isinstance(address, ipaddress.IPv4Address) or address not in _LOOPBACK:
            return Finding(zone.name, "error", f"answer {address} is outside 127.0.0.0/8 (RFC 5782 2.3): "
                                               "not a listing; is the zone name right?")
        if address in _ERROR_CODES:
            return Finding(zone.name, "error", f"error answer {address}: the list refuses to answer (queries through "
                                               "a public or shared resolver, or too many): not a listing")
        if zone.lists(address):
            listed.append(str(address))
    return Finding(zone.name, "listed", ",".join(listed)) if listed else Finding(zone.name, "clean")


async def ask(resolver: Resolver, zone: Zone, ip: str) -> Finding:
    """One zone about one client; never raises."""
    name = query_name(ip, zone.name)
    if name is None:
        return Finding(zone.name, "clean", "no address to ask about")
    try:
        answers = await resolver.aa(name)
    except DNSError as e:
        text = str(e)
        status = "timeout" if "Timeout" in text else "servfail" if "NoNameservers" in text else "malformed"
        return Finding(zone.name, status, text[:200])
    except Exception as e:                       # never let a lookup end a session
        return Finding(zone.name, "malformed", f"{type(e).__name__}: {e}"[:200])
    return classify(zone, answers)


@dataclass
class ClientVerdict:
    listed_by: str = ""                  # the blocklist zone that lists the client ("" = none)
    code: str = ""                       # the answer it gave
    allowed_by: str = ""                 # the allow-list zone that vouches for it
    notes: list[str] = field(default_factory=list)


async def check_client(resolver: Resolver, blocklists: list[Zone], allowlists: list[Zone], ip: str) -> ClientVerdict:
    """Every zone asked at once; an allow-listing wins over any block-listing. Problems are recorded."""
    found = await asyncio.gather(*(ask(resolver, z, ip) for z in allowlists + blocklists))
    verdict = ClientVerdict()
    for i, finding in enumerate(found):
        kind = "dnswl" if i < len(allowlists) else "dnsbl"
        if finding.problem:
            verdict.notes.append(f"{kind} {finding.zone} {finding.status}: {finding.detail}")
            counters.problem(f"{kind} {finding.zone} {finding.status}", finding.detail)
        elif finding.status == "listed":
            if kind == "dnswl":
                verdict.allowed_by = verdict.allowed_by or finding.zone
            elif not verdict.listed_by:
                verdict.listed_by, verdict.code = finding.zone, finding.detail
    if verdict.allowed_by:
        verdict.listed_by = verdict.code = ""
    return verdict
