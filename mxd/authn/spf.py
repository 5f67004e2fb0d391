"""SPF (RFC 7208): check_host() for the client IP and the MAIL FROM (or HELO) identity, via a Resolver.

An own implementation rather than pyspf: pyspf sends its queries through a
module-global lookup function, which cannot be pointed at a per-call Resolver
from several worker threads at once. Not evaluated: the exp= explanation text
(its syntax is still checked).
"""
from __future__ import annotations

import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

from mxd.resolver import DNSError, Resolver

MAX_LOOKUPS = 10        # RFC 7208 4.6.4
MAX_VOID_LOOKUPS = 2    # RFC 7208 4.6.4
MAX_MX_NAMES = 10       # RFC 7208 4.6.4 (mx)
MAX_PTR_NAMES = 10      # RFC 7208 4.6.4 (ptr, %{p})

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SpfResult:
    result: str     # pass fail softfail neutral none temperror permerror (RFC 7208 2.6)
    domain: str     # the domain checked: MAIL FROM's, or HELO's when MAIL FROM is null
    identity: str   # "mailfrom" or "helo" (RFC 7208 2.3, 2.4)
    sender: str     # <sender> as used by check_host(), postmaster@ filled in
    reason: str = ""


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)\Z", re.S)
_MECHANISM = re.compile(r"([-+?~]?)([A-Za-z][A-Za-z0-9_.\-]*)(.*)\Z", re.S)
_DUAL_CIDR = re.compile(r"(?::(?P<d>.*?))?(?:/(?P<c4>0|[1-9][0-9]*))?(?://(?P<c6>0|[1-9][0-9]*))?\Z", re.S)
# RFC 7208 7.1: macro-expand / literal (%x21-24 / %x26-7E)
_MACRO_TOKEN = re.compile(r"%\{([A-Za-z])([0-9]*)(r?)([.\-+,/_=]*)\}|%%|%_|%-|[\x21-\x24\x26-\x7e]+", re.I)
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?\Z")


_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _ends_in_toplabel(spec: str) -> bool:
    """RFC 7208 7.1 domain-end = "." toplabel ["."], toplabel = ( *alphanum ALPHA *alphanum ) /
    ( 1*alphanum "-" *( alphanum / "-" ) alphanum ). Checked by hand: as a regular expression the two
    runs of alphanum trade characters and a long label fails in quadratic time."""
    head, dot, label = (spec[:-1] if spec.endswith(".") else spec).rpartition(".")
    if not dot or not label or not set(label) <= _ALNUM | {"-"}:
        return False
    if "-" in label:
        return label[0] in _ALNUM and label[-1] in _ALNUM
    return not label.isdigit()


def _tokens(text: str, exp: bool) -> list[re.Match]:
    """Split a macro-string into tokens; a stray "%" or an exp-only letter is a syntax error (RFC 7208 7.1)."""
    out, pos = [], 0
    while pos < len(text):
        m = _MACRO_TOKEN.match(text, pos)
        if m is None:
            raise _PermError(f"bad macro-string {text!r}")
        if m.group(1) is not None:
            letter = m.group(1).lower()
            if letter not in "slodiphvcrt" or (letter in "crt" and not exp):
                raise _PermError(f"bad macro letter in {text!r}")
        out.append(m)
        pos = m.end()
    return out


def _check_domain_spec(spec: str) -> None:
    """domain-spec = macro-string domain-end (RFC 7208 7.1)."""
    if not spec:
        raise _PermError("empty domain-spec")
    tokens = _tokens(spec, exp=False)
    last = tokens[-1].group(0)
    if last.startswith("%"):
        return  # domain-end = macro-expand
    if not _ends_in_toplabel(spec):
        raise _PermError(f"domain-spec {spec!r} does not end in a top label")


@dataclass
class _Term:
    qualifier: str
    name: str
    domain: str | None = None
    net4: int = 32
    net6: int = 128
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


def _cidr(value: str | None, limit: int) -> int:
    if value is None:
        return limit
    n = int(value)
    if n > limit:
        raise _PermError(f"CIDR length {n} > {limit}")
    return n


def parse(record: str) -> tuple[list[_Term], str | None]:
    """Parse a whole record before evaluating any of it (RFC 7208 4.6): (mechanisms, redirect domain-spec)."""
    if any(not (0x20 <= ord(c) < 0x7F) for c in record):
        raise _PermError("non-ASCII or control character in record")
    terms: list[_Term] = []
    redirect = exp = None
    for word in record.split(" ")[1:]:
        if not word:
            continue
        mod = _MODIFIER.match(word)
        if mod:
            name, value = mod.group(1).lower(), mod.group(2)
            if name in ("redirect", "exp"):
                # RFC 7208 6: each at most once
                if (redirect if name == "redirect" else exp) is not None:
                    raise _PermError(f"{name}= appears twice")
                _check_domain_spec(value)
                if name == "redirect":
                    redirect = value
                else:
                    exp = value
            else:
                _tokens(value, exp=False)  # RFC 7208 6: unknown modifiers are ignored, but must parse
            continue
        mech = _MECHANISM.match(word)
        if not mech:
            raise _PermError(f"bad term {word!r}")
        qualifier, name, rest = _QUALIFIERS.get(mech.group(1), "pass"), mech.group(2).lower(), mech.group(3)
        term = _Term(qualifier, name)
        if name == "all":
            if rest:
                raise _PermError(f"bad term {word!r}")
        elif name in ("include", "exists"):
            if not rest.startswith(":"):
                raise _PermError(f"{name} needs a domain")
            term.domain = rest[1:]
            _check_domain_spec(term.domain)
        elif name in ("a", "mx", "ptr"):
            m = _DUAL_CIDR.match(rest)
            if not m or (name == "ptr" and (m.group("c4") or m.group("c6"))):
                raise _PermError(f"bad term {word!r}")
            term.domain = m.group("d")
            if term.domain is not None:
                _check_domain_spec(term.domain)
            term.net4, term.net6 = _cidr(m.group("c4"), 32), _cidr(m.group("c6"), 128)
        elif name in ("ip4", "ip6"):
            if not rest.startswith(":"):
                raise _PermError(f"{name} needs an address")
            addr, _, length = rest[1:].partition("/")
            if length and not re.fullmatch(r"0|[1-9][0-9]*", length):
                raise _PermError(f"bad CIDR length in {word!r}")
            try:
                cls = ipaddress.IPv4Address if name == "ip4" else ipaddress.IPv6Address
                base = cls(addr)
                bits = _cidr(length or None, base.max_prefixlen)
                term.network = ipaddress.ip_network(f"{base}/{bits}", strict=False)
            except ValueError:
                raise _PermError(f"bad address in {word!r}") from None
        else:
            raise _PermError(f"unknown mechanism {name!r}")  # RFC 7208 5
        terms.append(term)
    return terms, redirect


def _valid_domain(domain: str) -> bool:
    """RFC 7208 4.3: a multi-label name, no empty or over-long label."""
    if not domain or len(domain) > 253 or "." not in domain:
        return False
    return all(_LABEL.match(label) for label in domain.split("."))


def _records(resolver: Resolver, domain: str) -> list[str]:
    try:
        txts = resolver.txt(domain)
    except DNSError as e:
        raise _TempError(str(e)) from None
    # RFC 7208 4.5: "v=spf1" followed by a space or the end of the record.
    return [t for t in txts if t[:6].lower() == "v=spf1" and (len(t) == 6 or t[6] == " ")]


class _Check:
    """State of one top-level check_host(): the lookup counters are shared with every include/redirect."""

    def __init__(self, resolver: Resolver, ip: IP, sender: str, helo: str) -> None:
        self.resolver, self.ip, self.sender, self.helo = resolver, ip, sender, helo
        self.local, _, self.sender_domain = sender.rpartition("@")
        self.lookups = 0
        self.voids = 0
        self._validated: list[str] | None = None

    def count(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError(f"more than {MAX_LOOKUPS} DNS lookups")  # RFC 7208 4.6.4

    def void(self, answer: list) -> list:
        if not answer:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} void lookups")  # RFC 7208 4.6.4
        return answer

    def query(self, fn: Callable[[str], list], name: str) -> list:
        try:
            return fn(name)
        except DNSError as e:
            raise _TempError(str(e)) from None  # RFC 7208 5: DNS error -> temperror

    def addresses(self, name: str) -> list[str]:
        return self.query(self.resolver.a if self.ip.version == 4 else self.resolver.aaaa, name)

    def matches(self, addrs: list[str], net4: int, net6: int) -> bool:
        bits = net4 if self.ip.version == 4 else net6
        for a in addrs:
            try:
                if self.ip in ipaddress.ip_network(f"{a}/{bits}", strict=False):
                    return True
            except ValueError:
                continue
        return False

    def validated_names(self) -> list[str]:
        """RFC 7208 5.5: PTR names whose forward lookup gives the IP back; DNS errors just drop names."""
        if self._validated is None:
            self._validated = []
            try:
                names = self.resolver.ptr(str(self.ip))
            except DNSError:
                names = []
            for name in names[:MAX_PTR_NAMES]:
                try:
                    if self.matches(self.addresses(name), 32, 128):
                        self._validated.append(name.lower())
                except _TempError:
                    continue
        return self._validated

    # --- macros (RFC 7208 7) ---
    def expand(self, spec: str, domain: str) -> str:
        out = []
        for tok in _tokens(spec, exp=False):
            text = tok.group(0)
            if tok.group(1) is None:
                out.append({"%%": "%", "%_": " ", "%-": "%20"}.get(text, text))
                continue
            letter, digits, reverse, delims = tok.group(1), tok.group(2), tok.group(3), tok.group(4)
            value = self.macro(letter.lower(), domain)
            parts = re.split("[" + re.escape(delims or ".") + "]", value)
            if reverse:
                parts.reverse()
            if digits:
                n = int(digits)
                if n == 0:
                    raise _PermError("macro transformer of 0")  # RFC 7208 7.3
                parts = parts[-n:]
            value = ".".join(parts)
            if letter.isupper():
                value = urllib.parse.quote(value, safe="")  # RFC 7208 7.3: URL-escape
            out.append(value)
        name = "".join(out).rstrip(".")
        while len(name) > 253 and "." in name:  # RFC 7208 7.3: drop left labels past 253
            name = name.split(".", 1)[1]
        return name

    def macro(self, letter: str, domain: str) -> str:
        if letter == "s":
            return self.sender
        if letter == "l":
            return self.local
        if letter == "o":
            return self.sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            if self.ip.version == 4:
                return str(self.ip)
            return ".".join(self.ip.exploded.replace(":", ""))  # RFC 7208 7.3: dotted nibbles
        if letter == "v":
            return "in-addr" if self.ip.version == 4 else "ip6"
        if letter == "h":
            return self.helo
        if letter == "p":
            names = self.validated_names()
            exact = [n for n in names if n == domain or n.endswith("." + domain)]
            return (exact or names or ["unknown"])[0]
        raise _PermError(f"macro %{{{letter}}} outside exp")

    # --- check_host (RFC 7208 4) ---
    def check_host(self, domain: str) -> str:
        if not _valid_domain(domain):
            return "none"  # RFC 7208 4.3
        records = _records(self.resolver, domain)
        if not records:
            return "none"  # RFC 7208 4.5
        if len(records) > 1:
            raise _PermError(f"{len(records)} SPF records at {domain}")  # RFC 7208 4.5
        terms, redirect = parse(records[0])
        for term in terms:
            if self.evaluate(term, domain):
                return term.qualifier
        if redirect is not None:
            # RFC 7208 6.1: only when no mechanism matched ("all" always matches first)
            self.count()
            target = self.expand(redirect, domain)
            result = self.check_host(target) if _valid_domain(target) else "none"
            if result == "none":
                raise _PermError(f"redirect to {target!r} without an SPF record")
            return result
        return "neutral"  # RFC 7208 4.7

    def evaluate(self, term: _Term, domain: str) -> bool:
        name = term.name
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            return term.network is not None and self.ip.version == term.network.version and self.ip in term.network
        self.count()  # include a mx ptr exists count (RFC 7208 4.6.4)
        target = self.expand(term.domain, domain) if term.domain is not None else domain
        if name == "include":
            # RFC 7208 5.2: the included result decides match / no match / error
            result = self.check_host(target) if _valid_domain(target) else "none"
            if result == "pass":
                return True
            if result in ("fail", "softfail", "neutral"):
                return False
            if result == "temperror":
                raise _TempError(f"include:{target}")
            raise _PermError(f"include:{target} gave {result}")
        if name == "a":
            return self.matches(self.void(self.addresses(target)), term.net4, term.net6)  # RFC 7208 5.3
        if name == "mx":
            hosts = self.void(self.query(self.resolver.mx, target))  # RFC 7208 5.4
            if len(hosts) > MAX_MX_NAMES:
                raise _PermError(f"more than {MAX_MX_NAMES} MX names at {target}")
            for _, host in hosts:
                if host != "." and self.matches(self.addresses(host), term.net4, term.net6):
                    return True
            return False
        if name == "ptr":
            names = self.validated_names()  # RFC 7208 5.5
            if not names:
                self.void([])
            target = target.lower()
            return any(n == target or n.endswith("." + target) for n in names)
        if name == "exists":
            return bool(self.void(self.query(self.resolver.a, target)))  # RFC 7208 5.7: always A
        raise _PermError(f"unknown mechanism {name!r}")


def check_host(resolver: Resolver, ip: str, domain: str, sender: str, helo: str = "") -> tuple[str, str]:
    """RFC 7208 4: (result, reason) for <ip>, <domain>, <sender>; never raises."""
    try:
        addr = ipaddress.ip_address(ip.strip().strip("[]").removeprefix("IPv6:").split("%")[0])
    except ValueError:
        return "none", f"bad client IP {ip!r}"
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped  # an IPv4 client seen on a dual-stack socket
    check = _Check(resolver, addr, sender, helo)
    try:
        return check.check_host(domain), ""
    except _PermError as e:
        return "permerror", str(e)
    except _TempError as e:
        return "temperror", str(e)


def _ascii_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


class Memo:
    """Recent SPF results by (client IP, HELO, MAIL FROM), for `seconds`: a burst of messages from one
    sender and host is evaluated once. Only final results are kept (a temperror is asked again). Kept no
    longer than the resolver answers it was computed from would be, so nothing goes stale beyond that."""

    def __init__(self, seconds: float = 5.0, size: int = 4096) -> None:
        self.seconds, self.size = seconds, size
        self.entries: dict[tuple[str, str, str], tuple[float, SpfResult]] = {}

    def check(self, ip: str, helo: str, mail_from: str, resolver: Resolver) -> SpfResult:
        key = (ip, helo.lower(), mail_from.lower())
        now = time.monotonic()
        hit = self.entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        result = check(ip, helo, mail_from, resolver)
        if result.result != "temperror":
            if len(self.entries) >= self.size:
                self.entries.clear()
            self.entries[key] = (now + self.seconds, result)
        return result


def check(ip: str, helo: str, mail_from: str, resolver: Resolver) -> SpfResult:
    """SPF for an SMTP transaction: MAIL FROM identity, or HELO when MAIL FROM is null (RFC 7208 2.4)."""
    mail_from = mail_from.strip()
    if mail_from.startswith("<") and mail_from.endswith(">"):
        mail_from = mail_from[1:-1]
    helo = helo.strip()
    if mail_from:
        identity = "mailfrom"
        local, at, domain = mail_from.rpartition("@")
        if not at:
            local, domain = "", mail_from
    else:
        identity, local, domain = "helo", "", helo
    domain = _ascii_domain(domain)
    # RFC 7208 4.3: a missing local-part becomes "postmaster"
    sender = f"{local or 'postmaster'}@{domain}"
    if not domain or domain.startswith("["):
        return SpfResult("none", domain, identity, sender, "no domain to check")
    result, reason = check_host(resolver, ip, domain, sender, helo)
    return SpfResult(result, domain, identity, sender, reason)
