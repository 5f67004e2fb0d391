"""/api/reports: the DMARC aggregate and SMTP TLS reports received at the report addresses (admin)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx
from mxd.api.schemas import TAG_REPORTS, list_of, ref
from mxd.service import reports
from mxd.timefmt import when

_QUERY = ("domain", "since", "until", "include")


def _args(request: Request) -> dict:
    q = request.query_params
    include = {x.strip() for x in (q.get("include") or "").split(",")}
    return {"domain": q.get("domain") or None, "since": when(q.get("since"), "since"),
            "until": when(q.get("until"), "until"), "include_errors": "errors" in include}


@endpoint("GET", "/api/reports/dmarc", "dmarcReports", "DMARC aggregate reports: per reporting organisation and "
          "source IP, messages that passed and failed SPF, DKIM and DMARC", TAG_REPORTS, "admin", query=_QUERY,
          response=ref("DmarcReports"))
async def dmarc_reports(request: Request, principal: Principal) -> Response:
    """Aggregated over the reports whose period overlaps since..until; include=errors adds the report
    messages that could not be read."""
    return JSONResponse(await reports.dmarc(ctx(request), principal, **_args(request)))


@endpoint("GET", "/api/reports/tls", "tlsReports", "SMTP TLS reports: per reporting organisation and policy, "
          "successful and failed sessions with the failure types", TAG_REPORTS, "admin", query=_QUERY,
          response=ref("TlsReports"))
async def tls_reports(request: Request, principal: Principal) -> Response:
    return JSONResponse(await reports.tls(ctx(request), principal, **_args(request)))


@endpoint("GET", "/api/reports/errors", "reportErrors", "Messages at the report addresses holding a report "
          "that could not be read", TAG_REPORTS, "admin", response=list_of("ReportError"))
async def report_errors(request: Request, principal: Principal) -> Response:
    return JSONResponse(await reports.errors(ctx(request), principal))
