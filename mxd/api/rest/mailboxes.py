"""/api/mailboxes: the mailboxes a token sees, creating and deleting them, each one's retention and policy."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, json_body, note_audit
from mxd.api.schemas import STR, TAG_ROUTING, list_of, null, obj, ref
from mxd.errors import MxdError
from mxd.service import directory, mailbox_policy

MAX_RETENTION_DAYS = 36500


@endpoint("GET", "/api/mailboxes", "listMailboxes", "Mailboxes this token sees", TAG_ROUTING, "read",
          response=list_of("Mailbox"))
async def mailboxes_list(request: Request, principal: Principal) -> Response:
    c = ctx(request)
    rows = await directory.mailboxes(c, principal)
    return JSONResponse({"data": [directory.mailbox_dict(b, c.cfg) for b in rows]})


def positive_int(value, name: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise MxdError("bad_request", f"{name} must be a positive integer")
    return value


@endpoint("POST", "/api/mailboxes", "createMailbox", "Create a mailbox", TAG_ROUTING, "admin",
          body=obj(["address"], address=STR, display_name=STR, retention_days=null({"type": "integer", "minimum": 1}),
                   org_id=dict(STR, description="operator only"), agent_id=STR),
          example={"address": "new@example.test"}, status=201, response=ref("Mailbox"), also=((200, ref("Mailbox")),))
async def mailboxes_create(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    address = body.get("address")
    if not isinstance(address, str):
        raise MxdError("bad_request", "body must hold {\"address\": \"agent@example.com\"}")
    display = body.get("display_name") or ""
    if not isinstance(display, str):
        raise MxdError("bad_request", "display_name must be a string")
    retention = positive_int(body.get("retention_days"), "retention_days")
    agent_id = body.get("agent_id")
    if agent_id is not None and not isinstance(agent_id, str):
        raise MxdError("bad_request", "agent_id must be a string")
    c = ctx(request)
    box, created = await directory.create_mailbox(c, principal, address, display, retention,
                                                  org=body["org_id"] if "org_id" in body else directory.UNSET,
                                                  agent_id=agent_id)
    note_audit(request, mailbox=box.address)
    return JSONResponse(directory.mailbox_dict(box, c.cfg), status_code=201 if created else 200)


@endpoint("GET", "/api/mailboxes/{mailbox}", "getMailbox", "One mailbox", TAG_ROUTING, "read", response=ref("Mailbox"))
async def mailbox_get(request: Request, principal: Principal) -> Response:
    c = ctx(request)
    box = await directory.mailbox(c, principal, request.path_params["mailbox"])
    return JSONResponse(directory.mailbox_dict(box, c.cfg))


# The policy routes are declared before the mailbox's DELETE: a mailbox's policy goes with it.
POLICY_EXAMPLE = {"outbound": {"allow": ["partner.example", "bob@example.com"], "otherwise": "hold"},
                  "inbound": {"require_authenticated": True}}


@endpoint("GET", "/api/mailboxes/{mailbox}/policy", "getMailboxPolicy",
          "A mailbox's policy: whom it may send to, what mail reaches it", TAG_ROUTING, "read",
          response=ref("MailboxPolicy"))
async def policy_get(request: Request, principal: Principal) -> Response:
    _, policy = await mailbox_policy.get(ctx(request), principal, request.path_params["mailbox"])
    return JSONResponse(policy)


@endpoint("PUT", "/api/mailboxes/{mailbox}/policy", "setMailboxPolicy",
          "Change a mailbox's policy (merged: keys not given keep their values)", TAG_ROUTING, "admin",
          body=ref("MailboxPolicyRequest"), example=POLICY_EXAMPLE, response=ref("MailboxPolicy"))
async def policy_put(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    box, policy = await mailbox_policy.put(ctx(request), principal, request.path_params["mailbox"], body)
    note_audit(request, mailbox=box.address, changed=mailbox_policy.changed_keys(body))
    return JSONResponse(policy)


@endpoint("DELETE", "/api/mailboxes/{mailbox}/policy", "resetMailboxPolicy",
          "Put a mailbox's policy back to the default", TAG_ROUTING, "admin", response=ref("MailboxPolicy"))
async def policy_delete(request: Request, principal: Principal) -> Response:
    box, policy = await mailbox_policy.reset(ctx(request), principal, request.path_params["mailbox"])
    note_audit(request, mailbox=box.address)
    return JSONResponse(policy)


@endpoint("DELETE", "/api/mailboxes/{mailbox}", "deleteMailbox", "Delete a mailbox and its mail", TAG_ROUTING,
          "admin", status=204)
async def mailbox_delete(request: Request, principal: Principal) -> Response:
    note_audit(request, mailbox=await directory.delete_mailbox(ctx(request), principal,
                                                               request.path_params["mailbox"]))
    return Response(status_code=204)


@endpoint("GET", "/api/mailboxes/{mailbox}/retention", "getRetention", "How long a mailbox keeps messages",
          TAG_ROUTING, "read", response=ref("Retention"))
async def retention_get(request: Request, principal: Principal) -> Response:
    c = ctx(request)
    box = await directory.mailbox(c, principal, request.path_params["mailbox"])
    return JSONResponse(directory.retention_dict(box, c.cfg))


@endpoint("PUT", "/api/mailboxes/{mailbox}/retention", "setRetention",
          "Set a mailbox's retention in days (0 or null: the server default)", TAG_ROUTING, "admin",
          body=obj(["retention_days"], retention_days=null({"type": "integer", "minimum": 0, "maximum": 36500})),
          example={"retention_days": 30}, response=ref("Retention"))
async def retention_put(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    if "retention_days" not in body:
        raise MxdError("bad_request", 'body must hold {"retention_days": N} (0 or null: the server default)')
    days = body["retention_days"]
    if days is not None and (not isinstance(days, int) or isinstance(days, bool)
                             or not 0 <= days <= MAX_RETENTION_DAYS):
        raise MxdError("bad_request", f"retention_days must be an integer from 1 to {MAX_RETENTION_DAYS}, "
                                      "or 0 or null for the server default")
    c = ctx(request)
    box = await directory.set_retention(c, principal, request.path_params["mailbox"], days or None)
    note_audit(request, mailbox=box.address, retention_days=days or None)
    return JSONResponse(directory.retention_dict(box, c.cfg))

