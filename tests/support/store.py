"""The store in process, without a daemon: one helper opens it the way the daemon does (mxd.store.open_store:
migrate, then start the writer), and the fixtures tests/conftest.py exposes are built on it."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import peewee
import pytest

from mxd.db import Database, proxy
from mxd.store import migrations, open_store


def sqlite_url(directory: Path) -> str:
    """The URL of a store file `mxd.db` in `directory`."""
    return f"sqlite:///{directory / 'mxd.db'}"


@contextlib.contextmanager
def started_store(url: str) -> Iterator[Database]:
    """A migrated, started store at `url` (SQLite or PostgreSQL), closed afterwards."""
    database = open_store(url)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """An in-process store on a fresh SQLite file: migrated, its writer started. A test module that
    needs rows in it first overrides this with a `db(db)` fixture of its own."""
    with started_store(sqlite_url(tmp_path)) as database:
        yield database


@pytest.fixture
def memory_db() -> Iterator[peewee.SqliteDatabase]:
    """The current schema in an in-memory SQLite bound to the models, no writer: for code called
    synchronously on the calling thread."""
    database = peewee.SqliteDatabase(":memory:")
    proxy.initialize(database)
    migrations.migrate(database)
    yield database
    database.close()
