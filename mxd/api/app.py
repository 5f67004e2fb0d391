"""The HTTP application: every dialect's routes (/api; /v1, mounted again at /api/v1; /mcp; the documents) behind
the security headers and the audit middleware."""
from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from mxd.api import mcp, openapi, rest, v1, wellknown
from mxd.api.headers import SecurityHeaders
from mxd.api.http import EXCEPTION_HANDLERS, AuditMiddleware
from mxd.api.rest import system
from mxd.service import Services

API_DOCUMENTS = (openapi.serve, system.llms, system.install)   # also served under /api (loftbox-api.txt's proxy path)


def document_aliases() -> list[BaseRoute]:
    """/api/openapi.json, /api/llms.txt and /api/install.sh: the top-level documents again under /api, left out of
    the OpenAPI document (include_in_schema=False) like the /api/v1 mount."""
    return [Route("/api" + doc.op.path, doc, methods=[doc.op.method], include_in_schema=False)
            for doc in API_DOCUMENTS]


def create_app(context: Services) -> Starlette:
    # the /api/v1 mount and the /api documents first: no /api route may take their paths
    routes = document_aliases() + v1.routes() + rest.routes() + openapi.routes() + mcp.routes() + wellknown.routes()
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders), Middleware(AuditMiddleware)],
                    exception_handlers={**EXCEPTION_HANDLERS, **mcp.EXCEPTION_HANDLERS})
    app.state.ctx = context
    return app
