"""/health: liveness and the server's hostname, without a token (the dialect's one top-level route)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.api.endpoint import PUBLIC, endpoint
from mxd.api.http import ctx
from mxd.api.schemas import ref
from mxd.service import admin


@endpoint("GET", "/health", "healthV1", "Liveness and the server's hostname", "System", PUBLIC,
          response=ref("Health"), errors=())
async def health(request: Request, principal: None) -> Response:
    return JSONResponse(await admin.health(ctx(request)))
