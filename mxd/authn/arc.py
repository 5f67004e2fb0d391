"""ARC (RFC 8617): the chain's validation status (cv), its sealers, and the local-policy override of a DMARC
failure for mail sealed by a trusted forwarder (RFC 8617 7.2, RFC 7489 appendix C "local_policy").

The override applies only when the chain validates, the most recent seal (highest i=) is by a sealer the
operator trusts (`trusted_arc_sealers`: the domain or a subdomain of it), and that sealer's
ARC-Authentication-Results say the message authenticated as the same author domain when it arrived there:
dmarc=pass with header.from equal to it, or an spf/dkim pass aligned with it (relaxed).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Sequence

import authres
import dkim as dkimpy
from dkim.util import parse_tag_value

from mxd.authn import dmarc
from mxd.authn.dkim import KeyLookup, TempFail  # one key lookup for DKIM and ARC
from mxd.resolver import Resolver

log = logging.getLogger(__name__)
_dkimpy_log = logging.getLogger(__name__ + ".dkimpy")
_dkimpy_log.setLevel(logging.CRITICAL)

MAX_INSTANCES = 50          # RFC 8617 4.2.1: i= is 1..50; more ARC sets than this is a broken chain


@dataclass(frozen=True)
class ArcResult:
    result: str                              # pass fail none temperror (RFC 8617 4.4, RFC 8601 arc=)
    sealers: tuple[str, ...] = ()            # d= of each ARC-Seal, most recent (highest i=) first
    reason: str = ""
    last_results: str = field(default="", repr=False)   # the most recent ARC-Authentication-Results, without i=

    @property
    def last_sealer(self) -> str:
        return self.sealers[0] if self.sealers else ""


def _instance(value: bytes) -> int:
    m = re.match(rb"\s*i\s*=\s*(\d{1,3})\s*;", value)
    return int(m.group(1)) if m else 0


def verify(raw: bytes, resolver: Resolver) -> ArcResult:
    """The chain's status; never raises. "none" without ARC header fields."""
    seals = dmarc.header_fields(raw, b"arc-seal")
    if not seals:
        return ArcResult("none")
    if len(seals) > MAX_INSTANCES:
        return ArcResult("fail", reason="too many ARC sets")
    ordered = sorted(seals, key=_instance, reverse=True)
    sealers = []
    for value in ordered:
        try:
            tags = parse_tag_value(value)
        except Exception:
            tags = {}
        sealers.append(dmarc.normalize_domain(tags.get(b"d", b"").decode("ascii", "replace")))
    aars = {_instance(v): v for v in dmarc.header_fields(raw, b"arc-authentication-results")}
    top = _instance(ordered[0])
    last = aars.get(top, b"").decode("utf-8", "replace")
    last = re.sub(r"^\s*i\s*=\s*\d+\s*;", "", last).strip()
    lookup = KeyLookup(resolver)
    try:
        cv, _results, reason = dkimpy.arc_verify(raw, logger=_dkimpy_log, dnsfunc=lookup, minkey=1024)
    except TempFail as e:
        return ArcResult("temperror", tuple(sealers), f"key lookup: {e}"[:200], last)
    except Exception as e:            # dkimpy on hostile input
        return ArcResult("fail", tuple(sealers), f"{e.__class__.__name__}: {str(e)[:160]}", last)
    result = {dkimpy.CV_Pass: "pass", dkimpy.CV_None: "none"}.get(cv, "fail")
    if result == "none":              # seals present but dkimpy found no instance: a broken chain
        result = "fail"
    return ArcResult(result, tuple(sealers), "" if result == "pass" else str(reason)[:200], last)


def _trusted(sealer: str, trusted: Sequence[str]) -> bool:
    for t in trusted:
        t = dmarc.normalize_domain(t)
        if t and (sealer == t or sealer.endswith("." + t)):
            return True
    return False


def _authenticated_at_sealer(results: str, from_domain: str) -> str:
    """What in the sealer's ARC-Authentication-Results shows the author domain authenticated ("" if nothing)."""
    try:
        header = authres.parse_value(results)
    except Exception:
        return ""
    found: dict[str, str] = {}
    for r in header.results:
        if str(r.result).lower() != "pass":
            continue
        props = {(p.type.lower(), p.name.lower()): str(p.value) for p in r.properties}
        method = str(r.method).lower()
        if method == "dmarc" and dmarc.normalize_domain(props.get(("header", "from"), "")) == from_domain:
            found["dmarc"] = "dmarc=pass"
        elif method == "dkim" and dmarc.aligned(props.get(("header", "d"), ""), from_domain, "r"):
            found["dkim"] = "dkim=pass"
        elif method == "spf" and dmarc.aligned(props.get(("smtp", "mailfrom"), "").rpartition("@")[2],
                                               from_domain, "r"):
            found["spf"] = "spf=pass"
    for method in ("dmarc", "dkim", "spf"):       # the sealer's DMARC verdict first, then aligned identifiers
        if method in found:
            return found[method]
    return ""


def override(arc: ArcResult, from_domain: str, trusted: Sequence[str]) -> str:
    """Why a DMARC failure of `from_domain` is overridden by this chain ("" when it is not)."""
    if arc.result != "pass" or not from_domain or not trusted or not _trusted(arc.last_sealer, trusted):
        return ""
    found = _authenticated_at_sealer(arc.last_results, from_domain)
    return f"arc: {found} at trusted sealer {arc.last_sealer}" if found else ""
