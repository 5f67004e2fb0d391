"""One row by its id, or the store's 404: the lookup behind every `get` of the tables (organisations,
agents, webhooks, queue entries), with the one tenant rule (`Principal.owns`) where a principal asks."""
from __future__ import annotations

from typing import Any, TypeVar

from mxd.errors import MxdError
from mxd.store.tokens import Principal

Row = TypeVar("Row")


def get(model: type[Row], row_id: Any, what: str, principal: Principal | None = None) -> Row:
    """The `model` row with id `row_id`; MxdError not_found ("<what> '<id>' not found") when there is none
    or, with `principal`, when its organisation does not own it (as if it did not exist)."""
    row = model.get_or_none(model.id == row_id) if isinstance(row_id, str) else None
    if row is None or (principal is not None and not principal.owns(row.org_id)):
        raise MxdError("not_found", f"{what} {row_id!r} not found")
    return row
