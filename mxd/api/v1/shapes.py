"""The /v1 shapes of a domain and a mailbox (the rows mxd.service.directory and mxd.service.orgs hand back),
shared by the resources that answer with them."""
from __future__ import annotations

from typing import TYPE_CHECKING

from mxd.timefmt import iso

if TYPE_CHECKING:                   # the rows' types only: the /v1 door reads nothing from the store itself
    from mxd.store.models import Domain, Mailbox


def domain_dict(d: Domain) -> dict:
    state = "verified" if d.ready else "pending"
    owned = d.org_id is None or d.owner_verified_at is not None       # mail for it is routed here
    inbound = state if d.org_id is None else ("verified" if owned else "pending")
    return {"id": d.id, "domain": d.name, "organization_id": d.org_id, "status": state,
            "inbound_status": inbound, "outbound_status": state, "ready_source": d.ready_source,
            "ownership_verified": owned, "mta_sts_mode": d.mta_sts_mode,
            "created_at": iso(d.created_at), "verified_at": iso(d.ready_at) if d.ready else None}


def mailbox_dict(box: Mailbox, cfg_retention: int) -> dict:
    local, domain = box.address.split("@", 1)
    return {"id": box.id, "address": box.address, "local_part": local, "domain": domain, "domain_id": box.domain_id,
            "agent_id": box.agent_id, "organization_id": box.org_id, "display_name": box.display_name,
            "retention_days": box.retention_days if box.retention_days is not None else cfg_retention,
            "created_at": iso(box.created_at)}
