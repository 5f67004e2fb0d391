"""Headers on every HTTP answer: no answer of mxd is a page for a browser to sniff, frame or run.

Every body mxd serves (JSON with outside senders' subjects and HTML bodies, raw messages, attachments,
plain documents) is data. `nosniff` keeps a browser to the declared type, and the CSP keeps anything that
is still rendered from running scripts or loading anything (downloads set their own, stricter headers)."""
from __future__ import annotations

from typing import Any

DEFAULTS = ((b"x-content-type-options", b"nosniff"),
            (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; sandbox"),
            (b"referrer-policy", b"no-referrer"))


class SecurityHeaders:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in DEFAULTS if name not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, add)
