"""The worker processes for mxd's CPU work (parsing, authenticating, signing), driven by the event loop.

`make_workers` gives the daemon its executor: `WorkerProcesses` (one socket per process, read and
written by the event loop itself) when `pipeline_processes` > 0, else a small thread pool. Each
worker process holds its own resolver for the authentication checks (`resolver()`); with threads it
is the daemon's.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import functools
import logging
import multiprocessing
import os
import pickle
import signal
import struct
import threading
import time
from typing import Any

from mxd.config import Config
from mxd.resolver import Resolver, make_resolver

log = logging.getLogger("mxd.pipeline")

_resolver: Resolver | None = None


def resolver() -> Resolver | None:
    """The resolver of this process's CPU work: the worker process's own, or the daemon's with threads."""
    return _resolver


def _init_worker(nameservers: list[str], timeout: float, daemon_pid: int) -> None:
    global _resolver
    try:   # Linux: end with the daemon even when it is killed with SIGKILL (PR_SET_PDEATHSIG = 1)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != daemon_pid:              # the daemon died before prctl took effect
        os._exit(0)
    _resolver = make_resolver(nameservers, timeout)


def release_memory() -> None:
    """Hand freed heap back to the system after a burst (glibc keeps it otherwise); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def make_workers(cfg: Config, resolver: Resolver) -> concurrent.futures.Executor:
    """The executor for mxd's CPU work (parsing, authenticating, signing): worker processes, so it
    runs beside the event loop on another core, or threads when `pipeline_processes` is 0.
    Called on the event loop, which then drives the worker processes' pipes."""
    if cfg.pipeline_processes > 0:
        workers = WorkerProcesses(cfg.pipeline_processes, (cfg.dns_nameservers, cfg.dns_timeout, os.getpid()),
                                  asyncio.get_running_loop())
        workers.prestart()
        return workers
    global _resolver
    _resolver = resolver
    return concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="mxd-cpu")


# ---------------------------------------------------------------- worker processes on the event loop
def _serve(conn: Any, initargs: tuple) -> None:
    """A worker process: run (seq, fn, args) requests in order, answer (seq, ok, result or exception)."""
    _init_worker(*initargs)
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            return                                   # the daemon closed its end: stop
        seq, fn, args = pickle.loads(request)
        try:
            answer = pickle.dumps((seq, True, fn(*args)), pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:                 # noqa: BLE001 - handed back to the caller
            try:
                answer = pickle.dumps((seq, False, exc), pickle.HIGHEST_PROTOCOL)
            except Exception:
                answer = pickle.dumps((seq, False, RuntimeError(f"{type(exc).__name__}: {exc}")))
        try:
            conn.send_bytes(answer)
        except OSError:
            return


class _Worker:
    __slots__ = ("proc", "conn", "fd", "pending", "out", "inbuf")

    def __init__(self, proc: Any, conn: Any) -> None:
        self.proc, self.conn, self.fd = proc, conn, conn.fileno()
        self.pending: dict[int, Any] = {}          # concurrent.futures.Future or asyncio.Future
        self.out = bytearray()                       # framed requests not yet written
        self.inbuf = bytearray()


class WorkerProcesses(concurrent.futures.Executor):
    """Up to `pipeline_processes` worker processes, started when work comes, each fed through one
    socket that the event loop itself reads and writes (add_reader/add_writer): a request costs one
    write and its answer one read, without the feeder and manager threads (and their wake-ups) of
    ProcessPoolExecutor. Each process runs its requests in order; a new request goes to the process
    with the fewest outstanding. A process that dies fails its outstanding requests and is replaced.
    Frames are multiprocessing.Connection's (a 4-byte big-endian length, then a pickle)."""

    def __init__(self, processes: int, initargs: tuple, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._initargs = initargs
        self._loop = loop
        self._thread = threading.get_ident()
        self._seq = 0
        self._closed = False
        self._broken = False
        self._deaths: list[float] = []
        self._size = processes
        self._workers: list[_Worker] = []            # started on demand (the daemon starts one at once: prestart)

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_serve, args=(child, self._initargs), name="mxd-worker", daemon=True)
        proc.start()
        child.close()
        worker = _Worker(proc, parent)
        os.set_blocking(worker.fd, False)
        self._loop.add_reader(worker.fd, self._readable, worker)
        return worker

    def prestart(self) -> None:
        """Start one process now (its imports run while the daemon starts), so that the first message
        does not wait for it."""
        if not self._workers and not self._closed:
            self._workers.append(self._start())

    # --- the Executor interface ---
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        if threading.get_ident() == self._thread:
            self._send(future, fn, args)
        else:
            self._loop.call_soon_threadsafe(self._send, future, fn, args)
        return future

    def run(self, fn: Any, *args: Any) -> asyncio.Future:
        """fn(*args) in a worker process, as an asyncio future; on the event loop only. Cheaper than
        run_in_executor (no concurrent.futures.Future and no thread-safe hand-over)."""
        future = self._loop.create_future()
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        self._send(future, fn, args)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            self._detach(worker)
            try:
                worker.conn.close()                  # the process reads EOF and ends
            except OSError:
                pass
            for future in worker.pending.values():
                if cancel_futures and future.cancel():
                    continue
                if not future.done():
                    future.set_exception(RuntimeError("the worker processes were shut down"))
            worker.pending.clear()
        if wait:
            for worker in self._workers:
                worker.proc.join(10)
                if worker.proc.is_alive():
                    worker.proc.kill()

    # --- on the event loop ---
    def _send(self, future: Any, fn: Any, args: tuple) -> None:
        if isinstance(future, concurrent.futures.Future) and not future.set_running_or_notify_cancel():
            return
        try:
            payload = pickle.dumps((self._seq, fn, args), pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            future.set_exception(exc)
            return
        if self._broken:
            future.set_exception(RuntimeError("worker processes keep ending; restart mxd"))
            return
        if len(self._workers) < self._size and all(w.pending for w in self._workers):
            try:
                self._workers.append(self._start())
            except Exception as exc:
                if not self._workers:
                    future.set_exception(exc)
                    return
                log.exception("starting another worker process failed")
        worker = min(self._workers, key=lambda w: len(w.pending))
        worker.pending[self._seq] = future
        self._seq += 1
        idle = not worker.out
        worker.out += struct.pack("!i", len(payload))
        worker.out += payload
        if idle:
            self._writable(worker)                   # nothing was waiting to be written: write now

    def _writable(self, worker: _Worker) -> None:
        try:
            sent = os.write(worker.fd, worker.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            return self._died(worker)
        del worker.out[:sent]
        if worker.out:
            self._loop.add_writer(worker.fd, self._writable, worker)
        else:
            self._loop.remove_writer(worker.fd)

    def _readable(self, worker: _Worker) -> None:
        try:
            chunk = os.read(worker.fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            return self._died(worker)
        buf = worker.inbuf
        buf += chunk
        while len(buf) >= 4:
            (size,) = struct.unpack_from("!i", buf)
            start = 4
            if size == -1:
                if len(buf) < 12:
                    break
                (size,) = struct.unpack_from("!Q", buf, 4)
                start = 12
            if len(buf) < start + size:
                break
            seq, ok, value = pickle.loads(bytes(buf[start:start + size]))
            del buf[:start + size]
            future = worker.pending.pop(seq, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _detach(self, worker: _Worker) -> None:
        if self._loop.is_closed():
            return
        self._loop.remove_reader(worker.fd)
        self._loop.remove_writer(worker.fd)

    def _died(self, worker: _Worker) -> None:
        self._detach(worker)
        worker.conn.close()
        if self._closed:
            return
        log.error("a worker process ended (exit code %s); %d requests fail, a new process starts",
                  worker.proc.exitcode, len(worker.pending))
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(RuntimeError("the worker process ended"))
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < 60] + [now]
        if len(self._deaths) > 5:                   # a process that cannot live: stop replacing it
            log.error("worker processes keep ending; CPU work fails until mxd is restarted")
            self._broken = True
            self._workers.remove(worker)
        else:
            self._workers[self._workers.index(worker)] = self._start()
