"""Search and thread-list paging on the store: newest first, cursors that neither skip nor repeat.

The SQLite search walks the FTS5 index in rowid order and turns the cursor into a rowid bound; these
tests hold it to the plain definition (every match, ordered by message id, older than the cursor).
"""
from __future__ import annotations

import random

import peewee as pw
import pytest

from mxd.ids import new_id
from mxd.store import search, threads
from mxd.store.models import Domain, Mailbox, Thread

WORDS = ["invoice", "meeting", "report", "budget", "ticket", "urgent", "lunch", "deploy"]


@pytest.fixture()
def db(memory_db: pw.SqliteDatabase) -> pw.SqliteDatabase:
    """The schema in memory, no writer (tests/support/store.py)."""
    return memory_db


def _fill(db: pw.SqliteDatabase, count: int, rng: random.Random) -> dict[str, tuple[str, set[str]]]:
    """Index `count` messages (some removed again); returns id -> (mailbox, words) of those left."""
    kept: dict[str, tuple[str, set[str]]] = {}
    for _ in range(count):
        msg_id, box = new_id("msg"), rng.choice(["mbx_a", "mbx_b", "mbx_c"])
        words, topic = set(rng.sample(WORDS, rng.randint(1, 4))), rng.choice(WORDS)
        search.index(db, msg_id, box, "subject " + topic, "someone@example.org", " ".join(words))
        kept[msg_id] = (box, words | {topic, "subject", "someone", "example", "org"})
    for gone in rng.sample(sorted(kept), count // 10):     # retention removes some, the newest included
        search.remove(db, [gone])
        del kept[gone]
    return kept


def _expected(kept: dict, word: str, boxes: list[str] | None, before: str | None, limit: int) -> list[str]:
    found = [i for i, (box, words) in kept.items()
             if word in words and (boxes is None or box in boxes) and (before is None or i < before)]
    return sorted(found, reverse=True)[:limit]


def test_search_matches_the_definition_for_any_cursor(db: pw.SqliteDatabase) -> None:
    rng = random.Random(11)
    kept = _fill(db, 400, rng)
    ids = sorted(kept)
    cursors = [None, "msg_0", "msg_zzzzzzzzzzzzzzzzzzzzzzzz", ids[0], ids[-1]] + rng.sample(ids, 40)
    for before in cursors:
        for word in ("invoice", "subject", "lunch"):
            for boxes in (None, ["mbx_a"], ["mbx_b", "mbx_c"]):
                for limit in (1, 7, 50):
                    assert search.search(db, word, boxes, limit, before) == _expected(kept, word, boxes, before, limit)


def test_search_pages_cover_every_match_once(db: pw.SqliteDatabase) -> None:
    rng = random.Random(12)
    kept = _fill(db, 300, rng)
    seen: list[str] = []
    cursor = None
    while True:
        page = search.search(db, "subject", ["mbx_a", "mbx_b"], 13, cursor)
        seen += page
        if len(page) < 13:
            break
        cursor = page[-1]
    assert seen == _expected(kept, "subject", ["mbx_a", "mbx_b"], None, 10_000)
    assert len(seen) == len(set(seen)) > 100


def test_search_with_no_mailboxes_finds_nothing(db: pw.SqliteDatabase) -> None:
    _fill(db, 20, random.Random(13))
    assert search.search(db, "subject", [], 50, None) == []
    assert search.search(db, "subject", None, 50, None) != []


def test_thread_list_pages_through_ties_in_last_activity(db: pw.SqliteDatabase) -> None:
    domain = Domain.create(id=new_id("dom"), name="example.test")
    boxes = [Mailbox.create(id=new_id("mbx"), address=f"{n}@example.test", domain=domain) for n in "ab"]
    rng = random.Random(14)
    for _ in range(120):
        at = float(rng.randint(1, 15))             # many threads share a last_at
        Thread.create(id=new_id("thr"), mailbox=rng.choice(boxes), first_at=at, last_at=at, message_count=1)
    for mailbox_ids in (None, [boxes[0].id]):
        everything = [t.id for t in sorted(Thread.select(), key=lambda t: (t.last_at, t.id), reverse=True)
                      if mailbox_ids is None or t.mailbox_id in mailbox_ids]
        seen: list[str] = []
        cursor = None
        while True:
            page = threads.list_threads(mailbox_ids, 9, cursor)
            seen += [t.id for t in page]
            if len(page) < 9:
                break
            cursor = page[-1].id
        assert seen == everything


def test_cursor_bisection_finds_the_first_row_at_or_after_the_cursor(db: pw.SqliteDatabase) -> None:
    rng = random.Random(15)
    kept = _fill(db, 250, rng)
    ids = sorted(kept)
    for before in ["msg_0", "msg_zzzzzzzzzzzzzzzzzzzzzzzz", ids[0], ids[-1], *rng.sample(ids, 60),
                   *(i[:-1] + "0" for i in rng.sample(ids, 20))]:
        brute = db.execute_sql("SELECT min(rowid) FROM message_fts WHERE message_id >= ?", (before,)).fetchone()[0]
        assert search._first_rowid_from(db, before) == brute


def test_mailbox_map_follows_removal_and_reuse_of_the_newest_rowid(db: pw.SqliteDatabase) -> None:
    old = new_id("msg")
    search.index(db, old, "mbx_a", "old", "", "shared")
    newest = new_id("msg")
    search.index(db, newest, "mbx_a", "gone", "", "shared")
    search.remove(db, [newest])                    # FTS5 hands the freed top rowid to the next row
    later = new_id("msg")
    search.index(db, later, "mbx_b", "later", "", "shared")
    assert search.search(db, "shared", ["mbx_b"], 50, None) == [later]
    assert search.search(db, "shared", ["mbx_a"], 50, None) == [old]
    assert search.search(db, "shared", None, 50, None) == [later, old]


def test_mailbox_map_is_built_for_an_index_that_predates_it(db: pw.SqliteDatabase) -> None:
    rng = random.Random(16)
    kept = _fill(db, 120, rng)
    db.execute_sql("DELETE FROM search_mailbox")    # as a store indexed before schema v4
    assert search.search(db, "subject", ["mbx_a"], 500, None) == []
    search.create_mailbox_map(db)
    for boxes in (["mbx_a"], ["mbx_b", "mbx_c"]):
        assert search.search(db, "subject", boxes, 500, None) == _expected(kept, "subject", boxes, None, 500)
