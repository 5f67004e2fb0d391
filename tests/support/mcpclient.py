"""An MCP client session on a daemon's /mcp endpoint (the MCP SDK's streamable HTTP client)."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.support.daemon import MxdProcess


@asynccontextmanager
async def session(proc: MxdProcess, token: str, timeout: float = 120) -> AsyncIterator[ClientSession]:
    """An initialised MCP session of `token` on `proc`."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(timeout)) as http:
        async with streamable_http_client(proc.url("/mcp"), http_client=http) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                yield s
