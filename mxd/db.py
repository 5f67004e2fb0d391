"""The database handle: SQLite (WAL) or PostgreSQL, one writer thread, reader threads.

All writes go through `Database.write`, which runs callables on one writer
thread. The writer takes every callable that is waiting, runs each inside its
own savepoint of one transaction and commits once (group commit): a caller's
future resolves only after that commit is durable, so "250 after fsync" holds
while hundreds of messages share one fsync. With SQLite the fsync is not the
writer's: a syncer thread fsyncs the WAL behind it and then answers every
transaction committed before that fsync began, so the writer goes on with the
next transaction while the disk works. Bulk work (the pipeline filing
messages, fan-outs, sweeps) is marked `bulk`: such jobs run one per
transaction, taking turns with everything else, so a client waiting for its
250 never waits behind a queue of bulk work. Reads run on a small thread pool.
With SQLite a checkpointer thread moves the WAL into the database file in the
background, so that no commit pays for a checkpoint.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import queue
import threading
from typing import Any, Callable, Iterator, TypeVar

import peewee
from playhouse.db_url import connect
from playhouse.db_url import parse as parse_url

log = logging.getLogger("mxd.db")
T = TypeVar("T")


class _WithoutParameters(logging.Filter):
    """peewee logs every query with its parameters at DEBUG: webhook secrets, token hashes, message
    bytes. The query is kept, the parameters never reach a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, tuple) and len(record.msg) == 2:
            record.msg, record.args = str(record.msg[0]), ()
        return True


logging.getLogger("peewee").addFilter(_WithoutParameters())

proxy = peewee.DatabaseProxy()
"""Models bind to this; `Database` initialises it."""

MAX_BATCH = 512
CHECKPOINT_EVERY = 1.0           # seconds between background WAL checkpoints (SQLite)


def private_files(path: str) -> None:
    """Make the SQLite store readable by mxd's user alone (0600) whatever the umask: it holds all mail.
    SQLite gives its -wal and -shm files the database file's mode, so the database file is made first
    (an empty file is an empty database); files from an earlier, looser run are tightened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    os.close(fd)
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        try:
            mode = os.stat(name).st_mode & 0o777
            if mode & 0o077:
                os.chmod(name, mode & 0o700)
                log.info("%s was readable by others (mode %o): now %o", name, mode, mode & 0o700)
        except FileNotFoundError:
            pass
        except OSError as exc:            # another user's file: say so, it is the operator's to fix
            log.warning("%s: cannot make it private: %s", name, exc.strerror)


def connect_url(url: str, wal_synced_by_caller: bool = False) -> peewee.Database:
    """Open a peewee database for a URL; SQLite gets the durable pragmas.

    `wal_synced_by_caller`: commits do not fsync the WAL themselves (synchronous=NORMAL), because
    the caller (Database's syncer) fsyncs it before anyone is told a commit happened."""
    if url.startswith("sqlite:"):
        db = connect(url, pragmas={
            "journal_mode": "wal",
            # FULL: a commit fsyncs the WAL; NORMAL when Database's syncer does (see Database._sync_loop).
            # Either way a committed transaction that was acknowledged survives power loss.
            "synchronous": 1 if wal_synced_by_caller else 2,
            "foreign_keys": 1,
            "busy_timeout": 30000,
            "cache_size": -8000,        # KiB per connection; the writer and each reader thread have one
            "temp_store": "memory",
            "wal_autocheckpoint": 10000,  # pages; a backstop: Database checkpoints in the background
        }, check_same_thread=False)
    else:
        db = connect(url)
    return db


class _Job:
    __slots__ = ("fn", "args", "future", "loop", "bulk")

    def __init__(self, fn: Callable[..., Any], args: tuple, future: Any, loop: asyncio.AbstractEventLoop | None,
                 bulk: bool = False) -> None:
        self.fn, self.args, self.future, self.loop, self.bulk = fn, args, future, loop, bulk


class Database:
    def __init__(self, url: str, readers: int = 4) -> None:
        self.url = url
        path = parse_url(url).get("database", "") if url.startswith("sqlite:") else ""
        self._wal_path = f"{path}-wal" if path and path != ":memory:" and not path.startswith("file:") else ""
        if self._wal_path:
            private_files(path)
        self.db = connect_url(url, wal_synced_by_caller=bool(self._wal_path))
        proxy.initialize(self.db)
        self._synced: queue.SimpleQueue[tuple[list[_Job], list[tuple[bool, Any]]] | None] = queue.SimpleQueue()
        self._syncer: threading.Thread | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._readers = concurrent.futures.ThreadPoolExecutor(readers, thread_name_prefix="mxd-read")

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the writer (and, with SQLite, the syncer and checkpointer). The schema is the store's:
        `mxd.store.open_store` migrates it before this."""
        if self._wal_path:
            self._syncer = threading.Thread(target=self._sync_loop, name="mxd-sync", daemon=True)
            self._syncer.start()
        self._writer = threading.Thread(target=self._write_loop, name="mxd-writer", daemon=True)
        self._writer.start()
        if isinstance(self.db, peewee.SqliteDatabase):
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="mxd-checkpoint", daemon=True)
            self._checkpointer.start()

    def close(self) -> None:
        self._stopping.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=30)
            self._checkpointer = None
        if self._writer is not None:
            self._jobs.put(None)
            self._writer.join(timeout=30)
            self._writer = None
        if self._syncer is not None:
            self._synced.put(None)
            self._syncer.join(timeout=30)
            self._syncer = None
        self._readers.shutdown(wait=True)
        if not self.db.is_closed():
            self.db.close()

    # ---------------------------------------------------------------- API
    async def write(self, fn: Callable[..., T], *args: Any, bulk: bool = False) -> T:
        """Run fn(*args) in the writer's transaction; return once it is committed.
        `bulk`: work nobody is waiting on, which must not delay those who are."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put(_Job(fn, args, future, loop, bulk))
        return await future

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking twin of `write`, for threads other than the writer."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put(_Job(fn, args, future, None))
        return future.result()

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read, fn, args)

    def _read(self, fn: Callable[..., T], args: tuple) -> T:
        # WAL readers see the last committed state; each pool thread keeps its own connection.
        if self.db.is_closed():
            name_thread("mxd-read")
        self.db.connect(reuse_if_open=True)
        return fn(*args)

    # ---------------------------------------------------------------- writer
    def _write_loop(self) -> None:
        name_thread("mxd-writer")
        self.db.connect(reuse_if_open=True)
        urgent: list[_Job] = []
        bulk: collections.deque[_Job] = collections.deque()
        stopping = False
        while True:
            # Take everything waiting; block only when there is nothing left to do.
            block = not urgent and not bulk and not stopping
            while len(urgent) < MAX_BATCH:
                try:
                    job = self._jobs.get() if block else self._jobs.get_nowait()
                except queue.Empty:
                    break
                block = False
                if job is None:
                    stopping = True
                elif job.bulk:
                    bulk.append(job)
                else:
                    urgent.append(job)
            # Turns: every job waiting that is not bulk in one transaction, then one bulk job in another
            # (one transaction for both measured slower: the clients' commit then waits for the bulk job).
            if urgent:
                self._run_batch(urgent)
                urgent = []
            if bulk:
                self._run_batch([bulk.popleft()])
            elif stopping and not urgent:
                break
        self.db.close()

    def _checkpoint_loop(self) -> None:
        """SQLite: copy committed WAL frames into the database file every second, beside the writer (a
        PASSIVE checkpoint never blocks it); the writer's own automatic checkpoint is only a backstop."""
        name_thread("mxd-checkpoint")
        self.db.connect(reuse_if_open=True)
        try:
            while not self._stopping.wait(CHECKPOINT_EVERY):
                try:
                    self.db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")
                except peewee.DatabaseError:
                    log.exception("checkpoint failed")
        finally:
            self.db.close()

    def _run_batch(self, batch: list[_Job]) -> None:
        results: list[tuple[bool, Any]] = []
        if len(batch) == 1:                             # alone: its failure rolls back the transaction itself
            job = batch[0]
            try:
                with self.db.atomic():
                    results.append((True, job.fn(*job.args)))
            except Exception as exc:                    # noqa: BLE001 - the job's or the commit's: handed over
                results = [(False, exc)]
        else:
            try:
                with self.db.atomic():
                    for number, job in enumerate(batch):
                        try:
                            with _savepoint(self.db, f"job{number}"):  # one job's failure spares the others
                                results.append((True, job.fn(*job.args)))
                        except Exception as exc:        # noqa: BLE001 - handed to the caller
                            results.append((False, exc))
            except Exception as exc:                    # the commit itself failed: nobody's write is durable
                log.exception("commit failed")
                results = [(False, exc)] * len(batch)
        if self._syncer is not None:
            self._synced.put((batch, results))          # told once the WAL is on disk
        else:
            _answer(batch, results)

    def _sync_loop(self) -> None:
        """SQLite: group commit across transactions. The writer commits without fsync and goes on with
        the next transaction; this thread fsyncs the WAL (one fdatasync for every transaction committed
        before it started) and only then answers their callers, so no one hears "committed" (a 250, a
        202) before the transaction is on disk, while the writer never waits for the disk."""
        name_thread("mxd-sync")
        fd = -1
        stop = False
        while not stop:
            item = self._synced.get()
            done = []
            while item is not None:
                done.append(item)
                try:
                    item = self._synced.get_nowait()
                except queue.Empty:
                    break
            stop = item is None
            if not done:
                continue
            error: Exception | None = None
            try:
                if fd < 0 or os.fstat(fd).st_ino != os.stat(self._wal_path).st_ino:
                    if fd >= 0:
                        os.close(fd)
                    fd = os.open(self._wal_path, os.O_RDONLY)
                os.fdatasync(fd)
            except FileNotFoundError:
                pass                                    # no WAL (yet): every commit so far is in the database file
            except OSError as exc:                      # what was committed may not be on disk: say so
                log.exception("fsync of the write-ahead log failed")
                error = exc
            for batch, results in done:
                try:
                    _answer(batch, [(False, error)] * len(batch) if error else results)
                except Exception:                       # never let one answer stop the syncer
                    log.exception("answering a committed transaction failed")
        if fd >= 0:
            os.close(fd)


def _answer(batch: list[_Job], results: list[tuple[bool, Any]]) -> None:
    """Hand each job's result to its caller: one wake-up per event loop for the whole batch."""
    by_loop: dict[Any, list[tuple[Any, bool, Any]]] = {}
    for job, (ok, value) in zip(batch, results):
        if job.loop is None:
            _settle(job.future, ok, value)
        else:
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, settled)
        except RuntimeError:  # loop closed during shutdown
            pass


@contextlib.contextmanager
def _savepoint(db: peewee.Database, name: str) -> Iterator[None]:
    """A savepoint by a fixed name (peewee's own makes a uuid4 for each)."""
    db.execute_sql(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        db.execute_sql(f"ROLLBACK TO SAVEPOINT {name}")
        db.execute_sql(f"RELEASE SAVEPOINT {name}")
        raise
    db.execute_sql(f"RELEASE SAVEPOINT {name}")


def name_thread(name: str) -> None:
    """Give the running thread its name in the kernel too (top -H, /proc/PID/task/*/comm); Linux only."""
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)     # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _settle(fut: Any, ok: bool, value: Any) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _settle_all(settled: list[tuple[Any, bool, Any]]) -> None:
    for fut, ok, value in settled:
        _settle(fut, ok, value)


_PG_SQL: dict[str, str] = {}


def _sql(sql: str) -> str:
    if isinstance(proxy.obj, peewee.SqliteDatabase):
        return sql
    converted = _PG_SQL.get(sql)
    if converted is None:
        converted = _PG_SQL[sql] = sql.replace("?", "%s")
    return converted


def executemany(sql: str, rows: list) -> None:
    if rows:
        cursor = proxy.obj.cursor()
        cursor.executemany(_sql(sql), rows)


def execute(sql: str, params: tuple | list = ()) -> Any:
    """Run hand-written SQL on the bound database (hot paths skip the query builder).

    Write it with `?` placeholders and double-quoted identifiers; it is turned
    into `%s` placeholders for PostgreSQL once and cached.
    """
    return proxy.obj.execute_sql(_sql(sql), params)
