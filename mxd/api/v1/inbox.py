"""/v1/mailboxes/{mailbox_id}/inbox: polling a mailbox's unacknowledged inbound messages, and acknowledging them."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, json_body, note_audit, page_params
from mxd.api.schemas import STR, arr, obj, ref
from mxd.errors import MxdError
from mxd.service import mail

TAG = "Inbox"
INBOX_DEFAULT, INBOX_MOST = 20, 100
MAX_ACK = 1000


@endpoint("GET", "/v1/mailboxes/{mailbox_id}/inbox", "pollInbox", "Unacknowledged inbound messages, oldest first",
          TAG, "read", query=("inbox_limit", "include"), response=ref("Inbox"))
async def inbox_poll(request: Request, principal: Principal) -> Response:
    limit, _ = page_params(request, INBOX_DEFAULT, INBOX_MOST)
    out = await mail.inbox(ctx(request), principal, request.path_params["mailbox_id"], limit, by_id=True,
                           shape=mail.full_detail,
                           include_quarantined=mail.includes_quarantined(request.query_params.get("include")))
    data = [dict(m, mailbox_id=out["mailbox_id"]) for m in out["data"]]
    return JSONResponse({"mailbox_id": out["mailbox_id"], "data": data, "count": len(data),
                         "has_more": out["has_more"]})


@endpoint("POST", "/v1/mailboxes/{mailbox_id}/inbox/ack", "ackInbox", "Acknowledge processed messages", TAG, "read",
          body=obj(["message_ids"], message_ids=arr(dict(STR, minLength=1, maxLength=100), minItems=1,
                                                    maxItems=MAX_ACK)),
          query=("include",), example={"message_ids": ["msg_0000000000000000000000"]}, response=ref("InboxAck"))
async def inbox_ack(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    ids = body.get("message_ids")
    if (not isinstance(ids, list) or not ids or len(ids) > MAX_ACK
            or not all(isinstance(i, str) and 0 < len(i) <= 100 for i in ids)):
        raise MxdError("bad_request", f"message_ids must be a list of 1 to {MAX_ACK} message ids",
                       fix='{"message_ids": ["msg_..."]}')
    out = await mail.acknowledge(ctx(request), principal, request.path_params["mailbox_id"], ids, by_id=True,
                                 include_quarantined=mail.includes_quarantined(request.query_params.get("include")))
    note_audit(request, acknowledged=len(out["acknowledged"]))
    return JSONResponse({"mailbox_id": out["mailbox_id"], "acknowledged": out["acknowledged"],
                         "not_found": out["not_found"]})
