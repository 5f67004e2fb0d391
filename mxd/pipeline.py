"""The inbound pipeline worker: parse, authenticate, thread, index and announce every committed message.

It takes Inbound rows not yet processed (after a crash too, so nothing that got
a 250 is left behind). Parsing and SPF/DKIM/DMARC are CPU work, so they run in
a separate process (`pipeline_processes`, the GIL would otherwise share one
core with the SMTP listener); each batch's results are then written through
the writer, one savepoint per message. A message that cannot be parsed is
still delivered, raw, with its parse error.

A message taken in by SMTP submission is an unprocessed inbound row too (source
"outbound"): here it is DKIM-signed and parsed, then `mxd.sending.complete`
files it in the sender's mailbox and queues it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import json
import logging
import functools
import multiprocessing
import os
import pickle
import signal
import struct
import threading
import time
from typing import Any, Callable

from mxd import sending
from mxd.config import Config
from mxd.db import Database, execute, proxy
from mxd.delivery.bounces import bounce_received, delivery_report
from mxd.ingest import InboundRow
from mxd.mime.parse import parse
from mxd.resolver import Resolver, make_resolver
from mxd.store import messages

log = logging.getLogger("mxd.pipeline")
BATCH = 256
CHUNK = 32          # messages per request to a worker process
STORE = 8           # messages per writer job
COALESCE = 0.02


def _pending(exclude: set[str], limit: int) -> list[InboundRow]:
    """Up to `limit` unprocessed rows, oldest first, leaving out those in `exclude` (in flight): their
    ids first, so that rows in flight are not read again whole."""
    ids = [r[0] for r in execute('SELECT "id" FROM "inbound" WHERE "processed" = ? ORDER BY "id" LIMIT ?',
                                 (False, limit + len(exclude))).fetchall() if r[0] not in exclude][:limit]
    if not ids:
        return []
    rows = execute('SELECT "id", "received_at", "source", "mail_from", "rcpts", "remote_ip", "helo", "data", "trace" '
                   f'FROM "inbound" WHERE "id" IN ({",".join("?" * len(ids))}) ORDER BY "id"', ids)
    return [InboundRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], bytes(r[7]), r[8])
            for r in rows.fetchall()]


# ---------------------------------------------------------------- the analysis (runs in a worker process)
_resolver: Resolver | None = None


def _init_worker(nameservers: list[str], timeout: float, daemon_pid: int) -> None:
    global _resolver
    try:   # Linux: end with the daemon even when it is killed with SIGKILL (PR_SET_PDEATHSIG = 1)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != daemon_pid:              # the daemon died before prctl took effect
        os._exit(0)
    _resolver = make_resolver(nameservers, timeout)


_threads: concurrent.futures.ThreadPoolExecutor | None = None


def release_memory() -> None:
    """Hand freed heap back to the system after a burst (glibc keeps it otherwise); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _analyse_one(item: tuple[str, bytes, str, str, str, str, str], auth_on: bool, authserv_id: str,
                 dkim_dir: str) -> tuple[Any, Any, str]:
    from mxd.authn import authenticate
    inbound_id, data, ip, helo, mail_from, source, trace = item
    if source == "outbound":                   # a submitted message: its DKIM fields become its trace
        try:
            dkim, parsed = sending.prepare(dkim_dir, data, mail_from.rsplit("@", 1)[-1].lower())
            return parsed, None, dkim
        except Exception as exc:               # checked when it was accepted; never lose the message if it fails
            log.exception("signing %s failed; it is sent unsigned", inbound_id)
            parsed = parse(data)
            parsed.errors.append(f"not DKIM-signed: {type(exc).__name__}: {exc}"[:300])
            return parsed, None, ""
    try:
        parsed = parse(data)
    except Exception:                          # parse() is not meant to raise; never lose the message if it does
        log.exception("parser failed on %s", inbound_id)
        parsed = None
    auth = None
    if auth_on and source == "smtp" and _resolver is not None:
        try:
            auth = authenticate(data, ip=ip, helo=helo, mail_from=mail_from, resolver=_resolver,
                                authserv_id=authserv_id)
            trace = f"Authentication-Results: {auth.header_value}\r\n" + trace
        except Exception:
            log.exception("authentication checks failed on %s", inbound_id)
    return parsed, auth, trace


def analyse(items: list[tuple[str, bytes, str, str, str, str, str]], auth_on: bool, authserv_id: str,
            dkim_dir: str = "") -> list[tuple[Any, Any, str]]:
    """(parsed, auth, trace) per (id, data, remote_ip, helo, mail_from, source, trace); never raises.

    A sent copy (source "outbound") is signed instead of authenticated: its trace is then its
    DKIM-Signature fields.

    With auth checks on, the items run on threads, so that one slow DNS answer does not hold up
    the rest of the batch.
    """
    global _threads
    if not auth_on or len(items) == 1:
        return [_analyse_one(item, auth_on, authserv_id, dkim_dir) for item in items]
    if _threads is None:
        _threads = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="mxd-auth")
    return list(_threads.map(lambda item: _analyse_one(item, auth_on, authserv_id, dkim_dir), items))


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


class Pipeline:
    def __init__(self, cfg: Config, db: Database, workers: concurrent.futures.Executor,
                 on_queued: Callable[[], None] | None = None) -> None:
        self.cfg, self.db, self.on_queued = cfg, db, on_queued
        self.window = cfg.thread_subject_window_days * 86400.0
        self._wake = asyncio.Event()
        self._pool = workers
        self._inflight: set[str] = set()
        self._slots = asyncio.Semaphore(max(2, cfg.pipeline_processes * 2))
        self._task: asyncio.Task | None = None

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mxd-pipeline")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        busy = False
        while True:
            self._wake.clear()
            rows = await self.db.read(_pending, set(self._inflight), BATCH)
            if not rows:
                if busy and not self._inflight:
                    busy = False
                    release_memory()
                    if isinstance(self._pool, concurrent.futures.ProcessPoolExecutor):
                        self._pool.submit(release_memory)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=5.0)
                except asyncio.TimeoutError:
                    pass
                else:
                    # Every send wakes the pipeline (a local recipient is an inbound row); one look at
                    # the store for a burst of them, not one thread hop per message.
                    await asyncio.sleep(COALESCE)
                continue
            busy = True
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start:start + CHUNK]
                await self._slots.acquire()
                self._inflight.update(r.id for r in chunk)
                loop.create_task(self._chunk(chunk))

    async def _chunk(self, rows: list[InboundRow]) -> None:
        try:
            items = [(r.id, r.data, r.remote_ip, r.helo, r.mail_from, r.source, r.trace) for r in rows]
            run = getattr(self._pool, "run", None)          # WorkerProcesses
            args = (analyse, items, self.cfg.auth_checks, self.cfg.hostname, os.path.join(self.cfg.data_dir, "dkim"))
            results = await (run(*args) if run else asyncio.get_running_loop().run_in_executor(self._pool, *args))
            bounces = [r for r in rows if any(rcpt.get("bounce_entry") for rcpt in r.rcpts)]
            if bounces:                             # DSNs are parsed here: the writer never parses a message
                found = await asyncio.to_thread(lambda: [delivery_report(r.mail_from, r.data) for r in bounces])
                reports = {r.id: report for r, report in zip(bounces, found)}
                results = [(*result, reports.get(r.id)) for r, result in zip(rows, results)]
            await asyncio.gather(*(self._store_part(rows[i:i + STORE], results[i:i + STORE])
                                   for i in range(0, len(rows), STORE)))
            if self.on_queued is not None and any(r.source == "outbound" for r in rows):
                self.on_queued()                    # sent copies completed: their queue entries are due
        except Exception:
            log.exception("processing %d inbound messages failed; they will be retried", len(rows))
            await asyncio.sleep(1.0)
        finally:
            self._inflight.difference_update(r.id for r in rows)
            self._slots.release()
            self._wake.set()

    async def _store_part(self, rows: list[InboundRow], results: list[tuple[Any, Any, str]]) -> None:
        """A few messages per writer job (bulk: each job then waits its turn behind clients' writes)."""
        try:
            await self.db.write(self._store, rows, results, False, bulk=True)
        except Exception:                       # one bad message: redo the part one savepoint each
            await self.db.write(self._store, rows, results, True, bulk=True)

    def _store(self, rows: list[InboundRow], results: list[tuple[Any, Any, str]], careful: bool) -> None:
        """Runs in the writer: the messages, and for a bounce to a VERP address, the queue entry's fate.

        The batch first goes in as one unit; if anything fails, the writer rolls it back and it is
        retried with a savepoint per message, so one bad message spares the rest.
        """
        for row, (parsed, auth, trace, *report) in zip(rows, results):
            dsn = report[0] if report else None
            if not careful:
                self._store_one(row, parsed, auth, trace, dsn)
                continue
            try:
                with proxy.obj.atomic():
                    self._store_one(row, parsed, auth, trace, dsn)
                continue
            except Exception:
                log.exception("storing inbound %s failed; storing it unparsed", row.id)
            try:
                with proxy.obj.atomic():            # the raw message, flagged, rather than nothing
                    self._store_one(row, None, None, trace, dsn)
            except Exception:
                # Not even that: take it off the work list so it cannot spin; the raw bytes stay in inbound.
                log.exception("inbound %s cannot be stored as a message; its raw bytes stay in the store", row.id)
                execute('UPDATE "inbound" SET "processed" = ? WHERE "id" = ?', (True, row.id))

    def _store_one(self, row: InboundRow, parsed: Any, auth: Any, trace: str, dsn: list[dict] | None = None) -> None:
        """Runs in the writer; `dsn` is the delivery report of a bounce to a VERP address (None: not a DSN)."""
        if row.source == "outbound":
            sending.complete(self.cfg, row, trace, parsed)
            return
        messages.deliver(row, parsed, auth, trace, self.window)
        for rcpt in row.rcpts:
            if rcpt.get("bounce_entry"):
                bounce_received(rcpt["bounce_entry"], dsn)
