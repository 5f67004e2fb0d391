"""The store's incremental threading against the notmuch corpora: same partition as JWZ, in any arrival order."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from mxd.db import Database
from mxd.ingest import Envelope, Recipient, store
from mxd.mime.parse import parse
from mxd.mime.threading import ThreadInput, partition
from mxd.store import directory, messages
from mxd.store.models import Inbound, Message
from tests.support.corpora import corpus_files

WINDOW = 100 * 365 * 86400.0


@pytest.fixture
def db(db: Database) -> Database:
    """The shared in-process store (tests/support/store.py) with mailbox agent@example.test."""
    db.write_sync(directory.create_domain, "example.test")
    db.write_sync(directory.create_mailbox, "agent@example.test")
    return db


def _deliver_all(db: Database, files: list[Path]) -> dict[str, str]:
    """Ingest and process every file in the given order; returns file name -> thread id."""
    box = db.write_sync(directory.get_mailbox, "agent@example.test")
    threads: dict[str, str] = {}
    for path in files:
        raw = path.read_bytes()
        env = Envelope(mail_from="list@remote.test", rcpts=[Recipient("agent@example.test", (box.id,))], data=raw)
        inbound_id = db.write_sync(store, env)
        row = db.write_sync(lambda: Inbound.get_by_id(inbound_id))
        [(msg_id, _)] = db.write_sync(messages.deliver, row, parse(bytes(row.data)), None, "", WINDOW)
        threads[str(path)] = msg_id
    ids = list(threads.values())
    rows = {m.id: m.thread_id for m in db.write_sync(lambda: list(Message.select().where(Message.id.in_(ids))))}
    return {name: rows[mid] for name, mid in threads.items()}


def _expected(files: list[Path], group_by_subject: bool) -> set[frozenset[str]]:
    inputs = [ThreadInput.from_parsed(str(p), parse(p.read_bytes())) for p in files]
    return {frozenset(s) for s in partition(inputs, group_by_subject=group_by_subject)}


def _actual(assigned: dict[str, str]) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for name, thread in assigned.items():
        groups.setdefault(thread, set()).add(name)
    return {frozenset(s) for s in groups.values()}


@pytest.mark.parametrize("corpus", ["threading", "default"])
@pytest.mark.parametrize("seed", [None, 1, 2])
def test_store_partition_matches_jwz(db, corpus, seed):
    files = corpus_files(corpus)
    if seed is not None:
        random.Random(seed).shuffle(files)
    assert _actual(_deliver_all(db, files)) == _expected(files, group_by_subject=True)


def test_ghost_root_children_share_a_thread(db):
    files = corpus_files("threading")
    assigned = _deliver_all(db, list(reversed(files)))
    by_id = {parse(Path(f).read_bytes()).message_id: t for f, t in assigned.items()}
    # Messages that only share a missing (ghost) ancestor still form one thread.
    ghost_children = [p for p in files if "RT-Ticket-33575" in p.read_text(errors="replace")]
    assert len(ghost_children) >= 2
    assert len({assigned[str(p)] for p in ghost_children}) == 1
    assert len(by_id) > 1


def test_thread_counts_add_up(db):
    files = corpus_files("default")
    assigned = _deliver_all(db, files)
    from mxd.store.models import Thread
    rows = db.write_sync(lambda: {t.id: t.message_count for t in Thread.select()})
    counts: dict[str, int] = {}
    for thread in assigned.values():
        counts[thread] = counts.get(thread, 0) + 1
    assert rows == counts
