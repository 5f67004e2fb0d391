"""Plain documents for agents: /llms.txt and /install.sh (agent skills)."""
from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
