"""Peewee models for every table mxd keeps. Columns are portable to PostgreSQL.

Times are float seconds since the epoch (UTC); JSON is kept in text columns.
"""
from __future__ import annotations

import json
import time
from typing import Any

import peewee as pw

from mxd.db import proxy


class JSONField(pw.TextField):
    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(pw.Model):
    class Meta:
        database = proxy
        legacy_table_names = False


class Organization(BaseModel):
    """A tenant: owns agents, mailboxes, domains, tokens and a daily send cap. Rows with org_id NULL are the operator's."""
    id = pw.CharField(primary_key=True, max_length=40)
    name = pw.CharField(max_length=200)
    slug = pw.CharField(unique=True, max_length=100)
    owner_email = pw.CharField(max_length=320, index=True)
    created_at = pw.DoubleField(default=time.time)
    verified_at = pw.DoubleField(null=True)
    daily_send_cap = pw.IntegerField(null=True)                   # None: the server's daily_send_cap
    code_hash = pw.CharField(max_length=128, null=True)           # signup verification code (hashed)
    code_expires_at = pw.DoubleField(null=True)
    code_attempts = pw.IntegerField(default=0)                   # wrong codes since sign-up (a resend keeps them)
    code_locked_until = pw.DoubleField(null=True)                 # after each MAX_ATTEMPTS wrong codes


class Agent(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    org_id = pw.CharField(max_length=40, null=True, index=True)
    name = pw.CharField(max_length=200)
    slug = pw.CharField(max_length=100)
    external_id = pw.CharField(max_length=300, null=True)
    description = pw.TextField(default="")
    purpose = pw.TextField(default="")
    owner_label = pw.CharField(max_length=200, default="")
    policy_scope = pw.CharField(max_length=50, default="agent")
    created_at = pw.DoubleField(default=time.time)

    class Meta:
        indexes = ((("org_id", "external_id"), True), (("org_id", "slug"), True))


class Domain(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    org_id = pw.CharField(max_length=40, null=True, index=True)
    name = pw.CharField(unique=True, max_length=255)          # A-label, lower case
    created_at = pw.DoubleField(default=time.time)
    ready = pw.BooleanField(default=False)
    ready_source = pw.CharField(null=True, max_length=20)     # "operator" | "dns"
    ready_at = pw.DoubleField(null=True)
    catchall_mailbox_id = pw.CharField(null=True, max_length=40)
    verify_token = pw.CharField(null=True, max_length=64)     # an organisation's ownership proof (TXT _mxd-verify)
    owner_verified_at = pw.DoubleField(null=True)             # when that proof was found (or the operator vouched)
    mta_sts_mode = pw.CharField(max_length=10, default="testing")   # the MTA-STS policy served: off testing enforce


class Mailbox(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    address = pw.CharField(unique=True, max_length=320)       # lookup key: lower-case local @ A-label
    domain = pw.ForeignKeyField(Domain, backref="mailboxes", on_delete="CASCADE")
    org_id = pw.CharField(max_length=40, null=True, index=True)
    agent_id = pw.CharField(max_length=40, null=True, index=True)
    display_name = pw.CharField(default="", max_length=200)
    retention_days = pw.IntegerField(null=True)
    created_at = pw.DoubleField(default=time.time)


class Alias(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    address = pw.CharField(index=True, max_length=320)
    mailbox = pw.ForeignKeyField(Mailbox, backref="aliases", on_delete="CASCADE")
    created_at = pw.DoubleField(default=time.time)

    class Meta:
        indexes = ((("address", "mailbox"), True),)


class Inbound(BaseModel):
    """The raw bytes and envelope of one message as mxd took it in: from the MX, the API,
    local delivery, or its own outbound path (source "outbound": the unsigned sent copy, processed once the
    pipeline or the send transaction has signed, filed and queued it)."""
    id = pw.CharField(primary_key=True, max_length=40)
    received_at = pw.DoubleField(default=time.time)
    source = pw.CharField(max_length=20, default="smtp")
    mail_from = pw.CharField(max_length=512, default="")
    rcpts = JSONField()                     # [{"address": as given, "mailbox_id": ..., "tag": ...}]
    remote_ip = pw.CharField(max_length=64, default="")
    helo = pw.CharField(max_length=512, default="")
    tls = pw.BooleanField(default=False)
    data = pw.BlobField()
    trace = pw.TextField(default="")        # Received + Authentication-Results (DKIM-Signature on a sent copy), prepended on output
    processed = pw.BooleanField(default=False, index=True)
    receipt = pw.CharField(max_length=40, null=True)   # ingest.receipt_key of an SMTP transmission (v5)
    checks = JSONField(null=True)           # what the MX's checks before the 250 found (v8): mxd.defences

    class Meta:
        indexes = ((("receipt", "received_at"), False),)


class Thread(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    mailbox = pw.ForeignKeyField(Mailbox, backref="threads", on_delete="CASCADE")
    mailbox_id: str                         # the foreign key's column, as peewee names it (for type checkers)
    subject = pw.TextField(default="")
    norm_subject = pw.CharField(max_length=255, default="", index=True)
    first_at = pw.DoubleField(default=time.time)
    last_at = pw.DoubleField(default=time.time, index=True)
    message_count = pw.IntegerField(default=0)

    class Meta:
        indexes = ((("mailbox", "last_at", "id"), False), (("last_at", "id"), False))   # thread lists (v3)


class ThreadRef(BaseModel):
    """Every Message-ID a thread has seen, present or ghost (referenced but not received)."""
    mailbox = pw.ForeignKeyField(Mailbox, on_delete="CASCADE")
    msgid = pw.CharField(max_length=998)
    thread = pw.ForeignKeyField(Thread, backref="refs", on_delete="CASCADE")

    class Meta:
        indexes = ((("mailbox", "msgid"), True),)


class Message(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    mailbox = pw.ForeignKeyField(Mailbox, backref="messages", on_delete="CASCADE")
    inbound = pw.ForeignKeyField(Inbound, backref="messages", on_delete="CASCADE", null=True)
    thread = pw.ForeignKeyField(Thread, backref="messages", null=True, on_delete="SET NULL")
    mailbox_id: str                         # the foreign keys' columns, as peewee names them (for type checkers)
    thread_id: str | None
    direction = pw.CharField(max_length=8, default="in")
    received_at = pw.DoubleField(default=time.time)
    envelope_from = pw.CharField(max_length=512, default="")
    envelope_to = pw.CharField(max_length=512, default="")
    plus_tag = pw.CharField(max_length=128, null=True)
    message_id = pw.CharField(max_length=998, null=True, index=True)
    in_reply_to = JSONField(default=list)
    references = JSONField(default=list)
    subject = pw.TextField(default="")
    from_addr = JSONField(default=list)
    to_addr = JSONField(default=list)
    cc_addr = JSONField(default=list)
    reply_to = JSONField(default=list)
    date = pw.DoubleField(null=True)
    text = pw.TextField(default="")
    html = pw.TextField(null=True)
    size = pw.IntegerField(default=0)
    auth_results = pw.TextField(default="")
    auth = JSONField(null=True)              # structured spf/dkim/dmarc results
    parse_errors = JSONField(default=list)
    acked_at = pw.DoubleField(null=True)     # inbox polling: when the agent acknowledged this inbound message
    trust = JSONField(null=True)             # trust signals and verdict of an inbound message (v8): mxd.trust
    quarantine = JSONField(null=True)        # [{"code": ..., "detail": ...}] while quarantined; None otherwise (v8)
    quarantined_at = pw.DoubleField(null=True)

    class Meta:
        indexes = ((("mailbox", "id"), False), (("mailbox", "acked_at", "id"), False))


class Attachment(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    message = pw.ForeignKeyField(Message, backref="attachments", on_delete="CASCADE")
    part_index = pw.IntegerField()
    filename = pw.TextField(null=True)
    content_type = pw.CharField(max_length=255)
    size = pw.IntegerField()
    content_id = pw.CharField(max_length=998, null=True)
    disposition = pw.CharField(max_length=20, default="attachment")


class Token(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    name = pw.CharField(max_length=200)
    secret_hash = pw.CharField(unique=True, max_length=128)
    hint = pw.CharField(max_length=20)        # the first characters, for recognising a token in lists
    scopes = JSONField()
    mailboxes = JSONField(null=True)          # None: every mailbox (of the organisation, when org_id is set)
    org_id = pw.CharField(max_length=40, null=True, index=True)     # None: the operator's token
    created_at = pw.DoubleField(default=time.time)
    last_used_at = pw.DoubleField(null=True)
    revoked_at = pw.DoubleField(null=True)


class Event(BaseModel):
    """The outbox: every state change as a durable row, read by webhooks and pollers."""
    id = pw.CharField(primary_key=True, max_length=40)
    type = pw.CharField(max_length=64, index=True)
    created_at = pw.DoubleField(default=time.time)
    mailbox_id = pw.CharField(max_length=40, null=True, index=True)
    message_id = pw.CharField(max_length=40, null=True)
    data = JSONField(default=dict)
    fanned_out = pw.BooleanField(default=False, index=True)       # webhook deliveries made for this event


class Webhook(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    org_id = pw.CharField(max_length=40, null=True, index=True)
    agent_id = pw.CharField(max_length=40, null=True, index=True)
    mailbox_id = pw.CharField(max_length=40, null=True, index=True)
    url = pw.TextField()
    event_types = JSONField()
    secret = pw.CharField(max_length=200)                          # whsec_..., needed to sign
    previous_secret = pw.CharField(max_length=200, null=True)      # still signed with until previous_expires_at
    previous_expires_at = pw.DoubleField(null=True)
    enabled = pw.BooleanField(default=True)
    disabled_reason = pw.TextField(null=True)
    created_at = pw.DoubleField(default=time.time)


class WebhookDelivery(BaseModel):
    """One event owed to one webhook: the durable unit of webhook retry."""
    id = pw.CharField(primary_key=True, max_length=40)
    webhook_id = pw.CharField(max_length=40, index=True)
    event_id = pw.CharField(max_length=40)
    status = pw.CharField(max_length=16, index=True)               # pending delivered failed
    attempts = pw.IntegerField(default=0)
    next_attempt_at = pw.DoubleField(default=time.time, index=True)
    created_at = pw.DoubleField(default=time.time)
    delivered_at = pw.DoubleField(null=True)
    last_status = pw.IntegerField(null=True)
    last_error = pw.TextField(default="")


class WebhookAttempt(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    webhook_id = pw.CharField(max_length=40, index=True)
    delivery_id = pw.CharField(max_length=40, index=True)
    event_id = pw.CharField(max_length=40)
    at = pw.DoubleField(default=time.time)
    status = pw.IntegerField(null=True)                            # HTTP status; None when no answer
    error = pw.TextField(default="")
    duration_ms = pw.IntegerField(default=0)


class Audit(BaseModel):
    """Who did what: every mutating call, every send with its preflight decision, every refused token use."""
    id = pw.CharField(primary_key=True, max_length=40)
    at = pw.DoubleField(default=time.time, index=True)
    actor = pw.CharField(max_length=200, index=True)               # token id, or "system", or "anonymous"
    org_id = pw.CharField(max_length=40, null=True, index=True)
    action = pw.CharField(max_length=120, index=True)
    target = pw.TextField(default="")
    mailbox = pw.CharField(max_length=320, null=True, index=True)
    result = pw.CharField(max_length=40)                            # ok, denied, error, or an error code
    detail = JSONField(default=dict)


class QueueEntry(BaseModel):
    """One recipient of one outgoing message: the unit of delivery, retry and bounce."""
    id = pw.CharField(primary_key=True, max_length=40)
    message = pw.ForeignKeyField(Message, backref="queue", on_delete="CASCADE")
    inbound = pw.ForeignKeyField(Inbound, on_delete="CASCADE")     # the signed bytes
    message_id: str                         # the foreign key's column, as peewee names it (for type checkers)
    mail_from = pw.CharField(max_length=512)                        # the sender as the author wrote it
    return_path = pw.CharField(max_length=512)                      # VERP: bounces+<entry id>.<tag>@<sender domain>
    recipient = pw.CharField(max_length=512)
    domain = pw.CharField(max_length=255, index=True)
    status = pw.CharField(max_length=16, index=True)                # queued deferred held sent delivered failed
    attempts = pw.IntegerField(default=0)
    created_at = pw.DoubleField(default=time.time, index=True)
    next_attempt_at = pw.DoubleField(default=time.time, index=True)
    last_attempt_at = pw.DoubleField(null=True)
    expires_at = pw.DoubleField()
    lease_until = pw.DoubleField(default=0)
    last_reply = pw.TextField(default="")
    last_host = pw.CharField(max_length=255, default="")
    delay_notified = pw.BooleanField(default=False)
    hold_reason = pw.CharField(max_length=200, null=True)
    tls = pw.TextField(null=True)       # JSON: the transport security policy of the last attempt (mxd.delivery.tlspolicy)


class Suppression(BaseModel):
    """An address one organisation sends no more mail to (org_id "": the operator's own mailboxes)."""
    org_id = pw.CharField(max_length=40, default="")
    address = pw.CharField(max_length=512)
    reason = pw.CharField(max_length=64)
    detail = pw.TextField(default="")
    created_at = pw.DoubleField(default=time.time)

    class Meta:
        primary_key = pw.CompositeKey("org_id", "address")


class SendCount(BaseModel):
    """Sends per key (org, mailbox, recipient domain, recipient) per minute or hour bucket, for rate limits."""
    key = pw.CharField(max_length=600)
    bucket = pw.BigIntegerField()
    count = pw.IntegerField(default=0)

    class Meta:
        primary_key = pw.CompositeKey("key", "bucket")


class Idempotency(BaseModel):
    key = pw.CharField(primary_key=True, max_length=300)        # token id + ":" + client key
    body_hash = pw.CharField(max_length=64)
    status = pw.IntegerField()
    response = JSONField()
    created_at = pw.DoubleField(default=time.time, index=True)


class Draft(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    mailbox = pw.ForeignKeyField(Mailbox, backref="drafts", on_delete="CASCADE")
    thread_id = pw.CharField(max_length=40, null=True)
    body = JSONField()                                           # the send request as given
    created_at = pw.DoubleField(default=time.time)
    updated_at = pw.DoubleField(default=time.time)
    sent_message_id = pw.CharField(max_length=40, null=True)


class MailboxPolicy(BaseModel):
    """What one mailbox may send to and accepts (v8): the normalised document of mxd.mailpolicy."""
    mailbox = pw.ForeignKeyField(Mailbox, primary_key=True, backref="policy", on_delete="CASCADE")
    policy = JSONField()
    updated_at = pw.DoubleField(default=time.time)


class Correspondent(BaseModel):
    """An address or domain (kind "address" / "domain") a mailbox has received mail from or sent mail to (v8):
    what first_contact and lookalike compare with."""
    mailbox_id = pw.CharField(max_length=40)
    kind = pw.CharField(max_length=8)
    value = pw.CharField(max_length=320)
    first_at = pw.DoubleField(default=time.time)

    class Meta:
        primary_key = pw.CompositeKey("mailbox_id", "kind", "value")


class Meta(BaseModel):
    key = pw.CharField(primary_key=True, max_length=64)
    value = pw.TextField()


MODELS = [Organization, Agent, Webhook, WebhookDelivery, WebhookAttempt, Audit, Domain, Mailbox, Alias, Inbound, Thread, ThreadRef, Message, Attachment, Token, Event, QueueEntry,
          Suppression, SendCount, Idempotency, Draft, MailboxPolicy, Correspondent, Meta]


# ---------------------------------------------------------------- DMARC and TLS reports (v9)
class ReportSource(BaseModel):
    """A message at a report address (postmaster@ of a served domain) the report reader looked at (v9): how
    many reports it held and what could not be read (`errors`: [{"code", "detail", "part"}])."""
    message_id = pw.CharField(primary_key=True, max_length=40)
    mailbox_id = pw.CharField(max_length=40, index=True)
    looked_at = pw.DoubleField(default=time.time, index=True)
    reports = pw.IntegerField(default=0)
    errors = JSONField(default=list)


class ReceivedReport(BaseModel):
    """One DMARC aggregate (kind "dmarc") or SMTP TLS (kind "tls") report, once per (kind, org, report id)."""
    id = pw.CharField(primary_key=True, max_length=40)
    kind = pw.CharField(max_length=8)
    org_name = pw.CharField(max_length=255)
    contact = pw.CharField(max_length=320, default="")
    report_id = pw.CharField(max_length=255)
    domain = pw.CharField(max_length=255, default="", index=True)   # DMARC: policy_published/domain
    policy = pw.CharField(max_length=16, default="")                # DMARC: policy_published/p
    begin = pw.DoubleField(index=True)
    end = pw.DoubleField()
    message_id = pw.CharField(max_length=40)
    received_at = pw.DoubleField(default=time.time)

    class Meta:
        indexes = ((("kind", "org_name", "report_id"), True),)


class DmarcReportRow(BaseModel):
    """One <record> of a DMARC aggregate report: messages from one source IP with one set of results."""
    report = pw.ForeignKeyField(ReceivedReport, backref="dmarc_rows", on_delete="CASCADE")
    source_ip = pw.CharField(max_length=64)
    count = pw.IntegerField()
    header_from = pw.CharField(max_length=255, default="")
    spf = pw.CharField(max_length=16)
    dkim = pw.CharField(max_length=16)
    dmarc = pw.CharField(max_length=16)
    disposition = pw.CharField(max_length=16, default="none")


class TlsReportPolicy(BaseModel):
    """One policy of an SMTP TLS report: sessions that succeeded and failed, with the failure types."""
    report = pw.ForeignKeyField(ReceivedReport, backref="tls_policies", on_delete="CASCADE")
    policy_type = pw.CharField(max_length=20)
    policy_domain = pw.CharField(max_length=255, index=True)
    successful = pw.IntegerField()
    failed = pw.IntegerField()
    failures = JSONField(default=list)


REPORT_MODELS = [ReportSource, ReceivedReport, DmarcReportRow, TlsReportPolicy]
MODELS += REPORT_MODELS


class MtaStsPolicy(BaseModel):
    """A recipient domain's MTA-STS policy as last fetched (RFC 8461 5.1), kept until it expires."""
    domain = pw.CharField(primary_key=True, max_length=255)
    policy_id = pw.CharField(max_length=64)             # the id of the _mta-sts TXT record it came with
    mode = pw.CharField(max_length=10)                   # enforce testing none
    mx = JSONField(default=list)                         # the mx patterns
    max_age = pw.IntegerField()
    text = pw.TextField()                                # the policy as served
    fetched_at = pw.DoubleField()
    expires_at = pw.DoubleField(index=True)              # fetched_at + max_age
    checked_at = pw.DoubleField(default=0)               # the last look at the TXT record
    last_error = pw.TextField(default="")                # the last failed refresh, kept for reports


class TlsResult(BaseModel):
    """Outbound TLS sessions per day, policy and outcome: what a daily SMTP TLS report (RFC 8460) sums up.
    result_type "" counts successes; otherwise one of RFC 8460 4.3's result types."""
    day = pw.CharField(max_length=10)                    # UTC date, YYYY-MM-DD
    policy_domain = pw.CharField(max_length=255)
    policy_type = pw.CharField(max_length=20)            # sts tlsa no-policy-found
    policy_string = JSONField(default=list)
    mx_host = pw.CharField(max_length=255, default="")
    result_type = pw.CharField(max_length=40, default="")
    sending_ip = pw.CharField(max_length=64, default="")
    receiving_ip = pw.CharField(max_length=64, default="")
    detail = pw.TextField(default="")                    # additional-information / failure-reason-code
    count = pw.IntegerField(default=0)

    class Meta:
        indexes = ((("day", "policy_domain", "policy_type", "mx_host", "result_type", "receiving_ip"), True),)


class TlsReportSent(BaseModel):
    """A daily TLS report sent (or given up) for one domain and day, so that it goes out once."""
    policy_domain = pw.CharField(max_length=255)
    day = pw.CharField(max_length=10)
    sent_at = pw.DoubleField(default=time.time)
    rua = pw.TextField(default="")
    outcome = pw.CharField(max_length=20, default="queued")   # queued no-rua failed

    class Meta:
        primary_key = pw.CompositeKey("policy_domain", "day")


TRANSPORT_MODELS = [MtaStsPolicy, TlsResult, TlsReportSent]
MODELS += TRANSPORT_MODELS
