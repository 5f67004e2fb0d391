"""The HTTP plumbing every dialect shares: the context handlers reach, bearer-token authentication, JSON bodies,
paging, download headers, JSON errors and the audit middleware (the application is built in mxd.api.app)."""
from __future__ import annotations

import functools
import json
import logging
import urllib.parse
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.errors import MxdError
from mxd.service import Services
from mxd.service.mail import page as service_page
from mxd.store import audit, tokens

log = logging.getLogger("mxd.api")
MAX_BODY = 1024 * 1024
MAIL_BODY = 32 * 1024 * 1024      # a send or draft: up to 20 MB of attachments, base64 in JSON


Context = Services        # what every handler reaches through ctx(request): the service layer's context


def ctx(request: Request) -> Services:
    return request.app.state.ctx


def error_response(err: MxdError) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return JSONResponse(err.to_dict(), status_code=err.status, headers=headers)


async def principal_for_secret(request: Request, secret: str, fix: str | None = None) -> Principal:
    """The principal of a token secret however it came (a bearer token, HTTP Basic's password); raises 401."""
    db = ctx(request).db
    row = await db.read(tokens.lookup, secret) if secret else None
    if row is None:
        raise MxdError("unauthorized", "the token is not valid or has been revoked", fix=fix)
    if tokens.needs_touch(row.last_used_at):
        await db.write(tokens.touch, row.id, row.last_used_at)
    principal = tokens.principal(row)
    request.scope["mxd.principal"] = principal        # for the audit middleware
    return principal


async def principal_of(request: Request) -> Principal:
    """The caller's principal from `Authorization: Bearer`, whatever its scopes; raises 401."""
    header = request.headers.get("authorization", "")
    kind, _, secret = header.partition(" ")
    if kind.lower() != "bearer" or not secret.strip():
        raise MxdError("unauthorized", "missing bearer token")
    return await principal_for_secret(request, secret.strip())


def require(principal: Principal, scope: str, operator: bool = False) -> Principal:
    """The principal if it holds `scope` (and is the server's operator when `operator`); raises 403 otherwise."""
    if not principal.has(scope):
        raise MxdError("forbidden", f"this token lacks the '{scope}' scope",
                       fix=f"Create a token with the '{scope}' scope: POST /api/tokens.")
    if operator and not principal.is_operator:
        raise MxdError("forbidden", "only the server operator's admin token may do this",
                       fix="Use the operator's admin token (printed once by `mxd init`).")
    return principal


async def authenticate(request: Request, scope: str, operator: bool = False) -> Principal:
    """The caller's principal, which must hold `scope` (and be the server's operator when `operator`);
    raises 401/403 otherwise."""
    return require(await principal_of(request), scope, operator)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def note_audit(request: Request, **fields: Any) -> None:
    """Add to what the audit row of this request records (mailbox, decision, ...)."""
    request.scope.setdefault("mxd.audit", {}).update(fields)


def anonymous_row(ip: str, action: str, target: str, detail: dict) -> tuple[str, str, dict] | None:
    """(action, target, detail) of an audit row for a caller without a valid token, or None when its
    budget (mxd.store.audit.AnonymousBudget) is spent: what anyone can make mxd write is bounded."""
    verdict = audit.anonymous.admit(ip)
    if verdict == "drop":
        return None
    if verdict == "once":
        return "audit.rate_limited", "", {"ip": ip, "first_dropped": action[:120],
                                           "most_per_minute": audit.ANONYMOUS_PER_IP}
    return action, target[:audit.ANONYMOUS_TARGET], dict(detail, ip=ip)


async def record_audit(c: Services, principal: Principal | None, ip: str, action: str, *, target: str,
                       mailbox: str | None, result: str, detail: dict) -> None:
    """Write one audit row (an anonymous caller's within its budget); never raises: the audit trail must never
    turn a served request into a crash."""
    if principal is None:
        row = anonymous_row(ip, action, target, detail)
        if row is None:
            return
        action, target, detail = row
    try:
        await c.db.write(functools.partial(
            audit.record, principal.token_id if principal else "anonymous", action,
            org_id=principal.org_id if principal else None, target=target,
            mailbox=mailbox, result=result, detail=detail))
    except Exception:
        log.exception("audit write failed for %s %s", action, target)


def audit_result(status: int, code: str | None) -> str:
    """The audit row's result for an answer of this status and error code."""
    return audit.result_of(status, code)


class AuditMiddleware:
    """Records every mutating call and every refused token use as an audit row, after the response.

    One place for the rule; handlers add detail with note_audit (a send's preflight decision)."""

    MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def __init__(self, app: Any, skip: tuple[str, ...] = ("/mcp",)) -> None:
        self.app = app
        self.skip = skip

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            method, path = scope["method"], scope["path"]
            if (method in self.MUTATING or status in (401, 403)) and not path.startswith(self.skip):
                await self._record(scope, method, path, status)

    async def _record(self, scope: dict, method: str, path: str, status: int) -> None:
        principal: Principal | None = scope.get("mxd.principal")
        extra: dict = dict(scope.get("mxd.audit") or {})
        route = scope.get("route")
        action = extra.pop("action", None) or f"{method} {getattr(route, 'path', path)}"
        result = audit.result_of(status, extra.get("code"))
        detail = dict(extra, status=status)           # the mailbox too: it is in the row's detail as well
        client = scope.get("client")
        await record_audit(scope["app"].state.ctx, principal, client[0] if client else "", action, target=path,
                           mailbox=extra.get("mailbox"), result=result, detail=detail)


async def json_body(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's JSON object, read no further than `limit` bytes (a bigger body is a 413)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise MxdError("payload_too_large", f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise MxdError("payload_too_large", f"request body over {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MxdError("invalid_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise MxdError("invalid_json", "the request body must be a JSON object")
    return body


def content_disposition(filename: str) -> str:
    """`attachment` with the file name as RFC 6266 says: an ASCII `filename` fallback, and `filename*`
    (RFC 8187, UTF-8, percent-encoded) when the name is anything else."""
    name = "".join(c for c in filename if c >= " " and c != "\x7f").strip() or "attachment"
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\%;' else "_" for c in name)
    header = f'attachment; filename="{fallback}"'
    if fallback != name:
        header += "; filename*=UTF-8''" + urllib.parse.quote(name, safe="")
    return header


def download_headers(filename: str) -> dict[str, str]:
    """Headers of a download of stored mail: a file to save, never a page (no sniffing, no scripts)."""
    return {"Content-Disposition": content_disposition(filename), "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox", "Cache-Control": "private, no-store"}


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
    """A page of a list, shaped as the service layer shapes its pages."""
    return service_page(items, limit, fetched, last_id)


async def _mxd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MxdError)
    note_audit(request, code=exc.code)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    fix = "See /openapi.json for the routes." if exc.status_code in (404, 405) else "Check the request."
    return JSONResponse({"error": {"code": code, "message": str(exc.detail), "fix": fix, "hard_stop": True}},
                        status_code=exc.status_code)


async def _disconnected(request: Request, exc: Exception) -> Response:
    """The client went away (or was cut off by mxd.api.httpconn) before its body was complete: nobody reads
    this answer, and it is no server error."""
    note_audit(request, code="client_disconnected")
    return error_response(MxdError("bad_request", "the client closed the connection before its request was complete"))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(MxdError("internal", "internal error"))


# Every error answered as JSON ({"error": {"code", "message", "fix", "hard_stop"}}): the application's handlers.
EXCEPTION_HANDLERS = {MxdError: _mxd_error, HTTPException: _http_error, ClientDisconnect: _disconnected,
                      Exception: _internal_error}
