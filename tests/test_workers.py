"""mxd.workerpool.WorkerProcesses: CPU work in worker processes driven by the event loop (real processes)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import os

import pytest

from mxd.sending import prepare
from mxd.workerpool import WorkerProcesses


async def _workers(n: int = 2) -> WorkerProcesses:
    return WorkerProcesses(n, ([], 2.0, os.getpid()), asyncio.get_running_loop())


async def test_results_exceptions_and_both_ways_in() -> None:
    workers = await _workers()
    try:
        pids = await asyncio.gather(*[workers.run(os.getpid) for _ in range(20)])
        assert os.getpid() not in pids and 1 <= len(set(pids)) <= 2
        assert await workers.run(int, "42") == 42
        with pytest.raises(ValueError):
            await workers.run(int, "not a number")
        # the Executor interface (run_in_executor) reaches the same processes
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(workers, divmod, 7, 2) == (3, 1)
        assert isinstance(workers.submit(os.getpid), concurrent.futures.Future)
        # a large argument and answer go through the sockets whole
        big = b"x" * (3 << 20)
        assert await workers.run(bytes.upper, big) == big.upper()
    finally:
        workers.shutdown(wait=True)


async def test_a_dead_worker_fails_its_request_and_is_replaced() -> None:
    workers = await _workers(1)
    try:
        first = await workers.run(os.getpid)
        with pytest.raises(RuntimeError, match="worker process ended"):
            await asyncio.wait_for(workers.run(os._exit, 3), 60)
        second = await asyncio.wait_for(workers.run(os.getpid), 60)
        assert second != first
    finally:
        workers.shutdown(wait=True)


async def test_signing_runs_in_the_worker(tmp_path) -> None:
    """The send path's CPU step: a domain without keys gets no DKIM fields; the message comes back parsed."""
    workers = await _workers(1)
    try:
        data = b"From: a@unsigned.test\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
        dkim, parsed = await workers.run(prepare, str(tmp_path / "dkim"), data, "unsigned.test")
        assert dkim == "" and parsed.subject == "hi"
    finally:
        workers.shutdown(wait=True)


async def test_shutdown_ends_the_processes() -> None:
    workers = await _workers(2)
    assert workers._workers == []                     # no process until there is work
    await asyncio.gather(*[workers.run(os.getpid) for _ in range(4)])
    procs = [w.proc for w in workers._workers]
    assert len(procs) == 2 and all(p.is_alive() for p in procs)
    workers.shutdown(wait=True)
    assert all(not p.is_alive() for p in procs)
    with pytest.raises(RuntimeError):
        workers.run(os.getpid)
