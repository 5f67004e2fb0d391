"""The HTTP application: every dialect's routes (/api, /v1 and its /api/v1 alias, /mcp, /openapi.json) behind
the security headers, the /api/v1 alias and the audit middleware."""
from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from mxd.api import loftbox, mcp, openapi, rest
from mxd.api.headers import SecurityHeaders
from mxd.api.http import EXCEPTION_HANDLERS, AuditMiddleware
from mxd.service import Services


def create_app(context: Services) -> Starlette:
    routes = rest.routes() + openapi.routes() + loftbox.routes() + mcp.routes()
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders), Middleware(loftbox.ApiV1Alias),
                                               Middleware(AuditMiddleware)], exception_handlers=EXCEPTION_HANDLERS)
    app.state.ctx = context
    return app
