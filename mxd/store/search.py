"""Full-text search over subject, addresses and body text: the one place that knows the index.

SQLite uses an FTS5 table (and a small table of each index row's mailbox); PostgreSQL a
tsvector column with a GIN index. The query language is the same for both: words (all must
match), "quoted phrases", a trailing * for a prefix, and the fields from:, to:, subject:.
"""
from __future__ import annotations

import re

import peewee as pw

from mxd.store import visibility

_TERM = re.compile(r'(?:(from|to|subject):)?(?:"([^"]*)"|(\S+))', re.IGNORECASE)
_FIELD_COLUMN = {"from": "addresses", "to": "addresses", "subject": "subject"}
MAX_BODY = 200_000  # characters of body text indexed per message


def _is_sqlite(db: pw.Database) -> bool:
    return isinstance(db, pw.SqliteDatabase)


def create_index(db: pw.Database) -> None:
    if _is_sqlite(db):
        db.execute_sql(
            "CREATE VIRTUAL TABLE IF NOT EXISTS message_fts USING fts5("
            "message_id UNINDEXED, mailbox_id UNINDEXED, subject, addresses, body, "
            "tokenize='unicode61 remove_diacritics 2')")
    else:
        db.execute_sql(
            "CREATE TABLE IF NOT EXISTS message_search ("
            "message_id VARCHAR(40) PRIMARY KEY, mailbox_id VARCHAR(40) NOT NULL, doc tsvector NOT NULL)")
        db.execute_sql("CREATE INDEX IF NOT EXISTS message_search_doc ON message_search USING GIN (doc)")


def create_mailbox_map(db: pw.Database) -> None:
    """SQLite: the mailbox of every index row in a compact table (index rowid -> mailbox id).

    A search within some mailboxes joins it to each match before reading anything else; reading the
    UNINDEXED mailbox_id column instead costs a seek into the content table (which holds the bodies)
    for every match. Built from the index for an existing store.
    """
    if not _is_sqlite(db):
        return
    db.execute_sql("CREATE TABLE IF NOT EXISTS search_mailbox ("
                   "fts_rowid INTEGER PRIMARY KEY, mailbox_id VARCHAR(40) NOT NULL)")
    db.execute_sql("INSERT OR IGNORE INTO search_mailbox (fts_rowid, mailbox_id) "
                   "SELECT rowid, mailbox_id FROM message_fts")


def index(db: pw.Database, message_id: str, mailbox_id: str, subject: str, addresses: str, body: str) -> None:
    body = body[:MAX_BODY]
    if _is_sqlite(db):
        cursor = db.execute_sql(
            "INSERT INTO message_fts(message_id, mailbox_id, subject, addresses, body) VALUES (?, ?, ?, ?, ?)",
            (message_id, mailbox_id, subject, addresses, body))
        db.execute_sql("INSERT OR REPLACE INTO search_mailbox (fts_rowid, mailbox_id) VALUES (?, ?)",
                       (cursor.lastrowid, mailbox_id))
    else:
        db.execute_sql(
            "INSERT INTO message_search(message_id, mailbox_id, doc) VALUES (%s, %s, "
            "setweight(to_tsvector('simple', %s), 'A') || setweight(to_tsvector('simple', %s), 'B') || "
            "to_tsvector('simple', %s)) ON CONFLICT (message_id) DO NOTHING",
            (message_id, mailbox_id, subject, addresses, body))


def remove(db: pw.Database, message_ids: list[str]) -> None:
    if not message_ids:
        return
    if not _is_sqlite(db):
        marks = ",".join(["%s"] * len(message_ids))
        db.execute_sql(f"DELETE FROM message_search WHERE message_id IN ({marks})", tuple(message_ids))
        return
    marks = ",".join("?" * len(message_ids))
    rowids = [r[0] for r in db.execute_sql(f"SELECT rowid FROM message_fts WHERE message_id IN ({marks})",
                                           tuple(message_ids)).fetchall()]
    for start in range(0, len(rowids), 500):
        chunk = rowids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        db.execute_sql(f"DELETE FROM message_fts WHERE rowid IN ({marks})", tuple(chunk))
        db.execute_sql(f"DELETE FROM search_mailbox WHERE fts_rowid IN ({marks})", tuple(chunk))


def _fts5_query(q: str) -> str:
    parts = []
    for match in _TERM.finditer(q):
        field, phrase, word = match.group(1), match.group(2), match.group(3)
        text = phrase if phrase is not None else word
        prefix = phrase is None and text.endswith("*")
        text = text.rstrip("*") if prefix else text
        tokens = re.findall(r"\w+", text)
        if not tokens:
            continue
        term = '"' + " ".join(tokens) + '"' + ("*" if prefix else "")
        if field:
            term = f"{_FIELD_COLUMN[field.lower()]} : {term}"
        parts.append(term)
    return " AND ".join(parts)


def search(db: pw.Database, q: str, mailbox_ids: list[str] | None, limit: int, before: str | None,
           include_quarantined: bool = False) -> list[str]:
    """Message ids matching q, newest first, at most limit, older than the cursor id `before`.

    Quarantined messages are indexed (so a search asking for them finds them) and left out unless
    `include_quarantined` (mxd.store.visibility). They are few: a page of matches is read as before and the
    quarantined among it (a primary-key lookup of at most `limit` ids) dropped, and the next matches read
    when that left the page short. Excluding them inside the match query would read the message id of
    every match before the mailbox filter, which costs a seek into the index's content table each."""
    if mailbox_ids is not None and not mailbox_ids:
        return []
    found: list[str] = []
    while True:
        batch = _matches(db, q, mailbox_ids, limit, before)
        if include_quarantined:
            return batch
        hidden = _quarantined_among(db, batch)
        found += [i for i in batch if i not in hidden]
        if len(found) >= limit or len(batch) < limit:
            return found[:limit]
        before = batch[-1]


def _quarantined_among(db: pw.Database, ids: list[str]) -> set[str]:
    if not ids:
        return set()
    mark = "?" if _is_sqlite(db) else "%s"
    sql = (f'SELECT "id" FROM "message" WHERE "id" IN ({",".join([mark] * len(ids))}) '
           f"AND {visibility.QUARANTINED_SQL}")
    return {row[0] for row in db.execute_sql(sql, tuple(ids)).fetchall()}


def _matches(db: pw.Database, q: str, mailbox_ids: list[str] | None, limit: int, before: str | None) -> list[str]:
    """Every matching message id (quarantined ones too), newest first, at most limit, older than `before`."""
    if _is_sqlite(db):
        return _search_fts5(db, q, mailbox_ids, limit, before)
    words = [" & ".join(re.findall(r"\w+", m.group(2) or m.group(3) or "")) for m in _TERM.finditer(q)]
    words = [w for w in words if w]
    if not words:
        return []
    sql = "SELECT message_id FROM message_search WHERE doc @@ to_tsquery('simple', %s)"
    params: list = [" & ".join(f"({w})" for w in words)]
    if mailbox_ids is not None:
        sql += f" AND mailbox_id IN ({','.join(['%s'] * len(mailbox_ids))})"
        params += mailbox_ids
    if before:
        sql += " AND message_id < %s"
        params.append(before)
    sql += f" ORDER BY message_id DESC LIMIT {int(limit)}"
    return [row[0] for row in db.execute_sql(sql, tuple(params)).fetchall()]


# FTS5 hands matches out in rowid order and stops at LIMIT when the ORDER BY is on rowid; ordering on
# message_id instead reads the id of every match and sorts them all (hundreds of milliseconds for a
# common word in 100,000 messages). The index's rowids follow message-id order: messages.deliver makes
# each id (time-ordered, mxd.ids) and indexes it at once, in the one writer, and FTS5 gives every new
# row a rowid above all others. So "newest first" is "rowid descending", and the cursor id becomes a
# rowid bound found by bisecting the rowids.
def _search_fts5(db: pw.Database, q: str, mailbox_ids: list[str] | None, limit: int,
                 before: str | None) -> list[str]:
    match = _fts5_query(q)
    if not match:
        return []
    sql = "SELECT f.message_id FROM message_fts f"
    params: list = [match]
    if mailbox_ids is not None:             # the mailbox of each match from the compact map, not the content
        sql += (" JOIN search_mailbox b ON b.fts_rowid = f.rowid WHERE message_fts MATCH ?"
                f" AND b.mailbox_id IN ({','.join('?' * len(mailbox_ids))})")
        params += mailbox_ids
    else:
        sql += " WHERE message_fts MATCH ?"
    if before:
        bound = _first_rowid_from(db, before)
        if bound is not None:
            sql += " AND f.rowid < ?"
            params.append(bound)
        else:                               # every id sorted below the cursor; newer rows may have come since
            sql += " AND f.message_id < ?"
            params.append(before)
    sql += f" ORDER BY f.rowid DESC LIMIT {int(limit)}"
    found = [row[0] for row in db.execute_sql(sql, tuple(params)).fetchall()]
    # The rowid bound is the cursor while rowid order is id order; never hand out what is not older.
    return [i for i in found if i < before] if before else found


def _first_rowid_from(db: pw.Database, message_id: str) -> int | None:
    """The smallest index rowid whose message id is >= message_id; None when every id sorts below it."""
    def at_or_below(rowid: int | None) -> tuple[int, str] | None:
        if rowid is None:
            sql, params = "SELECT rowid, message_id FROM message_fts ORDER BY rowid DESC LIMIT 1", ()
        else:
            sql = "SELECT rowid, message_id FROM message_fts WHERE rowid <= ? ORDER BY rowid DESC LIMIT 1"
            params = (rowid,)
        return db.execute_sql(sql, params).fetchone()

    last = at_or_below(None)
    if last is None or last[1] < message_id:
        return None
    first = db.execute_sql("SELECT rowid, message_id FROM message_fts ORDER BY rowid LIMIT 1").fetchone()
    if first[1] >= message_id:
        return first[0]
    low, high = first[0], last[0]   # every row at or below `low` sorts below message_id; `high` does not
    while high - low > 1:
        mid = (low + high) // 2
        row = at_or_below(mid)
        if row[1] >= message_id:
            high = row[0]
        else:
            low = mid
    return high
