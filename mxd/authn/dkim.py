"""DKIM verification (RFC 6376, RFC 8463 Ed25519): one result per DKIM-Signature, key lookups through a Resolver."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import dkim as dkimpy
from dkim.util import parse_tag_value

from mxd.resolver import DNSError, Resolver

log = logging.getLogger(__name__)
_dkimpy_log = logging.getLogger(__name__ + ".dkimpy")
_dkimpy_log.setLevel(logging.CRITICAL)  # dkimpy logs every hostile signature at ERROR; results carry the reason

MAX_SIGNATURES = 10  # verify at most this many; the rest get "neutral" (a resource bound, RFC 6376 6.1)


@dataclass(frozen=True)
class DkimResult:
    result: str         # pass fail neutral policy temperror permerror (RFC 8601 2.7.1)
    domain: str         # d=
    selector: str       # s=
    algorithm: str      # a=
    header_b: str       # first 8 characters of b= (RFC 6008 header.b)
    reason: str = ""


class TempFail(Exception):
    """Raised from the key lookup: dkimpy catches its own DnsTimeoutError and calls it a bad signature."""


class KeyLookup:
    """dkimpy's dnsfunc(name: bytes, timeout=...) -> bytes | None, noting what the lookup found."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.found = False

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        self.found = False
        try:
            qname = name.decode("ascii").rstrip(".")
        except UnicodeDecodeError:
            return None
        try:
            records = self.resolver.txt(qname)
        except DNSError as e:
            raise TempFail(str(e)) from None  # RFC 6376 6.1.2: TEMPFAIL
        if not records:
            return None
        # RFC 6376 3.6.2.2: several TXT records give undefined results; take the first.
        self.found = True
        return records[0].encode("latin-1")


def _tag(tags: dict[bytes, bytes], key: bytes) -> str:
    return re.sub(r"\s+", "", tags.get(key, b"").decode("ascii", "replace"))


def _signature_tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return parse_tag_value(value)
    except Exception:
        tags = {}  # fall back to a forgiving split so the result can still name d= and s=
        for part in value.split(b";"):
            k, eq, v = part.partition(b"=")
            if eq:
                tags.setdefault(k.strip(), v.strip())
        return tags


def verify(raw: bytes, resolver: Resolver) -> list[DkimResult]:
    """Verify every DKIM-Signature field, topmost first; never raises."""
    try:
        message = dkimpy.DKIM(raw, logger=_dkimpy_log, minkey=1024)
    except Exception as e:
        log.debug("dkim: unparsable message: %s", e)
        return []
    signatures = [v for k, v in message.headers if k.lower() == b"dkim-signature"]
    results = []
    for idx, value in enumerate(signatures):
        tags = _signature_tags(value)
        d, s, a = _tag(tags, b"d").lower(), _tag(tags, b"s"), _tag(tags, b"a").lower()
        b = _tag(tags, b"b")[:8]
        if idx >= MAX_SIGNATURES:
            results.append(DkimResult("neutral", d, s, a, b, "too many signatures"))
            continue
        result, reason = _verify_one(message, idx, a, resolver)
        results.append(DkimResult(result, d, s, a, b, reason))
    return results


def _verify_one(message: dkimpy.DKIM, idx: int, algorithm: str, resolver: Resolver) -> tuple[str, str]:
    lookup = KeyLookup(resolver)
    message.pk = None
    try:
        ok = message.verify(idx=idx, dnsfunc=lookup)
    except TempFail as e:
        return "temperror", f"key lookup: {e}"
    except dkimpy.DKIMException as e:
        text = str(e)
        if "body hash mismatch" in text:
            return "fail", "body hash mismatch"  # RFC 6376 6.1.3
        if "public key too small" in text:
            return "policy", "RSA key shorter than 1024 bits"  # RFC 8301 3.2
        return "permerror", text[:200]
    except Exception as e:  # dkimpy on hostile input: IndexError, ValueError, ...
        return "permerror", f"{e.__class__.__name__}: {str(e)[:160]}"
    if ok:
        if algorithm == "rsa-sha1":
            return "policy", "rsa-sha1 is not accepted"  # RFC 8301 3.1
        return "pass", ""
    if message.pk is None:
        # RFC 6376 6.1.2: no key record, or a record that does not parse
        return "permerror", "no key for signature" if not lookup.found else "bad key record"
    return "fail", "signature did not verify"
