"""The OpenAPI 3.1 description of the HTTP API, turned into `/openapi.json` at request time from the app's own
routes: the operations declared next to their handlers (mxd.api.endpoint: /api, /v1, /mcp and the documents) and
the component schemas (mxd.api.schemas).

Each operation names the scope it demands; tests/test_scopes.py walks them against a real daemon, so a route
without a declaration fails the tests.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Host, Mount, Route

import mxd
from mxd.api import endpoint, mcp, pages, rest, v1
from mxd.api.endpoint import ANY, PUBLIC, Op
from mxd.api.schemas import ANYOBJ, INT, PATH_PARAMS, QUERY_PARAMS, SCHEMAS, STR, ref

# what tests and tools read here: the operations, and the names they are written with
__all__ = ["ANY", "PUBLIC", "Op", "OPS", "BY_KEY", "PATH_PARAMS", "QUERY_PARAMS", "SCHEMAS", "routes",
           "document", "serve", "app_routes", "documented_routes"]
ALIAS_PREFIX = "/api/v1"        # /api/v1/... serves the same operations as /v1/...
_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content", 400: "Bad request",
                401: "Missing or invalid bearer token", 403: "Refused: the token lacks the scope or the right",
                404: "Not found, or not visible to this token", 405: "Method not allowed", 406: "Not acceptable",
                409: "Conflict", 413: "Payload too large", 422: "Not possible in the current state",
                429: "Rate limited (see Retry-After)",
                503: "Unavailable: outbound mail is disabled, or the service is starting or stopping"}


@endpoint.endpoint("GET", "/openapi.json", "openapi", "This OpenAPI document", "System", PUBLIC, response=ANYOBJ,
                   errors=())
async def serve(request: Request, principal: None) -> Response:
    return JSONResponse(document(request.app.routes, pages.base_url(request)))   # never the raw Host header


OPS: tuple[Op, ...] = tuple(endpoint.ops_of(*rest.MODULES)) + (serve.op,) + tuple(endpoint.ops_of(*v1.MODULES)) \
    + tuple(endpoint.ops_of(mcp))
BY_KEY: dict[tuple[str, str], Op] = {op.key: op for op in OPS}


def routes() -> list[Route]:
    """The route of this document."""
    return [Route(serve.op.path, serve, methods=[serve.op.method])]


# ---------------------------------------------------------------- the app's routes
def _clean(path: str) -> str:
    """Starlette's `{id:int}` convertor syntax to OpenAPI's `{id}`."""
    return re.sub(r"{([^}:]+):[^}]+}", r"{\1}", path)


def app_routes(routes: Iterable[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route, Mounts included; HEAD (implied by GET) and routes left out of the schema
    (include_in_schema=False: the /api/... copies of the documents) left out."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Route):
            if not route.include_in_schema:
                continue
            for method in route.methods or ("GET",):
                if method != "HEAD":
                    found.add((method, _clean(prefix + route.path)))
        elif isinstance(route, Mount):
            inner = route.routes
            if inner:
                found |= app_routes(inner, prefix + route.path)
            else:                       # an ASGI app mounted whole: whatever the table says it answers
                path = _clean(prefix + route.path) or "/"
                found |= {(op.method, op.path) for op in OPS if op.path == path}
        elif isinstance(route, Host):
            found |= app_routes(route.routes, prefix)
        elif hasattr(route, "path"):    # a WebSocketRoute or another kind: no HTTP methods
            continue
    return found


def documented_routes(routes: Iterable[BaseRoute]) -> set[tuple[str, str]]:
    """The app's routes less the /api/v1/... aliases of /v1/... routes."""
    found = app_routes(routes)
    return {(m, p) for m, p in found
            if not (p.startswith(ALIAS_PREFIX + "/") and (m, p[len("/api"):]) in found)}


# ---------------------------------------------------------------- the document
def _error_response(status: int) -> dict:
    out: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "Error"),
                           "content": {"application/json": {"schema": ref("Error")}}}
    if status in (429, 503):
        out["headers"] = {"Retry-After": {"schema": INT, "description": "seconds to wait"}}
    return out


def _success(status: int, schema: dict | None, media: str) -> dict:
    out: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "Success")}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    return out


def operation(op: Op) -> dict:
    params: list[dict] = [{"name": name, "in": "path", "required": True, "schema": PATH_PARAMS.get(name, STR)}
                          for name in re.findall(r"{([^}]+)}", op.path)]
    for name in op.query:
        spec = QUERY_PARAMS[name]
        params.append({"name": spec.get("name", name), "in": "query", "required": spec.get("required", False),
                       "schema": spec["schema"], "description": spec["description"]})
    for name in op.headers:
        params.append({"name": name, "in": "header", "required": False, "schema": dict(STR, maxLength=200),
                       "description": "replays the answer for the same key and body within 24 h; "
                                      "409 for another body"})
    if op.scope is PUBLIC:
        who = "No token needed."
    elif op.scope == ANY:
        who = "Any valid token."
    else:
        who = f"Scope: `{op.scope}`" + (" (the server operator's admin token)." if op.operator else ".")
    dialect = "LoftBox dialect (/v1)" if op.path.startswith("/v1") else (
        "LiteMX dialect (/api)" if op.path.startswith("/api") else "Documents")
    out: dict[str, Any] = {
        "operationId": op.op_id, "summary": op.summary, "description": who, "tags": [op.tag, dialect],
        "x-mxd-scope": op.scope, "x-mxd-operator": op.operator,
        "security": [] if op.scope is PUBLIC else [{"bearer": []}],
        "responses": {str(op.status): _success(op.status, op.response, op.media)},
    }
    for status, schema in op.also:
        out["responses"][str(status)] = _success(status, schema, "application/json")
    for status in op.errors:
        out["responses"][str(status)] = _error_response(status)
    if params:
        out["parameters"] = params
    if op.body is not None:
        content: dict[str, Any] = {"schema": op.body}
        if op.example is not None:
            content["example"] = op.example
        out["requestBody"] = {"required": not op.body_optional, "content": {"application/json": content}}
    return out


def document(routes: Iterable[BaseRoute], server_url: str) -> dict:
    """The OpenAPI 3.1 document of the operations the app really serves."""
    served = documented_routes(routes)
    paths: dict[str, dict] = {}
    for op in OPS:
        if op.key in served:
            paths.setdefault(op.path, {})[op.method.lower()] = operation(op)
    tags = sorted({op.tag for op in OPS if op.key in served})
    return {
        "openapi": "3.1.0",
        "info": {"title": "mxd", "version": mxd.__version__,
                 "description": "The HTTP API of mxd, a self-hosted mail server. Two dialects share one core: "
                                "the LiteMX-style `/api/...` routes and the LoftBox-style `/v1/...` routes, "
                                "which are also served under `/api/v1/...` (same operations, not listed "
                                "twice; likewise `/api/openapi.json`, `/api/llms.txt` and `/api/install.sh`). "
                                "Authenticate with `Authorization: Bearer <token>`; each operation names the "
                                "scope it needs (`x-mxd-scope`). Scopes: read, search, draft, send, audit, admin; "
                                "read never implies send. Errors are `{\"error\": {\"code\", \"message\", "
                                "\"fix\", \"hard_stop\"}}`. Lists take `limit` and `cursor` and return "
                                "`next_cursor`. /mcp speaks MCP (streamable HTTP), not the JSON shapes here."},
        "servers": [{"url": server_url}],
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "an mxd token (mxd_...)"}}},
    }
