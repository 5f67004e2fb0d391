"""/api/tokens: scoped API tokens, no wider than the token that creates them; the secret is shown once."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, json_body
from mxd.api.schemas import SCOPES, STR, TAG_ADMIN, arr, list_of, null, obj, ref
from mxd.service import admin


@endpoint("GET", "/api/tokens", "listTokens", "Live tokens of this organisation (all, for the operator)", TAG_ADMIN,
          "admin", response=list_of("Token"))
async def tokens_list(request: Request, principal: Principal) -> Response:
    return JSONResponse({"data": await admin.tokens_of(ctx(request), principal)})


@endpoint("POST", "/api/tokens", "createToken", "Create a scoped token (the secret is shown once)", TAG_ADMIN, "admin",
          body=obj(["name", "scopes"], name=dict(STR, minLength=1, maxLength=200),
                   scopes=arr({"enum": list(SCOPES)}, minItems=1), mailboxes=null(arr(STR)),
                   org_id=dict(STR, description="operator only: a token of that organisation")),
          example={"name": "agent", "scopes": ["read", "send"], "mailboxes": ["agent@example.test"]}, status=201,
          response=ref("TokenCreated"))
async def tokens_create(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    out = await admin.create_token(ctx(request), principal, body.get("name"), body.get("scopes"),
                                   body.get("mailboxes"), body.get("org_id"))
    return JSONResponse(out, status_code=201)


@endpoint("DELETE", "/api/tokens/{id}", "revokeToken", "Revoke a token", TAG_ADMIN, "admin", status=204)
async def token_delete(request: Request, principal: Principal) -> Response:
    await admin.revoke_token(ctx(request), principal, request.path_params["id"])
    return Response(status_code=204)
