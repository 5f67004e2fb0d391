"""The MX's checks before the 250: who the client is (trusted networks, DNS lists, limits), and at DATA
what the message is (SPF, DKIM, DMARC and ARC through `mxd.authn.authenticate`, then the spam engine).

Each check answers a full SMTP reply line when it refuses, or None. What the checks found travels with
the accepted message (`Envelope.checks`, stored as `Inbound.checks`):

    {"auth": {...} | absent, "spam": {...} | absent, "quarantine": [{"code", "detail"}], "notes": [...]}

A DNS timeout or temperror never refuses or loses a message: it is accepted and the note recorded.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from mxd.authn import AuthResults, DkimResult
from mxd.config import Config, parse_dns_lists
from mxd.defences import counters, dnsbl, spamengine
from mxd.defences.inline import Authenticator
from mxd.defences.limits import ClientLimits, Trusted
from mxd.defences.rdns import ClientNames
from mxd.resolver import Resolver

log = logging.getLogger("mxd.defences")

HARVEST_CLOSE = "421 4.7.1 Too many unknown recipients from your address; closing connection"
HARVEST_PAUSED = "421 4.7.1 Too many unknown recipients from your address recently; try again later"
TOO_MANY_MESSAGES = "451 4.7.1 Too many messages from your {}; try again later"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients from your {}; try again later"
SPAM_REJECT = "550 5.7.1 Message refused: the spam filter rejects it"
SPAM_SOFT = "451 4.7.1 Message deferred by the spam filter; try again later"


def listed_reply(ip: str, zone: str) -> str:
    return f"554 5.7.1 Service unavailable; client [{ip}] listed by {zone}"


def dmarc_reply(domain: str) -> str:
    # RFC 7489 6.3 (p=reject) and 10.3: reject during the SMTP transaction, saying why.
    return (f"550 5.7.1 Unauthenticated mail from {domain} is not accepted: its DMARC policy is reject "
            "(RFC 7489 6.3)")


def spf_reply(domain: str, ip: str) -> str:
    return f"550 5.7.1 SPF fail: {domain} does not permit [{ip}] to send its mail (RFC 7208 8.4)"


# ---------------------------------------------------------------- AuthResults as JSON, and back
def auth_to_json(auth: AuthResults) -> dict[str, Any]:
    spf, dmarc = auth.spf_detail, auth.dmarc_detail
    return {
        "header_value": auth.header_value, "spf": auth.spf, "spf_domain": auth.spf_domain,
        "spf_reason": spf.reason if spf else "",
        "dkim": [{"result": d.result, "domain": d.domain, "selector": d.selector, "algorithm": d.algorithm,
                  "header_b": d.header_b, "reason": d.reason} for d in auth.dkim],
        "dmarc": auth.dmarc, "dmarc_policy": auth.dmarc_policy, "from_domain": auth.from_domain,
        "dmarc_reason": dmarc.reason if dmarc else "",
        "dmarc_record_domain": dmarc.record_domain if dmarc else "", **auth.arc_json(),
    }


def auth_from_json(data: dict[str, Any]) -> AuthResults:
    """What `messages.deliver` needs of an AuthResults, rebuilt from `auth_to_json`."""
    dkim = [DkimResult(str(d.get("result", "")), str(d.get("domain", "")), str(d.get("selector", "")),
                       str(d.get("algorithm", "")), str(d.get("header_b", "")), str(d.get("reason", "")))
            for d in data.get("dkim") or []]
    return AuthResults(str(data.get("spf", "none")), str(data.get("spf_domain", "")), dkim,
                       str(data.get("dmarc", "none")), data.get("dmarc_policy"), str(data.get("from_domain", "")),
                       str(data.get("header_value", "")), arc=str(data.get("arc", "none")),
                       arc_sealers=[str(s) for s in data.get("arc_sealers") or []],
                       dmarc_override=str(data.get("dmarc_override", "")))


# ---------------------------------------------------------------- the verdict on authentication
@dataclass
class Decision:
    reply: str | None = None                 # a refusal, or None
    reason: str = ""                         # why (counted): dmarc_reject, spf_fail, spam, spam_soft
    quarantine: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def judge_auth(cfg: Config, auth: AuthResults, ip: str) -> Decision:
    """RFC 7489 6.3 / 6.6: what the author domain's DMARC policy asks for a failing message, and the SPF
    -all rule for domains without DMARC. Temporary errors accept (RFC 7489 6.6.3 step 5)."""
    out = Decision()
    if auth.spf == "temperror":
        out.notes.append(f"spf temperror for {auth.spf_domain}: accepted")
    if auth.dmarc in ("temperror", "permerror"):
        reason = auth.dmarc_detail.reason if auth.dmarc_detail else ""
        out.notes.append(f"dmarc {auth.dmarc} for {auth.from_domain or 'the author domain'}: {reason}".rstrip(": "))
    if auth.dmarc == "fail":
        domain = auth.from_domain
        if auth.dmarc_policy == "reject":
            if cfg.dmarc_reject:
                return Decision(dmarc_reply(domain), "dmarc_reject", notes=out.notes)
            out.quarantine.append({"code": "dmarc_reject",
                                   "detail": f"fails DMARC; {domain} publishes p=reject (dmarc_reject is off)"})
        elif auth.dmarc_policy == "quarantine":
            out.quarantine.append({"code": "dmarc_quarantine", "detail": f"fails DMARC; {domain} publishes p=quarantine"})
    elif auth.dmarc == "none" and auth.spf == "fail" and cfg.spf_fail_reject:
        return Decision(spf_reply(auth.spf_domain, ip), "spf_fail", notes=out.notes)
    return out


def judge_spam(verdict: spamengine.SpamVerdict) -> Decision:
    if verdict.unscored:
        return Decision(notes=[f"spam engine: unscored ({verdict.unscored})"])
    if verdict.action == "reject":
        return Decision(SPAM_REJECT, "spam")
    if verdict.action == "soft_reject":
        return Decision(SPAM_SOFT, "spam_soft")
    if verdict.action == "quarantine":
        return Decision(quarantine=[{"code": "spam", "detail": f"spam score {verdict.score} "
                                                               f"(required {verdict.required_score})"}])
    return Decision()


@dataclass
class DataOutcome:
    reply: str | None                        # refusal, or None: accept
    checks: dict[str, Any]
    auth_results: str = ""                   # the Authentication-Results field body ("" when not checked)


class Gate:
    """One per MX: the parsed settings, the limits' memory and the thread pool of the checks at DATA."""

    def __init__(self, cfg: Config, resolver: Resolver) -> None:
        self.cfg, self.resolver = cfg, resolver
        self.client_names = ClientNames(resolver)
        self.trusted = Trusted(cfg.trusted_networks)
        self.blocklists = parse_dns_lists(cfg.dnsbl_zones)
        self.allowlists = parse_dns_lists(cfg.dnswl_zones)
        self.limits = ClientLimits(
            messages=cfg.client_messages_per_minute, messages_net=cfg.client_messages_per_net_per_minute,
            recipients=cfg.client_recipients_per_minute, recipients_net=cfg.client_recipients_per_net_per_minute,
            unknown=cfg.unknown_recipients_per_ip, pause=cfg.seconds("harvest_pause"))
        self._listed: dict[str, tuple[float, str]] = {}     # ip -> (until, zone): a recent listing, for connect
        self.authenticate = Authenticator(resolver, cfg.hostname, cfg.trusted_arc_sealers)

    def close(self) -> None:
        self.authenticate.close()

    # ---------------------------------------------------------------- the client
    def at_connect(self, ip: str) -> str | None:
        """A refusal for a client known bad already (harvesting pause, a listing seen in the last minute)."""
        if ip in self.trusted:
            return None
        if self.limits.paused(ip):
            counters.refused("harvest_pause")
            return HARVEST_PAUSED
        seen = self._listed.get(ip)
        if seen is not None:
            if seen[0] > time.monotonic():
                counters.refused("dnsbl")
                return listed_reply(ip, seen[1])
            del self._listed[ip]
        return None

    def start_lookup(self, ip: str) -> "asyncio.Task[dnsbl.ClientVerdict] | None":
        """The DNS list lookups for a new client, started at connect so the banner waits for nothing."""
        if self.cfg.rspamd_url:
            self.client_names.start(ip)         # its name for the spam engine, ready by DATA
        if not (self.blocklists or self.allowlists) or ip in self.trusted:
            return None
        return asyncio.ensure_future(dnsbl.check_client(self.resolver, self.blocklists, self.allowlists, ip))

    def client_verdict(self, ip: str, verdict: dnsbl.ClientVerdict) -> str | None:
        """554 when the client is listed (remembered a minute, so its next connection is refused at once)."""
        if not verdict.listed_by:
            return None
        if len(self._listed) > 10_000:
            self._listed.clear()
        self._listed[ip] = (time.monotonic() + 60.0, verdict.listed_by)
        return listed_reply(ip, verdict.listed_by)

    def at_mail(self, ip: str) -> str | None:
        if ip in self.trusted:
            return None
        over = self.limits.message(ip)
        if over:
            counters.refused("messages_per_" + over)
            return TOO_MANY_MESSAGES.format("address" if over == "ip" else "network")
        return None

    def at_rcpt_accepted(self, ip: str) -> str | None:
        """Called for a recipient about to be accepted: a 452 when the client is over its limit."""
        if ip in self.trusted:
            return None
        over = self.limits.recipient(ip)
        if over:
            counters.refused("recipients_per_" + over)
            return TOO_MANY_RCPTS.format("address" if over == "ip" else "network")
        return None

    def at_rcpt_unknown(self, ip: str) -> str | None:
        """Called for an unknown recipient: 421 (and the connection closed) once the client harvests."""
        if ip in self.trusted:
            return None
        if self.limits.unknown_recipient(ip):
            counters.refused("harvest")
            return HARVEST_CLOSE
        return None

    # ---------------------------------------------------------------- the message
    async def at_data(self, data: bytes, *, ip: str, helo: str, mail_from: str, rcpts: list[str],
                      queue_id: str, notes: list[str] | None = None) -> DataOutcome:
        """Authentication, then the spam engine; one answer for the whole transaction. Never raises."""
        started = time.perf_counter()
        checks: dict[str, Any] = {"quarantine": [], "notes": list(notes or [])}
        value = ""
        decision = Decision()
        if self.cfg.auth_checks:
            try:
                auth = await self.authenticate(data, ip=ip, helo=helo, mail_from=mail_from)
            except Exception:
                log.exception("authentication before the 250 failed for a message from %s; accepted", ip)
                checks["notes"].append("authentication checks failed (internal error): accepted unchecked")
            else:
                checks["auth"] = auth_to_json(auth)
                value = auth.header_value
                decision = judge_auth(self.cfg, auth, ip)
        engine_seconds = None
        if decision.reply is None and self.cfg.rspamd_url:
            engine_started = time.perf_counter()
            try:
                client_name = await self.client_names.name(ip)
                verdict = await spamengine.check(self.cfg, data, ip=ip, helo=helo, mail_from=mail_from, rcpts=rcpts,
                                                 authentication_results=value, hostname=client_name,
                                                 queue_id=queue_id)
            except Exception as e:                      # the contract says never; a message is never lost to it
                log.exception("spam engine failed")
                verdict = spamengine.SpamVerdict("accept", unscored=f"{type(e).__name__}: {e}"[:200])
            checks["spam"] = verdict.to_json()
            engine_seconds = time.perf_counter() - engine_started
            spam = judge_spam(verdict)
            decision.notes += spam.notes
            decision.quarantine += spam.quarantine
            if spam.reply is not None:
                decision.reply, decision.reason = spam.reply, spam.reason
        checks["quarantine"] += decision.quarantine
        checks["notes"] += decision.notes
        took = time.perf_counter() - started
        counters.checked(took)
        if engine_seconds is not None:
            counters.engine_checked(engine_seconds, took)
        if decision.reply is not None:
            counters.refused(decision.reason)
        return DataOutcome(decision.reply, checks, value)


def describe(cfg: Config) -> dict[str, Any]:
    """The defences as configured, for health: the spam engine and the DNS lists."""
    engine: dict[str, Any] = ({"name": "rspamd", "url": cfg.rspamd_url} if cfg.rspamd_url else
                              {"name": "none", "note": "no spam engine configured: mxd uses its own signals only "
                                                       "(DNS lists, SPF, DKIM, DMARC, ARC, mailbox policies, trust signals)"})
    return {"spam_engine": engine, "dnsbl_zones": list(cfg.dnsbl_zones),
            "dnswl_zones": list(cfg.dnswl_zones),
            "dmarc_reject": cfg.dmarc_reject, "spf_fail_reject": cfg.spf_fail_reject}
