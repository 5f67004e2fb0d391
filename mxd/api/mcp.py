"""The /mcp endpoint: MCP over streamable HTTP (the official SDK), tools over the same core and scopes as the API."""
from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
