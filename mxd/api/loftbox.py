"""The /v1/... dialect (loftbox-api.txt) and its /api/v1/... alias: thin translations onto the same core as /api."""
from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
