"""mxd.access on an in-process store: one tenant rule (another organisation's objects are 404, the operator
sees all), the mailboxes of a limited token, and which organisation a request body may name."""
from __future__ import annotations

from pathlib import Path

import pytest

from mxd import access
from mxd.access import Principal
from mxd.db import Database
from mxd.errors import MxdError
from mxd.ingest import Envelope, Recipient, store
from mxd.mime.parse import parse
from mxd.store import directory, messages
from mxd.store.models import Domain, Inbound, Mailbox, Message, Organization, Thread

OPERATOR = Principal("tok_op", "operator", frozenset({"admin"}), None, None)
ADMIN_A = Principal("tok_a", "a", frozenset({"admin"}), None, "org_a")
ONE_A = Principal("tok_one", "one", frozenset({"read"}), frozenset({"one@a.test"}), "org_a")
ADMIN_B = Principal("tok_b", "b", frozenset({"admin"}), None, "org_b")
OWN = Principal("tok_own", "own", frozenset({"read"}), None, None)     # the operator's organisation, not admin


def _world() -> None:
    for org in ("a", "b"):
        Organization.create(id=f"org_{org}", name=org.upper(), slug=org, owner_email=f"owner@{org}.example")
        directory.create_domain(f"{org}.test", f"org_{org}", "mx.test")
        directory.create_mailbox(f"one@{org}.test", "", None, f"org_{org}")
        directory.create_mailbox(f"two@{org}.test", "", None, f"org_{org}")
    directory.create_domain("op.test", None, "mx.test")
    directory.create_mailbox("me@op.test")


def deliver(db: Database, address: str, subject: str = "Hello", extra: str = "") -> str:
    """One inbound message to `address`, stored and processed; its message id."""
    box = db.write_sync(directory.get_mailbox, address)
    raw = (f"From: Sender <sender@remote.example>\r\nTo: {address}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject.replace(' ', '.')}.{address}@remote.example>\r\n{extra}\r\nBody text.\r\n").encode()
    env = Envelope(mail_from="sender@remote.example", rcpts=[Recipient(address, (box.id,))], data=raw)
    inbound_id = db.write_sync(store, env)
    row = db.write_sync(lambda: Inbound.get_by_id(inbound_id))
    [(msg_id, _)] = db.write_sync(messages.deliver, row, parse(bytes(row.data)), None, "", 30 * 86400.0)
    return msg_id


@pytest.fixture
def db(tmp_path: Path):
    database = Database(f"sqlite:///{tmp_path / 'mxd.db'}")
    database.start()
    database.write_sync(_world)
    yield database
    database.close()


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
