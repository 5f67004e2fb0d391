"""The suppression list: recipients that hard-bounced (or that the operator added) get no more mail.

A suppression belongs to one organisation (the one whose mailbox sent the mail that bounced),
or to the operator ("" in the table: mailboxes with no organisation). One tenant's bounces,
real or forged, never stop another tenant's mail.
"""
from __future__ import annotations

import time

from mxd import address as addr
from mxd.errors import MxdError
from mxd.store.models import Suppression


def _key(address: str) -> str:
    try:
        return addr.parse(address).key
    except addr.AddressError as exc:
        raise MxdError("invalid_address", f"{address!r} is not a valid address: {exc}") from None


def scope(org_id: str | None) -> str:
    """The org_id column of a suppression: the organisation's id, "" for the operator's own mailboxes."""
    return org_id or ""


def add(address: str, reason: str, detail: str = "", org_id: str | None = None) -> Suppression:
    key, owner = _key(address), scope(org_id)
    row = Suppression.get_or_none((Suppression.org_id == owner) & (Suppression.address == key))
    if row is None:
        row = Suppression.create(org_id=owner, address=key, reason=reason[:64], detail=detail[:2000],
                                 created_at=time.time())
    return row


def remove(address: str, org_id: str | None = None, everywhere: bool = True) -> None:
    """Lift a suppression: for every organisation (`everywhere`), or for `org_id` only."""
    query = Suppression.delete().where(Suppression.address == _key(address))
    if not everywhere:
        query = query.where(Suppression.org_id == scope(org_id))
    if not query.execute():
        raise MxdError("not_found", f"{address} is not suppressed")


def org_of_entry_sender(message_id: str) -> str | None:
    """The organisation of the mailbox that sent a message (None: the operator's)."""
    from mxd.store.models import Mailbox, Message
    row = (Mailbox.select(Mailbox.org_id).join(Message, on=(Message.mailbox == Mailbox.id))
           .where(Message.id == message_id).first())
    return row.org_id if row else None


def list_all(limit: int, after: str | None, org_id: str | None = None, every_org: bool = True) -> list[Suppression]:
    """Rows in (organisation, address) order; `after` is the cursor "<org_id>:<address>"."""
    query = Suppression.select().order_by(Suppression.org_id, Suppression.address)
    if not every_org:
        query = query.where(Suppression.org_id == scope(org_id))
    if after:
        owner, _, address = after.partition(":")
        query = query.where((Suppression.org_id > owner)
                            | ((Suppression.org_id == owner) & (Suppression.address > address)))
    return list(query.limit(limit))


def cursor(row: Suppression) -> str:
    return f"{row.org_id}:{row.address}"

