"""DMARC aggregate and SMTP TLS reports, as the reports API shows them: the operator sees every domain's, an
organisation's admin only its own domains' (the one tenant rule, mxd.access)."""
from __future__ import annotations

from typing import Any

from mxd.access import Principal
from mxd.address import AddressError, normalize_domain
from mxd.errors import MxdError
from mxd.service import Services
from mxd.store import reports
from mxd.timefmt import iso


def _domains(principal: Principal) -> list[str] | None:
    """The domains whose reports the principal sees (None: all)."""
    return None if principal.is_operator else reports.owned_domains([principal.org_id])


def _domain_filter(domain: str | None) -> str | None:
    if not domain:
        return None
    try:
        return normalize_domain(domain)
    except AddressError:
        raise MxdError("bad_request", f"domain {domain!r} is not a domain name") from None


def _times(row: dict) -> dict:
    return dict(row, begin=iso(row["begin"]), end=iso(row["end"]))


async def dmarc(s: Services, principal: Principal, domain: str | None = None, since: float | None = None,
                until: float | None = None, include_errors: bool = False) -> dict[str, Any]:
    name = _domain_filter(domain)

    def work() -> dict[str, Any]:
        domains = _domains(principal)
        out: dict[str, Any] = {"data": [_times(r) for r in reports.dmarc_summary(domains, name, since, until)]}
        if include_errors:
            out["report_errors"] = _errors(domains)
        return out
    return await s.db.read(work)


async def tls(s: Services, principal: Principal, domain: str | None = None, since: float | None = None,
              until: float | None = None, include_errors: bool = False) -> dict[str, Any]:
    name = _domain_filter(domain)

    def work() -> dict[str, Any]:
        domains = _domains(principal)
        out: dict[str, Any] = {"data": reports.tls_summary(domains, name, since, until)}
        if include_errors:
            out["report_errors"] = _errors(domains)
        return out
    return await s.db.read(work)


def _errors(domains: list[str] | None) -> list[dict]:
    return [dict(e, looked_at=iso(e["looked_at"])) for e in reports.errors(reports.report_mailboxes(domains))]


async def errors(s: Services, principal: Principal) -> dict[str, Any]:
    """Messages at the report addresses whose report parts could not be read."""
    return {"data": await s.db.read(lambda: _errors(_domains(principal)))}
