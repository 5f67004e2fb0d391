"""The HTTP application: Starlette routes of every dialect, bearer-token authentication, JSON errors."""
from __future__ import annotations

import concurrent.futures
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd import tokens
from mxd.config import Config
from mxd.db import Database
from mxd.errors import MxdError
from mxd.resolver import Resolver
from mxd.store.directory import Directory

log = logging.getLogger("mxd.api")
MAX_BODY = 1024 * 1024


@dataclass
class Context:
    cfg: Config
    db: Database
    directory: Directory
    workers: concurrent.futures.Executor    # CPU work: signing, parsing (see mxd.pipeline.make_workers)
    queued: Callable[[], None]          # wakes the delivery and local-delivery workers
    resolver: Resolver


def ctx(request: Request) -> Context:
    return request.app.state.ctx


def error_response(err: MxdError) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return JSONResponse(err.to_dict(), status_code=err.status, headers=headers)


async def authenticate(request: Request, scope: str) -> tokens.Principal:
    """The caller's principal, which must hold `scope`; raises 401/403 otherwise."""
    header = request.headers.get("authorization", "")
    kind, _, secret = header.partition(" ")
    if kind.lower() != "bearer" or not secret.strip():
        raise MxdError("unauthorized", "missing bearer token")
    db = ctx(request).db
    row = await db.read(tokens.lookup, secret.strip())
    if row is None:
        raise MxdError("unauthorized", "the token is not valid or has been revoked")
    if tokens.needs_touch(row.last_used_at):
        await db.write(tokens.touch, row.id, row.last_used_at)
    principal = tokens.principal(row)
    if not principal.has(scope):
        raise MxdError("forbidden", f"this token lacks the '{scope}' scope",
                       fix=f"Create a token with the '{scope}' scope: POST /api/tokens.")
    return principal


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise MxdError("payload_too_large", f"request body over {MAX_BODY} bytes")
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MxdError("invalid_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise MxdError("invalid_json", "the request body must be a JSON object")
    return body


def page_params(request: Request, default: int = 50, most: int = 500) -> tuple[int, str | None]:
    raw = request.query_params.get("limit")
    try:
        limit = default if raw is None else int(raw)
    except ValueError:
        raise MxdError("bad_request", "limit must be an integer") from None
    if not 1 <= limit <= most:
        raise MxdError("bad_request", f"limit must be between 1 and {most}")
    return limit, request.query_params.get("cursor") or None


def page(items: list[dict], limit: int, fetched: int, last_id: str | None) -> dict:
    return {"data": items, "next_cursor": last_id if fetched >= limit and last_id else None}


async def _mxd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MxdError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    fix = "See /openapi.json for the routes." if exc.status_code in (404, 405) else "Check the request."
    return JSONResponse({"error": {"code": code, "message": str(exc.detail), "fix": fix}},
                        status_code=exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(MxdError("internal", "internal error"))


def create_app(context: Context) -> Starlette:
    from mxd.api import litemx, outbound

    app = Starlette(routes=litemx.routes() + outbound.routes(), exception_handlers={
        MxdError: _mxd_error, HTTPException: _http_error, Exception: _internal_error})
    app.state.ctx = context
    return app
