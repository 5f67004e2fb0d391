"""/.well-known/mta-sts.txt: the MTA-STS policy of our domains (RFC 8461 3.3), for the host that asks.

Senders fetch https://mta-sts.<domain>/.well-known/mta-sts.txt; the policy is answered only when the request's
Host is mta-sts.<one of our domains> whose MTA-STS is not off, and 404 otherwise. No token, never a redirect
(senders do not follow them), text/plain. It is not part of the /api or /v1 dialects, so the OpenAPI document
leaves it out. It answers on every listener: over HTTPS (https_listen) for senders, and on the HTTP listener
for a reverse proxy that terminates TLS in front of mxd.
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mxd.api.http import ctx, error_response
from mxd.errors import MxdError
from mxd.service import directory

PATH = "/.well-known/mta-sts.txt"
CACHE = "public, max-age=300"          # short: the TXT id tells senders when to fetch again anyway


def request_host(request: Request) -> str:
    """The Host header without its port (an IPv6 literal keeps its brackets), lower case."""
    host = request.headers.get("host", "").strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host


async def mta_sts_txt(request: Request) -> Response:
    policy = await directory.mta_sts_policy(ctx(request), request_host(request))
    if policy is None:
        return error_response(MxdError("not_found", "no MTA-STS policy is served for this host",
                                       fix="Ask for it as https://mta-sts.<domain>" + PATH + " of a domain served "
                                           "here whose mta_sts_mode is not \"off\"."))
    return Response(policy, media_type="text/plain", headers={"Cache-Control": CACHE})


def routes() -> list[BaseRoute]:
    return [Route(PATH, mta_sts_txt, methods=["GET"], include_in_schema=False)]
