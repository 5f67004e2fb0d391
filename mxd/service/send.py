"""Sending: letters (what a caller asks to send, typed), replies and their context, drafts, and the one send
path (compose, then `mxd.sending.send`: the one preflight, DKIM signing, the durable queue)."""
from __future__ import annotations

import base64
import binascii
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from mxd import access
from mxd import address as addr
from mxd.access import Principal
from mxd.errors import MxdError
from mxd.ids import new_id
from mxd.mime.compose import (
    ComposeError,
    Draft,
    OutAttachment,
    compose,
    envelope_recipients,
    reply_headers,
    reply_subject,
)
from mxd.sending import Outgoing
from mxd.sending import send as send_outgoing
from mxd.service import Services
from mxd.service.mail import page
from mxd.store import directory, orgs, visibility
from mxd.store.models import Draft as DraftRow
from mxd.store.models import Mailbox, Message, Thread
from mxd.timefmt import iso

MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
FIELDS = ("from_name", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "attachments", "headers",
          "in_reply_to", "references")


@dataclass
class Letter:
    """A message a caller asks to send or to keep as a draft, before validation (`compose_draft` checks
    every field and answers the API's error codes). Addresses are 'a@b.c' or 'Name <a@b.c>'; attachments
    [{"filename", "content_type", "content" (base64)}]; None: not given. The sender is an address (or
    {"address": ...}); a reply or a reply draft without one is sent from the parent's mailbox.

    `given` names the JSON keys the caller's body held, in its order: a key given with the value null is
    kept as given (a reply does not fill it in from the parent, a stored draft keeps it as null)."""
    from_addr: Any
    to: Any = None
    cc: Any = None
    bcc: Any = None
    reply_to: Any = None
    subject: Any = None
    text: Any = None
    html: Any = None
    from_name: Any = None
    attachments: Any = None
    headers: Any = None
    in_reply_to: str | None = None
    references: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)    # other fields of a stored draft, kept as given
    given: tuple[str, ...] = ()

    def value(self, key: str) -> Any:
        """The value of a JSON key ("from", a field, or an extra one); None: not given or null."""
        if key == "from":
            return self.from_addr
        return getattr(self, key) if key in FIELDS else self.extra.get(key)

    def has(self, key: str) -> bool:
        """Whether the letter holds this JSON key, if only as an explicit null."""
        return key in self.given or self.value(key) is not None

    def as_body(self) -> dict[str, Any]:
        """The JSON form (that of POST /api/send), as a draft is stored and shown: the keys the caller gave in
        its order (nulls included), then those filled in since."""
        keys = list(self.given)
        keys += [k for k in (*self.extra, "from", *FIELDS) if k not in keys]
        return {k: self.value(k) for k in keys if self.has(k)}


def sender_of(value: Any, fallback: str | None = None) -> str:
    """The sending mailbox's address from a "from" value (an address, or {"address": ...})."""
    sender = fallback if value is None else value
    if isinstance(sender, dict):
        sender = sender.get("address")
    if not isinstance(sender, str):
        raise MxdError("bad_request", "from must be the address of a mailbox on this server")
    return sender


def letter_from_body(body: dict) -> Letter:
    """A letter from its JSON form (POST /api/send, a stored draft)."""
    values = {k: body.get(k) for k in FIELDS}
    extra = {k: v for k, v in body.items() if k not in FIELDS and k != "from"}
    return Letter(body.get("from"), extra=extra, given=tuple(body), **values)


def address_list(value: Any, name: str) -> list[str]:
    """An address or a list of addresses, as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise MxdError("bad_request", f"{name} must be an address or a list of addresses")


def _str(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise MxdError("bad_request", f"{name} must be a string")
    return value


def _attachments(value: Any) -> list[OutAttachment]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MxdError("bad_request", "attachments must be a list")
    out, total = [], 0
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
            raise MxdError("bad_request", f"attachments[{i}] needs a filename and base64 content")
        encoded = item.get("content_base64", item.get("content"))
        if not isinstance(encoded, str):
            raise MxdError("bad_request", f"attachments[{i}].content must be base64 text")
        try:
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise MxdError("bad_request", f"attachments[{i}].content is not valid base64") from None
        total += len(content)
        if total > MAX_ATTACHMENT_BYTES:
            raise MxdError("payload_too_large", "attachments exceed 20 MB in all")
        ctype = item.get("content_type") or "application/octet-stream"
        if not isinstance(ctype, str):
            raise MxdError("bad_request", f"attachments[{i}].content_type must be a string")
        out.append(OutAttachment(item["filename"], ctype, content, item.get("content_id"), bool(item.get("inline"))))
    return out


def compose_draft(letter: Letter) -> Draft:
    """The letter checked and turned into a compose Draft; raises MxdError for a field that is not right."""
    sender = sender_of(letter.from_addr)
    headers = letter.headers or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise MxdError("bad_request", "headers must be an object of strings")
    return Draft(
        from_addr=sender, from_name=_str(letter.from_name, "from_name") or "",
        to=address_list(letter.to, "to"), cc=address_list(letter.cc, "cc"), bcc=address_list(letter.bcc, "bcc"),
        reply_to=address_list(letter.reply_to, "reply_to"), subject=_str(letter.subject, "subject") or "",
        text=_str(letter.text, "text"), html=_str(letter.html, "html"),
        attachments=_attachments(letter.attachments), headers=headers, in_reply_to=letter.in_reply_to,
        references=letter.references or [])


async def send(s: Services, principal: Principal | None, draft: Draft, *, idempotency_key: str | None = None,
               idempotency_body: Any = None, remote_ip: str = "", source: str = "api") -> dict:
    """Compose and send a draft through the one send path (preflight, sign, queue), for every door.
    `idempotency_body` is what the caller sent, compared when the same idempotency key comes again."""
    try:
        data, _ = compose(draft, message_id_domain=draft.from_addr.rsplit("@", 1)[-1])
        recipients = envelope_recipients(draft)
    except ComposeError as exc:
        raise MxdError(exc.code, f"{exc.field}: {exc.message}") from None
    result = await send_outgoing(s.cfg, s.db, s.workers, principal,
                                 Outgoing(draft.from_addr, recipients, data, source, remote_ip),
                                 idempotency_key=idempotency_key,
                                 idempotency_body=idempotency_body if idempotency_key else None)
    s.queued()
    return result


def _system_sender(cfg_default: str) -> str:
    """postmaster@ of the default domain: the mailbox mxd's own notices come from (made if missing)."""
    domain = orgs.default_domain(cfg_default)
    box, _ = directory.create_mailbox(f"postmaster@{domain.name}", "Postmaster")
    return box.address


async def system_mail(s: Services, to: str, subject: str, text: str) -> dict:
    """Send a notice from mxd itself through the one send path (principal None: the preflight still
    checks domain readiness, caps and suppression)."""
    sender = await s.db.write(_system_sender, s.cfg.default_domain)
    draft = compose_draft(Letter(sender, to=[to], subject=subject, text=text, from_name=s.cfg.hostname))
    return await send(s, None, draft, source="system")


# ---------------------------------------------------------------- replies
@dataclass(frozen=True)
class ReplyContext:
    """What a reply takes from its parent message."""
    mailbox: str                    # the parent's mailbox: the reply's default sender
    thread_id: str | None
    to: list[str]
    cc: list[str]                   # the parent's other recipients, for reply-all
    subject: str
    in_reply_to: str | None
    references: list[str]


def reply_context(principal: Principal, message_id: str | None = None, thread_id: str | None = None) -> ReplyContext:
    """The parent of a reply (a message, or the newest of a thread), if the principal may see it; 404 otherwise.
    Runs in a reader or the writer."""
    if thread_id:
        thread = Thread.get_or_none(Thread.id == thread_id)
        parent = (Message.select().where(Message.thread == thread_id)
                  .order_by(Message.direction == "out", Message.id.desc()).first()) if thread else None
    else:
        parent = Message.get_or_none(Message.id == message_id)
    if parent is not None and not visibility.is_shown(parent):
        parent = None                       # a quarantined message is not there to reply to until it is released
    box = Mailbox.get_or_none(Mailbox.id == parent.mailbox_id) if parent else None
    if parent is None or box is None or not principal.sees(box.address, box.org_id):
        raise MxdError("not_found", "message or thread not found")
    in_reply_to, refs = reply_headers(parent.message_id, parent.references or [], parent.in_reply_to or [])
    if parent.direction == "out":
        to = [a["address"] for a in parent.to_addr]
    else:
        to = [a["address"] for a in (parent.reply_to or parent.from_addr)] or [parent.envelope_from]
    cc = [a["address"] for a in parent.to_addr + parent.cc_addr if a["address"].lower() != box.address]
    return ReplyContext(box.address, parent.thread_id, to, cc, reply_subject(parent.subject or ""), in_reply_to, refs)


async def reply_context_of(s: Services, principal: Principal, message_id: str | None = None,
                           thread_id: str | None = None) -> ReplyContext:
    return await s.db.read(reply_context, principal, message_id, thread_id)


def reply_letter(letter: Letter, rc: ReplyContext, reply_all: bool = False) -> Letter:
    """The letter as a reply: recipients (and with reply_all the parent's other recipients), subject and
    threading headers from the parent where the caller gave none."""
    return dataclasses.replace(
        letter, from_addr=letter.from_addr if letter.has("from") else rc.mailbox,
        to=letter.to if letter.has("to") else rc.to,
        cc=[a for a in rc.cc if a not in rc.to] if reply_all and not letter.has("cc") else letter.cc,
        subject=letter.subject if letter.has("subject") else rc.subject,
        in_reply_to=rc.in_reply_to, references=rc.references)


async def mailbox_letter(s: Services, principal: Principal, mailbox_id: Any, parent_id: Any,
                         letter: Letter) -> tuple[Mailbox, Letter]:
    """A letter from a mailbox named by id (the /v1 way), as a reply when parent_id names a message of that
    mailbox: (the mailbox, the letter with its sender, display name and reply fields filled in)."""
    def work() -> tuple[Mailbox, Message | None]:
        if not isinstance(mailbox_id, str):
            raise MxdError("bad_request", "mailbox_id must be the id of a mailbox (mbx_...)",
                           fix="List mailboxes with GET /v1/mailboxes.")
        box = access.visible(Mailbox, mailbox_id, principal)
        if parent_id is None:
            return box, None
        parent = Message.get_or_none(Message.id == parent_id) if isinstance(parent_id, str) else None
        if parent is None or parent.mailbox_id != box.id or not visibility.is_shown(parent):
            raise MxdError("not_found", f"message {parent_id!r} not found in this mailbox")
        return box, parent
    box, parent = await s.db.read(work)
    letter = dataclasses.replace(letter, from_addr=box.address, from_name=letter.from_name or box.display_name)
    if parent is not None:                      # RFC 5322 3.6.4: a reply names its parent
        in_reply_to, references = reply_headers(parent.message_id, parent.references or [], parent.in_reply_to or [])
        letter = dataclasses.replace(letter, in_reply_to=in_reply_to, references=references)
        if not letter.has("subject"):
            letter.subject = reply_subject(parent.subject or "")
        if not letter.has("to"):
            source = parent.reply_to or parent.from_addr if parent.direction == "in" else parent.to_addr
            letter.to = [a["address"] for a in source] or [parent.envelope_from]
    return box, letter


# ---------------------------------------------------------------- drafts
def draft_dict(row: DraftRow, address: str) -> dict:
    return {"id": row.id, "mailbox": address, "thread_id": row.thread_id, "created_at": iso(row.created_at),
            "updated_at": iso(row.updated_at), "sent_message_id": row.sent_message_id, **row.body}


async def save_draft(s: Services, principal: Principal, letter: Letter, *, reply_to_message: str | None = None,
                     reply_to_thread: str | None = None) -> dict:
    """Keep a letter as a draft of its sender's mailbox, optionally as a reply (to a message, or to the newest
    message of a thread); checked now as it would be at send time."""
    def work() -> dict:
        rc = reply_context(principal, reply_to_message, reply_to_thread) \
            if reply_to_message or reply_to_thread else None
        stored = letter
        if rc is not None:
            stored = dataclasses.replace(
                letter, from_addr=letter.from_addr if letter.has("from") else rc.mailbox,
                to=letter.to if letter.has("to") else rc.to,
                subject=letter.subject if letter.has("subject") else rc.subject,
                in_reply_to=rc.in_reply_to, references=rc.references)
        sender = sender_of(stored.from_addr)
        stored = dataclasses.replace(stored, from_addr=sender)
        parsed = addr.try_parse(sender)
        if parsed is None:
            raise MxdError("invalid_address", f"from {sender!r} is not a valid address")
        box = directory.get_mailbox(parsed.base_key)
        if not principal.sees(box.address, box.org_id):
            raise MxdError("not_found", f"mailbox {sender!r} not found")
        try:
            compose_draft(stored)                   # validate now, not only at send time
        except ComposeError as exc:
            raise MxdError(exc.code, f"{exc.field}: {exc.message}") from None
        row = DraftRow.create(id=new_id("drf"), mailbox=box.id, thread_id=rc.thread_id if rc else None,
                              body=stored.as_body(), created_at=time.time(), updated_at=time.time())
        return draft_dict(row, box.address)
    return await s.db.write(work)


async def draft_page(s: Services, principal: Principal, *, mailbox: str | None = None, limit: int = 50,
                     cursor: str | None = None) -> dict:
    def work() -> dict:
        query = DraftRow.select(DraftRow, Mailbox).join(Mailbox).order_by(DraftRow.id.desc())
        if mailbox:
            box = directory.get_mailbox(mailbox)
            if not principal.sees(box.address, box.org_id):
                raise MxdError("not_found", "mailbox not found")
            query = query.where(DraftRow.mailbox == box.id)
        elif not principal.is_operator:
            query = access.scoped(query, Mailbox, principal)
            if not principal.is_admin and principal.mailboxes is not None:
                query = query.where(Mailbox.address.in_(list(principal.mailboxes)))
        if cursor:
            query = query.where(DraftRow.id < cursor)
        rows = list(query.limit(limit))
        return page([draft_dict(r, r.mailbox.address) for r in rows], limit, len(rows), rows[-1].id if rows else None)
    return await s.db.read(work)


def _visible_draft(principal: Principal, draft_id: str) -> tuple[DraftRow, Mailbox]:
    return access.visible_with_mailbox(DraftRow, draft_id, principal, f"draft {draft_id!r} not found")


async def get_draft(s: Services, principal: Principal, draft_id: str) -> dict:
    row, box = await s.db.read(_visible_draft, principal, draft_id)
    return draft_dict(row, box.address)


@dataclass
class StoredDraft:
    """A draft the principal may see: its id, mailbox, the body it was stored as, and the message it was
    sent as (None: not yet)."""
    id: str
    mailbox: str
    body: dict
    sent_message_id: str | None

    def to_send(self) -> Draft:
        """The draft checked for sending; a draft is sent once (409 after that)."""
        if self.sent_message_id:
            raise MxdError("conflict", f"draft already sent as {self.sent_message_id}", status=409)
        return compose_draft(letter_from_body(self.body))


async def stored_draft(s: Services, principal: Principal, draft_id: str) -> StoredDraft:
    row, box = await s.db.read(_visible_draft, principal, draft_id)
    return StoredDraft(row.id, box.address, row.body, row.sent_message_id)


def _mark_draft_sent(draft_id: str, message_id: str) -> None:
    DraftRow.update(sent_message_id=message_id, updated_at=time.time()).where(DraftRow.id == draft_id).execute()


async def send_draft(s: Services, principal: Principal, stored: StoredDraft, draft: Draft | None = None, *,
                     idempotency_key: str | None = None, remote_ip: str = "", source: str = "api") -> dict:
    """Send a stored draft (checked with its to_send, unless given) through the one send path and mark it sent."""
    draft = draft or stored.to_send()
    result = await send(s, principal, draft, idempotency_key=idempotency_key, idempotency_body=stored.body,
                        remote_ip=remote_ip, source=source)
    await s.db.write(_mark_draft_sent, stored.id, result["id"])
    return result
