"""Webhook delivery: fans event rows out to matching webhooks as durable delivery rows, then POSTs
them signed per the Standard Webhooks spec, retrying with backoff; a 410 disables the endpoint."""
from __future__ import annotations

from mxd.config import Config
from mxd.db import Database
from mxd.resolver import Resolver


class WebhookWorker:
    def __init__(self, cfg: Config, db: Database, resolver: Resolver) -> None:
        self.cfg, self.db, self.resolver = cfg, db, resolver

    def start(self) -> None:
        pass

    def notify(self) -> None:
        pass

    async def stop(self) -> None:
        pass
