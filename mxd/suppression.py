"""The suppression list: recipients that hard-bounced (or that the operator added) get no more mail."""
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


def add(address: str, reason: str, detail: str = "") -> Suppression:
    key = _key(address)
    row = Suppression.get_or_none(Suppression.address == key)
    if row is None:
        row = Suppression.create(address=key, reason=reason[:64], detail=detail[:2000], created_at=time.time())
    return row


def remove(address: str) -> None:
    if not Suppression.delete().where(Suppression.address == _key(address)).execute():
        raise MxdError("not_found", f"{address} is not suppressed")


def list_all(limit: int, after: str | None) -> list[Suppression]:
    query = Suppression.select().order_by(Suppression.address)
    if after:
        query = query.where(Suppression.address > after)
    return list(query.limit(limit))


def to_dict(row: Suppression) -> dict:
    from mxd.store.messages import _iso
    return {"address": row.address, "reason": row.reason, "detail": row.detail, "created_at": _iso(row.created_at)}
