"""Schema migrations, applied in order at start; the applied version is kept in the meta table.

Append a function to STEPS for every schema change (use playhouse.migrate);
never edit a step that has shipped.
"""
from __future__ import annotations

import logging
from typing import Callable

import peewee as pw

from mxd.store import models, search

log = logging.getLogger("mxd.migrations")


def _v1_initial(db: pw.Database) -> None:
    db.create_tables(models.MODELS, safe=True)
    search.create_index(db)


def _v2_platform(db: pw.Database) -> None:
    """Organisations, agents, webhooks, audit; org and agent owners; inbox acknowledgement."""
    from playhouse.migrate import SchemaMigrator
    from playhouse.migrate import migrate as run

    db.create_tables([models.Organization, models.Agent, models.Webhook, models.WebhookDelivery,
                      models.WebhookAttempt, models.Audit], safe=True)
    migrator = SchemaMigrator.from_database(db)
    wanted = [(models.Domain, "org_id"), (models.Mailbox, "org_id"), (models.Mailbox, "agent_id"),
              (models.Token, "org_id"), (models.Message, "acked_at"), (models.Event, "fanned_out")]
    for model, name in wanted:
        table = model._meta.table_name
        if name not in {c.name for c in db.get_columns(table)}:
            run(migrator.add_column(table, name, model._meta.fields[name]))
            if name == "fanned_out":     # events from before webhooks existed are owed to no one
                models.Event.update(fanned_out=True).execute()
    for table, column in (("event", "fanned_out"), ("domain", "org_id"), ("mailbox", "org_id"),
                          ("mailbox", "agent_id"), ("token", "org_id")):
        db.execute_sql(f'CREATE INDEX IF NOT EXISTS "{table}_{column}" ON "{table}" ("{column}")')
    db.execute_sql('CREATE INDEX IF NOT EXISTS "message_mailbox_id_acked_at_id" ON "message" ("mailbox_id", "acked_at", "id")')


def _v3_thread_order(db: pw.Database) -> None:
    """Thread lists in index order (newest activity first), for one mailbox or all, cursor as a range."""
    db.execute_sql('CREATE INDEX IF NOT EXISTS "thread_mailbox_id_last_at_id" '
                   'ON "thread" ("mailbox_id", "last_at", "id")')
    db.execute_sql('CREATE INDEX IF NOT EXISTS "thread_last_at_id" ON "thread" ("last_at", "id")')


def _v4_search_mailbox(db: pw.Database) -> None:
    """Searches within some mailboxes find each match's mailbox in a compact table (SQLite)."""
    search.create_mailbox_map(db)


def _v5_forged_bounces(db: pw.Database) -> None:
    """Suppressions per organisation; sign-up code lock-outs; tagged VERP return paths.

    The suppression table is rebuilt with (org_id, address) as its key: rows from before were
    server-wide and become the operator's own ("": mailboxes without an organisation), so no
    organisation inherits suppressions that anyone could have forged. Entries not yet delivered
    get a tagged return path (bounces+<id>.<tag>@domain) under the server's new VERP secret; an
    untagged VERP address is refused from now on, also for mail delivered before this step.
    """
    from playhouse.migrate import SchemaMigrator
    from playhouse.migrate import migrate as run

    from mxd.store import queue as outqueue

    columns = {c.name for c in db.get_columns("suppression")}
    if "org_id" not in columns:
        # Read, drop, re-create (a renamed table keeps its index names on PostgreSQL, which the new one needs).
        rows = db.execute_sql('SELECT "address", "reason", "detail", "created_at" FROM "suppression"').fetchall()
        db.execute_sql('DROP TABLE "suppression"')
        db.create_tables([models.Suppression])
        for start in range(0, len(rows), 500):
            models.Suppression.insert_many([("", *row) for row in rows[start:start + 500]], fields=[
                models.Suppression.org_id, models.Suppression.address, models.Suppression.reason,
                models.Suppression.detail, models.Suppression.created_at]).execute()
    if "code_locked_until" not in {c.name for c in db.get_columns("organization")}:
        run(SchemaMigrator.from_database(db).add_column("organization", "code_locked_until",
                                                        models.Organization.code_locked_until))
    secret = outqueue.verp_secret(create=True)
    assert secret is not None
    for entry in models.QueueEntry.select(models.QueueEntry.id, models.QueueEntry.return_path).where(
            models.QueueEntry.status.in_(("queued", "deferred", "held"))):
        domain = entry.return_path.rsplit("@", 1)[-1]
        models.QueueEntry.update(return_path=outqueue.return_path(entry.id, domain, secret)).where(
            models.QueueEntry.id == entry.id).execute()


def _v6_tenant_boundaries(db: pw.Database) -> None:
    """An organisation's domain receives mail only once its ownership is proven (a TXT token): the columns,
    a token for every organisation domain, and the proof taken as given for those already ready (their
    records were found, or the operator vouched). An `admin` token is never limited to mailboxes: such
    rows get the scopes `admin` implied, kept to their mailboxes."""
    import secrets

    from playhouse.migrate import SchemaMigrator
    from playhouse.migrate import migrate as run

    migrator = SchemaMigrator.from_database(db)
    have = {c.name for c in db.get_columns("domain")}
    for name in ("verify_token", "owner_verified_at"):
        if name not in have:
            run(migrator.add_column("domain", name, models.Domain._meta.fields[name]))
    for row in models.Domain.select().where(models.Domain.org_id.is_null(False) & models.Domain.verify_token.is_null()):
        models.Domain.update(verify_token=secrets.token_hex(16),
                             owner_verified_at=(row.ready_at or row.created_at) if row.ready else None).where(
            models.Domain.id == row.id).execute()
    from mxd.store.tokens import limited_scopes
    for token in models.Token.select().where(models.Token.mailboxes.is_null(False)):
        if "admin" in (token.scopes or []):
            models.Token.update(scopes=limited_scopes(token.scopes)).where(models.Token.id == token.id).execute()


def _v7_inbound_receipt(db: pw.Database) -> None:
    """A retried SMTP transmission is recognised by its receipt key (ingest.receipt_key)."""
    from playhouse.migrate import SchemaMigrator
    from playhouse.migrate import migrate as run

    if "receipt" not in {c.name for c in db.get_columns("inbound")}:
        run(SchemaMigrator.from_database(db).add_column("inbound", "receipt", models.Inbound.receipt))
    db.execute_sql('CREATE INDEX IF NOT EXISTS "inbound_receipt_received_at" ON "inbound" ("receipt", "received_at")')


def _v8_inbound_defences(db: pw.Database) -> None:
    """The MX's checks carried to the pipeline; trust signals and quarantine per message; per-mailbox
    policies; the correspondents a mailbox knows."""
    from playhouse.migrate import SchemaMigrator
    from playhouse.migrate import migrate as run

    migrator = SchemaMigrator.from_database(db)
    for model, names in ((models.Inbound, ("checks",)), (models.Message, ("trust", "quarantine", "quarantined_at"))):
        table = model._meta.table_name
        have = {c.name for c in db.get_columns(table)}
        for name in names:
            if name not in have:
                run(migrator.add_column(table, name, model._meta.fields[name]))
    db.create_tables([models.MailboxPolicy, models.Correspondent], safe=True)
    db.execute_sql('CREATE INDEX IF NOT EXISTS "message_quarantined_at" ON "message" ("quarantined_at")')


def _v9_reports(db: pw.Database) -> None:
    """DMARC aggregate and SMTP TLS reports read from the report addresses, and the messages looked at."""
    db.create_tables(models.REPORT_MODELS, safe=True)


def _v10_transport_security(db: pw.Database) -> None:
    """MTA-STS served per domain, the transport policy of each delivery attempt, recipient domains' MTA-STS
    policies, and the outbound TLS results that daily TLS reports sum up."""
    from playhouse.migrate import SchemaMigrator
    from playhouse.migrate import migrate as run

    migrator = SchemaMigrator.from_database(db)
    for model, name in ((models.Domain, "mta_sts_mode"), (models.QueueEntry, "tls")):
        table = model._meta.table_name
        if name not in {c.name for c in db.get_columns(table)}:
            run(migrator.add_column(table, name, model._meta.fields[name]))
    db.create_tables(models.TRANSPORT_MODELS, safe=True)


STEPS: list[Callable[[pw.Database], None]] = [_v1_initial, _v2_platform, _v3_thread_order, _v4_search_mailbox,
                                              _v5_forged_bounces, _v6_tenant_boundaries, _v7_inbound_receipt,
                                              _v8_inbound_defences, _v9_reports, _v10_transport_security]


def current_version(db: pw.Database) -> int:
    db.create_tables([models.Meta], safe=True)
    row = models.Meta.get_or_none(models.Meta.key == "schema_version")
    return int(row.value) if row else 0


def migrate(db: pw.Database) -> int:
    """Bring the schema up to date; returns the version now in force."""
    version = current_version(db)
    if version > len(STEPS):
        raise RuntimeError(f"the store has schema version {version}, newer than this mxd ({len(STEPS)}): upgrade mxd")
    for number in range(version + 1, len(STEPS) + 1):
        with db.atomic():
            STEPS[number - 1](db)
            models.Meta.insert(key="schema_version", value=str(number)).on_conflict(
                conflict_target=[models.Meta.key], update={models.Meta.value: str(number)}).execute()
        log.info("schema migrated to version %d", number)
    return len(STEPS)
