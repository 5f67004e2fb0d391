"""The plain-HTTP listener (acme_http_listen, port 80): ACME HTTP-01 proofs, and a redirect to HTTPS.

`GET /.well-known/acme-challenge/<token>` answers the key authorization of a pending order (RFC 8555
8.3), 404 for any other token; every other request gets 301 to `https://<host><path>`. A plain ASGI
app: the daemon serves it with uvicorn, whose parser (h11) bounds what a request may hold and whose
read deadlines (mxd.api.httpconn) bound how long it may take.
"""
from __future__ import annotations

import re
from typing import Any, Awaitable, Callable

from mxd.certs.acme import Challenges

PREFIX = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?")
_PATH_SAFE = re.compile(r"[^A-Za-z0-9._~!$&'()*+,;=:@/%?-]")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class ChallengeApp:
    def __init__(self, pending: Challenges, fallback_host: str, https_port: int = 443) -> None:
        self.pending = pending
        self.fallback_host = fallback_host
        self.https_port = https_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope.get("path", "/")
        if path.startswith(PREFIX):
            token = path[len(PREFIX):]
            answer = self.pending.http01(token) if _TOKEN.fullmatch(token) else None
            if answer is None:
                await _respond(send, 404, b"no such challenge\n")
            else:
                await _respond(send, 200, answer.encode("ascii"))
            return
        await _respond(send, 301, b"", [(b"location", self.location(scope).encode("ascii"))])

    def location(self, scope: Scope) -> str:
        """https://<host><path>: the Host header when it is a plain host name (else the server's own), the
        HTTPS port when it is not 443, the path and query as asked (escaped to URL characters)."""
        host = ""
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = value.decode("latin-1").rsplit(":", 1)[0] if value.count(b":") <= 1 else ""
                break
        if not _HOST.fullmatch(host) or len(host) > 253:
            host = self.fallback_host
        port = "" if self.https_port == 443 else f":{self.https_port}"
        raw = scope.get("raw_path") or scope.get("path", "/").encode("utf-8", "replace")
        target = raw.decode("latin-1")
        query = scope.get("query_string") or b""
        if query:
            target += "?" + query.decode("latin-1")
        target = _PATH_SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), target)
        if not target.startswith("/") or target.startswith("//"):
            target = "/" + target.lstrip("/")
        return f"https://{host.lower().rstrip('.')}{port}{target}"


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
