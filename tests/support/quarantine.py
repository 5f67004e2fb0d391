"""Quarantined messages stored directly, the way the pipeline stores them (the quarantine model of
mxd.store.quarantine): an Inbound row, then a Message row with `quarantine` and `quarantined_at` set and
no thread, indexed for search, `message.quarantined` emitted (no `message.inbound`), the Inbound row
processed."""
from __future__ import annotations

import time

from mxd.db import Database, proxy
from mxd.ids import new_id
from mxd.ingest import Envelope, Recipient, store
from mxd.mime.parse import parse
from mxd.store import directory, events, search
from mxd.store.models import Inbound, Message

SUSPICIOUS = {"verdict": "suspicious", "reasons": [{"code": "dmarc_fail", "detail": "p=quarantine"}],
              "author": "ceo@examp1e.test", "authenticated": False, "authentication": {"how": None},
              "first_contact": {"address": True, "domain": True},
              "lookalike": {"domain": "examp1e.test", "resembles": "example.test", "how": "homoglyph"},
              "display_name_spoof": None, "reply_to_mismatch": None, "risky_attachments": [], "spam": None}


def hold(db: Database, address: str, subject: str, reasons: list[dict] | None = None, *,
         body: str = "Please wire the money today.", sender: str = "ceo@examp1e.test",
         received_at: float | None = None, trust: dict | None = None) -> str:
    """A quarantined inbound message to `address`; its message id."""
    reasons = reasons if reasons is not None else [{"code": "dmarc_quarantine", "detail": "p=quarantine"}]

    def work() -> str:
        box = directory.get_mailbox(address)
        raw = (f"From: Boss <{sender}>\r\nTo: {address}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{new_id('mid')}@remote.example>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
               f"\r\n{body}\r\n").encode()
        env = Envelope(mail_from=sender, rcpts=[Recipient(address, (box.id,))], data=raw,
                       received_at=received_at if received_at is not None else time.time())
        inbound_id = store(env)
        parsed = parse(raw)
        msg_id = new_id("msg")
        from_addr = [{"name": a.name, "address": a.address} for a in parsed.from_]
        Message.create(id=msg_id, mailbox=box.id, inbound=inbound_id, thread=None, direction="in",
                       received_at=env.received_at, envelope_from=sender, envelope_to=address,
                       message_id=parsed.message_id, subject=parsed.subject, from_addr=from_addr,
                       to_addr=[{"name": "", "address": address}],
                       date=parsed.date.timestamp() if parsed.date else None, text=parsed.text, size=len(raw),
                       trust=trust if trust is not None else SUSPICIOUS, quarantine=reasons,
                       quarantined_at=time.time())
        search.index(proxy.obj, msg_id, box.id, parsed.subject, f"Boss {sender} {address}", parsed.text)
        events.emit("message.quarantined", mailbox_id=box.id, message_id=msg_id, reasons=reasons)
        Inbound.update(processed=True).where(Inbound.id == inbound_id).execute()
        return msg_id
    return db.write_sync(work)
