"""/v1/organization: the caller's organisation and its limits."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx
from mxd.api.schemas import ref
from mxd.service import orgs


@endpoint("GET", "/v1/organization", "getOrganization", "The caller's organisation and limits", "Organisations",
          "read", response=ref("OrganizationView"))
async def organization_get(request: Request, principal: Principal) -> Response:
    return JSONResponse(await orgs.organization(ctx(request), principal))
