"""/v1/auth/signup and /v1/auth/signup/verify: an owner creates an organisation, then proves the address with
the 6-digit code and gets the first API key (shown once)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.api.endpoint import PUBLIC, endpoint
from mxd.api.http import client_ip, ctx, json_body, principal_of
from mxd.api.schemas import STR, obj, ref
from mxd.service import orgs

TAG = "Organisations"


@endpoint("POST", "/v1/auth/signup", "signup", "Create an organisation; the owner gets a 6-digit code by email", TAG,
          PUBLIC,
          body=obj(["email", "organization_name"], email=dict(STR, format="email"),
                   organization_name=dict(STR, minLength=1, maxLength=200),
                   slug=dict(STR, pattern=r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$",
                             description="default: made from organization_name")),
          example={"email": "owner@example.org", "organization_name": "Example Agents", "slug": "example-agents"},
          status=201, response=ref("Signup"), also=((200, ref("Signup")),), errors=(400, 401, 403, 409, 413, 422, 429))
async def signup(request: Request, principal: None) -> Response:
    operator = False
    if request.headers.get("authorization"):          # the operator may sign up an organisation when sign-up is off
        operator = (await principal_of(request)).is_operator
    body = await json_body(request) if ctx(request).cfg.signup_enabled or operator else {}
    out, created = await orgs.signup(ctx(request), body.get("email"), body.get("organization_name"), body.get("slug"),
                                     client_ip=client_ip(request), operator=operator)
    return JSONResponse(out, status_code=201 if created else 200)


@endpoint("POST", "/v1/auth/signup/verify", "signupVerify", "Verify the owner's code; the first API key, shown once",
          TAG, PUBLIC, body=obj(["email", "verification_token"], email=dict(STR, format="email"),
                                verification_token=dict(STR, description="the 6-digit code")),
          example={"email": "owner@example.org", "verification_token": "123456"}, status=201,
          response=ref("SignupVerified"), errors=(400, 403, 404, 409, 413, 422, 429))
async def signup_verify(request: Request, principal: None) -> Response:
    body = await json_body(request)
    return JSONResponse(await orgs.verify_signup(ctx(request), body.get("email"), body.get("verification_token")),
                        status_code=201)
