"""Two organisations and the operator's own objects in an in-process store, and the principals that see
them: the world the access and service tests judge the tenant rule against."""
from __future__ import annotations

import concurrent.futures
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from mxd import config
from mxd.access import Principal
from mxd.db import Database
from mxd.ingest import Envelope, Recipient, store
from mxd.mime.parse import parse
from mxd.service import Services
from mxd.store import directory, messages, open_store
from mxd.store.directory import Directory
from mxd.store.models import Inbound, Organization
from tests.support.store import sqlite_url

OPERATOR = Principal("tok_op", "operator", frozenset({"admin"}), None, None)
ADMIN_A = Principal("tok_a", "a", frozenset({"admin"}), None, "org_a")
ONE_A = Principal("tok_one", "one", frozenset({"read"}), frozenset({"one@a.test"}), "org_a")
ADMIN_B = Principal("tok_b", "b", frozenset({"admin"}), None, "org_b")
OWN = Principal("tok_own", "own", frozenset({"read"}), None, None)     # the operator's organisation, not admin


def build_world() -> None:
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
def services(tmp_path: Path) -> Iterator[Services]:
    """The service layer's context over an in-process store holding this world (no resolver, nothing queued)."""
    cfg = config.load(None, {"MXD_DATA_DIR": str(tmp_path), "MXD_HOSTNAME": "mx.test"})
    database = open_store(sqlite_url(tmp_path))
    database.write_sync(build_world)
    workers = concurrent.futures.ThreadPoolExecutor(1)
    yield Services(cfg, database, Directory(), workers, lambda: None, None)
    workers.shutdown()
    database.close()


def org_admin_token(proc: Any, org_id: str) -> str:
    """An organisation (as sign-up would make it) in a running daemon's store, and its admin token made by
    the operator."""
    con = sqlite3.connect(proc.data_dir / "mxd.db", timeout=60)
    try:
        con.execute('INSERT INTO "organization" ("id", "name", "slug", "owner_email", "created_at", "code_attempts") '
                    "VALUES (?, ?, ?, 'owner@remote.test', ?, 0)", (org_id, org_id, org_id, time.time()))
        con.commit()
    finally:
        con.close()
    r = proc.api("POST", "/api/tokens", json={"name": f"{org_id}-admin", "scopes": ["admin"], "org_id": org_id})
    assert r.status_code == 201, r.text
    return r.json()["token"]
