"""Send preflight: the one place that decides whether a message may go out, for every way in.

SMTP submission, the HTTP API (and later MCP and the CLI) all call `preflight`
inside the writer's transaction, so the counts it reads and the enqueue that
follows are consistent. Each refusal is an MxdError with a stable code.

Rate limits and the daily cap read per-minute (and per-hour) counters kept in
the send_count table, so a check costs a few indexed rows however much mail
went out. Hand-written SQL: this runs for every message sent.

A mailbox's outbound policy (mxd.mailpolicy, `outbound.allow`) limits whom it may send to, local
recipients included: a recipient outside a non-empty allow-list is refused (`recipient_not_allowed`), or,
when the mailbox chose `otherwise = "hold"`, the message is held for approval like an operator's hold
rule. Only remote recipients can be held (they wait in the queue); a local recipient outside the list is
refused either way. SMTP submission applies the same rule at RCPT (`rcpt_refusal`).

Mail mxd sends itself (principal None: sign-up codes, welcome notices) has a
budget of its own, `system_mail_daily_cap`, and counters of its own: what
strangers can make mxd send never uses up the operator's or an organisation's
daily cap or rate limits.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from mxd import address as addr
from mxd import mailpolicy
from mxd.config import Config
from mxd.db import execute, executemany
from mxd.errors import MxdError
from mxd.store import mailbox_policies
from mxd.store.directory import Resolution, load_snapshot, routed
from mxd.store.queue import is_return_path
from mxd.store.tokens import Principal


@dataclass
class Sender:
    mailbox_id: str
    mailbox_address: str
    domain: str
    org_id: str | None = None
    system: bool = False             # mxd's own notices: counted against system_mail_daily_cap only


def _day_key(org_id: str | None) -> str:
    """The hour-bucket counter behind an organisation's daily cap (the operator's own mailboxes share one)."""
    return f"orgh:{org_id or '-'}"


@dataclass
class Decision:
    sender: addr.Address
    mailbox: Sender
    remote: list[str] = field(default_factory=list)                           # addr-specs, normalised domain
    local: list[tuple[str, Resolution]] = field(default_factory=list)
    hold_reason: str | None = None


def _parse(text: str, what: str) -> addr.Address:
    try:
        return addr.parse(text)
    except addr.AddressError as exc:
        raise MxdError("invalid_address", f"{what} {text!r} is not a valid address: {exc}") from None


def _marks(n: int) -> str:
    return ",".join("?" * n)


def preflight(cfg: Config, principal: Principal | None, sender: str, recipients: list[str],
              authors: list[str] | None = None) -> Decision:
    """Check a send; returns what to do with each recipient or raises MxdError. `principal` None = mxd itself.

    `authors` are the From header's addresses: each must be a mailbox the token may send as,
    like the envelope sender, so one agent cannot write as another.
    """
    if principal is not None and not principal.has("send"):
        raise MxdError("forbidden", "this token lacks the 'send' scope (read never implies send)",
                       fix="Create a token with the 'send' scope for this mailbox: POST /api/tokens.")
    who = _parse(sender, "sender")
    domain = execute('SELECT "name", "ready" FROM "domain" WHERE "name" = ?', (who.domain,)).fetchone()
    if domain is None:
        raise MxdError("domain_not_served", f"mxd does not serve the sender's domain {who.domain}")
    box = execute('SELECT "id", "address", "org_id" FROM "mailbox" WHERE "address" = ?', (who.base_key,)).fetchone()
    if box is None or (principal is not None and not principal.sees(box[1], box[2])):
        raise MxdError("sender_not_allowed", f"this token may not send as {who}")
    if authors is not None:
        if not authors:
            raise MxdError("sender_not_allowed", "the message has no From address")
        for author in authors:
            parsed_author = addr.try_parse(author)
            if parsed_author is not None and parsed_author.base_key == who.base_key:
                continue                           # the envelope sender's mailbox, checked above
            row = execute('SELECT "address", "org_id" FROM "mailbox" WHERE "address" = ?',
                          (parsed_author.base_key,)).fetchone() if parsed_author else None
            if row is None or (principal is not None and not principal.sees(row[0], row[1])):
                raise MxdError("sender_not_allowed", f"the From address {author!r} is not one this token may send as")
    if not cfg.outbound_enabled:
        raise MxdError("outbound_disabled", "outbound mail is disabled on this server")
    if not domain[1]:
        raise MxdError("domain_not_ready", f"the domain {domain[0]} is not ready for outbound mail")
    if not recipients:
        raise MxdError("bad_request", "a message needs at least one recipient")
    if len(recipients) > cfg.max_recipients_per_send:
        raise MxdError("too_many_recipients",
                       f"{len(recipients)} recipients, at most {cfg.max_recipients_per_send} per message")
    parsed: list[addr.Address] = []
    for text in recipients:
        rcpt = _parse(text, "recipient")
        if rcpt.key not in {p.key for p in parsed}:
            parsed.append(rcpt)
    names = sorted({p.domain for p in parsed})
    # An organisation's domain is local only once its ownership is proven (as at the MX): registering
    # a domain must not capture what other senders, or its own, write to it.
    served = routed(names)
    policy_hold = _outbound_policy(box[0], box[1], parsed, served)
    keys = [p.key for p in parsed]
    # Suppressions are the sending organisation's own (the operator's: org_id "").
    suppressed = [r[0] for r in execute('SELECT "address" FROM "suppression" WHERE "org_id" = ? AND '
                                        f'"address" IN ({_marks(len(keys))})', [box[2] or "", *keys]).fetchall()]
    if suppressed:
        raise MxdError("recipient_suppressed", f"suppressed recipients: {', '.join(sorted(suppressed))}")

    decision = Decision(who, Sender(box[0], box[1], domain[0], box[2], system=principal is None))
    snapshot = None
    for rcpt in parsed:
        if rcpt.domain not in served:
            decision.remote.append(f"{rcpt.local}@{rcpt.domain}")
            continue
        snapshot = snapshot or load_snapshot()
        found = snapshot.resolve(rcpt)
        if found.kind != "local" or is_return_path(rcpt.local):     # a return path is no mailbox's plus-address
            raise MxdError("unknown_recipient", f"{rcpt} does not exist on this server")
        decision.local.append((str(rcpt), found))

    if decision.remote:
        _limits(cfg, decision.mailbox, decision.remote)
        decision.hold_reason = policy_hold or _hold(cfg, decision.mailbox.mailbox_address, decision.remote)
    return decision


# ---------------------------------------------------------------- the mailbox's outbound policy
def outbound_rule(mailbox_id: str) -> dict | None:
    """The mailbox's outbound policy when it limits recipients ({"allow": [...], "otherwise": ...}), else
    None. A point lookup per send: a changed policy is in force for the next message."""
    rule = (mailbox_policies.get(mailbox_id) or mailpolicy.EMPTY)["outbound"]
    return rule if rule.get("allow") else None


def _not_allowed(mailbox: str, outside: list[str], holdable: bool) -> MxdError:
    shown = ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
    why = " (a local recipient cannot be held)" if holdable else ""
    return MxdError("recipient_not_allowed",
                    f"{mailbox} may not send to {shown}: not in its outbound policy's allow-list{why}",
                    fix=f"Send only to addresses and domains in outbound.allow (GET /api/mailboxes/{mailbox}/policy), "
                        "or ask the operator or your organisation's admin to add the recipient.")


def _outbound_policy(mailbox_id: str, mailbox: str, recipients: list[addr.Address], served: set[str]) -> str | None:
    """Apply the mailbox's outbound allow-list: raises recipient_not_allowed, or answers the hold reason
    (None when every recipient is allowed or the mailbox has no list)."""
    rule = outbound_rule(mailbox_id)
    if rule is None:
        return None
    outside = [p for p in recipients if not mailpolicy.matches(rule["allow"], p.key)]
    if not outside:
        return None
    hold = rule.get("otherwise") == "hold"
    local = [p.key for p in outside if p.domain in served]
    if not hold or local:
        raise _not_allowed(mailbox, local if hold else [p.key for p in outside], hold)
    more = f" (+{len(outside) - 1} more)" if len(outside) > 1 else ""
    return f"mailbox policy: {outside[0].key[:120]} not in outbound.allow{more}"     # hold_reason: 200 chars


def sender_rule(sender: str) -> tuple[str, dict] | None:
    """The outbound allow-list of the mailbox `sender` names, with its address, when it limits recipients
    (None otherwise). Runs in a reader; SMTP submission asks it once per sender and session."""
    who = addr.try_parse(sender)
    if who is None:
        return None
    box = execute('SELECT "id", "address" FROM "mailbox" WHERE "address" = ?', (who.base_key,)).fetchone()
    rule = outbound_rule(box[0]) if box is not None else None
    return (box[1], rule) if rule is not None else None


def rcpt_refusal(found: tuple[str, dict] | None, recipient: str) -> MxdError | None:
    """SMTP submission's RCPT TO: the refusal the preflight would give this recipient under the sending
    mailbox's outbound allow-list (`sender_rule`), decided without the store. None: allowed, or held (the
    preflight decides at DATA, and checks the policy in force again there)."""
    rcpt = addr.try_parse(recipient)
    if found is None or rcpt is None:
        return None
    mailbox, rule = found
    if rule.get("otherwise") == "hold" or mailpolicy.matches(rule["allow"], rcpt.key):
        return None
    return _not_allowed(mailbox, [rcpt.key], False)


# ---------------------------------------------------------------- counters
def _sums(windows: list[tuple[str, int]]) -> dict[str, int]:
    """SUM(count) for each (key, first bucket) at once, in one statement; a key never counted is absent."""
    where = " OR ".join(['("key" = ? AND "bucket" >= ?)'] * len(windows))
    rows = execute(f'SELECT "key", SUM("count") FROM "send_count" WHERE {where} GROUP BY "key"',
                   [value for window in windows for value in window]).fetchall()
    return {key: int(total) for key, total in rows}


def _counter_keys(sender: Sender, remote: list[str]) -> list[tuple[str, int, int]]:
    """(key, bucket, increment) for one send: per-minute buckets, and per-hour for the daily cap."""
    now = time.time()
    minute, hour = int(now // 60), int(now // 3600)
    if sender.system:
        return [(SYSTEM_DAY_KEY, hour, len(remote))] + [(f"sysrcpt:{rcpt.lower()}", minute, 1) for rcpt in remote]
    out = [(_day_key(sender.org_id), hour, len(remote)), (f"mbx:{sender.mailbox_id}", minute, len(remote))]
    out += [(f"rcpt:{rcpt.lower()}", minute, 1) for rcpt in remote]
    out += [(f"dom:{name}", minute, n) for name, n in _per_domain(remote).items()]
    return out


def _per_domain(remote: list[str]) -> dict[str, int]:
    domains: dict[str, int] = {}
    for rcpt in remote:
        name = rcpt.rsplit("@", 1)[1]
        domains[name] = domains.get(name, 0) + 1
    return domains


def record(sender: Sender, remote: list[str]) -> None:
    """Count a send that was accepted (in the same transaction as its queue rows)."""
    executemany('INSERT INTO "send_count" ("key", "bucket", "count") VALUES (?, ?, ?) '
                'ON CONFLICT ("key", "bucket") DO UPDATE SET "count" = "send_count"."count" + excluded."count"',
                _counter_keys(sender, remote))


def prune(now: float | None = None) -> int:
    """Drop counters older than two days (the daily cap looks back 24 hours)."""
    now = time.time() if now is None else now
    minute_limit, hour_limit = int((now - 2 * 86400) // 60), int((now - 2 * 86400) // 3600)
    cur = execute('DELETE FROM "send_count" WHERE ("key" LIKE ? AND "bucket" < ?) OR ("key" = ? AND "bucket" < ?) '
                  'OR ("key" NOT LIKE ? AND "key" <> ? AND "bucket" < ?)',
                  ("orgh:%", hour_limit, SYSTEM_DAY_KEY, hour_limit, "orgh:%", SYSTEM_DAY_KEY, minute_limit))
    return cur.rowcount


SYSTEM_DAY_KEY = "sysh"


def _system_limits(cfg: Config, remote: list[str]) -> None:
    """mxd's own notices: their daily budget, and the per-recipient hourly limit, on counters of their own."""
    now = time.time()
    minute, hour = int(now // 60), int(now // 3600)
    counts = _sums([(SYSTEM_DAY_KEY, hour - 23)] + [(f"sysrcpt:{rcpt.lower()}", minute - 59)
                                                    for rcpt in dict.fromkeys(remote)])
    day = counts.get(SYSTEM_DAY_KEY, 0)
    if day + len(remote) > cfg.system_mail_daily_cap:
        raise MxdError("daily_cap_reached", f"mxd sent {day} notices in the last 24 hours; its own budget "
                       f"(system_mail_daily_cap) is {cfg.system_mail_daily_cap}",
                       retry_after=int(3600 - now % 3600) + 1)
    for rcpt in remote:
        count = counts.get(f"sysrcpt:{rcpt.lower()}", 0)
        if count + 1 > cfg.rate_per_recipient_per_hour:
            raise MxdError("rate_limited", f"{count} notices to {rcpt} in the last hour "
                           f"(limit {cfg.rate_per_recipient_per_hour})", retry_after=600)


def _limits(cfg: Config, mailbox: Sender, remote: list[str]) -> None:
    if mailbox.system:
        return _system_limits(cfg, remote)
    now = time.time()
    minute, hour = int(now // 60), int(now // 3600)
    cap = cfg.daily_send_cap
    if mailbox.org_id:
        row = execute('SELECT "daily_send_cap" FROM "organization" WHERE "id" = ?', (mailbox.org_id,)).fetchone()
        cap = row[0] if row and row[0] is not None else cap
    domains = _per_domain(remote)
    day_key, box_key = _day_key(mailbox.org_id), f"mbx:{mailbox.mailbox_id}"
    # A minute window is the current and the previous minute bucket: never more lenient than the limit.
    counts = _sums([(day_key, hour - 23), (box_key, minute - 1)]
                   + [(f"dom:{name}", minute - 1) for name in domains]
                   + [(f"rcpt:{rcpt.lower()}", minute - 59) for rcpt in dict.fromkeys(remote)])
    day = counts.get(day_key, 0)
    if day + len(remote) > cap:
        raise MxdError("daily_cap_reached", f"{day} recipients in the last 24 hours; the cap is {cap}",
                       retry_after=int(3600 - now % 3600) + 1)
    sent = counts.get(box_key, 0)
    if sent + len(remote) > cfg.rate_per_mailbox_per_minute:
        raise MxdError("rate_limited", f"{mailbox.mailbox_address} sent to {sent} recipients in the last minute "
                       f"(limit {cfg.rate_per_mailbox_per_minute})", retry_after=int(60 - now % 60) + 1)
    for name, extra in domains.items():
        count = counts.get(f"dom:{name}", 0)
        if count + extra > cfg.rate_per_domain_per_minute:
            raise MxdError("rate_limited", f"{count} recipients at {name} in the last minute "
                           f"(limit {cfg.rate_per_domain_per_minute})", retry_after=int(60 - now % 60) + 1)
    for rcpt in remote:
        count = counts.get(f"rcpt:{rcpt.lower()}", 0)
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
            if execute('SELECT 1 FROM "queue_entry" WHERE "domain" = ? LIMIT 1', (name,)).fetchone() is None:
                return f"first contact with {name}"
    return None
