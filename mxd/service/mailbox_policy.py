"""A mailbox's policy (mxd.mailpolicy) for every door: read it, change it, put it back to the default.

Who may do what, one rule for /api, /v1 and the CLI:
- reading: whoever sees the mailbox (`access.mailbox`: the operator, the organisation's admin, a token
  of the organisation without a mailbox list, a token limited to this mailbox) and holds `read`;
- changing or resetting: only an `admin` token that sees it, i.e. the operator or the admin of the
  mailbox's organisation. A token limited to the mailbox cannot change it, however many scopes it
  holds: an agent must not widen its own outbound allow-list or lift its own inbound checks.
A mailbox the caller may not see is 404 not_found, as everywhere.
"""
from __future__ import annotations

from typing import Any

from mxd import access, mailpolicy
from mxd.access import Principal
from mxd.errors import MxdError
from mxd.service import Services
from mxd.store import mailbox_policies
from mxd.store.models import Mailbox


def _may_change(principal: Principal) -> None:
    if not principal.is_admin:
        raise MxdError("forbidden", "changing a mailbox's policy needs the 'admin' scope",
                       fix="Ask the operator or your organisation's admin; a mailbox's own token may read its "
                           "policy, never change it.")


def _mailbox(principal: Principal, ref: str, by_id: bool) -> Mailbox:
    """The mailbox named by address or id (/api), or by id only (/v1), if the principal sees it; 404 otherwise."""
    return access.visible(Mailbox, ref, principal) if by_id else access.mailbox(principal, ref)


def current(mailbox_id: str) -> dict:
    """The mailbox's policy in force: its own, else the default (in a Database.read/write call)."""
    return mailbox_policies.get(mailbox_id) or mailpolicy.normalise({})


async def get(s: Services, principal: Principal, ref: str, *, by_id: bool = False) -> tuple[Mailbox, dict]:
    """(the mailbox, its policy in force) for a principal holding `read` that sees it (404 otherwise)."""
    if not principal.has("read"):
        raise MxdError("forbidden", "reading a mailbox's policy needs the 'read' scope")

    def work() -> tuple[Mailbox, dict]:
        box = _mailbox(principal, ref, by_id)
        return box, current(box.id)
    return await s.db.read(work)


async def put(s: Services, principal: Principal, ref: str, body: Any, *, by_id: bool = False) -> tuple[Mailbox, dict]:
    """Merge `body` into the mailbox's policy (keys not given keep their values) and store it:
    (the mailbox, the stored document). Raises 422 invalid_policy naming the field."""
    _may_change(principal)

    def work() -> tuple[Mailbox, dict]:
        box = _mailbox(principal, ref, by_id)
        return box, mailbox_policies.put(box.id, mailpolicy.normalise(body, current(box.id)))
    return await s.db.write(work)


async def reset(s: Services, principal: Principal, ref: str, *, by_id: bool = False) -> tuple[Mailbox, dict]:
    """Back to the default policy: (the mailbox, the default document)."""
    _may_change(principal)

    def work() -> tuple[Mailbox, dict]:
        box = _mailbox(principal, ref, by_id)
        mailbox_policies.delete(box.id)
        return box, current(box.id)
    return await s.db.write(work)


def changed_keys(body: Any) -> list[str]:
    """The fields a (valid) request body sets, as "outbound.allow", ...: what the audit row records."""
    return sorted(f"{section}.{key}" for section in ("outbound", "inbound")
                  if isinstance(body.get(section), dict) for key in body[section])
