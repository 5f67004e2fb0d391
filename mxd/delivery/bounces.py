"""Bounces: a failed or delayed recipient becomes a DSN in the sender's mailbox; a hard bounce is suppressed.

Also the way back: a DSN arriving at a VERP return path (bounces+<entry>@domain)
marks its queue entry failed and suppresses the recipient.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from mxd import outqueue, suppression
from mxd.config import Config
from mxd.delivery.dsn import FailedRecipient, build_dsn
from mxd.ingest import Envelope, Recipient, store, with_trace
from mxd.store.models import Inbound, Mailbox, Message, QueueEntry

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def status_of(reply: str, permanent: bool) -> str:
    match = _STATUS.search(reply)
    if match:
        return ".".join(match.groups())
    return "5.0.0" if permanent else "4.0.0"


def is_hard_bounce(status: str) -> bool:
    """RFC 3463: 5.1.x is a bad address (mailbox or domain) that will not get better by retrying."""
    return status.startswith("5.1.")


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


def fail_and_bounce(cfg: Config, entry_id: str, reply: str, host: str, action: str) -> None:
    """Runs in the writer. action "failed": the entry fails for good; "delayed": a one-time warning."""
    if action == "failed":
        entry = outqueue.failed(entry_id, reply, host)
        status = status_of(reply, True)
        if is_hard_bounce(status):
            suppression.add(entry.recipient, "hard_bounce", reply)
    else:
        entry = QueueEntry.get_by_id(entry_id)
        outqueue.mark_delay_notified(entry_id)
        status = status_of(reply, False)
    message = Message.get_or_none(Message.id == entry.message_id)
    mailbox = Mailbox.get_or_none(Mailbox.id == message.mailbox_id) if message else None
    if mailbox is None:
        return
    inbound = Inbound.get_by_id(entry.inbound_id)
    original = with_trace(inbound.trace, inbound.data)
    dsn = build_dsn(
        reporting_mta=cfg.hostname, original_envelope_id=entry.message_id, original_message=original,
        original_mail_from=entry.mail_from, to_addr=mailbox.address, from_addr=f"MAILER-DAEMON@{cfg.hostname}",
        arrival=_utc(entry.created_at),
        recipients=[FailedRecipient(
            address=entry.recipient, status=status, action=action, diagnostic=f"smtp; {reply}",
            remote_mta=entry.last_host or host or None, last_attempt=_utc(entry.last_attempt_at),
            will_retry_until=_utc(entry.expires_at) if action == "delayed" else None)])
    # RFC 5321 4.5.5: a notification has an empty return path, so it can never bounce in turn.
    store(Envelope(mail_from="", rcpts=[Recipient(mailbox.address, (mailbox.id,))], data=dsn, source="local"))


def bounce_received(entry_id: str, report: list[dict]) -> None:
    """A DSN came back to a VERP address after the remote MX had said 250: fail the entry, suppress hard bounces."""
    entry = QueueEntry.get_or_none(QueueEntry.id == entry_id)
    if entry is None:
        return
    failed = [r for r in report if str(r.get("action", "")).lower() == "failed"]
    if not failed and report:
        return                                   # a delay or success notice: nothing to change
    detail = failed[0] if failed else {}
    status = str(detail.get("status") or "5.0.0")
    reply = f"bounced after delivery: {status} {detail.get('diagnostic') or ''}".strip()
    if entry.status != "failed":
        outqueue.failed(entry_id, reply, entry.last_host)
    if is_hard_bounce(status):
        suppression.add(entry.recipient, "hard_bounce", reply)
