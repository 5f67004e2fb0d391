"""Send preflight: the one place that decides whether a message may go out, for every way in.

SMTP submission, the HTTP API (and later MCP and the CLI) all call `preflight`
inside the writer's transaction, so counts and the enqueue that follows are
consistent. Each refusal is an MxdError with a stable code.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from mxd import address as addr
from mxd.config import Config
from mxd.errors import MxdError
from mxd.store.directory import Resolution, load_snapshot
from mxd.store.models import Domain, Mailbox, Message, QueueEntry, Suppression
from mxd.tokens import Principal


@dataclass
class Decision:
    sender: addr.Address
    mailbox: Mailbox
    domain: Domain
    remote: list[str] = field(default_factory=list)                           # addr-specs, normalised domain
    local: list[tuple[str, Resolution]] = field(default_factory=list)
    hold_reason: str | None = None


def _parse(text: str, what: str) -> addr.Address:
    try:
        return addr.parse(text)
    except addr.AddressError as exc:
        raise MxdError("invalid_address", f"{what} {text!r} is not a valid address: {exc}") from None


def _window_count(query, since: float) -> int:
    return query.where(QueueEntry.created_at > since).count()


def preflight(cfg: Config, principal: Principal | None, sender: str, recipients: list[str]) -> Decision:
    """Check a send; returns what to do with each recipient or raises MxdError. `principal` None = mxd itself."""
    if principal is not None and not principal.has("send"):
        raise MxdError("forbidden", "this token lacks the 'send' scope (read never implies send)",
                       fix="Create a token with the 'send' scope for this mailbox: POST /api/tokens.")
    who = _parse(sender, "sender")
    domain = Domain.get_or_none(Domain.name == who.domain)
    if domain is None:
        raise MxdError("domain_not_served", f"mxd does not serve the sender's domain {who.domain}")
    mailbox = Mailbox.get_or_none(Mailbox.address == who.base_key)
    if mailbox is None or (principal is not None and not principal.sees(mailbox.address)):
        raise MxdError("sender_not_allowed", f"this token may not send as {who}")
    if not cfg.outbound_enabled:
        raise MxdError("outbound_disabled", "outbound mail is disabled on this server")
    if not domain.ready:
        raise MxdError("domain_not_ready", f"the domain {domain.name} is not ready for outbound mail")
    if not recipients:
        raise MxdError("bad_request", "a message needs at least one recipient")
    if len(recipients) > cfg.max_recipients_per_send:
        raise MxdError("too_many_recipients",
                       f"{len(recipients)} recipients, at most {cfg.max_recipients_per_send} per message")
    parsed = []
    for text in recipients:
        rcpt = _parse(text, "recipient")
        if str(rcpt).lower() not in {str(p).lower() for p in parsed}:
            parsed.append(rcpt)
    suppressed = [s.address for s in Suppression.select().where(
        Suppression.address.in_([p.key for p in parsed]))]
    if suppressed:
        raise MxdError("recipient_suppressed", f"suppressed recipients: {', '.join(sorted(suppressed))}")

    decision = Decision(who, mailbox, domain)
    snapshot = None
    for rcpt in parsed:
        if Domain.get_or_none(Domain.name == rcpt.domain) is None:
            decision.remote.append(f"{rcpt.local}@{rcpt.domain}")
            continue
        snapshot = snapshot or load_snapshot()
        found = snapshot.resolve(rcpt)
        if found.kind != "local":
            raise MxdError("unknown_recipient", f"{rcpt} does not exist on this server")
        decision.local.append((str(rcpt), found))

    if decision.remote:
        _limits(cfg, mailbox, decision.remote)
        decision.hold_reason = _hold(cfg, mailbox.address, decision.remote)
    return decision


def _limits(cfg: Config, mailbox: Mailbox, remote: list[str]) -> None:
    now = time.time()
    q = QueueEntry.select()
    day = _window_count(q, now - 86400)
    if day + len(remote) > cfg.daily_send_cap:
        oldest = QueueEntry.select(QueueEntry.created_at).where(QueueEntry.created_at > now - 86400).order_by(
            QueueEntry.created_at).scalar() or now
        raise MxdError("daily_cap_reached", f"{day} recipients in the last 24 hours; the cap is {cfg.daily_send_cap}",
                       retry_after=max(1, int(oldest + 86400 - now) + 1))
    sent = _window_count(QueueEntry.select().join(Message).where(Message.mailbox == mailbox.id), now - 60)
    if sent + len(remote) > cfg.rate_per_mailbox_per_minute:
        raise MxdError("rate_limited", f"{mailbox.address} sent to {sent} recipients in the last minute "
                       f"(limit {cfg.rate_per_mailbox_per_minute})", retry_after=60)
    domains: dict[str, int] = {}
    for rcpt in remote:
        domains[rcpt.rsplit("@", 1)[1]] = domains.get(rcpt.rsplit("@", 1)[1], 0) + 1
    for name, extra in domains.items():
        count = _window_count(QueueEntry.select().where(QueueEntry.domain == name), now - 60)
        if count + extra > cfg.rate_per_domain_per_minute:
            raise MxdError("rate_limited", f"{count} recipients at {name} in the last minute "
                           f"(limit {cfg.rate_per_domain_per_minute})", retry_after=60)
    for rcpt in remote:
        count = _window_count(QueueEntry.select().where(QueueEntry.recipient == rcpt), now - 3600)
        if count + 1 > cfg.rate_per_recipient_per_hour:
            raise MxdError("rate_limited", f"{count} messages to {rcpt} in the last hour "
                           f"(limit {cfg.rate_per_recipient_per_hour})", retry_after=600)


def _hold(cfg: Config, sender: str, remote: list[str]) -> str | None:
    for rule in cfg.hold_rules:
        rule = rule.strip().lower()
        if rule.startswith("from:") and rule[5:] == sender:
            return f"operator rule {rule}"
        for rcpt in remote:
            if rule == rcpt.lower() or (rule.startswith("@") and rcpt.lower().endswith(rule)):
                return f"operator rule {rule}"
    if cfg.hold_recipient_threshold and len(remote) > cfg.hold_recipient_threshold:
        return f"{len(remote)} recipients (hold threshold {cfg.hold_recipient_threshold})"
    if cfg.hold_new_domains:
        for rcpt in remote:
            name = rcpt.rsplit("@", 1)[1]
            if not QueueEntry.select().where(QueueEntry.domain == name).exists():
                return f"first contact with {name}"
    return None
