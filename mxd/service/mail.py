"""Reading mail: message pages and details, search, threads, raw messages, attachments and the inbox, as
JSON-ready dicts. Every read goes through mxd.access: what a principal may not see is 404."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mxd import access
from mxd.access import Principal
from mxd.errors import MxdError
from mxd.mime.parse import attachment as attachment_part
from mxd.mime.parse import attachment_text as attachment_text_part
from mxd.service import Services
from mxd.store import acks, messages, search, threads, visibility
from mxd.store.models import Attachment, Mailbox, Message, QueueEntry, Thread
from mxd.timefmt import iso

SNIPPET = 200
Shape = Callable[[Any, str], dict]
INCLUDE_QUARANTINED = "quarantined"      # include=quarantined: readers show quarantined mail too


def includes_quarantined(include: str | None) -> bool:
    """Whether a request's `include` (a comma-separated list) asks for quarantined mail."""
    return bool(include) and INCLUDE_QUARANTINED in {p.strip() for p in str(include).split(",")}


# ---------------------------------------------------------------- shapes
def summary(msg: Message | messages.MessageRow, mailbox_address: str) -> dict:
    """What a list, a search page or a thread shows of a message."""
    text = msg.text or ""
    return {
        "id": msg.id, "thread_id": msg.thread_id, "mailbox": mailbox_address, "direction": msg.direction,
        "message_id": msg.message_id, "subject": msg.subject,
        "from": msg.from_addr[0] if msg.from_addr else None, "to": msg.to_addr, "cc": msg.cc_addr,
        "date": iso(msg.date), "received_at": iso(msg.received_at),
        "snippet": " ".join(text[:SNIPPET * 2].split())[:SNIPPET], "size": msg.size,
        "plus_tag": msg.plus_tag, "has_parse_errors": bool(msg.parse_errors),
        "verdict": (msg.trust or {}).get("verdict"), "quarantined": msg.quarantined_at is not None,
    }


def detail(msg: Message, mailbox_address: str, attachments: list[Attachment]) -> dict:
    """A message in full: its summary, headers, bodies, attachments (with their download URL), authentication."""
    out = summary(msg, mailbox_address)
    out.update({
        "in_reply_to": msg.in_reply_to, "references": msg.references, "reply_to": msg.reply_to,
        "envelope": {"mail_from": msg.envelope_from, "rcpt_to": msg.envelope_to},
        "text": msg.text, "html": msg.html,
        "attachments": [{"id": a.id, "filename": a.filename, "content_type": a.content_type, "size": a.size,
                         "content_id": a.content_id, "disposition": a.disposition,
                         "url": f"/api/messages/{msg.id}/attachments/{a.id}"} for a in attachments],
        "authentication_results": msg.auth_results, "auth": msg.auth,
        "parse_errors": msg.parse_errors,
        "trust": msg.trust, "quarantine": msg.quarantine, "quarantined_at": iso(msg.quarantined_at),
    })
    return out


def full_detail(msg: Message, mailbox_address: str) -> dict:
    """`detail` of a message model, with its attachments read."""
    return detail(msg, mailbox_address,
                  list(Attachment.select().where(Attachment.message == msg.id).order_by(Attachment.part_index)))


def thread_dict(thread: Thread, mailbox_address: str) -> dict:
    return {"id": thread.id, "mailbox": mailbox_address, "subject": thread.subject,
            "message_count": thread.message_count, "first_at": iso(thread.first_at),
            "last_at": iso(thread.last_at)}


def delivery_status(message_id: str) -> list[dict]:
    """Per-recipient delivery state of an outgoing message. Runs in a reader."""
    return [{"recipient": e.recipient, "status": e.status, "attempts": e.attempts, "last_reply": e.last_reply,
             "last_host": e.last_host, "queue_id": e.id}
            for e in QueueEntry.select().where(QueueEntry.message == message_id).order_by(QueueEntry.recipient)]


def page(items: list[dict], limit: int, fetched: int, last_id: str | None) -> dict:
    """A page of a list: its items and the cursor of the next page (None on the last one)."""
    return {"data": items, "next_cursor": last_id if fetched >= limit and last_id else None}


# ---------------------------------------------------------------- lists and search
async def message_page(s: Services, principal: Principal, *, mailbox: str | None = None,
                       thread_id: str | None = None, limit: int = 50, cursor: str | None = None,
                       shape: Shape = summary, include_quarantined: bool = False) -> dict:
    """Messages newest first, of one mailbox or of every mailbox the principal may see (quarantined ones
    only with `include_quarantined`)."""
    def work() -> dict:
        ids, names = access.mailbox_scope(principal, mailbox)
        rows = messages.list_messages(ids, limit, cursor, thread_id, include_quarantined)
        return page([shape(m, names.get(m.mailbox_id, "")) for m in rows], limit, len(rows),
                    rows[-1].id if rows else None)
    return await s.db.read(work)


async def search_page(s: Services, principal: Principal, query: str, *, mailbox: str | None = None,
                      limit: int = 50, cursor: str | None = None, shape: Shape = summary,
                      include_quarantined: bool = False) -> dict:
    """Full-text search over the mailboxes the principal may see (or the one named)."""
    def work() -> dict:
        ids, names = access.mailbox_scope(principal, mailbox)
        found = messages.by_ids(search.search(Message._meta.database.obj, query, ids, limit, cursor,
                                              include_quarantined))
        return page([shape(m, names.get(m.mailbox_id, "")) for m in found], limit, len(found),
                    found[-1].id if found else None)
    return await s.db.read(work)


async def thread_page(s: Services, principal: Principal, *, mailbox: str | None = None, limit: int = 50,
                      cursor: str | None = None) -> dict:
    def work() -> dict:
        ids, names = access.mailbox_scope(principal, mailbox)
        rows = threads.list_threads(ids, limit, cursor)
        return page([thread_dict(t, names.get(t.mailbox_id, "")) for t in rows], limit, len(rows),
                    rows[-1].id if rows else None)
    return await s.db.read(work)


# ---------------------------------------------------------------- one message, one thread
@dataclass
class MessageView:
    """A message the principal may read: its detail (with delivery state when outgoing), mailbox, ack state."""
    detail: dict
    mailbox_id: str
    acknowledged: bool


def visible_message(principal: Principal, message_id: str, not_found: str | None = None,
                    include_quarantined: bool = False) -> tuple[Message, Mailbox]:
    """(message, mailbox) if the principal may read it; a quarantined message is 404 unless asked for
    (mxd.store.visibility), as if it had not arrived. Runs in a reader."""
    label = not_found or f"message {message_id!r} not found"
    msg, box = access.visible_with_mailbox(Message, message_id, principal, label)
    if not visibility.is_shown(msg, include_quarantined):
        raise MxdError("not_found", label, fix="A quarantined message is read with include=quarantined, or "
                                               "through GET /api/quarantine/{id} (admin).")
    return msg, box


def _view(principal: Principal, message_id: str, not_found: str | None,
          include_quarantined: bool = False) -> MessageView:
    msg, box = visible_message(principal, message_id, not_found, include_quarantined)
    out = full_detail(msg, box.address)
    if msg.direction == "out":
        out["delivery"] = delivery_status(msg.id)
    return MessageView(out, box.id, msg.acked_at is not None)


async def message_view(s: Services, principal: Principal, message_id: str,
                       not_found: str | None = None, include_quarantined: bool = False) -> MessageView:
    """The message as `message_detail`, with its mailbox and ack state; `not_found`: the 404's message
    (default "message '<id>' not found")."""
    return await s.db.read(_view, principal, message_id, not_found, include_quarantined)


async def message_detail(s: Services, principal: Principal, message_id: str,
                         include_quarantined: bool = False) -> dict:
    """The parsed message, with its delivery state if outgoing, its trust signals and quarantine reasons."""
    return (await message_view(s, principal, message_id, include_quarantined=include_quarantined)).detail


async def thread_detail(s: Services, principal: Principal, thread_id: str) -> dict:
    """A thread's messages oldest first, with their text."""
    def work() -> dict:
        thread, box = access.visible_with_mailbox(Thread, thread_id, principal, "thread not found")
        out = thread_dict(thread, box.address)
        out["messages"] = [dict(summary(m, box.address), text=m.text) for m in messages.in_thread(thread.id)]
        return out
    return await s.db.read(work)


async def raw(s: Services, principal: Principal, message_id: str, include_quarantined: bool = False) -> bytes:
    """The message as stored (RFC 5322 bytes, with mxd's trace headers)."""
    def work() -> bytes:
        return messages.raw(visible_message(principal, message_id, include_quarantined=include_quarantined)[0])
    return await s.db.read(work)


@dataclass
class StoredAttachment:
    """One attachment of a message the principal may read, and the stored bytes of that message."""
    row: Attachment
    message: bytes

    def content(self) -> bytes:
        """The attachment's decoded bytes (CPU work: run it off the event loop for big messages)."""
        found = attachment_part(self.message, self.row.part_index)
        if found is None:
            raise MxdError("not_found", "attachment not found in the stored message")
        return found[1]

    def text(self) -> str:
        """The attachment's text, decoded in its charset."""
        found = attachment_text_part(self.message, self.row.part_index)
        if found is None:
            raise MxdError("not_found", "attachment not found in the stored message")
        return found[1]


async def attachment(s: Services, principal: Principal, message_id: str, attachment_id: str,
                     include_quarantined: bool = False) -> StoredAttachment:
    def work() -> StoredAttachment:
        msg = visible_message(principal, message_id, include_quarantined=include_quarantined)[0]
        att = Attachment.get_or_none((Attachment.id == attachment_id) & (Attachment.message == msg.id))
        if att is None:
            raise MxdError("not_found", "attachment not found")
        return StoredAttachment(att, messages.raw(msg))
    return await s.db.read(work)


# ---------------------------------------------------------------- the inbox
def _inbox_box(principal: Principal, mailbox: str, by_id: bool) -> Mailbox:
    if by_id:
        return access.visible(Mailbox, mailbox, principal)
    return access.mailbox(principal, mailbox)


async def inbox(s: Services, principal: Principal, mailbox: str, limit: int, *, by_id: bool = False,
                shape: Shape = summary, include_quarantined: bool = False) -> dict:
    """Inbound messages of one mailbox not yet acknowledged, oldest first (`by_id`: the mailbox by id only)."""
    def work() -> dict:
        box = _inbox_box(principal, mailbox, by_id)
        rows = acks.poll(box.id, limit + 1, include_quarantined)
        data = [shape(m, box.address) for m in rows[:limit]]
        return {"mailbox": box.address, "mailbox_id": box.id, "data": data, "count": len(data),
                "has_more": len(rows) > limit}
    return await s.db.read(work)


async def acknowledge(s: Services, principal: Principal, mailbox: str, message_ids: list[str], *,
                      by_id: bool = False, include_quarantined: bool = False) -> dict:
    """Mark inbound messages of one mailbox processed; answers those acknowledged and those not found."""
    def work() -> dict:
        box = _inbox_box(principal, mailbox, by_id)
        acked, missing = acks.ack(box.id, message_ids, include_quarantined)
        return {"mailbox": box.address, "mailbox_id": box.id, "acknowledged": acked, "not_found": missing}
    return await s.db.write(work)
