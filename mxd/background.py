"""The one loop of mxd's background workers (pipeline, delivery, webhooks, retention).

A worker is started on the event loop, woken by `notify()` (from any thread), and otherwise runs
every `poll` seconds: each pass is one `run_once()`, which says how long to wait before the next
(0: at once, None: `poll`). A pass that raises is logged and the loop goes on after `poll`; a wake-up
can be followed by a short `coalesce` pause so that a burst of notifications makes one pass. `stop()`
cancels the loop, or with `graceful` seconds, lets the pass under way finish first.
"""
from __future__ import annotations

import asyncio
import logging


class BackgroundWorker:
    name = "mxd-worker"          # the asyncio task's name
    poll = 5.0                   # seconds between passes when nothing wakes the worker
    coalesce = 0.0               # after a wake-up, seconds to let more arrive before the next pass
    graceful = 0.0               # on stop, seconds the pass under way may take to finish (0: cancel it)
    failure = "background pass failed"   # logged, with the exception, when a pass raises
    log = logging.getLogger("mxd")

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False

    # ------------------------------------------------------------ what a worker defines
    async def setup(self) -> None:
        """Once, on the worker's task, before the first pass."""

    def first_wait(self) -> float | None:
        """Seconds before the first pass (None: none)."""
        return None

    async def run_once(self) -> float | None:
        """One pass; returns the seconds to wait for a wake-up before the next (0: go on at once, None: poll)."""
        raise NotImplementedError

    # ------------------------------------------------------------ the loop
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._task = self._loop.create_task(self._main(), name=self.name)

    def notify(self) -> None:
        """Run a pass now rather than at the next poll; callable from any thread."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            self._wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self.graceful > 0:
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(task, self.graceful)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        else:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _main(self) -> None:
        try:
            await self.setup()
        except Exception:
            self.log.exception(self.failure)
        wait = self.first_wait()
        if wait is not None:
            await self._wait(wait)
        while not self._stopping:
            self._wake.clear()
            try:
                wait = await self.run_once()
            except Exception:                  # the worker outlives any one bad pass
                self.log.exception(self.failure)
                wait = None
            if wait is None:
                wait = self.poll
            if wait > 0 and not self._stopping:
                await self._wait(wait)

    async def _wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            return
        if self.coalesce > 0:
            await asyncio.sleep(self.coalesce)
