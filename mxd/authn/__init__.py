"""Inbound message authentication: SPF, DKIM, DMARC and ARC results and the Authentication-Results field that
records them.

`authenticate` runs in a worker thread, asks DNS only through the Resolver it
is given, and never raises: hostile headers, broken signatures and DNS
failures all come back as results.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from mxd.authn import arc, dkim, dmarc, results, spf
from mxd.authn.arc import ArcResult
from mxd.authn.dkim import DkimResult
from mxd.authn.dmarc import DmarcResult
from mxd.authn.spf import SpfResult
from mxd.resolver import Resolver

__all__ = ["ArcResult", "AuthResults", "DkimResult", "DmarcResult", "SpfResult", "authenticate"]

log = logging.getLogger(__name__)


@dataclass
class AuthResults:
    spf: str                    # pass fail softfail neutral none temperror permerror
    spf_domain: str             # MAIL FROM domain, or HELO when MAIL FROM is null
    dkim: list[DkimResult]      # one per DKIM-Signature, topmost first
    dmarc: str                  # pass fail none temperror permerror
    dmarc_policy: str | None    # none quarantine reject (sp= and pct= applied), None without a usable record
    from_domain: str            # RFC5322.From domain, "" when there is not exactly one
    header_value: str           # Authentication-Results body, without the field name
    spf_detail: SpfResult | None = field(default=None, repr=False)
    dmarc_detail: DmarcResult | None = field(default=None, repr=False)
    arc: str = "none"           # pass fail none temperror: the ARC chain (RFC 8617)
    arc_sealers: list[str] = field(default_factory=list)   # d= of each ARC-Seal, most recent first
    dmarc_override: str = ""    # why a DMARC failure was turned into a pass (a trusted ARC sealer), or ""

    def arc_json(self) -> dict:
        return {"arc": self.arc, "arc_sealers": list(self.arc_sealers), "dmarc_override": self.dmarc_override}


def authenticate(raw: bytes, *, ip: str, helo: str, mail_from: str, resolver: Resolver,
                 authserv_id: str, trusted_arc_sealers: Sequence[str] = (),
                 spf_memo: spf.Memo | None = None) -> AuthResults:
    """SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489), ARC (RFC 8617) and the RFC 8601 field for one
    received message. A DMARC failure becomes a pass when a trusted ARC sealer vouches for the author
    domain (mxd.authn.arc.override). `spf_memo` keeps SPF results of recent (IP, HELO, MAIL FROM)."""
    try:
        spf_result = (spf_memo.check if spf_memo is not None else spf.check)(ip, helo, mail_from, resolver)
    except Exception:  # a bug, not an input: report it and let the caller defer rather than reject
        log.exception("spf check failed")
        spf_result = SpfResult("temperror", "", "mailfrom", "", "internal error")

    head = dmarc.header_of(raw)
    signed = bool(dmarc.header_fields(raw, b"dkim-signature", head))
    dkim_results = dkim.verify(raw, resolver) if signed else []  # unsigned: skip dkimpy's parse

    try:
        from_domain, from_error = dmarc.author_domain(raw, head)
        passes = [r.domain for r in dkim_results if r.result == "pass"]
        dmarc_result = dmarc.evaluate(from_domain, spf_result.result, spf_result.domain, passes, resolver,
                                      from_error=from_error)
    except Exception:
        log.exception("dmarc evaluation failed")
        dmarc_result = DmarcResult("temperror", "", None, "internal error")

    arc_result, override = ArcResult("none"), ""
    try:
        if dmarc.header_fields(raw, b"arc-seal", head):      # unsealed: skip dkimpy's parse
            arc_result = arc.verify(raw, resolver)
            if dmarc_result.result == "fail":
                override = arc.override(arc_result, dmarc_result.from_domain, trusted_arc_sealers)
                if override:               # RFC 8617 7.2: local policy, recorded as such
                    dmarc_result = DmarcResult("pass", dmarc_result.from_domain, dmarc_result.policy, override,
                                               dmarc_result.record_domain)
    except Exception:
        log.exception("arc verification failed")
        arc_result = ArcResult("temperror", reason="internal error")

    try:
        value = results.header_value(authserv_id, spf_result, dkim_results, dmarc_result, arc_result,
                                     override=bool(override))
    except Exception:
        log.exception("building Authentication-Results failed")
        value = f"{authserv_id}; none"
    return AuthResults(spf_result.result, spf_result.domain, dkim_results, dmarc_result.result,
                       dmarc_result.policy, dmarc_result.from_domain, value, spf_result, dmarc_result,
                       arc_result.result, list(arc_result.sealers), override)
