"""/v1/mailboxes: the mailboxes this key may use, and one of them by id."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx
from mxd.api.schemas import TAG_ROUTING, list_of, ref
from mxd.api.v1.shapes import mailbox_dict
from mxd.service import directory


@endpoint("GET", "/v1/mailboxes", "listMailboxesV1", "Mailboxes", TAG_ROUTING, "read", response=list_of("V1Mailbox"))
async def mailboxes_list(request: Request, principal: Principal) -> Response:
    c = ctx(request)
    rows = await directory.mailboxes(c, principal, by_id=True)
    return JSONResponse({"data": [mailbox_dict(b, c.cfg.default_retention_days) for b in rows]})


@endpoint("GET", "/v1/mailboxes/{mailbox_id}", "getMailboxV1", "One mailbox", TAG_ROUTING, "read",
          response=ref("V1Mailbox"))
async def mailbox_get(request: Request, principal: Principal) -> Response:
    c = ctx(request)
    box = await directory.mailbox_by_id(c, principal, request.path_params["mailbox_id"])
    return JSONResponse(mailbox_dict(box, c.cfg.default_retention_days))
