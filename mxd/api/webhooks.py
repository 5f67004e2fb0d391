"""Webhook endpoints over the API: create (secret shown once), list, delete, rotate the secret, list delivery attempts."""
from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
