"""/api/aliases and /api/catchalls: addresses that deliver to mailboxes, and where a domain's unknown names go."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, json_body
from mxd.api.schemas import ADDRESSES, NSTR, STR, TAG_ROUTING, list_of, obj, ref
from mxd.errors import MxdError
from mxd.service import directory


@endpoint("GET", "/api/aliases", "listAliases", "Aliases", TAG_ROUTING, "admin", response=list_of("Alias"))
async def aliases_list(request: Request, principal: Principal) -> Response:
    return JSONResponse({"data": await directory.aliases(ctx(request), principal)})


@endpoint("POST", "/api/aliases", "createAlias", "Create an alias delivering to mailboxes", TAG_ROUTING, "admin",
          body=obj(["address", "targets"], address=STR, targets=ADDRESSES,
                   target=dict(STR, description="one target (instead of targets)")),
          example={"address": "team@example.test", "targets": ["agent@example.test"]}, status=201,
          response=ref("Alias"))
async def aliases_create(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    address, targets = body.get("address"), body.get("targets", body.get("target"))
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(address, str) or not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise MxdError("bad_request", "body must hold {\"address\": ..., \"targets\": [mailbox addresses]}")
    return JSONResponse(await directory.create_alias(ctx(request), principal, address, targets), status_code=201)


@endpoint("DELETE", "/api/aliases/{alias}", "deleteAlias", "Delete an alias", TAG_ROUTING, "admin", status=204)
async def alias_delete(request: Request, principal: Principal) -> Response:
    await directory.delete_alias(ctx(request), principal, request.path_params["alias"])
    return Response(status_code=204)


@endpoint("GET", "/api/catchalls/{domain}", "getCatchall", "A domain's catch-all mailbox", TAG_ROUTING, "admin",
          response=ref("Catchall"))
async def catchall_get(request: Request, principal: Principal) -> Response:
    return JSONResponse(await directory.catchall(ctx(request), principal, request.path_params["domain"]))


@endpoint("PUT", "/api/catchalls/{domain}", "setCatchall", "Set (or clear, with null) a domain's catch-all",
          TAG_ROUTING, "admin", body=obj(target=NSTR, mailbox=dict(STR, description="alias of target")),
          example={"target": "agent@example.test"}, body_optional=True, response=ref("Catchall"))
async def catchall_put(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    target = body.get("target", body.get("mailbox"))
    if target is not None and not isinstance(target, str):
        raise MxdError("bad_request", "body must hold {\"target\": \"mailbox@domain\"} or {\"target\": null}")
    return JSONResponse(await directory.set_catchall(ctx(request), principal, request.path_params["domain"], target))
