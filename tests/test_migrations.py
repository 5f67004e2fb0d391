"""Schema migrations: a store at version 1 is brought to the current version without losing rows."""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from mxd.store import migrations, open_store


def _downgrade_to_v1(path: Path) -> None:
    """Make a current store look like one written by schema version 1."""
    con = sqlite3.connect(path)
    for table in ("organization", "agent", "webhook", "webhook_delivery", "webhook_attempt", "audit"):
        con.execute(f'DROP TABLE "{table}"')
    for index in ("event_fanned_out", "message_mailbox_id_acked_at_id", "domain_org_id", "mailbox_org_id",
                  "mailbox_agent_id", "token_org_id"):
        con.execute(f'DROP INDEX IF EXISTS "{index}"')
    for table, column in (("domain", "org_id"), ("mailbox", "org_id"), ("mailbox", "agent_id"),
                          ("token", "org_id"), ("message", "acked_at"), ("event", "fanned_out")):
        con.execute(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
    con.execute("""INSERT INTO "event" ("id", "type", "created_at", "data") VALUES ('evt_old', 'message.inbound', 1, '{}')""")
    con.execute("""UPDATE "meta" SET "value" = '1' WHERE "key" = 'schema_version'""")
    con.commit()
    con.close()


def test_v1_store_migrates_to_current(tmp_path: Path) -> None:
    path = tmp_path / "mxd.db"
    open_store(f"sqlite:///{path}").close()
    _downgrade_to_v1(path)

    open_store(f"sqlite:///{path}").close()
    con = sqlite3.connect(path)
    assert con.execute("""SELECT "value" FROM "meta" WHERE "key" = 'schema_version'""").fetchone()[0] \
        == str(len(migrations.STEPS))
    assert "acked_at" in [r[1] for r in con.execute('PRAGMA table_info("message")')]
    assert "org_id" in [r[1] for r in con.execute('PRAGMA table_info("token")')]
    # the event from before webhooks existed is owed to no webhook
    assert con.execute("""SELECT "fanned_out" FROM "event" WHERE "id" = 'evt_old'""").fetchone()[0] == 1
    assert con.execute('SELECT count(*) FROM "audit"').fetchone()[0] == 0
    indexes = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"event_fanned_out", "message_mailbox_id_acked_at_id", "mailbox_org_id", "token_org_id"} <= indexes


def test_newer_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mxd.db"
    open_store(f"sqlite:///{path}").close()
    con = sqlite3.connect(path)
    con.execute("""UPDATE "meta" SET "value" = '999' WHERE "key" = 'schema_version'""")
    con.commit()
    con.close()
    try:
        open_store(f"sqlite:///{path}").close()            # refused: the handle is closed by open_store
    except RuntimeError as exc:
        assert "newer than this mxd" in str(exc)
    else:
        raise AssertionError("a store from a newer mxd was opened")


def test_v4_store_gets_suppressions_per_organisation_and_tagged_return_paths(tmp_path: Path) -> None:
    path = tmp_path / "mxd.db"
    open_store(f"sqlite:///{path}").close()
    con = sqlite3.connect(path)
    con.execute('DROP TABLE "suppression"')
    con.execute('CREATE TABLE "suppression" ("address" VARCHAR(512) NOT NULL PRIMARY KEY, "reason" VARCHAR(64) '
                'NOT NULL, "detail" TEXT NOT NULL, "created_at" REAL NOT NULL)')
    con.execute("""INSERT INTO "suppression" VALUES ('gone@remote.test', 'hard_bounce', '550', 1)""")
    con.execute('ALTER TABLE "organization" DROP COLUMN "code_locked_until"')
    con.execute("""DELETE FROM "meta" WHERE "key" = 'verp_secret'""")
    for entry_id, status in (("q_queued", "queued"), ("q_delivered", "delivered")):
        con.execute('INSERT INTO "queue_entry" ("id", "message_id", "inbound_id", "mail_from", "return_path", '
                    '"recipient", "domain", "status", "attempts", "created_at", "next_attempt_at", "expires_at", '
                    '"lease_until", "last_reply", "last_host", "delay_notified") '
                    "VALUES (?, 'msg_x', 'inb_x', 'a@example.test', ?, 'b@remote.test', 'remote.test', ?, 0, 1, 1, "
                    "2, 0, '', '', 0)", (entry_id, f"bounces+{entry_id}@example.test", status))
    con.execute("""UPDATE "meta" SET "value" = '4' WHERE "key" = 'schema_version'""")
    con.commit()
    con.close()

    open_store(f"sqlite:///{path}").close()
    con = sqlite3.connect(path)
    assert con.execute('SELECT "org_id", "address", "reason" FROM "suppression"').fetchall() == \
        [("", "gone@remote.test", "hard_bounce")]
    paths = dict(con.execute('SELECT "id", "return_path" FROM "queue_entry"').fetchall())
    assert re.fullmatch(r"bounces\+q_queued\.[0-9a-z]{16}@example\.test", paths["q_queued"]), paths
    assert paths["q_delivered"] == "bounces+q_delivered@example.test"
    assert con.execute("""SELECT 1 FROM "meta" WHERE "key" = 'verp_secret'""").fetchone()
    assert "code_locked_until" in {r[1] for r in con.execute('PRAGMA table_info("organization")')}
    con.close()
