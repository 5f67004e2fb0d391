"""Configuration: one dataclass, read from a TOML file, then overridden by MXD_* variables.

Every field of `Config` can be set in the TOML file under its own name and by
the environment variable `MXD_<NAME>` (upper case). Lists are written in the
environment as comma-separated values. A bad value raises `ConfigError`
naming the key.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message names the key."""


def default_data_dir() -> str:
    """Root gets /var/lib/mxd; anyone else gets $XDG_DATA_HOME/mxd (~/.local/share/mxd)."""
    if os.geteuid() == 0:
        return "/var/lib/mxd"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "mxd")


def _fqdn() -> str:
    name = socket.getfqdn()
    return name if "." in name else f"{name}.localdomain"


@dataclass
class Config:
    # --- where state lives ---
    data_dir: str = field(default_factory=default_data_dir)
    """Directory holding the store, DKIM keys, TLS certificate and spool. One volume holds all state."""
    store_url: str = ""
    """Peewee database URL. Empty means SQLite at DATA_DIR/mxd.db. PostgreSQL: postgresql://user:pw@host/db."""

    # --- identity ---
    hostname: str = field(default_factory=_fqdn)
    """The name this host greets with (EHLO/banner) and writes into Received headers."""
    public_url: str = ""
    """The URL where this server's HTTP API is reached from outside, e.g. https://mail.example.com. Links in the
    mail mxd sends and the documents it serves (/install.sh, /llms.txt, the skills) use it. Empty: mail names
    paths only, and documents use the request's Host when it is a plain host[:port], else the hostname."""

    # --- listeners ---
    mx_listen: str = "0.0.0.0:25"
    """host:port of the inbound MX listener. Empty string disables it."""
    http_listen: str = "127.0.0.1:8025"
    """host:port of the HTTP API."""
    trusted_proxies: list[str] = field(default_factory=list)
    """Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are believed.
    Empty: none, the client is the connecting address."""
    http_header_timeout: float = 10.0
    """Seconds an HTTP client has to send a request's headers (from connecting, or from its previous answer),
    and the longest pause allowed while it sends a body."""
    http_keepalive_timeout: float = 5.0
    """Seconds an idle HTTP keep-alive connection is kept open after an answer."""

    # --- DNS ---
    dns_nameservers: list[str] = field(default_factory=list)
    """Nameservers as host or host:port. Empty means the system resolver (/etc/resolv.conf)."""
    dns_timeout: float = 5.0
    """Seconds before a DNS query is given up."""

    # --- TLS ---
    tls_cert: str = ""
    """PEM certificate chain for STARTTLS. Empty means DATA_DIR/tls/cert.pem (self-signed, made by `mxd init`)."""
    tls_key: str = ""
    """PEM private key for tls_cert. Empty means DATA_DIR/tls/key.pem."""
    tls_watch_interval: float = 10.0
    """Seconds between checks of tls_cert and tls_key for a change on disk (certbot renewing them); a changed pair is
    loaded without a restart, as on SIGHUP. 0: only SIGHUP reloads them."""
    tls_min_version: str = "1.2"
    """Lowest TLS version on submission (587, 465) and HTTPS: "1.2" or "1.3". The MX keeps any version a peer has."""
    acme: bool = False
    """Get and renew the certificate with ACME (Let's Encrypt by default) for the hostname and mta-sts.<domain> of
    every domain with MTA-STS on (when https_listen serves their policies); kept in DATA_DIR/acme/. tls_cert and
    tls_key (or the self-signed pair) are then served only until the first certificate is issued."""
    acme_directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    """The ACME server's directory URL."""
    acme_email: str = ""
    """Contact address given to the ACME server for the account (expiry notices). Empty: no contact."""
    acme_challenge: str = "http-01"
    """How names are proven: "http-01" (served on acme_http_listen) or "tls-alpn-01" (on https_listen)."""
    acme_http_listen: str = "0.0.0.0:80"
    """host:port answering ACME HTTP-01 challenges; every other path is redirected to HTTPS. Empty disables it."""
    acme_ca_file: str = ""
    """PEM file of CA certificates trusted for the ACME server's own HTTPS (a test ACME server). Empty: the system's."""
    https_listen: str = ""
    """host:port of the HTTPS listener (the API and the MTA-STS policy), with the same certificate. Empty disables it."""
    mta_sts_max_age: int = 604800
    """max_age in seconds of the MTA-STS policies served for our domains (RFC 8461 3.2)."""

    # --- inbound limits ---
    max_message_size: int = 25 * 1024 * 1024
    """Largest message accepted, in bytes (advertised in EHLO SIZE)."""
    max_recipients: int = 100
    """Most RCPT TO accepted in one transaction; more get 452 4.5.3 (RFC 5321 4.5.3.1.8)."""
    max_errors: int = 10
    """Failed commands in one session before the connection is closed with 421."""
    max_connections_per_ip: int = 20
    """Concurrent SMTP connections accepted from one client IP."""
    max_connections: int = 500
    """Concurrent SMTP connections in all."""
    smtp_timeout: float = 300.0
    """Seconds of client silence before an SMTP session is closed (RFC 5321 4.5.3.2.7)."""
    duplicate_window: str = "1d"
    """A message an SMTP client sends again within this time (same client IP, envelope, Message-ID and
    size: a retry after a lost reply) is answered 250 and not stored twice. 0 turns this off."""
    max_auth_failures: int = 3
    """Failed SMTP AUTH attempts in one session before it is closed with 421."""
    auth_failures_per_ip: int = 10
    """Failed SMTP AUTH attempts from one client IP per 10 minutes; beyond it AUTH gets 421 at once."""
    data_line_endings: str = "normalize"
    """What to do with a bare CR, bare LF or NUL in DATA: "normalize" (to CRLF; NUL removed) or "reject" (550 5.6.0)."""

    # --- threads ---
    thread_subject_window_days: int = 30
    """A reply without References joins a thread by subject only within this many days."""

    # --- processing ---
    auth_checks: bool = True
    """Run SPF, DKIM and DMARC on inbound mail and record Authentication-Results."""
    pipeline_processes: int = 1
    """Worker processes that parse and authenticate inbound mail (0: threads in the main process)."""

    # --- inbound defences (checks before the 250, quarantine, trust signals) ---
    trusted_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """Client networks (CIDR) that skip DNS blocklists and per-client limits (authentication and the spam
    engine still run). Loopback by default: local programs handing mail to the MX."""
    dnsbl_zones: list[str] = field(default_factory=list)
    """DNS blocklists asked about each client IP at connect: "zone" (any 127.0.0.0/8 answer lists) or
    "zone=127.0.0.2,127.0.0.4-127.0.0.7" (only those answers list). A listed client is refused with the zone named."""
    dnswl_zones: list[str] = field(default_factory=list)
    """DNS allow-lists, written like dnsbl_zones: a client listed on one skips the blocklists."""
    dmarc_reject: bool = True
    """Refuse (550 5.7.1) mail that fails DMARC when the author domain publishes p=reject (RFC 7489 6.3);
    false: quarantine it instead."""
    spf_fail_reject: bool = True
    """Refuse (550 5.7.1) mail whose SPF result is fail (-all) when the envelope domain publishes no DMARC record."""
    rspamd_url: str = ""
    """Base URL of an rspamd normal worker (e.g. http://127.0.0.1:11333). Empty: no spam engine, mxd's own
    signals only."""
    rspamd_timeout: float = 5.0
    """Seconds rspamd has to score a message; slower (or down) means accepted and recorded as unscored."""
    client_messages_per_minute: int = 60
    """Messages one client IP may send to the MX per minute; beyond it 451 4.7.1."""
    client_messages_per_net_per_minute: int = 240
    """Messages one client network (/24 for IPv4, /64 for IPv6) may send per minute."""
    client_recipients_per_minute: int = 300
    """Accepted recipients one client IP may give per minute; beyond it 452 4.5.3."""
    client_recipients_per_net_per_minute: int = 1000
    """Accepted recipients one client network (/24, /64) may give per minute."""
    unknown_recipients_per_ip: int = 20
    """Unknown-recipient attempts one client IP may make in ten minutes (directory harvesting); beyond it
    421 4.7.1 and the client is paused for harvest_pause."""
    harvest_pause: str = "10m"
    """How long a client caught harvesting addresses is answered 421 at connect."""
    trusted_arc_sealers: list[str] = field(default_factory=list)
    """Domains of forwarders (mailing lists, forwarding services) whose ARC-sealed authentication results may
    turn a DMARC failure caused by forwarding into a pass."""
    report_max_bytes: int = 20 * 1024 * 1024
    """Largest size a DMARC or TLS-RPT report may expand to once unzipped; beyond it the report is flagged, not parsed."""

    # --- submission (agents and scripts sending mail) ---
    submission_listen: str = "0.0.0.0:587"
    """host:port of SMTP submission with STARTTLS required before AUTH (RFC 6409). Empty disables it."""
    submissions_listen: str = "0.0.0.0:465"
    """host:port of SMTP submission over implicit TLS (RFC 8314). Empty disables it."""

    # --- outbound ---
    outbound_enabled: bool = True
    """When false every send is refused with outbound_disabled (a hard stop)."""
    outbound_mx_port: int = 25
    """TCP port of recipients' MX hosts (tests point it elsewhere)."""
    smart_host: str = ""
    """host:port of a relay for all outbound mail (for networks that block port 25). Empty: direct to MX."""
    outbound_allow_private: bool = False
    """Deliver to MX hosts at loopback, private, link-local or other non-public addresses (for tests and LANs). The smart host is always allowed."""
    outbound_mta_sts: bool = True
    """Honour recipient domains' MTA-STS policies (RFC 8461): in enforce mode deliver only to the MX hosts a policy
    names, over TLS with a certificate valid for that name."""
    outbound_dane: bool = True
    """Honour DNSSEC-validated TLSA records of recipients' MX hosts (RFC 7672). Needs a validating resolver in
    dns_nameservers (one that sets the AD bit); answers without it are treated as unsigned."""
    outbound_tls_ca_file: str = ""
    """PEM file of CA certificates trusted, besides the system's, for MTA-STS policy hosts and MX certificates."""
    tls_reports: bool = True
    """Send a daily SMTP TLS report (RFC 8460) to every recipient domain that publishes a _smtp._tls rua mailto:."""
    tls_report_from: str = ""
    """Address the TLS reports are sent from (one of our domains, so they are DKIM-signed with its key).
    Empty: tls-reports@ the default domain, else the first domain."""
    smart_host_tls: str = "required"
    """TLS to the smart host: "required" (STARTTLS), "implicit" (port 465 style), "opportunistic" or "none"."""
    smart_host_username: str = ""
    """AUTH user name for the smart host (empty: no AUTH)."""
    smart_host_password: str = ""
    """AUTH password for the smart host."""
    retry_schedule: list[str] = field(default_factory=lambda: ["5m", "10m", "30m", "1h", "2h", "4h"])
    """Delays between delivery attempts after a temporary failure; the last repeats. Jitter of +-10% is added."""
    queue_lifetime: str = "5d"
    """How long a message is retried before it fails and bounces (RFC 5321 4.5.4.1: at least 4-5 days)."""
    delay_warning: str = "4h"
    """After this long undelivered, the sender gets one delayed-delivery notice. Empty or 0 disables it."""
    connections_per_domain: int = 4
    """Concurrent outbound connections to one destination domain."""
    max_recipients_per_send: int = 50
    """Recipients allowed on one outgoing message."""
    daily_send_cap: int = 100
    """Outgoing recipients per rolling 24 hours for the organisation."""
    rate_per_mailbox_per_minute: int = 60
    """Outgoing recipients per sending mailbox per minute."""
    rate_per_domain_per_minute: int = 60
    """Outgoing recipients per recipient domain per minute."""
    rate_per_recipient_per_hour: int = 20
    """Messages to one recipient per hour."""
    hold_new_domains: bool = False
    """Hold (for operator release) the first message to a recipient domain never written to before."""
    hold_recipient_threshold: int = 0
    """Hold a message with more recipients than this (0: never)."""
    hold_rules: list[str] = field(default_factory=list)
    """Operator rules that hold matching mail for release: "@domain" or "user@domain" (a recipient), "from:box@domain" (a sender)."""

    # --- the agent platform ---
    default_domain: str = ""
    """Domain of mailboxes created without one (POST /v1/agents/{id}/mailboxes without domain_id). Empty: the first domain created."""
    signup_enabled: bool = False
    """Allow public sign-up of organisations (POST /v1/auth/signup). Off: only the operator creates them."""
    signup_rate_per_ip_per_hour: int = 10
    """Public sign-ups accepted from one client address per hour."""
    signup_rate_per_hour: int = 60
    """Public sign-ups accepted per hour from all clients together (each mails a stranger's address)."""
    system_mail_daily_cap: int = 500
    """Mail mxd sends itself (sign-up codes, welcome notices) per rolling 24 hours: a budget of its own, apart from every daily_send_cap."""
    default_retention_days: int = 7
    """Days a mailbox keeps messages when it sets no retention of its own (0: forever)."""
    retention_interval: str = "1h"
    """How often the background retention sweep runs."""
    webhook_retry_schedule: list[str] = field(default_factory=lambda: ["30s", "2m", "10m", "30m", "1h", "2h", "4h", "8h", "12h"])
    """Delays between webhook delivery attempts after a failure; the last repeats until webhook_lifetime. Jitter of +-10%."""
    webhook_lifetime: str = "3d"
    """How long a webhook delivery is retried before it is given up."""
    webhook_timeout: float = 10.0
    """Seconds to wait for a webhook receiver's answer."""
    webhook_allow_private: bool = False
    """Allow webhook URLs that resolve to loopback, private or link-local addresses (for tests and LANs)."""
    audit_retention_days: int = 365
    """Days audit rows are kept; the retention sweep removes older ones (0: forever)."""

    # --- logging ---
    log_level: str = "INFO"
    """Python logging level name."""

    # ------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def effective_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_path / 'mxd.db'}"

    @property
    def tls_cert_path(self) -> Path:
        return Path(self.tls_cert) if self.tls_cert else self.data_path / "tls" / "cert.pem"

    @property
    def tls_key_path(self) -> Path:
        return Path(self.tls_key) if self.tls_key else self.data_path / "tls" / "key.pem"

    @property
    def dkim_dir(self) -> Path:
        return self.data_path / "dkim"

    def validate(self) -> None:
        for key in ("mx_listen", "http_listen"):
            value = getattr(self, key)
            if value:
                parse_hostport(value, key)
        for ns in self.dns_nameservers:
            parse_hostport(ns, "dns_nameservers", default_port=53)
        if self.data_line_endings not in ("normalize", "reject"):
            raise ConfigError('data_line_endings: must be "normalize" or "reject"')
        for key in ("max_message_size", "max_recipients", "max_errors", "max_connections_per_ip", "max_connections",
                    "max_auth_failures", "auth_failures_per_ip"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be a positive integer")
        if not self.hostname:
            raise ConfigError("hostname: must not be empty")
        for key in ("submission_listen", "submissions_listen", "smart_host"):
            if getattr(self, key):
                parse_hostport(getattr(self, key), key)
        for key in ("acme_http_listen", "https_listen"):
            if getattr(self, key):
                parse_hostport(getattr(self, key), key)
        if self.tls_min_version not in ("1.2", "1.3"):
            raise ConfigError('tls_min_version: must be "1.2" or "1.3"')
        if self.acme_challenge not in ("http-01", "tls-alpn-01"):
            raise ConfigError('acme_challenge: must be "http-01" or "tls-alpn-01"')
        if self.acme and urllib.parse.urlsplit(self.acme_directory).scheme != "https":
            raise ConfigError(f"acme_directory: expected an https:// URL, got {self.acme_directory!r}")
        if self.acme and self.acme_challenge == "http-01" and not self.acme_http_listen:
            raise ConfigError("acme_http_listen: HTTP-01 challenges need it (or set acme_challenge = \"tls-alpn-01\")")
        if self.acme and self.acme_challenge == "tls-alpn-01" and not self.https_listen:
            raise ConfigError("https_listen: TLS-ALPN-01 challenges are answered there; set it")
        if self.tls_watch_interval < 0:
            raise ConfigError("tls_watch_interval: must be 0 (SIGHUP only) or a positive number of seconds")
        if self.mta_sts_max_age < 86400 or self.mta_sts_max_age > 31557600:
            raise ConfigError("mta_sts_max_age: must be between 86400 (a day) and 31557600 seconds (RFC 8461 3.2)")
        if self.smart_host_tls not in ("required", "implicit", "opportunistic", "none"):
            raise ConfigError('smart_host_tls: must be "required", "implicit", "opportunistic" or "none"')
        if not self.retry_schedule:
            raise ConfigError("retry_schedule: needs at least one delay")
        for item in self.retry_schedule:
            parse_duration(item, "retry_schedule")
        parse_duration(self.queue_lifetime, "queue_lifetime")
        if self.delay_warning:
            parse_duration(self.delay_warning, "delay_warning")
        parse_duration(self.retention_interval, "retention_interval")
        parse_duration(self.duplicate_window, "duplicate_window")
        parse_duration(self.webhook_lifetime, "webhook_lifetime")
        if not self.webhook_retry_schedule:
            raise ConfigError("webhook_retry_schedule: needs at least one delay")
        for item in self.webhook_retry_schedule:
            parse_duration(item, "webhook_retry_schedule")
        for key in ("signup_rate_per_ip_per_hour", "signup_rate_per_hour", "system_mail_daily_cap"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be 0 or a positive integer")
        if self.default_retention_days < 0:
            raise ConfigError("default_retention_days: must be 0 (forever) or a positive number of days")
        if self.audit_retention_days < 0:
            raise ConfigError("audit_retention_days: must be 0 (forever) or a positive number of days")
        for key in ("http_header_timeout", "http_keepalive_timeout"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key}: must be a positive number of seconds")
        parse_duration(self.harvest_pause, "harvest_pause")
        for key in ("client_messages_per_minute", "client_messages_per_net_per_minute", "client_recipients_per_minute",
                    "client_recipients_per_net_per_minute", "unknown_recipients_per_ip", "report_max_bytes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be 0 (no limit) or a positive integer")
        if not self.rspamd_timeout > 0:
            raise ConfigError("rspamd_timeout: must be a positive number of seconds")
        if self.rspamd_url and urllib.parse.urlsplit(self.rspamd_url).scheme not in ("http", "https"):
            raise ConfigError(f"rspamd_url: expected a URL like http://127.0.0.1:11333, got {self.rspamd_url!r}")
        for key in ("dnsbl_zones", "dnswl_zones"):
            try:
                setattr(self, key, [z.name + ("=" + ",".join(_code_range(c) for c in z.codes) if z.codes else "")
                                    for z in parse_dns_lists(getattr(self, key))])
            except ConfigError as e:
                raise ConfigError(f"{key}: {e}") from None
        for item in self.trusted_networks:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(f"trusted_networks: {item!r} is not an address or network (CIDR)") from None
        for item in self.trusted_proxies:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(f"trusted_proxies: {item!r} is not an address or network (CIDR)") from None
        if self.public_url:
            self.public_url = check_public_url(self.public_url)

    def seconds(self, key: str) -> float:
        value = getattr(self, key)
        return parse_duration(value, key) if value else 0.0

    @property
    def retry_delays(self) -> list[float]:
        return [parse_duration(v, "retry_schedule") for v in self.retry_schedule]


def check_public_url(value: str) -> str:
    """public_url as "http(s)://host[:port][/path]" without a trailing slash; raises ConfigError otherwise."""
    parts = urllib.parse.urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or parts.username is not None
            or parts.query or parts.fragment or any(c in value for c in "'\"\\`$<> ")
            or any(ord(c) < 0x21 or ord(c) > 0x7e for c in value)):
        raise ConfigError(f"public_url: expected a URL like https://mail.example.com, got {value!r}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# ---------------------------------------------------------------- DNS block- and allow-list zones (RFC 5782)
_DNSL_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(frozen=True)
class DnsListZone:
    name: str
    codes: tuple[tuple[int, int], ...] = ()      # inclusive ranges of answers that list; () = any in 127/8

    def lists(self, answer: ipaddress.IPv4Address) -> bool:
        return not self.codes or any(lo <= int(answer) <= hi for lo, hi in self.codes)


def _loopback_address(text: str, entry: str) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise ConfigError(f"{entry!r}: {text.strip()!r} is not an IPv4 address") from None
    if address not in _DNSL_LOOPBACK:
        raise ConfigError(f"{entry!r}: return code {address} is outside 127.0.0.0/8 (RFC 5782 2.3)")
    return address


def parse_dns_list(entry: str) -> DnsListZone:
    """"zone" or "zone=127.0.0.2,127.0.0.4-127.0.0.7" -> Zone; ConfigError says what is wrong."""
    name, eq, codes_text = entry.strip().partition("=")
    name = name.strip().lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 200 or any(not label or len(label) > 63 for label in labels) \
            or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"{entry!r}: expected a DNS zone name like zen.spamhaus.org")
    ranges: list[tuple[int, int]] = []
    if eq:
        for item in codes_text.split(","):
            if not item.strip():
                continue
            lo_text, dash, hi_text = item.partition("-")
            lo = _loopback_address(lo_text, entry)
            hi = _loopback_address(hi_text, entry) if dash else lo
            if int(hi) < int(lo):
                raise ConfigError(f"{entry!r}: range {item.strip()!r} ends before it starts")
            ranges.append((int(lo), int(hi)))
        if not ranges:
            raise ConfigError(f"{entry!r}: no return codes after '='")
    return DnsListZone(name, tuple(ranges))


def _looks_like_code(item: str) -> bool:
    head = item.strip().partition("-")[0]
    try:
        ipaddress.IPv4Address(head)
    except ValueError:
        return False
    return True


def rejoin_dns_lists(entries: list[str]) -> list[str]:
    """Zone entries as written, put back together when a comma-separated list (an MXD_DNSBL_ZONES
    variable) split one zone's return codes apart: "z=127.0.0.2", "127.0.0.4" -> "z=127.0.0.2,127.0.0.4"."""
    out: list[str] = []
    for item in entries:
        if out and "=" in out[-1] and _looks_like_code(item):
            out[-1] += "," + item.strip()
        else:
            out.append(item.strip())
    return [item for item in out if item]


def parse_dns_lists(entries: list[str]) -> list[DnsListZone]:
    return [parse_dns_list(e) for e in rejoin_dns_lists(entries)]


def _code_range(codes: tuple[int, int]) -> str:
    lo, hi = (str(ipaddress.IPv4Address(c)) for c in codes)
    return lo if lo == hi else f"{lo}-{hi}"


def parse_duration(value: str, key: str = "duration") -> float:
    """'90s', '5m', '2h', '5d', '1w' or a bare number of seconds."""
    text = str(value).strip().lower()
    try:
        if text and text[-1] in _UNITS:
            number = float(text[:-1]) * _UNITS[text[-1]]
        else:
            number = float(text)
    except ValueError:
        raise ConfigError(f"{key}: cannot read {value!r} as a duration like 30s, 5m, 2h or 5d") from None
    if number < 0:
        raise ConfigError(f"{key}: a duration cannot be negative")
    return number


def parse_hostport(value: str, key: str = "listen", default_port: int | None = None) -> tuple[str, int]:
    """Parse "host:port", "[v6]:port" or (with default_port) a bare host."""
    value = value.strip()
    host, port = value, None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ConfigError(f"{key}: bad address {value!r}")
        host, rest = value[1:end], value[end + 1:]
        if rest.startswith(":"):
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    if port is None:
        if default_port is None:
            raise ConfigError(f"{key}: expected host:port, got {value!r}")
        return host, default_port
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{key}: port must be a number in {value!r}") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{key}: port out of range in {value!r}")
    return host, number


def _coerce(key: str, typ: Any, value: Any) -> Any:
    origin = getattr(typ, "__origin__", None)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if typ is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError(value)
            return str(value)
        if origin is list:
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, list):
                return [str(v) for v in value]
            raise ValueError(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {value!r} as {getattr(typ, '__name__', typ)}") from None
    return value


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def load(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the TOML file (if any), apply MXD_* overrides, validate.

    The file is PATH, else $MXD_CONFIG, else DATA_DIR/mxd.toml when it exists.
    """
    env = dict(os.environ if env is None else env)
    hints = get_type_hints(Config)
    values: dict[str, Any] = {}

    data_dir = env.get("MXD_DATA_DIR") or default_data_dir()
    candidate = path or env.get("MXD_CONFIG")
    if candidate is None and (Path(data_dir) / "mxd.toml").exists():
        candidate = Path(data_dir) / "mxd.toml"
    if candidate is not None:
        try:
            with open(candidate, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config: file {candidate} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {candidate} is not valid TOML: {exc}") from None
        for key, value in raw.items():
            if key not in FIELDS:
                raise ConfigError(f"{key}: unknown key in {candidate}")
            values[key] = _coerce(key, hints[key], value)

    for key in FIELDS:
        name = f"MXD_{key.upper()}"
        if name in env:
            values[key] = _coerce(key, hints[key], env[name])

    cfg = Config(**values)
    cfg.validate()
    return cfg


def to_toml(cfg: Config) -> str:
    """Render the non-default values of cfg as TOML (used by `mxd init`)."""
    lines = []
    defaults = Config()
    for name in FIELDS:
        value = getattr(cfg, name)
        if value == getattr(defaults, name) and name not in ("data_dir", "hostname"):
            continue
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
