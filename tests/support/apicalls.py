"""Requests both API servers of the tests answer: a real daemon (tests.support.daemon.MxdProcess) and the API
in process (tests.support.asgi.InProcessApi). Each provides `api(method, path, token=None, **kwargs)`."""
from __future__ import annotations

from typing import Any

import httpx


class ApiCalls:
    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        raise NotImplementedError

    def token(self, scopes: list[str], mailboxes: list[str] | None = None, name: str = "agent") -> str:
        """A new scoped token's secret (created with the admin token)."""
        body: dict[str, Any] = {"name": name, "scopes": scopes}
        if mailboxes is not None:
            body["mailboxes"] = mailboxes
        r = self.api("POST", "/api/tokens", json=body)
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def messages(self, mailbox: str | None = None, token: str | None = None) -> list[dict]:
        out: list[dict] = []
        cursor = None
        while True:
            params = {"limit": 500}
            if mailbox:
                params["mailbox"] = mailbox
            if cursor:
                params["cursor"] = cursor
            r = self.api("GET", "/api/messages", token, params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            out += body["data"]
            cursor = body["next_cursor"]
            if not cursor:
                return out
