"""Directory rules a tenant cannot get around: postmaster@ and abuse@ stay with the domain's owner, and a
mailbox never shadows an existing alias."""
from __future__ import annotations

import pytest

from mxd.db import Database
from mxd.errors import MxdError
from mxd.store import directory


@pytest.fixture
def db(db: Database) -> Database:
    """The shared in-process store (tests/support/store.py) with the operator's domain."""
    db.write_sync(directory.create_domain, "shared.test")          # the operator's, shared with tenants
    return db


@pytest.mark.parametrize("local", ["abuse", "ABUSE"])
def test_a_tenant_cannot_take_the_reserved_addresses(db: Database, local: str) -> None:
    with pytest.raises(MxdError) as exc:
        db.write_sync(directory.create_mailbox, f"{local}@shared.test", "", None, "org_tenant")
    assert exc.value.code == "reserved_address"
    # postmaster@ exists from the domain's creation and stays the operator's
    with pytest.raises(MxdError) as exc:
        db.write_sync(directory.create_mailbox, "Postmaster@shared.test", "", None, "org_tenant")
    assert exc.value.code == "reserved_address"


def test_reserved_addresses_of_a_domain_without_them_stay_with_its_owner(db: Database) -> None:
    db.write_sync(directory.delete_mailbox, "postmaster@shared.test")        # abuse@ goes with it
    with pytest.raises(MxdError):
        db.write_sync(directory.create_mailbox, "postmaster@shared.test", "", None, "org_tenant")
    box, created = db.write_sync(directory.create_mailbox, "postmaster@shared.test")
    assert created and box.org_id is None


def test_a_mailbox_never_shadows_an_alias(db: Database) -> None:
    db.write_sync(directory.create_mailbox, "sales@shared.test")
    db.write_sync(directory.create_alias, "team@shared.test", ["sales@shared.test"])
    with pytest.raises(MxdError) as exc:
        db.write_sync(directory.create_mailbox, "team@shared.test", "", None, "org_tenant")
    assert exc.value.code == "conflict" and "alias" in exc.value.message
    box, created = db.write_sync(directory.create_mailbox, "agent@shared.test", "", None, "org_tenant")
    assert created and box.org_id == "org_tenant"
