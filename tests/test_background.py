"""mxd.background.BackgroundWorker: the one start/notify/stop loop of the pipeline, delivery, webhooks and retention."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

from mxd.background import BackgroundWorker


class Counter(BackgroundWorker):
    name = "mxd-test-worker"
    poll = 30.0
    failure = "test pass failed"
    log = logging.getLogger("mxd.test-background")

    def __init__(self, fail_on: set[int] | None = None, again: int = 0) -> None:
        super().__init__()
        self.passes = 0
        self.setups = 0
        self.fail_on = fail_on or set()
        self.again = again            # passes that ask for another at once

    async def setup(self) -> None:
        self.setups += 1

    async def run_once(self) -> float | None:
        self.passes += 1
        if self.passes in self.fail_on:
            raise RuntimeError(f"pass {self.passes}")
        if self.again:
            self.again -= 1
            return 0
        return None


async def _until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_runs_at_once_then_waits_for_a_wake_up() -> None:
    worker = Counter()
    worker.start()
    try:
        await _until(lambda: worker.passes == 1)
        await asyncio.sleep(0.05)
        assert worker.passes == 1 and worker.setups == 1          # waiting out the 30 s poll
        worker.notify()
        await _until(lambda: worker.passes == 2)
    finally:
        await worker.stop()


async def test_a_pass_may_ask_for_the_next_at_once_and_the_poll_runs_it_otherwise() -> None:
    eager = Counter(again=3)                 # passes 1-3 ask for another at once; the fourth waits out the poll
    eager.start()
    try:
        await _until(lambda: eager.passes == 4)
        await asyncio.sleep(0.1)
        assert eager.passes == 4             # the 30 s poll holds the fifth
    finally:
        await eager.stop()
    polled = Counter()
    polled.poll = 0.05
    started = time.monotonic()
    polled.start()
    try:
        await _until(lambda: polled.passes >= 3)
        assert time.monotonic() - started >= 0.1      # the second and third passes each waited a poll
    finally:
        await polled.stop()


async def test_a_failing_pass_is_logged_and_the_loop_goes_on(caplog) -> None:
    worker = Counter(fail_on={1})
    worker.poll = 0.05
    with caplog.at_level(logging.ERROR, logger="mxd.test-background"):
        worker.start()
        try:
            await _until(lambda: worker.passes >= 2)
        finally:
            await worker.stop()
    assert [r.getMessage() for r in caplog.records if r.name == "mxd.test-background"] == ["test pass failed"]


async def test_notify_from_another_thread_and_before_start() -> None:
    worker = Counter()
    worker.notify()                                              # no loop yet: nothing breaks
    worker.start()
    try:
        await _until(lambda: worker.passes == 1)
        await asyncio.sleep(0.05)
        assert worker.passes == 1            # the early notify queued nothing; the 30 s poll holds the next pass
        threading.Thread(target=worker.notify).start()
        await _until(lambda: worker.passes == 2)
    finally:
        await worker.stop()


async def test_stop_cancels_a_pass_or_lets_it_finish_when_graceful() -> None:
    finished: list[str] = []

    class Slow(BackgroundWorker):
        poll = 30.0

        async def run_once(self) -> float | None:
            await asyncio.sleep(0.2)
            finished.append(self.name)
            return None

    abrupt, gentle = Slow(), Slow()
    abrupt.name, gentle.name, gentle.graceful = "abrupt", "gentle", 5.0
    abrupt.start()
    gentle.start()
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await asyncio.gather(abrupt.stop(), gentle.stop())
    assert finished == ["gentle"] and time.monotonic() - started < 2
    await abrupt.stop()                                          # stopping twice is harmless


async def test_first_wait_delays_the_first_pass() -> None:
    class Later(Counter):
        def first_wait(self) -> float | None:
            return 0.2

    worker = Later()
    worker.start()
    try:
        await asyncio.sleep(0.1)
        assert worker.passes == 0
        await _until(lambda: worker.passes == 1)
    finally:
        await worker.stop()
