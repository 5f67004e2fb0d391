"""/api/tls-reports: SMTP TLS reports (RFC 8460) sent by this server, made now on the operator's demand."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, json_body
from mxd.api.schemas import STR, TAG_REPORTS, arr, obj
from mxd.errors import MxdError
from mxd.service import tls_reports

SENT = obj(["domain", "day", "outcome", "rua"], domain=STR, day=STR,
           outcome={"enum": ["queued", "no-rua", "failed", "retry"]}, rua=arr(STR), reason=STR, message_id=STR,
           report_id=STR)


@endpoint("POST", "/api/tls-reports/send", "sendTlsReports", "Send the SMTP TLS reports due now: of the past days "
          "not reported yet, or of one UTC day (today included)", TAG_REPORTS, "admin", operator=True,
          body=obj(day=dict(STR, description="a UTC date, YYYY-MM-DD")), example={"day": "2026-01-31"},
          body_optional=True, response=obj(["data"], data=arr(SENT)))
async def send_tls_reports(request: Request, principal: Principal) -> Response:
    """One entry per report looked at (a report sent before is not sent again)."""
    body = await json_body(request)
    day = body.get("day")
    if day is not None and not isinstance(day, str):
        raise MxdError("bad_request", 'day must be a UTC date: {"day": "2026-01-31"}')
    return JSONResponse({"data": await tls_reports.send_reports(ctx(request), day)})
