"""Retention: expired messages go with their attachments, search entries, threads and raw bytes; fresh mail,
mail of mailboxes with a longer retention, and what the queue still needs stay. Against a store on a temp
SQLite file (and on PostgreSQL when a cluster is there), and end to end through a real daemon (SMTP in,
back-dated through the daemon's database file, POST /api/retention/run or the background sweep, search)."""
from __future__ import annotations

import asyncio
import smtplib
import sqlite3
import time
from email.message import EmailMessage
from pathlib import Path

import peewee
import pytest

from mxd import retention
from mxd.config import Config
from mxd.db import Database, execute, proxy
from mxd.ingest import Envelope, Recipient, as_row, store
from mxd.mime.parse import parse
from mxd.store import directory, messages
from mxd.store import queue as outqueue
from mxd.store.models import Attachment, Inbound, Message, QueueEntry, Thread, ThreadRef
from tests.support.daemon import MxdProcess, start_daemon, wait_for
from tests.support.pg import fresh_database
from tests.support.store import sqlite_url, started_store

DAY = 86400.0


def _mail(subject: str, word: str, to: str, attachment: bool = False, reply_to: str | None = None) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "sender@remote.test", to, subject
    m["Message-ID"] = f"<{word}@remote.test>"
    if reply_to:
        m["In-Reply-To"] = m["References"] = f"<{reply_to}@remote.test>"
    m.set_content(f"the body says {word}")
    if attachment:
        m.add_attachment(b"attached bytes " + word.encode(), maintype="application", subtype="octet-stream",
                         filename=f"{word}.bin")
    return m.as_bytes(policy=m.policy.clone(linesep="\r\n"))


def _deliver(box_id: str, address: str, data: bytes, age_days: float) -> str:
    """Store and process one message as the pipeline would, received `age_days` ago; returns the message id."""
    when = time.time() - age_days * DAY
    env = Envelope(mail_from="sender@remote.test", rcpts=[Recipient(address, (box_id,))], data=data, received_at=when)
    store(env)
    [(msg_id, _)] = messages.deliver(as_row(env), parse(data), None, "", 30 * DAY)
    return msg_id


def _fts(message_id: str) -> int:
    table = "message_fts" if isinstance(proxy.obj, peewee.SqliteDatabase) else "message_search"
    return execute(f"SELECT COUNT(*) FROM {table} WHERE message_id = ?", (message_id,)).fetchone()[0]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def db(request, tmp_path: Path):
    if request.param == "sqlite":
        with started_store(sqlite_url(tmp_path)) as database:
            yield database
        return
    with fresh_database("mxd_retention") as url, started_store(url) as database:
        yield database


def test_sweep_removes_expired_mail_and_everything_that_belongs_to_it(db: Database) -> None:
    cfg = Config(default_retention_days=7)

    def setup() -> dict:
        directory.create_domain("example.test")
        short, _ = directory.create_mailbox("short@example.test")
        long_, _ = directory.create_mailbox("long@example.test", retention_days=30)
        ids = {"short": short.id, "long": long_.id}
        ids["old"] = _deliver(short.id, short.address, _mail("old news", "zebra", short.address, True), 10)
        ids["old_reply"] = _deliver(short.id, short.address, _mail("Re: old news", "zebrareply", short.address,
                                                                    reply_to="zebra"), 9)
        ids["fresh"] = _deliver(short.id, short.address, _mail("fresh news", "giraffe", short.address, True), 1)
        ids["kept_long"] = _deliver(long_.id, long_.address, _mail("long news", "okapi", long_.address, True), 10)
        ids["gone_long"] = _deliver(long_.id, long_.address, _mail("ancient", "walrus", long_.address), 40)
        # An old sent message whose queue entry is still deferred: the queue needs it, so it stays.
        sent = _deliver(short.id, short.address, _mail("outgoing", "heron", "x@remote.test"), 12)
        Message.update(direction="out").where(Message.id == sent).execute()
        inbound_id = Message.get_by_id(sent).inbound_id
        [entry] = outqueue.add(sent, short.id, inbound_id, short.address, "example.test", ["x@remote.test"], 5 * DAY)
        QueueEntry.update(status="deferred").where(QueueEntry.id == entry["queue_id"]).execute()
        ids["sent"] = sent
        # Raw bytes not yet processed are never touched, however old.
        ids["pending"] = store(Envelope(mail_from="a@remote.test", rcpts=[Recipient(short.address, (short.id,))],
                                        data=_mail("pending", "lemur", short.address), received_at=time.time() - 99 * DAY))
        return ids
    ids = db.write_sync(setup)

    def state() -> dict:
        msgs = {m.id: m for m in Message.select()}
        return {
            "messages": set(msgs),
            "inbound": {i.id for i in Inbound.select(Inbound.id)},
            "attachments": {a.message_id for a in Attachment.select()},
            "fts": {k: _fts(v) for k, v in ids.items() if k not in ("short", "long", "pending")},
            "threads": {t.id: t.message_count for t in Thread.select()},
            "refs": {r.msgid for r in ThreadRef.select()},
            "inbound_of": {k: msgs[v].inbound_id for k, v in ids.items() if v in msgs},
            "thread_of": {k: msgs[v].thread_id for k, v in ids.items() if v in msgs},
        }
    before = db.write_sync(state)
    assert before["fts"] == {k: 1 for k in before["fts"]}
    assert {ids["old"], ids["fresh"], ids["kept_long"]} <= before["attachments"]
    assert before["thread_of"]["old"] == before["thread_of"]["old_reply"]

    report = asyncio.run(retention.run(cfg, db))

    after = db.write_sync(state)
    gone = {ids["old"], ids["old_reply"], ids["gone_long"]}
    assert after["messages"] == before["messages"] - gone
    assert report["messages"] == 3 and report["attachments"] == 1 and report["threads"] == 2
    assert report["mailboxes"]["short@example.test"]["messages"] == 2
    assert report["mailboxes"]["long@example.test"]["messages"] == 1
    assert report["inbound_rows"] == 3 and report["raw_bytes"] > 0
    assert after["attachments"] == {ids["fresh"], ids["kept_long"]}
    assert after["fts"] == {"old": 0, "old_reply": 0, "gone_long": 0, "fresh": 1, "kept_long": 1, "sent": 1}
    for key in ("old", "old_reply", "gone_long"):
        assert before["inbound_of"][key] not in after["inbound"]
        assert before["thread_of"][key] not in after["threads"]
    assert {"zebra@remote.test", "zebrareply@remote.test", "walrus@remote.test"}.isdisjoint(after["refs"])
    for key in ("fresh", "kept_long", "sent"):
        assert before["inbound_of"][key] in after["inbound"]
        assert after["threads"][before["thread_of"][key]] == 1
    assert ids["pending"] in after["inbound"]

    # Run again: nothing more to do.
    again = asyncio.run(retention.run(cfg, db))
    assert (again["messages"], again["inbound_rows"]) == (0, 0)

    # Once the queue entry is done, the old sent message goes too (with its queue history).
    db.write_sync(lambda: QueueEntry.update(status="delivered").execute())
    report = asyncio.run(retention.run(cfg, db))
    assert report["messages"] == 1 and db.write_sync(lambda: QueueEntry.select().count()) == 0
    assert before["inbound_of"]["sent"] not in db.write_sync(state)["inbound"]


def test_retention_days_zero_keeps_forever_and_one_mailbox_at_a_time(db: Database) -> None:
    def setup() -> dict:
        directory.create_domain("example.test")
        a, _ = directory.create_mailbox("a@example.test")
        b, _ = directory.create_mailbox("b@example.test")
        return {"a": a.id, "b": b.id,
                "a_msg": _deliver(a.id, a.address, _mail("a", "alpha", a.address), 400),
                "b_msg": _deliver(b.id, b.address, _mail("b", "beta", b.address), 400)}
    ids = db.write_sync(setup)
    forever = asyncio.run(retention.run(Config(default_retention_days=0), db))
    assert forever["messages"] == 0
    only_a = asyncio.run(retention.run(Config(default_retention_days=7), db, [ids["a"]]))
    assert only_a["messages"] == 1 and list(only_a["mailboxes"]) == ["a@example.test"]
    left = db.write_sync(lambda: {m.id for m in Message.select()})
    assert left == {ids["b_msg"]}


def test_batches_are_bounded(db: Database) -> None:
    def setup() -> str:
        directory.create_domain("example.test")
        box, _ = directory.create_mailbox("bulk@example.test")
        for i in range(7):
            _deliver(box.id, box.address, _mail(f"bulk {i}", f"bulk{i}", box.address), 20)
        return box.id
    db.write_sync(setup)
    report = asyncio.run(retention.run(Config(default_retention_days=7), db, batch=3))
    assert report["messages"] == 7 and db.write_sync(lambda: Message.select().count()) == 0


# ---------------------------------------------------------------- end to end
def _send(proc: MxdProcess, to: str, subject: str, word: str, attachment: bool = False) -> None:
    with smtplib.SMTP("127.0.0.1", proc.mx_port, timeout=60) as s:
        s.sendmail("sender@remote.test", [to], _mail(subject, word, to, attachment))


def test_retention_run_over_the_api(tmp_path: Path) -> None:
    proc = start_daemon(tmp_path / "data", mailboxes=["agent@example.test", "keeper@example.test"])
    try:
        r = proc.api("PUT", "/api/mailboxes/keeper@example.test/retention", json={"retention_days": 60})
        assert r.status_code == 200 and r.json()["effective_retention_days"] == 60
        r = proc.api("GET", "/api/mailboxes/agent@example.test/retention").json()
        assert (r["retention_days"], r["effective_retention_days"], r["source"]) == (None, 7, "default")

        _send(proc, "agent@example.test", "expired report", "quokka", attachment=True)
        _send(proc, "agent@example.test", "fresh report", "wombat", attachment=True)
        _send(proc, "keeper@example.test", "kept report", "quokkakeeper", attachment=True)
        assert len(proc.wait_messages(3, timeout=60)) == 3
        found = proc.api("GET", "/api/messages/search", params={"q": "quokka"}).json()["data"]
        assert [m["subject"] for m in found] == ["expired report"]
        expired_id = found[0]["id"]
        keeper_id = proc.messages("keeper@example.test")[0]["id"]

        con = sqlite3.connect(proc.data_dir / "mxd.db", timeout=60)
        try:
            con.execute('UPDATE "message" SET "received_at" = "received_at" - ? WHERE "subject" IN (?, ?)',
                        (10 * DAY, "expired report", "kept report"))
            con.commit()
            inbound_id = con.execute('SELECT "inbound_id" FROM "message" WHERE "id" = ?', (expired_id,)).fetchone()[0]
        finally:
            con.close()

        assert proc.api("POST", "/api/retention/run", token=proc.token(["read"]), json={}).status_code == 403
        r = proc.api("POST", "/api/retention/run", json={})
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["messages"] == 1 and report["attachments"] == 1 and report["inbound_rows"] == 1
        assert report["raw_bytes"] > 100 and report["threads"] == 1
        assert report["mailboxes"] == {"agent@example.test": {"messages": 1, "attachments": 1,
                                                              "raw_bytes": report["raw_bytes"]}}

        assert proc.api("GET", f"/api/messages/{expired_id}").status_code == 404
        assert proc.api("GET", "/api/messages/search", params={"q": "quokka"}).json()["data"] == []
        assert [m["subject"] for m in proc.api("GET", "/api/messages/search",
                                               params={"q": "wombat"}).json()["data"]] == ["fresh report"]
        assert proc.api("GET", f"/api/messages/{keeper_id}").status_code == 200
        assert proc.api("GET", f"/api/messages/{keeper_id}/raw").content.count(b"quokkakeeper") >= 1
        con = sqlite3.connect(f"file:{proc.data_dir / 'mxd.db'}?mode=ro", uri=True, timeout=60)
        try:
            assert con.execute('SELECT COUNT(*) FROM "inbound" WHERE "id" = ?', (inbound_id,)).fetchone()[0] == 0
            assert con.execute("SELECT COUNT(*) FROM message_fts WHERE message_id = ?", (expired_id,)).fetchone()[0] == 0
        finally:
            con.close()

        # One mailbox only: the keeper's mail is inside its 60 days, so nothing goes.
        r = proc.api("POST", "/api/retention/run", json={"mailbox": "keeper@example.test"}).json()
        assert r["messages"] == 0
        # The run is in the audit trail.
        rows = wait_for(lambda: proc.api("GET", "/api/audit", params={"action": "POST /api/retention/run"})
                        .json()["data"], timeout=30)
        assert len(rows) == 3 and [r["result"] for r in rows] == ["ok", "ok", "denied"]
        assert rows[0]["mailbox"] == "keeper@example.test" and rows[1]["detail"]["messages"] == 1
        assert wait_for(lambda: len(proc.messages()) == 2, timeout=10)
    finally:
        proc.stop()


def test_background_sweep_removes_expired_mail(tmp_path: Path) -> None:
    proc = MxdProcess(tmp_path / "data", env={"MXD_RETENTION_INTERVAL": "1s", "MXD_DEFAULT_RETENTION_DAYS": "2"})
    proc.init()
    proc.start()
    try:
        assert proc.api("POST", "/api/mailboxes", json={"address": "agent@example.test"}).status_code == 201
        _send(proc, "agent@example.test", "old one", "capybara")
        _send(proc, "agent@example.test", "new one", "axolotl")
        assert len(proc.wait_messages(2, timeout=60)) == 2
        con = sqlite3.connect(proc.data_dir / "mxd.db", timeout=60)
        try:
            con.execute('UPDATE "message" SET "received_at" = "received_at" - ? WHERE "subject" = ?',
                        (3 * DAY, "old one"))
            con.commit()
        finally:
            con.close()
        assert wait_for(lambda: [m["subject"] for m in proc.messages()] == ["new one"], timeout=60)
        assert proc.api("GET", "/api/messages/search", params={"q": "capybara"}).json()["data"] == []
        swept = proc.api("GET", "/api/audit", params={"action": "retention.sweep"}).json()["data"]
        assert swept and swept[-1]["actor"] == "system" and swept[-1]["detail"]["messages"] == 1
    finally:
        proc.stop()


def test_replay_keys_are_forgotten_after_two_days(tmp_path):
    """Idempotency-Key and SES message-id records replay for 24 hours; the sweep drops them after two days."""
    import time as _time

    from mxd.retention import prune_replay_keys
    from mxd.store.models import Idempotency

    with started_store(sqlite_url(tmp_path)) as database:
        now = _time.time()
        database.write_sync(lambda: [Idempotency.create(key=k, body_hash="", status=202, response={}, created_at=t)
                                     for k, t in (("old", now - 3 * 86400), ("recent", now - 3600))])
        assert database.write_sync(prune_replay_keys, now - 2 * 86400) == 1
        assert [r.key for r in database.write_sync(lambda: list(Idempotency.select()))] == ["recent"]
