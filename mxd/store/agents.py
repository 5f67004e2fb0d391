"""Agents: an organisation's named identities (purpose, owner, policy scope, a stable external_id),
each holding mailboxes and webhooks.

`external_id` makes setup idempotent: creating an agent whose external_id the organisation already
has returns that agent (unless the request names a different slug: a conflict). Functions run
inside `Database.write`/`read`; visibility follows `Principal.owns`.
"""
from __future__ import annotations

import time
from typing import Any

from mxd.errors import MxdError
from mxd.ids import new_id
from mxd.store import rows
from mxd.store.models import Agent, Mailbox
from mxd.store.orgs import SLUG, slugify
from mxd.store.tokens import Principal

_TEXT_LIMITS = {"name": 200, "description": 2000, "purpose": 2000, "owner_label": 200, "policy_scope": 50,
                "external_id": 300}


def _org_cond(org_id: str | None) -> Any:
    return Agent.org_id.is_null() if org_id is None else Agent.org_id == org_id


def _fields(body: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, most in _TEXT_LIMITS.items():
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > most:
            raise MxdError("bad_request", f"{key} must be a string of at most {most} characters")
        out[key] = value.strip()
    if not out.get("name"):
        raise MxdError("bad_request", "name must be a non-empty string",
                       fix='POST /v1/agents {"name": "Support Agent", "external_id": "host:support-agent"}')
    return out


def create(org_id: str | None, body: dict) -> tuple[Agent, bool]:
    """Create an agent in organisation `org_id`; returns (agent, created). An existing external_id
    returns the existing agent; a slug held by another agent is a 409."""
    fields = _fields(body)
    slug = body.get("slug")
    if slug is not None and (not isinstance(slug, str) or not SLUG.match(slug)):
        raise MxdError("bad_request", "slug must be lower-case letters, digits and hyphens (at most 100)")
    external_id = fields.get("external_id") or None
    if external_id:
        existing = Agent.get_or_none(_org_cond(org_id) & (Agent.external_id == external_id))
        if existing is not None:
            if slug is not None and slug != existing.slug:
                raise MxdError("conflict", f"external_id {external_id!r} belongs to agent {existing.id} "
                                           f"with slug {existing.slug!r}",
                               fix="Reuse the existing agent (GET /v1/agents?external_id=...) or pick another "
                                   "external_id.")
            return existing, False
    slug = slug or slugify(fields["name"]) or "agent"
    holder = Agent.get_or_none(_org_cond(org_id) & (Agent.slug == slug))
    if holder is not None:
        raise MxdError("conflict", f"slug {slug!r} belongs to agent {holder.id}",
                       fix="Choose another slug, or fetch the agent: GET /v1/agents/{agent_id}.")
    agent = Agent.create(id=new_id("agt"), org_id=org_id, name=fields["name"], slug=slug, external_id=external_id,
                         description=fields.get("description", ""), purpose=fields.get("purpose", ""),
                         owner_label=fields.get("owner_label", ""),
                         policy_scope=fields.get("policy_scope") or "agent", created_at=time.time())
    return agent, True


def get(principal: Principal, agent_id: str) -> Agent:
    """The agent, if the principal's organisation owns it (404 otherwise)."""
    return rows.get(Agent, agent_id, "agent", principal)


def list_agents(principal: Principal, external_id: str | None = None, limit: int = 50,
                cursor: str | None = None) -> list[Agent]:
    query = Agent.select()
    if not principal.is_operator:
        query = query.where(_org_cond(principal.org_id))
    if external_id:
        query = query.where(Agent.external_id == external_id)
    if cursor:
        query = query.where(Agent.id > cursor)
    return list(query.order_by(Agent.id).limit(limit))


def mailboxes(agent_id: str) -> list[Mailbox]:
    return list(Mailbox.select().where(Mailbox.agent_id == agent_id).order_by(Mailbox.id))

