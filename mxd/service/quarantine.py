"""Quarantine for administrators: the held messages of the mailboxes a principal administers (an
organisation's admin: its own organisation's only, by mxd.access), one held message, release into its
mailbox, delete. Held mail is an ordinary message (mxd.store.quarantine); what it becomes when released is
a message that has just arrived."""
from __future__ import annotations

from mxd import access
from mxd.access import Principal
from mxd.errors import MxdError
from mxd.service import Services
from mxd.service.mail import full_detail, page, summary
from mxd.store import quarantine
from mxd.store.models import Mailbox, Message
from mxd.timefmt import iso

DAY = 86400.0


def held_summary(msg: Message, mailbox_address: str) -> dict:
    """What the quarantine list shows of a held message: its summary, reasons and when it was held."""
    return dict(summary(msg, mailbox_address), quarantined=True, quarantine=msg.quarantine or [],
                quarantined_at=iso(msg.quarantined_at))


def _reason(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if value not in quarantine.REASONS:
        raise MxdError("bad_request", f"unknown quarantine reason {value!r}",
                       fix=f"Pick from: {', '.join(quarantine.REASONS)}.")
    return value


async def held_page(s: Services, principal: Principal, *, mailbox: str | None = None, reason: str | None = None,
                    limit: int = 50, cursor: str | None = None) -> dict:
    """Quarantined messages newest first, of one mailbox or every mailbox the principal administers."""
    code = _reason(reason)

    def work() -> dict:
        ids, names = access.mailbox_scope(principal, mailbox)
        rows = quarantine.held(ids, limit, cursor, code)
        return page([held_summary(m, names.get(m.mailbox_id, "")) for m in rows], limit, len(rows),
                    rows[-1].id if rows else None)
    return await s.db.read(work)


def _held(principal: Principal, message_id: str) -> tuple[Message, Mailbox]:
    """A quarantined message the principal may see; 404 for any other (one it may not see, or not held)."""
    label = f"quarantined message {message_id!r} not found"
    msg, box = access.visible_with_mailbox(Message, message_id, principal, label)
    return msg, box


async def held_detail(s: Services, principal: Principal, message_id: str) -> dict:
    """One message in quarantine, in full, with its reasons; a message not held is 404."""
    def work() -> dict:
        msg, box = _held(principal, message_id)
        if msg.quarantined_at is None:
            raise MxdError("not_found", f"message {message_id!r} is not quarantined",
                           fix=f"Read it with GET /api/messages/{message_id}.")
        return full_detail(msg, box.address)
    return await s.db.read(work)


async def release(s: Services, principal: Principal, message_id: str) -> tuple[dict, list]:
    """Let a held message into its mailbox as if it had just arrived (keeping its original time); 409 when it
    is not held (released already). Returns the message as it is now, and the reasons it was held for."""
    def work() -> tuple[dict, list]:
        held, box = _held(principal, message_id)
        reasons = held.quarantine or []
        msg, _thread = quarantine.release(message_id, s.cfg.thread_subject_window_days * DAY)
        return full_detail(msg, box.address), reasons
    return await s.db.write(work)


async def delete(s: Services, principal: Principal, message_id: str) -> dict:
    """Remove a held message for good; 409 when it is not held. Answers what was removed."""
    def work() -> dict:
        _, box = _held(principal, message_id)
        msg = quarantine.delete(message_id)
        return {"id": msg.id, "mailbox": box.address, "deleted": True, "quarantine": msg.quarantine or []}
    return await s.db.write(work)
