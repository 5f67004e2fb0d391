"""/api/inbound: a message injected as if the MX had received it, and Amazon SES receipts (via SNS).
Both go through mxd.service.inbound, the same ingest as the MX."""
from __future__ import annotations

import base64
import binascii

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import client_ip, ctx, json_body, note_audit, principal_for_secret, principal_of, require
from mxd.api.schemas import ADDRESSES, BOOL, NSTR, STR, obj, ref
from mxd.errors import MxdError
from mxd.service import inbound
from mxd.service.send import address_list

TAG = "Inbound"


@endpoint("POST", "/api/inbound/simulate", "simulateInbound", "Inject a message as if it came from the MX", TAG,
          "admin", body=obj(to=ADDRESSES, mailbox=ADDRESSES, **{"from": STR}, mail_from=STR, subject=STR, text=STR,
                            html=STR, raw=dict(STR, description="a whole message, base64 or text"),
                            wait=dict(BOOL, description="answer once the message is stored")),
          example={"to": ["agent@example.test"], "from": "someone@example.org", "subject": "Hi", "text": "Hello"},
          status=202, response=ref("InboundAccepted"))
async def inbound_simulate(request: Request, principal: Principal) -> Response:
    """Inject a message as if it came from the MX: {"to" or "mailbox", "from", "subject", "text", "html"} or
    {"raw": base64 or text of a whole message}. Returns the inbound id (and the message ids with "wait")."""
    body = await json_body(request)
    to = address_list(body.get("to"), "to") + address_list(body.get("mailbox"), "mailbox")
    sim = inbound.Simulation(to=to, sender=body.get("from"), raw=body.get("raw"),
                             mail_from=body["mail_from"] if isinstance(body.get("mail_from"), str) else None,
                             subject=body.get("subject"), text=body.get("text"), html=body.get("html"),
                             wait=bool(body.get("wait")))
    out = await inbound.simulate(ctx(request), principal, sim, client_ip(request))
    note_audit(request, mailbox=",".join(sorted({a.lower() for a in out["recipients"]}))[:320],
               inbound_id=out["inbound_id"])
    return JSONResponse(out, status_code=202)


async def ses_principal(request: Request) -> Principal:
    """SNS can carry credentials only as HTTP Basic in the subscription URL (https://any:TOKEN@host/...):
    the password is the token. A Bearer token works as everywhere else. Either must hold `admin`."""
    header = request.headers.get("authorization", "")
    if header[:6].lower() == "basic ":
        try:
            secret = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, ValueError, UnicodeDecodeError):
            secret = ""
        principal = await principal_for_secret(
            request, secret, fix="Subscribe https://mxd:<token>@host/api/inbound/ses with an admin token.")
        if not principal.has("admin"):
            raise MxdError("forbidden", "this token lacks the 'admin' scope")
        return principal
    return require(await principal_of(request), "admin")


@endpoint("POST", "/api/inbound/ses", "sesInbound",
          "An Amazon SNS notification of an SES receipt (Bearer, or Basic with the token as password)", TAG,
          "admin", auth=ses_principal,
          body=obj(["Type"], Type={"enum": ["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"]},
                   Message=dict(STR, description="the SES notification as JSON text"), SubscribeURL=STR),
          example={"Type": "SubscriptionConfirmation", "SubscribeURL": "https://sns.example/confirm"}, status=202,
          response=ref("InboundAccepted"), also=((200, obj(["status"], status=STR, type=STR, subscribe_url=NSTR,
                                                           message=STR)),))
async def inbound_ses(request: Request, principal: Principal) -> Response:
    """An Amazon SNS notification of an SES receipt ("Receive and publish to SNS", encoding BASE64)."""
    try:
        body = await json_body(request)
    except MxdError as exc:
        if exc.code == "invalid_json":
            raise MxdError("invalid_notification", "the body is not an SNS notification (not a JSON object)") from None
        raise
    note = inbound.parse_ses(body)
    if isinstance(note, inbound.SesControl):
        return JSONResponse({"status": "not_followed", "type": note.type, "subscribe_url": note.subscribe_url,
                             "message": "mxd does not fetch SubscribeURL (it works offline): open it yourself "
                                        "to confirm the subscription; notifications are then accepted."})
    out = await inbound.ingest_ses(ctx(request), principal, note, client_ip(request))
    note_audit(request, mailbox=",".join(sorted({a.lower() for a in out["recipients"]}))[:320],
               inbound_id=out["inbound_id"], ses_message_id=str(note.message_id or "")[:200],
               duplicate=out["duplicate"])
    return JSONResponse(out, status_code=202)
