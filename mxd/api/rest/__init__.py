"""The /api dialect (litemx-api.txt), one module per resource; each handler declares its route, scope and
OpenAPI operation with mxd.api.endpoint and calls only mxd.service, mxd.access and the HTTP plumbing."""
from __future__ import annotations

from starlette.routing import Route

from mxd.api import endpoint
from mxd.api.rest import (
    admin,
    domains,
    drafts,
    inbound,
    mailboxes,
    messages,
    quarantine,
    queue,
    reports,
    routing,
    send,
    system,
    threads,
    tls_reports,
    tokens,
    webhooks,
)

MODULES = (system, admin, domains, mailboxes, routing, messages, threads, send, drafts, queue, tokens, webhooks,
           inbound, quarantine, reports, tls_reports)


def routes() -> list[Route]:
    return endpoint.routes(*MODULES)
