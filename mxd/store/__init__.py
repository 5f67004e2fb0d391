"""The store: directory (domains, mailboxes, aliases, catch-alls), messages, threads, search, tokens.

`open_store` is how the daemon, `mxd init` and the tests open it: the database handle (mxd.db) knows
nothing of the schema; the store brings it up to date before the writer starts."""
from __future__ import annotations

from mxd.db import Database
from mxd.store import migrations


def migrate(database: Database) -> int:
    """Bring the schema of a database not yet started up to date; returns the version now in force."""
    with database.db.connection_context():
        return migrations.migrate(database.db)


def open_store(url: str) -> Database:
    """Open the database at `url`, migrate its schema and start its writer. A store from a newer mxd is
    refused (RuntimeError) and the handle closed."""
    database = Database(url)
    try:
        migrate(database)
        database.start()
    except BaseException:
        database.close()
        raise
    return database
