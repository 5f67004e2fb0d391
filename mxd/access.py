"""Who may see what: the principal and the one tenant rule every door and service applies.

A principal (an API token's holder) belongs to one organisation, or to none: a token with org_id None is the
operator's. The rule:

- The operator's admin token sees every organisation's objects; any other token sees only the objects of its
  own organisation (org_id None: the operator's own objects), within its token's mailboxes when it has a
  mailbox list. `scoped` is that rule as a query filter, `visible` as a lookup by id.
- What a caller may not see does not exist for it: `visible` and the mailbox helpers raise 404 not_found,
  never 403, so an organisation never learns of another's objects.
- A request body may name the organisation a new object belongs to (`org_id` in /api, `organization_id` in
  /v1): `org_for_new` is the one rule for both. Naming one's own organisation (or none) is the caller's
  organisation; only the operator may name another, existing one. A non-operator naming any other
  organisation gets 404 not_found ("organisation not found": it does not exist for them), exactly as the
  operator naming an unknown one.

Functions taking no `Database` run inside a `Database.read`/`write` call.
"""
from __future__ import annotations

from typing import Any

from mxd.errors import MxdError
from mxd.store import directory
from mxd.store.models import Domain, Mailbox, Organization
from mxd.store.tokens import Principal

__all__ = ["Principal", "scoped", "org_condition", "visible", "visible_with_mailbox", "visible_mailbox_ids",
           "mailbox_scope", "mailbox", "domain", "org_for_new"]


def org_condition(model: Any, org_id: str | None) -> Any:
    """The condition "this row belongs to organisation org_id" (None: the operator's own rows)."""
    return model.org_id.is_null() if org_id is None else model.org_id == org_id


def scoped(query: Any, model: Any, principal: Principal) -> Any:
    """`query` kept to the rows of `model` the principal's organisation owns (the operator: every row)."""
    if principal.is_operator:
        return query
    return query.where(org_condition(model, principal.org_id))


def _row(model: Any, row_id: Any, label: str) -> Any:
    row = model.get_or_none(model.id == row_id) if isinstance(row_id, str) else None
    if row is None:
        raise MxdError("not_found", label)
    return row


def _has_mailbox(model: Any) -> bool:
    return model is Mailbox or "mailbox" in model._meta.fields


def visible_with_mailbox(model: Any, row_id: Any, principal: Principal,
                         message: str | None = None) -> tuple[Any, Mailbox]:
    """(row, its mailbox) of a `model` with a mailbox (a message, thread, draft, or a mailbox itself) with this
    id, if the principal may see it (`Principal.sees`: the organisation, then the token's mailboxes); raises
    404 not_found otherwise."""
    if not _has_mailbox(model):
        raise TypeError(f"{model.__name__} rows have no mailbox: use access.visible")
    label = message or f"{model.__name__.lower()} {row_id!r} not found"
    row = _row(model, row_id, label)
    box: Mailbox | None = row if model is Mailbox else Mailbox.get_or_none(Mailbox.id == row.mailbox_id)
    if box is None or not principal.sees(box.address, box.org_id):
        raise MxdError("not_found", label)
    return row, box


def visible(model: Any, row_id: Any, principal: Principal, message: str | None = None) -> Any:
    """The row of `model` with this id if the principal may see it; raises 404 not_found otherwise.

    A row with a mailbox is visible when its mailbox is (see `visible_with_mailbox`); any other row (a
    domain, an agent, a webhook) when its organisation is the principal's (`Principal.owns`)."""
    if _has_mailbox(model):
        return visible_with_mailbox(model, row_id, principal, message)[0]
    label = message or f"{model.__name__.lower()} {row_id!r} not found"
    row = _row(model, row_id, label)
    if not principal.owns(row.org_id):
        raise MxdError("not_found", label)
    return row


def visible_mailbox_ids(principal: Principal) -> list[str] | None:
    """Ids of the mailboxes a principal may see; None means all (the operator)."""
    if principal.is_operator:
        return None
    query = scoped(Mailbox.select(Mailbox.id), Mailbox, principal)
    if principal.mailboxes is not None and not principal.is_admin:
        query = query.where(Mailbox.address.in_(list(principal.mailboxes)))
    return [m.id for m in query]


def mailbox(principal: Principal, ref: str) -> Mailbox:
    """The mailbox (address or id) if the principal may see it; 404 otherwise."""
    return directory.owned_mailbox(principal, ref)


def domain(principal: Principal, name: str) -> Domain:
    """The domain (by name) if the principal's organisation owns it; 404 otherwise."""
    return directory.owned_domain(principal, name)


def mailbox_scope(principal: Principal, mailbox_ref: str | None) -> tuple[list[str] | None, dict[str, str]]:
    """(mailbox ids to filter on, id -> address) for a list call: the one mailbox named, or every mailbox
    the principal may see (ids None: every mailbox, for the operator)."""
    if mailbox_ref:
        box = mailbox(principal, mailbox_ref)
        return [box.id], {box.id: box.address}
    ids = visible_mailbox_ids(principal)
    return ids, {b.id: b.address for b in directory.list_mailboxes(ids)}


def org_for_new(principal: Principal, wanted: Any, field: str = "org_id") -> str | None:
    """The organisation a new object belongs to, from what the request body names (None: nothing named).

    The caller's own organisation when it names none or its own; for the operator, another existing
    organisation. Anything else is 404 not_found: an organisation that is not the caller's does not exist
    for it (see the module's docstring); its fix, for a non-operator, is to omit `field` (the body's key)."""
    if wanted is None or wanted == principal.org_id:
        return principal.org_id
    if not principal.is_operator or not isinstance(wanted, str) \
            or Organization.get_or_none(Organization.id == wanted) is None:
        raise MxdError("not_found", f"organisation {wanted!r} not found",
                       fix=f"Omit {field}." if not principal.is_operator else None)
    return wanted
