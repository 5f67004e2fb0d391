"""mxd.db.Database: group commit, and no write answered before its transaction is on disk."""
from __future__ import annotations

import os
import sqlite3
import threading
import time

from mxd import db as db_module
from mxd.db import Database, execute


def _create(name: str) -> None:
    execute('CREATE TABLE IF NOT EXISTS "t" ("v" TEXT)')
    execute('INSERT INTO "t" ("v") VALUES (?)', (name,))


def test_a_write_is_answered_only_after_the_wal_is_fsynced(tmp_path, monkeypatch):
    """The writer commits without fsync and goes on; the caller hears back only once the syncer's
    fdatasync of the WAL (begun after that commit) has returned."""
    gate, synced = threading.Event(), []
    real = os.fdatasync

    def held_fdatasync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        gate.wait(10)
        real(fd)

    database = Database(f"sqlite:///{tmp_path / 'mxd.db'}")
    database.start()
    try:
        assert database.db.execute_sql("PRAGMA synchronous").fetchone()[0] == 1     # NORMAL: the syncer fsyncs
        monkeypatch.setattr(db_module.os, "fdatasync", held_fdatasync)
        answered = threading.Event()
        threading.Thread(target=lambda: (database.write_sync(_create, "first"), answered.set()), daemon=True).start()
        deadline = time.monotonic() + 10
        while not synced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert synced and synced[0].endswith("mxd.db-wal")
        # committed (another connection reads it) but not answered while the fsync has not returned
        reader = sqlite3.connect(tmp_path / "mxd.db")
        assert reader.execute("SELECT v FROM t").fetchall() == [("first",)]
        reader.close()
        assert not answered.wait(0.3)
        gate.set()
        assert answered.wait(10)
        # later writes go on, each answered after an fsync of its own
        before = len(synced)
        database.write_sync(_create, "second")
        assert len(synced) > before
    finally:
        gate.set()
        database.close()


def test_many_writers_share_fsyncs(tmp_path, monkeypatch):
    calls = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.005)                       # a slow disk: commits pile up behind each fsync
        real(fd)

    database = Database(f"sqlite:///{tmp_path / 'mxd.db'}")
    database.start()
    try:
        database.write_sync(_create, "setup")
        monkeypatch.setattr(db_module.os, "fdatasync", counting)
        threads = [threading.Thread(target=database.write_sync, args=(_create, f"w{i}")) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        rows = database.db.execute_sql('SELECT count(*) FROM "t"').fetchone()[0]
        assert rows == 41
        assert 1 <= len(calls) < 40                 # several commits answered per fsync
    finally:
        database.close()


def _insert_then_fail(name: str) -> None:
    _create(name)
    raise ValueError(f"{name} failed after writing")


def test_a_failing_job_leaves_nothing_and_spares_the_others(tmp_path):
    """Alone in its transaction or batched with others, a job that raises keeps none of its writes;
    the jobs beside it in the same transaction are committed."""
    import pytest

    database = Database(f"sqlite:///{tmp_path / 'mxd.db'}")
    database.start()
    try:
        database.write_sync(_create, "setup")
        with pytest.raises(ValueError):
            database.write_sync(_insert_then_fail, "alone")
        gate = threading.Event()
        blocker = threading.Thread(target=database.write_sync, args=(lambda: gate.wait(10),))
        blocker.start()                              # holds the writer, so the next jobs queue up as one batch
        time.sleep(0.1)
        errors: list[BaseException] = []

        def run(fn, name):
            try:
                database.write_sync(fn, name)
            except ValueError as exc:
                errors.append(exc)
        threads = [threading.Thread(target=run, args=(fn, name)) for fn, name in
                   [(_create, "a"), (_insert_then_fail, "b"), (_create, "c")]]
        for t in threads:
            t.start()
        time.sleep(0.1)
        gate.set()
        for t in threads + [blocker]:
            t.join(10)
        names = sorted(r[0] for r in database.db.execute_sql('SELECT "v" FROM "t"').fetchall())
        assert names == ["a", "c", "setup"] and len(errors) == 1
    finally:
        database.close()
