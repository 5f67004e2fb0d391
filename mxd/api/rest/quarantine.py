"""/api/quarantine: the messages held back from their mailboxes (admin: an organisation's admin sees its own
organisation's), one held message, releasing it into its mailbox, deleting it. Release and delete are
audited (mxd.api.http.AuditMiddleware, with the mailbox and the reasons noted)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, note_audit, page_params
from mxd.api.schemas import PAGED, TAG_MESSAGES, page_of, ref
from mxd.service import quarantine


@endpoint("GET", "/api/quarantine", "listQuarantine", "Quarantined messages, newest first", TAG_MESSAGES, "admin",
          query=PAGED + ("mailbox", "reason"), response=page_of("QuarantinedMessage"))
async def quarantine_list(request: Request, principal: Principal) -> Response:
    limit, cursor = page_params(request)
    q = request.query_params
    return JSONResponse(await quarantine.held_page(ctx(request), principal, mailbox=q.get("mailbox"),
                                                   reason=q.get("reason"), limit=limit, cursor=cursor))


@endpoint("GET", "/api/quarantine/{id}", "getQuarantined", "A quarantined message in full, with its reasons",
          TAG_MESSAGES, "admin", response=ref("Message"))
async def quarantine_get(request: Request, principal: Principal) -> Response:
    return JSONResponse(await quarantine.held_detail(ctx(request), principal, request.path_params["id"]))


@endpoint("POST", "/api/quarantine/{id}/release", "releaseQuarantined",
          "Release a message into its mailbox as if just arrived (409 when not held)", TAG_MESSAGES, "admin",
          response=ref("Message"))
async def quarantine_release(request: Request, principal: Principal) -> Response:
    out, reasons = await quarantine.release(ctx(request), principal, request.path_params["id"])
    note_audit(request, mailbox=out["mailbox"], message=out["id"], thread_id=out["thread_id"],
               reasons=[r.get("code") for r in reasons if isinstance(r, dict)])
    return JSONResponse(out)


@endpoint("DELETE", "/api/quarantine/{id}", "deleteQuarantined", "Delete a quarantined message (409 when not held)",
          TAG_MESSAGES, "admin", response=ref("QuarantineDeleted"))
async def quarantine_delete(request: Request, principal: Principal) -> Response:
    out = await quarantine.delete(ctx(request), principal, request.path_params["id"])
    note_audit(request, mailbox=out["mailbox"], message=out["id"],
               reasons=[r.get("code") for r in out["quarantine"] if isinstance(r, dict)])
    return JSONResponse(out)
