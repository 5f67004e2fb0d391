"""The Authentication-Results field body (RFC 8601), built with authres from the SPF, DKIM, DMARC and ARC results."""
from __future__ import annotations

import re

from authres import core_features
from authres.core import AuthenticationResult, AuthenticationResultProperty, AuthenticationResultsHeader

from mxd.authn.arc import ArcResult
from mxd.authn.dkim import DkimResult
from mxd.authn.dmarc import DmarcResult
from mxd.authn.spf import SpfResult

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+\Z")   # RFC 2045 token, what authres leaves unquoted
_DOMAIN = re.compile(r"[A-Za-z0-9_.-]+\Z")
_BASE64 = re.compile(r"[A-Za-z0-9+/=]+\Z")      # authres quotes these ("/" and "=" are tspecials)
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9_.-]+\Z")   # dot-atom@domain


def _prop(ptype: str, name: str, value: str, pattern: re.Pattern[str] = _TOKEN) -> list[AuthenticationResultProperty]:
    """One property, or none when a hostile value would not survive as a token (authres does not quote "x@y")."""
    if value and len(value) <= 255 and pattern.match(value):
        return [AuthenticationResultProperty(ptype, name, value)]
    return []


def _reason(text: str) -> str | None:
    # RFC 8601 2.7: reason is a value; keep it printable and free of "@" so authres quotes it.
    text = re.sub(r"[^\x20-\x7e]|[@\"\\]", "?", text)[:120].strip()
    return text or None


def _spf(spf: SpfResult) -> AuthenticationResult:
    # RFC 8601 2.7.2: smtp.mailfrom (the address, or its domain when the address is not a plain dot-atom) or smtp.helo
    if spf.identity == "helo":
        props = _prop("smtp", "helo", spf.domain, _DOMAIN)
    else:
        props = _prop("smtp", "mailfrom", spf.sender, _ADDRESS) or _prop("smtp", "mailfrom", spf.domain, _DOMAIN)
    reason = _reason(spf.reason) if spf.result in ("temperror", "permerror") else None
    return AuthenticationResult("spf", result=spf.result, reason=reason, properties=props)


def _dkim(sig: DkimResult) -> AuthenticationResult:
    # RFC 8601 2.7.1 header.d / header.s / header.a, RFC 6008 header.b
    props = (_prop("header", "d", sig.domain, _DOMAIN) + _prop("header", "s", sig.selector, _DOMAIN)
             + _prop("header", "a", sig.algorithm) + _prop("header", "b", sig.header_b, _BASE64))
    reason = _reason(sig.reason) if sig.result != "pass" else None
    return AuthenticationResult("dkim", result=sig.result, reason=reason, properties=props)


def _dmarc(dmarc: DmarcResult, override: bool = False) -> AuthenticationResult:
    props = _prop("header", "from", dmarc.from_domain, _DOMAIN)  # RFC 7489 11.2
    if override:        # RFC 8617 7.2 / RFC 7489 appendix C: a local policy override, by ARC
        props += _prop("policy", "override", "arc")
    reason = _reason(dmarc.reason) if dmarc.result in ("temperror", "permerror") or override else None
    return AuthenticationResult("dmarc", result=dmarc.result, reason=reason, properties=props)


def _arc(arc: ArcResult) -> AuthenticationResult:
    # RFC 8617 4.4 / 8601 arc=: header.as.d names the most recent sealer; the comment lists the chain's sealers
    sealers = [s for s in arc.sealers if s and _DOMAIN.match(s)][:10]
    props = _prop("header", "as.d", arc.last_sealer, _DOMAIN)
    comment = ("sealed by " + " ".join(sealers)) if sealers else None
    reason = _reason(arc.reason) if arc.result != "pass" and arc.reason else None
    return AuthenticationResult("arc", result=arc.result, result_comment=comment, reason=reason, properties=props)


def header_value(authserv_id: str, spf: SpfResult, dkim: list[DkimResult], dmarc: DmarcResult,
                 arc: ArcResult | None = None, *, override: bool = False) -> str:
    """e.g. "mx.example.net; spf=pass smtp.mailfrom=a@x.org; dkim=none; dmarc=pass header.from=x.org"; with an
    ARC chain, "arc=pass (sealed by lists.example.org) header.as.d=lists.example.org" too."""
    results = [_spf(spf)]
    results += [_dkim(sig) for sig in dkim] or [AuthenticationResult("dkim", result="none")]
    results.append(_dmarc(dmarc, override))
    if arc is not None and arc.result != "none":
        results.append(_arc(arc))
    authserv = authserv_id if _TOKEN.match(authserv_id or "") else "localhost"
    return AuthenticationResultsHeader(core_features(), authserv_id=authserv, results=results).header_value()
