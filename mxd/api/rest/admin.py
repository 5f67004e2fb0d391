"""/api/bootstrap, /api/audit and /api/retention/run: what a new caller needs, the audit trail, retention now."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import ANY, endpoint
from mxd.api.http import ctx, json_body, note_audit, page_params
from mxd.api.schemas import STR, TAG_ADMIN, obj, page_of, ref
from mxd.errors import MxdError
from mxd.service import admin, directory
from mxd.timefmt import when


@endpoint("GET", "/api/bootstrap", "bootstrap",
          "Server, caller, domains, mailboxes, ports and next steps in one answer", "System", ANY, response=ref("Bootstrap"), errors=(401,))
async def bootstrap(request: Request, principal: Principal) -> Response:
    """What a new operator or agent needs in one call: server, caller, domains, mailboxes, ports, next steps."""
    return JSONResponse(await admin.bootstrap(ctx(request), principal))


@endpoint("GET", "/api/audit", "listAudit", "Audit rows, newest first", TAG_ADMIN, "audit",
          query=("audit_limit", "cursor", "actor", "mailbox", "action", "since", "until", "result"),
          response=page_of("AuditEntry"))
async def audit_list(request: Request, principal: Principal) -> Response:
    """Audit rows, newest first: filters actor, mailbox, action (exact or a prefix ending in *), since, until,
    result. An organisation's token sees its organisation's rows; the operator's tokens see every row."""
    limit, cursor = page_params(request, default=100, most=1000)
    q = request.query_params
    since, until = when(q.get("since"), "since"), when(q.get("until"), "until")
    return JSONResponse(await admin.audit_page(
        ctx(request), principal, mailbox=q.get("mailbox") or None, actor=q.get("actor") or None, action=q.get("action") or None,
        since=since, until=until, result=q.get("result") or None, limit=limit, cursor=cursor))


@endpoint("POST", "/api/retention/run", "runRetention", "Apply retention now (every mailbox administered, or one)",
          TAG_ADMIN, "admin", body=obj(mailbox=STR), example={"mailbox": "agent@example.test"}, body_optional=True,
          response=ref("RetentionReport"))
async def retention_run(request: Request, principal: Principal) -> Response:
    """Apply retention now (admin): every mailbox the caller administers, or the one in {"mailbox": ...}."""
    body = await json_body(request)
    ref_ = body.get("mailbox")
    if ref_ is not None and not isinstance(ref_, str):
        raise MxdError("bad_request", 'mailbox must be an address or id: {"mailbox": "agent@example.com"}')
    c = ctx(request)
    if ref_:
        note_audit(request, mailbox=(await directory.mailbox(c, principal, ref_)).address)
    report = await admin.run_retention(c, principal, ref_ or None)
    note_audit(request, messages=report["messages"], inbound_rows=report["inbound_rows"])
    return JSONResponse(report)
