"""A real mxd daemon (mxd.daemon.Daemon: every listener and worker) run in this process, on an event loop
of its own thread, for tests that must reach into it (force a certificate renewal, read what it serves).
It takes tests.support.daemon.MxdProcess's ports and environment (`env` adds to them); `init` does what
`mxd init --domain ...` does (the store, the domains with their DKIM keys, the admin token) in process."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path
from typing import Any, Callable, Coroutine, TypeVar

from mxd import config as config_mod
from mxd.daemon import Daemon
from mxd.service import directory
from mxd.store import open_store, tokens
from tests.support.daemon import MxdProcess

T = TypeVar("T")


class InProcessDaemon(MxdProcess):
    def __init__(self, data_dir: Path, **kwargs: Any) -> None:
        super().__init__(data_dir, **kwargs)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mxd-inprocess", daemon=True)
        self.daemon: Daemon | None = None

    def init(self) -> dict[str, Any]:
        cfg = config_mod.load(None, self.env)
        cfg.data_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = open_store(cfg.effective_store_url)
        try:
            for name in self.domains:
                directory.setup_domain(db, cfg, name)
            self.admin_token = db.write_sync(tokens.ensure_admin) or self.admin_token
        finally:
            db.close()
        self.init_output = {"admin_token": self.admin_token, "domains": self.domains}
        return self.init_output

    def start(self, timeout: float = 30.0) -> "InProcessDaemon":
        cfg = config_mod.load(None, self.env)
        self.daemon = Daemon(cfg)
        self.thread.start()
        try:
            self.run(self.daemon.start(), timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the daemon's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Call fn on the daemon's loop (its thread) and wait for its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def go() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
        self.loop.call_soon_threadsafe(go)
        return future.result(timeout)

    def stop(self, *args: Any, **kwargs: Any) -> int | None:
        if self.daemon is not None and self.thread.is_alive():
            try:
                self.run(self.daemon.stop(), 60)
            finally:
                self.daemon = None
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()
        return 0
