"""Webhooks: create (secret shown once), list, get, delete, rotate the secret, re-enable, delivery attempts.
The `admin` scope manages them; an organisation's token sees and manages only its organisation's."""
from __future__ import annotations

import functools
from typing import Any

from mxd import secretbox
from mxd.access import Principal
from mxd.errors import MxdError
from mxd.service import Services, shapes
from mxd.service.mail import page
from mxd.store import webhook_rows as store
from mxd.store.models import Webhook
from mxd.webhook_target import check_url


async def _views(s: Services, hooks: list[Webhook]) -> list[dict]:
    boxes = await s.db.read(store.mailbox_addresses, [h.mailbox_id for h in hooks if h.mailbox_id is not None])
    return [shapes.webhook(h, None if h.mailbox_id is None else boxes.get(h.mailbox_id)) for h in hooks]


async def create(s: Services, principal: Principal, url: Any, event_types: Any, mailbox: Any = None,
                 agent_id: Any = None) -> dict:
    """A webhook (its secret under "secret", shown this once); a URL the sender would not post to is refused
    (mxd.webhook_target.check_url: its scheme, and every address its host resolves to)."""
    types = store.validate_event_types(event_types)
    await check_url(url, s.cfg.webhook_allow_private, resolver=s.resolver)
    if agent_id is not None and not isinstance(agent_id, str):
        raise MxdError("bad_request", "agent_id must be a string")
    hook, secret = await s.db.write(functools.partial(store.create, box=secretbox.for_dir(s.cfg.data_dir)),
                                    principal, url, types, mailbox, agent_id)
    return dict((await _views(s, [hook]))[0], secret=secret)


async def check_agent(s: Services, principal: Principal, agent_id: str) -> None:
    """404 unless the agent is the principal's organisation's."""
    await s.db.read(store.owned_agent, principal, agent_id)


async def hooks_page(s: Services, principal: Principal, limit: int, cursor: str | None,
                     agent_id: str | None = None) -> dict:
    if agent_id is not None:
        await check_agent(s, principal, agent_id)
    hooks = await s.db.read(store.list_hooks, principal, limit, cursor, agent_id)
    return page(await _views(s, hooks), limit, len(hooks), hooks[-1].id if hooks else None)


async def get(s: Services, principal: Principal, hook_id: str) -> dict:
    return (await _views(s, [await s.db.read(store.get, principal, hook_id)]))[0]


async def delete(s: Services, principal: Principal, hook_id: str) -> None:
    await s.db.write(store.delete, principal, hook_id)


async def rotate(s: Services, principal: Principal, hook_id: str) -> dict:
    hook, secret = await s.db.write(functools.partial(store.rotate, box=secretbox.for_dir(s.cfg.data_dir)),
                                    principal, hook_id)
    return dict((await _views(s, [hook]))[0], secret=secret)


async def enable(s: Services, principal: Principal, hook_id: str) -> dict:
    return (await _views(s, [await s.db.write(store.enable, principal, hook_id)]))[0]


async def attempts_page(s: Services, principal: Principal, hook_id: str, limit: int, cursor: str | None) -> dict:
    rows = await s.db.read(store.attempts, principal, hook_id, limit, cursor)
    return page([store.attempt_dict(r, t) for r, t in rows], limit, len(rows), rows[-1][0].id if rows else None)
