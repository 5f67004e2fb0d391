"""The /api routes of the platform: bootstrap, mailbox retention, audit, the retention run, inbound simulate and SES."""
from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
