"""/v1/messages: sending from an agent mailbox (the one send path, mxd.service.send), and a message with its
delivery state."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import MAIL_BODY, client_ip, ctx, json_body, note_audit
from mxd.api.schemas import ERRORS, TAG_MESSAGES, TAG_SENDING, ref
from mxd.errors import MxdError
from mxd.service import mail, send

METADATA_KEYS, METADATA_KEY_LEN, METADATA_VALUE_LEN = 20, 40, 500


def metadata_of(value: Any) -> dict[str, str]:
    """The send's `metadata`: at most METADATA_KEYS short strings, echoed in the answer and the audit row."""
    if value is None:
        return {}
    if (not isinstance(value, dict) or len(value) > METADATA_KEYS
            or not all(isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= METADATA_KEY_LEN
                       and len(v) <= METADATA_VALUE_LEN for k, v in value.items())):
        raise MxdError("bad_request", f"metadata must be an object of at most {METADATA_KEYS} strings "
                                      f"(keys up to {METADATA_KEY_LEN}, values up to {METADATA_VALUE_LEN} characters)")
    return value


@endpoint("POST", "/v1/messages", "sendV1", "Send from an agent mailbox", TAG_SENDING, "send", body=ref("V1SendRequest"),
          example={"mailbox_id": "mbx_0000000000000000000000", "to": ["recipient@example.org"], "subject": "Hello",
                   "body_text": "Thanks for your message."},
          errors=ERRORS + (503,), headers=("Idempotency-Key",), status=201, response=ref("V1SendResult"),
          also=((200, ref("V1SendResult")),))
async def messages_send(request: Request, principal: Principal) -> Response:
    body = await json_body(request, MAIL_BODY)
    metadata = metadata_of(body.get("metadata"))
    c = ctx(request)
    letter = send.Letter(None, to=body.get("to"), cc=body.get("cc"), bcc=body.get("bcc"),
                         reply_to=body.get("reply_to"), subject=body.get("subject"),
                         attachments=body.get("attachments"), headers=body.get("headers"),
                         text=body.get("body_text", body.get("text")), html=body.get("body_html", body.get("html")),
                         from_name=body.get("from_name"),
                         given=tuple(k for k in ("to", "cc", "bcc", "reply_to", "subject", "attachments", "headers")
                                     if k in body))
    box, letter = await send.mailbox_letter(c, principal, body.get("mailbox_id"), body.get("in_reply_to"), letter)
    draft = send.compose_draft(letter)
    note_audit(request, mailbox=box.address, metadata=metadata)
    result = await send.send(c, principal, draft, idempotency_key=request.headers.get("idempotency-key"),
                             idempotency_body=body, remote_ip=client_ip(request), source="api")
    replay = bool(result.pop("idempotent_replay", False))
    out = {"id": result["id"], "object": "message", "mailbox_id": box.id, "from": box.address,
           "thread_id": result.get("thread_id"), "message_id": result.get("message_id"),
           "status": result.get("status"), "hold_reason": result.get("hold_reason"),
           "recipients": result.get("recipients", []), "metadata": metadata, "idempotent_replay": replay}
    return JSONResponse(out, status_code=200 if replay else 201)


@endpoint("GET", "/v1/messages/{message_id}", "getMessageV1", "A message with its delivery state", TAG_MESSAGES,
          "read", query=("include",), response=ref("V1Message"))
async def message_get(request: Request, principal: Principal) -> Response:
    view = await mail.message_view(ctx(request), principal, request.path_params["message_id"],
                                   not_found="message not found",      # /v1's words, as they always were
                                   include_quarantined=mail.includes_quarantined(request.query_params.get("include")))
    out = dict(view.detail, mailbox_id=view.mailbox_id, acknowledged=view.acknowledged)
    if "delivery" in out:                       # after the two above, as the answer always had it
        out["delivery"] = out.pop("delivery")
    return JSONResponse(out)
