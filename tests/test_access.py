"""mxd.access on an in-process store: one tenant rule (another organisation's objects are 404, the operator
sees all), the mailboxes of a limited token, and which organisation a request body may name."""
from __future__ import annotations

import pytest

from mxd import access
from mxd.access import Principal
from mxd.db import Database
from mxd.errors import MxdError
from mxd.store import directory
from mxd.store.models import Domain, Mailbox, Message, Thread
from tests.support.tenants import ADMIN_A, ADMIN_B, ONE_A, OPERATOR, OWN, build_world, deliver


@pytest.fixture
def db(db: Database) -> Database:
    db.write_sync(build_world)
    return db


def test_scoped_keeps_a_tenant_to_its_organisation_and_the_operator_sees_all(db):
    def names(principal: Principal) -> set[str]:
        return db.write_sync(lambda: {d.name for d in access.scoped(Domain.select(), Domain, principal)})
    assert names(ADMIN_A) == {"a.test"}
    assert names(ADMIN_B) == {"b.test"}
    assert names(OWN) == {"op.test"}                     # org None: the operator's own objects only
    assert names(OPERATOR) == {"a.test", "b.test", "op.test"}


def test_another_organisations_message_thread_and_mailbox_are_not_found(db):
    msg_b = deliver(db, "one@b.test")
    thread_b = db.write_sync(lambda: Message.get_by_id(msg_b).thread_id)
    box_b = db.write_sync(directory.get_mailbox, "one@b.test").id
    for model, row_id in ((Message, msg_b), (Thread, thread_b), (Mailbox, box_b)):
        with pytest.raises(MxdError) as err:
            db.write_sync(access.visible, model, row_id, ADMIN_A)
        assert err.value.code == "not_found" and err.value.status == 404
        assert db.write_sync(access.visible, model, row_id, ADMIN_B).id == row_id
        assert db.write_sync(access.visible, model, row_id, OPERATOR).id == row_id
    with pytest.raises(MxdError) as err:
        db.write_sync(access.visible, Message, "msg_missing", OPERATOR)
    assert err.value.code == "not_found"


def test_a_token_limited_to_mailboxes_sees_only_those(db):
    msg_two = deliver(db, "two@a.test")
    msg_one = deliver(db, "one@a.test")
    assert db.write_sync(access.visible, Message, msg_one, ONE_A).id == msg_one
    with pytest.raises(MxdError):
        db.write_sync(access.visible, Message, msg_two, ONE_A)
    one = db.write_sync(directory.get_mailbox, "one@a.test")
    assert db.write_sync(access.visible_mailbox_ids, ONE_A) == [one.id]
    ids, names = db.write_sync(access.mailbox_scope, ONE_A, None)
    assert ids == [one.id] and names == {one.id: "one@a.test"}
    with pytest.raises(MxdError) as err:
        db.write_sync(access.mailbox_scope, ONE_A, "two@a.test")
    assert err.value.code == "not_found"
    seen = db.write_sync(lambda: list(Mailbox.select().where(
        Mailbox.id.in_(access.visible_mailbox_ids(ADMIN_A)))))
    assert {"one@a.test", "two@a.test"} <= {b.address for b in seen} and {b.org_id for b in seen} == {"org_a"}
    assert db.write_sync(access.visible_mailbox_ids, OPERATOR) is None


def test_domains_and_mailboxes_by_name_follow_the_same_rule(db):
    assert db.write_sync(access.domain, ADMIN_A, "a.test").name == "a.test"
    for call in ((access.domain, ADMIN_A, "b.test"), (access.mailbox, ADMIN_A, "one@b.test"),
                 (access.mailbox, ADMIN_A, "nobody@a.test")):
        with pytest.raises(MxdError) as err:
            db.write_sync(*call)
        assert err.value.code == "not_found"
    assert db.write_sync(access.mailbox, OPERATOR, "one@b.test").address == "one@b.test"


def test_org_for_new_one_rule_for_both_dialects(db):
    assert db.write_sync(access.org_for_new, ADMIN_A, None) == "org_a"
    assert db.write_sync(access.org_for_new, ADMIN_A, "org_a") == "org_a"
    assert db.write_sync(access.org_for_new, OPERATOR, None) is None
    assert db.write_sync(access.org_for_new, OPERATOR, "org_b") == "org_b"
    # Another organisation does not exist for a tenant: 404, as an unknown one is for the operator.
    for principal, wanted in ((ADMIN_A, "org_b"), (ADMIN_A, "org_nowhere"), (OWN, "org_a"),
                              (OPERATOR, "org_nowhere"), (OPERATOR, 42)):
        with pytest.raises(MxdError) as err:
            db.write_sync(access.org_for_new, principal, wanted)
        assert err.value.code == "not_found" and err.value.status == 404, (principal.name, wanted)


def test_org_for_new_tells_a_tenant_to_omit_the_key_it_sent(db):
    for field in ("org_id", "organization_id"):
        with pytest.raises(MxdError) as err:
            db.write_sync(access.org_for_new, ADMIN_A, "org_b", field)
        assert err.value.message == "organisation 'org_b' not found" and err.value.fix == f"Omit {field}."
