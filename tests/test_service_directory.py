"""mxd.service.directory on an in-process store: a domain or mailbox for another organisation is 404 (the one
org_for_new rule), the operator may name any existing one, and a change refreshes the RCPT TO snapshot."""
from __future__ import annotations

import asyncio

import pytest

from mxd import address as addr
from mxd.errors import MxdError
from mxd.service import directory
from tests.support.tenants import ADMIN_A, ONE_A, OPERATOR, services  # noqa: F401  (fixture)


def run(coro):
    return asyncio.run(coro)


def test_a_tenant_naming_another_organisation_gets_not_found(services):
    s = services
    for call in (directory.create_domain(s, ADMIN_A, "new.test", "org_b"),
                 directory.create_mailbox(s, ADMIN_A, "three@a.test", org="org_b")):
        with pytest.raises(MxdError) as err:
            run(call)
        assert err.value.code == "not_found" and err.value.status == 404
    domain, created = run(directory.create_domain(s, OPERATOR, "given.test", "org_b"))
    assert created and domain.org_id == "org_b"
    with pytest.raises(MxdError) as err:
        run(directory.create_domain(s, OPERATOR, "nowhere.test", "org_nowhere"))
    assert err.value.code == "not_found"


def test_a_new_mailbox_is_routed_at_once_and_seen_by_its_organisation_only(services):
    s = services
    routed, _ = run(directory.create_mailbox(s, OPERATOR, "new@op.test"))     # the operator's domain is routed
    assert s.directory.resolve(addr.parse("new@op.test")).mailbox_ids == (routed.id,)
    assert run(directory.delete_mailbox(s, OPERATOR, "new@op.test")) == "new@op.test"
    assert s.directory.resolve(addr.parse("new@op.test")).kind == "unknown"
    box, created = run(directory.create_mailbox(s, ADMIN_A, "three@a.test"))
    assert created and box.org_id == "org_a"
    assert "three@a.test" in {b.address for b in run(directory.mailboxes(s, ADMIN_A))}
    assert [b.address for b in run(directory.mailboxes(s, ONE_A))] == ["one@a.test"]
    with pytest.raises(MxdError) as err:
        run(directory.mailbox(s, ONE_A, "three@a.test"))
    assert err.value.code == "not_found"
    assert run(directory.delete_mailbox(s, ADMIN_A, "three@a.test")) == "three@a.test"
