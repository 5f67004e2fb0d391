"""Threads, kept incrementally: each mailbox maps every Message-ID it has seen (present or ghost) to a thread.

A new message joins the thread of any id it carries (its own Message-ID, its
In-Reply-To and References); when it links several threads they merge, so
messages arriving out of order (reply before parent) still end in one thread.
This yields the same partition as JWZ over the ids (ghost parents included).
A reply that carries no reference at all joins by normalised subject, only
within the same mailbox and a bounded window.
"""
from __future__ import annotations

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


def assign(msg: Message, window_seconds: float) -> Thread:
    """Put msg (saved, with parsed fields) into a thread; runs in the writer's transaction."""
    mailbox_id = msg.mailbox_id
    ids = message_ids(msg.message_id, msg.in_reply_to or [], msg.references or [])
    known = {}
    if ids:
        known = {r.msgid: r.thread_id for r in
                 ThreadRef.select(ThreadRef.msgid, ThreadRef.thread).where(
                     (ThreadRef.mailbox == mailbox_id) & ThreadRef.msgid.in_(ids))}
    norm = normalize_subject(msg.subject or "")[:255]
    when = msg.date if msg.date is not None else msg.received_at

    thread_ids = set(known.values())
    if not thread_ids and not msg.in_reply_to and not msg.references and norm and is_reply_subject(msg.subject or ""):
        match = (Thread.select().where((Thread.mailbox == mailbox_id) & (Thread.norm_subject == norm)
                                       & (Thread.last_at >= when - window_seconds))
                 .order_by(Thread.last_at.desc()).first())
        if match:
            thread_ids = {match.id}

    if not thread_ids:
        thread = Thread.create(id=new_id("thr"), mailbox=mailbox_id, subject=msg.subject or "",
                               norm_subject=norm, first_at=when, last_at=when, message_count=0)
    else:
        threads = sorted(Thread.select().where(Thread.id.in_(list(thread_ids))), key=lambda t: (t.first_at, t.id))
        thread = threads[0]
        for other in threads[1:]:
            _merge(other, thread)

    missing = [i for i in ids if i not in known]
    if missing:
        ThreadRef.insert_many([{"mailbox": mailbox_id, "msgid": i, "thread": thread.id} for i in missing]).execute()
    if len(thread_ids) > 1 or any(known[i] != thread.id for i in known):
        ThreadRef.update(thread=thread.id).where(
            (ThreadRef.mailbox == mailbox_id) & ThreadRef.msgid.in_(ids)).execute()

    msg.thread = thread.id
    Message.update(thread=thread.id).where(Message.id == msg.id).execute()
    # A message that references nothing is a root: its subject names the thread, unless an earlier root did.
    is_root = not msg.in_reply_to and not msg.references
    if thread.message_count == 0 or when < thread.first_at or (is_root and is_reply_subject(thread.subject)):
        thread.subject = msg.subject or ""
        thread.norm_subject = norm
    thread.first_at = min(thread.first_at, when)
    thread.last_at = max(thread.last_at, when)
    thread.message_count += 1
    thread.save()
    return thread


def _merge(src: Thread, dst: Thread) -> None:
    Message.update(thread=dst.id).where(Message.thread == src.id).execute()
    ThreadRef.update(thread=dst.id).where(ThreadRef.thread == src.id).execute()
    dst.message_count += src.message_count
    if src.first_at < dst.first_at:
        dst.first_at, dst.subject, dst.norm_subject = src.first_at, src.subject, src.norm_subject
    dst.last_at = max(dst.last_at, src.last_at)
    Thread.delete().where(Thread.id == src.id).execute()


def list_threads(mailbox_ids: list[str] | None, limit: int, before: str | None) -> list[Thread]:
    query = Thread.select().order_by(Thread.last_at.desc(), Thread.id.desc())
    if mailbox_ids is not None:
        query = query.where(Thread.mailbox.in_(mailbox_ids))
    if before:
        anchor = Thread.get_or_none(Thread.id == before)
        if anchor is not None:
            query = query.where((Thread.last_at < anchor.last_at)
                                | ((Thread.last_at == anchor.last_at) & (Thread.id < anchor.id)))
    return list(query.limit(limit))
