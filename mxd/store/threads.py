"""Threads, kept incrementally: each mailbox maps every Message-ID it has seen (present or ghost) to a thread.

A new message joins the thread of any id it carries (its own Message-ID, its
In-Reply-To and References); when it links several threads they merge, so
messages arriving out of order (reply before parent) still end in one thread.
This yields the same partition as JWZ over the ids (ghost parents included).
A reply that carries no reference at all joins by normalised subject, only
within the same mailbox and a bounded window.
"""
from __future__ import annotations

import peewee as pw

from mxd.db import execute, executemany
from mxd.ids import new_id
from mxd.mime.threading import is_reply_subject, normalize_subject
from mxd.store.models import Message, Thread, ThreadRef

MAX_IDS = 200   # references honoured per message (hostile mail can carry thousands)


def message_ids(message_id: str | None, in_reply_to: list[str], references: list[str]) -> list[str]:
    ids: list[str] = []
    for value in [message_id, *references[-MAX_IDS:], *in_reply_to[:10]]:
        if value and value not in ids and len(value) <= 998:
            ids.append(value)
    return ids


def assign(mailbox_id: str, message_id: str | None, in_reply_to: list[str], references: list[str], subject: str,
           when: float, window_seconds: float) -> str:
    """The thread id for a new message (inserted right after); runs in the writer's transaction.

    Hand-written SQL: this runs for every message that arrives.
    """
    ids = message_ids(message_id, in_reply_to, references)
    known: dict[str, str] = {}
    if ids:
        rows = execute('SELECT "msgid", "thread_id" FROM "thread_ref" WHERE "mailbox_id" = ? AND "msgid" IN ('
                       + ",".join("?" * len(ids)) + ")", (mailbox_id, *ids)).fetchall()
        known = {msgid: thread for msgid, thread in rows}
    norm = normalize_subject(subject)[:255]
    thread_ids = set(known.values())
    if not thread_ids and not in_reply_to and not references and norm and is_reply_subject(subject):
        row = execute('SELECT "id" FROM "thread" WHERE "mailbox_id" = ? AND "norm_subject" = ? AND "last_at" >= ? '
                      'ORDER BY "last_at" DESC LIMIT 1', (mailbox_id, norm, when - window_seconds)).fetchone()
        if row:
            thread_ids = {row[0]}

    if not thread_ids:
        thread_id = new_id("thr")
        execute('INSERT INTO "thread" ("id", "mailbox_id", "subject", "norm_subject", "first_at", "last_at", '
                '"message_count") VALUES (?, ?, ?, ?, ?, ?, 1)', (thread_id, mailbox_id, subject, norm, when, when))
    else:
        if len(thread_ids) > 1:
            threads = sorted(Thread.select().where(Thread.id.in_(list(thread_ids))), key=lambda t: (t.first_at, t.id))
            for other in threads[1:]:
                _merge(other, threads[0])
            thread_id = threads[0].id
        else:
            thread_id = next(iter(thread_ids))
        cur_subject, first_at = execute('SELECT "subject", "first_at" FROM "thread" WHERE "id" = ?',
                                        (thread_id,)).fetchone()
        # A message that references nothing is a root: its subject names the thread, unless an earlier root did.
        is_root = not in_reply_to and not references
        if when < first_at or (is_root and is_reply_subject(cur_subject)):
            cur_subject, norm_subject = subject, norm
        else:
            norm_subject = normalize_subject(cur_subject)[:255]
        execute('UPDATE "thread" SET "subject" = ?, "norm_subject" = ?, "first_at" = ?, '
                '"last_at" = CASE WHEN "last_at" > ? THEN "last_at" ELSE ? END, '
                '"message_count" = "message_count" + 1 WHERE "id" = ?',
                (cur_subject, norm_subject, min(first_at, when), when, when, thread_id))
    missing = [i for i in ids if i not in known]
    executemany('INSERT INTO "thread_ref" ("mailbox_id", "msgid", "thread_id") VALUES (?, ?, ?)',
                [(mailbox_id, i, thread_id) for i in missing])
    return thread_id


def _merge(src: Thread, dst: Thread) -> None:
    Message.update(thread=dst.id).where(Message.thread == src.id).execute()
    ThreadRef.update(thread=dst.id).where(ThreadRef.thread == src.id).execute()
    dst.message_count += src.message_count
    if src.first_at < dst.first_at:
        dst.first_at, dst.subject, dst.norm_subject = src.first_at, src.subject, src.norm_subject
    dst.last_at = max(dst.last_at, src.last_at)
    Thread.delete().where(Thread.id == src.id).execute()
    dst.save()


def list_threads(mailbox_ids: list[str] | None, limit: int, before: str | None) -> list[Thread]:
    query = Thread.select().order_by(Thread.last_at.desc(), Thread.id.desc())
    if mailbox_ids is not None:
        query = query.where(Thread.mailbox.in_(mailbox_ids))
    if before:
        anchor = Thread.get_or_none(Thread.id == before)
        if anchor is not None:
            # a row-value comparison is a range on the (mailbox_id,) last_at, id index (migration v3)
            query = query.where(pw.Tuple(Thread.last_at, Thread.id) < pw.Tuple(anchor.last_at, anchor.id))
    return list(query.limit(limit))
