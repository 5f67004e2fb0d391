"""The service layer under every door: what /api, /v1, MCP and the CLI share, called with a typed principal
and typed arguments, answering plain data or raising MxdError.

mail (read, search, threads, attachments, the inbox), send (letters, replies, drafts, the one send path),
directory (domains with their DKIM keys, mailboxes, aliases, catch-alls), inbound (simulate, SES), admin
(tokens, audit, retention, bootstrap, queue, suppressions), orgs (sign-up, agents), webhooks. Who may see
what is mxd.access. Database work runs through `Services.db` (`read`, `write`), never in a door.
"""
from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Callable

from mxd.config import Config
from mxd.db import Database
from mxd.resolver import Resolver
from mxd.store.directory import Directory


@dataclass
class Services:
    """What a service function needs of the running server (the doors' shared context)."""
    cfg: Config
    db: Database
    directory: Directory
    workers: concurrent.futures.Executor    # CPU work: signing, parsing (see mxd.workerpool.make_workers)
    queued: Callable[[], None]          # wakes the delivery and local-delivery workers
    resolver: Resolver
