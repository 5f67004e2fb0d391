"""Bounces: a failed or delayed recipient becomes a DSN in the sender's mailbox; a hard bounce is suppressed
for the sender's organisation.

Also the way back: a DSN arriving at a VERP return path (bounces+<entry>.<tag>@domain,
checked at RCPT) marks its queue entry failed and suppresses the recipient, but only a
real one: sent with the null reverse-path (RFC 5321 4.5.5), a multipart/report of
report-type delivery-status (RFC 6522, RFC 3464) that says "Action: failed" for that
entry's recipient. Anything else sent to a return path (an auto-reply, a person's reply,
a delay notice) is filed in the sender's mailbox as mail and changes nothing.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from mxd.config import Config
from mxd.delivery.dsn import FailedRecipient, build_dsn, is_delivery_report, parse_dsn
from mxd.ingest import Envelope, Recipient, store, with_trace
from mxd.store import queue as outqueue
from mxd.store import suppression
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


def fail_and_bounce(cfg: Config, entry_id: str, reply: str, host: str, action: str, tls: str | None = None) -> None:
    """Runs in the writer. action "failed": the entry fails for good; "delayed": a one-time warning.
    tls: the transport policy of the last attempt (JSON, mxd.delivery.tlspolicy), when one was made."""
    if action == "failed":
        entry = outqueue.failed(entry_id, reply, host, tls)
        status = status_of(reply, True)
        if is_hard_bounce(status):
            suppression.add(entry.recipient, "hard_bounce", reply, suppression.org_of_entry_sender(entry.message_id))
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


def _same_address(reported: object, recipient: str) -> bool:
    return isinstance(reported, str) and reported.strip().lower() == recipient.strip().lower()


def delivery_report(mail_from: str, raw: bytes) -> list[dict] | None:
    """The per-recipient fields of a DSN (parse_dsn), or None when the message is not one: a DSN has a
    null return path (RFC 3464 2) and is multipart/report; report-type=delivery-status. Parses the
    message, so it runs outside the writer (the pipeline's analysis step)."""
    if mail_from not in ("", "<>") or not is_delivery_report(raw):
        return None
    return parse_dsn(raw)


def bounce_received(entry_id: str, report: list[dict] | None) -> bool:
    """A message came back to a VERP address after the remote MX had said 250. If it is a DSN
    (`report`, from delivery_report) that fails this entry's recipient, fail the entry and suppress a
    hard bounce; returns whether it did."""
    if report is None:
        return False                              # mail, not a delivery report: it changes nothing
    entry = QueueEntry.get_or_none(QueueEntry.id == entry_id)
    if entry is None:
        return False
    failed = [r for r in report if r.get("action") == "failed"
              and (_same_address(r.get("final_recipient"), entry.recipient)
                   or _same_address(r.get("original_recipient"), entry.recipient))]
    if not failed:
        return False                              # a delay or success notice, or about someone else
    detail = failed[0]
    status = str(detail.get("status") or "5.0.0")
    reply = f"bounced after delivery: {status} {detail.get('diagnostic') or ''}".strip()
    if entry.status != "failed":
        outqueue.failed(entry_id, reply, entry.last_host)
    if is_hard_bounce(status):
        suppression.add(entry.recipient, "hard_bounce", reply, suppression.org_of_entry_sender(entry.message_id))
    return True
