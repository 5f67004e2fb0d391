"""/v1/mailboxes: the mailboxes this key may use, one of them by id, and its policy."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, json_body, note_audit
from mxd.api.schemas import TAG_ROUTING, list_of, ref
from mxd.api.v1.shapes import mailbox_dict
from mxd.service import directory, mailbox_policy


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


@endpoint("GET", "/v1/mailboxes/{mailbox_id}/policy", "getMailboxPolicyV1", "A mailbox's policy", TAG_ROUTING,
          "read", response=ref("MailboxPolicy"))
async def policy_get(request: Request, principal: Principal) -> Response:
    _, policy = await mailbox_policy.get(ctx(request), principal, request.path_params["mailbox_id"], by_id=True)
    return JSONResponse(policy)


@endpoint("PUT", "/v1/mailboxes/{mailbox_id}/policy", "setMailboxPolicyV1",
          "Change a mailbox's policy (merged: keys not given keep their values)", TAG_ROUTING, "admin",
          body=ref("MailboxPolicyRequest"), example={"inbound": {"block_senders": ["spam.example"], "max_message_size": 10485760}},
          response=ref("MailboxPolicy"))
async def policy_put(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    box, policy = await mailbox_policy.put(ctx(request), principal, request.path_params["mailbox_id"], body,
                                           by_id=True)
    note_audit(request, mailbox=box.address, changed=mailbox_policy.changed_keys(body))
    return JSONResponse(policy)


@endpoint("DELETE", "/v1/mailboxes/{mailbox_id}/policy", "resetMailboxPolicyV1",
          "Put a mailbox's policy back to the default", TAG_ROUTING, "admin", response=ref("MailboxPolicy"))
async def policy_delete(request: Request, principal: Principal) -> Response:
    box, policy = await mailbox_policy.reset(ctx(request), principal, request.path_params["mailbox_id"], by_id=True)
    note_audit(request, mailbox=box.address)
    return JSONResponse(policy)
