"""A route declared once, next to its handler: method, path, OpenAPI operation and the scope it demands.

    from mxd.api.endpoint import ANY, PUBLIC, endpoint

    @endpoint("GET", "/api/domains", "listDomains", "Domains of this organisation", "Domains", "read",
              response=list_of("Domain"))
    async def domains_list(request: Request, principal: Principal) -> Response:
        ...

The decorator authenticates before the handler runs: `scope` PUBLIC (no token: the handler gets None), ANY
(any valid token) or one of the token scopes, with `operator=True` for the server operator's admin token only;
`auth=` replaces the bearer-token check for a route that takes its credentials another way (it must still
demand the declared scope). The keyword arguments after `scope` are the OpenAPI bits of `Op` (query
parameters, body and response schemas, statuses). `routes(module, ...)` turns a module's declared handlers
into Starlette routes; mxd.api.openapi documents every declared operation; tests/test_scopes.py checks each
route answers as its declared scope says.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mxd.access import Principal
from mxd.api.http import authenticate, principal_of
from mxd.api.schemas import ERRORS

PUBLIC: str | None = None       # no token needed
ANY = "any"                     # any valid token, whatever its scopes


@dataclass(frozen=True)
class Op:
    """One operation: what it is, the scope it demands, and what goes in and comes out."""
    method: str
    path: str
    op_id: str
    summary: str
    tag: str
    scope: str | None                   # PUBLIC, ANY or one of tokens.SCOPES
    operator: bool = False              # only the server operator's admin token (not an organisation's)
    query: tuple[str, ...] = ()
    body: dict | None = None            # JSON request body schema
    example: dict | None = None         # a valid request body
    body_optional: bool = False         # an empty body means {}
    status: int = 200
    response: dict | None = None        # success body schema; None: no content
    media: str = "application/json"
    also: tuple[tuple[int, dict | None], ...] = ()   # further success statuses and their schemas (None: no content)
    errors: tuple[int, ...] = ERRORS
    headers: tuple[str, ...] = ()       # request headers: "Idempotency-Key"
    handler: Any = field(default=None, compare=False, repr=False)    # the ASGI endpoint, once declared

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path


Handler = Callable[[Request, Any], Awaitable[Response]]
Auth = Callable[[Request], Awaitable[Principal]]
DECLARED: list[Op] = []                 # every operation declared, in the order the modules declare them


def endpoint(method: str, path: str, op_id: str, summary: str, tag: str, scope: str | None, *,
             operator: bool = False, auth: Auth | None = None, **openapi: Any) -> Callable[[Handler], Handler]:
    """Declare the decorated `handler(request, principal)` as the operation `method path`."""
    def declare(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def serve(request: Request) -> Response:
            if auth is not None:
                principal: Principal | None = await auth(request)
            elif scope is PUBLIC:
                principal = None
            elif scope == ANY:
                principal = await principal_of(request)
            else:
                principal = await authenticate(request, scope, operator)
            return await handler(request, principal)
        op = Op(method, path, op_id, summary, tag, scope, operator, handler=serve, **openapi)
        DECLARED.append(op)
        serve.op = op                   # type: ignore[attr-defined]
        return serve
    return declare


def ops_of(*modules: ModuleType) -> list[Op]:
    """The operations the modules declare, in the order of their handlers."""
    found = [value.op for module in modules for value in vars(module).values()
             if callable(value) and isinstance(getattr(value, "op", None), Op)]
    seen: set[int] = set()
    return [op for op in found if not (id(op) in seen or seen.add(id(op)))]


def routes(*modules: ModuleType) -> list[Route]:
    """Starlette routes of the operations the modules declare."""
    return [Route(op.path, op.handler, methods=[op.method]) for op in ops_of(*modules)]
