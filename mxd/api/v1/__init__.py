"""The /v1 dialect (loftbox-api.txt), one module per resource, mounted at /v1 and again at /api/v1 (the
prefix-stripping proxy path of loftbox-api.txt) with Starlette's Mount: the same routes, no path rewriting.

Each handler declares its operation with mxd.api.endpoint under its public path (`/v1/mailboxes/{mailbox_id}`,
what the OpenAPI document lists and the scope tests call); inside the mounts its route is that path less
`/v1`. /health is the one top-level route of the dialect. Handlers call only mxd.service, mxd.access and the
HTTP plumbing.
"""
from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Match, Mount, Route

from mxd.api import endpoint
from mxd.api.v1 import agents, domains, inbox, mailboxes, messages, orgs, signup, system, webhooks

PREFIX = "/v1"                              # the public path of every mounted operation starts with it
MOUNTS = ("/api/v1", PREFIX)               # where the mounted routes are served
TOP = (system,)                             # modules whose routes are not mounted (/health)
MOUNTED = (signup, orgs, agents, webhooks, domains, mailboxes, inbox, messages)
MODULES = TOP + MOUNTED


class AuditAction:
    """Names the audit row of a mounted request by its /v1 route whichever mount it came in by, as the audit
    middleware names a top-level route: `POST /v1/mailboxes/{mailbox_id}/inbox/ack`, and for a path no route
    matches, the path under the mount after `/v1` (`POST /v1/nothing-here`)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                route = scope.get("route")
                under = route.path if isinstance(route, Route) else scope["path"][len(scope.get("root_path", "")):]
                scope.setdefault("mxd.audit", {}).setdefault("action", f"{scope['method']} {PREFIX}{under}")


class RootlessMount(Mount):
    """A Mount that serves nothing at its own root: /v1 and /v1/ stay plain 404s (not a redirect from /v1 to
    /v1/), as when the routes were top-level."""

    def matches(self, scope: dict) -> tuple[Match, dict]:
        match, child = super().matches(scope)
        if match is Match.FULL and child["root_path"] + "/" == scope["path"]:
            return Match.NONE, {}
        return match, child


def mounted_routes() -> list[Route]:
    """The routes of the mounted operations, with paths relative to the mount."""
    routes = []
    for op in endpoint.ops_of(*MOUNTED):
        assert op.path.startswith(PREFIX + "/"), op
        routes.append(Route(op.path[len(PREFIX):], op.handler, methods=[op.method]))
    return routes


def routes() -> list[BaseRoute]:
    """/health, and the mounted routes under /api/v1 and /v1."""
    inner = mounted_routes()
    return endpoint.routes(*TOP) + [RootlessMount(path, routes=inner, middleware=[Middleware(AuditAction)])
                                    for path in MOUNTS]
