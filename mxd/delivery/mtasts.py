"""Outbound MTA-STS (RFC 8461) owns recipient domains' policies: discovered through the _mta-sts TXT
record, fetched over verified HTTPS within size and time limits, cached in the store until max_age,
refreshed before it ends; and the WebPKI check of an MX certificate that a policy asks for.

A policy in memory costs a dict lookup per delivery lane; the TXT record is looked at again and the
policy refetched in the background (RFC 8461 5.1), never while a message waits. A failed fetch keeps
the cached policy; with none cached the domain gets no policy (opportunistic TLS) and the failure is
reported, and the domain is not asked again for RETRY seconds, so a policy host that never answers
costs the time limit once per domain per RETRY, not once per message.
"""
from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import os
import ssl
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from mxd.config import Config, ConfigError
from mxd.db import Database
from mxd.netcheck import refusal
from mxd.resolver import DNSError, Resolver
from mxd.store.models import MtaStsPolicy
from mxd.stspolicy import PolicyError, parse_policy, txt_id

if TYPE_CHECKING:
    from mxd.delivery.tlspolicy import TlsFailure

log = logging.getLogger("mxd.delivery.mtasts")

FETCH_TIMEOUT = 10.0        # seconds for the whole fetch, connect to last byte (RFC 8461 3.3 suggests at most 60)
MAX_POLICY = 64 * 1024      # bytes of policy read at most (RFC 8461 3.3 suggests 64 KiB)
RETRY = 300.0               # seconds before a domain whose discovery or fetch failed is asked again
RECHECK = 300.0             # seconds between looks at the TXT id of a cached policy while mail goes out
MIN_CACHE = 60.0            # a policy is kept at least this long, even with max_age 0
MAX_DOMAINS = 50_000        # domains kept in memory; those without a policy are forgotten first

FETCH_ERROR = "sts-policy-fetch-error"      # RFC 8460 4.3.2.1
POLICY_INVALID = "sts-policy-invalid"
WEBPKI_INVALID = "sts-webpki-invalid"


@dataclass
class Policy:
    """One domain's policy (RFC 8461 3.2)."""
    domain: str
    policy_id: str
    mode: str                   # enforce testing none
    mx: list[str] = field(default_factory=list)
    max_age: int = 0
    text: str = ""

    def matches(self, host: str) -> bool:
        """RFC 8461 4.1: the host is named by an mx pattern ("*." matches one leftmost label)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def policy_strings(self) -> list[str]:
        """RFC 8460 4.4: the policy's lines, for the report's policy-string."""
        return [line.strip() for line in self.text.splitlines() if line.strip()]


class FetchError(Exception):
    """The policy could not be had: an RFC 8460 result type and why."""

    def __init__(self, result_type: str, text: str) -> None:
        super().__init__(text)
        self.result_type, self.text = result_type, text


@dataclass
class _State:
    """What is known of one domain: its cached policy (maybe expired) and when to look again."""
    policy: Policy | None = None
    expires_at: float = 0.0
    checked_at: float = 0.0                 # the last look at the TXT record
    retry_at: float = 0.0                   # no discovery before this, after a failure or a missing record
    failure: "TlsFailure | None" = None     # the last failed discovery, reported while no policy is in force

    def in_force(self, now: float) -> Policy | None:
        return self.policy if self.policy is not None and self.expires_at > now else None


class PolicyCache:
    """Policies by domain: from memory, else the store, else fetched (RFC 8461 5.1)."""

    retry = RETRY
    recheck = RECHECK
    fetch_timeout = FETCH_TIMEOUT

    def __init__(self, cfg: Config, db: Database, resolver: Resolver) -> None:
        self.cfg, self.db, self.resolver = cfg, db, resolver
        self._states: dict[str, _State] = {}
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._running: dict[str, asyncio.Task] = {}     # one discovery at a time per domain

    async def get(self, domain: str) -> "tuple[Policy | None, TlsFailure | None]":
        """(the policy in force, a fetch or parse failure to report). No policy: (None, None)."""
        domain = domain.lower().rstrip(".")
        if not domain or domain.startswith("["):       # an address literal has no policy
            return None, None
        if not self._loaded:
            await self._load()
        now = time.time()
        state = self._states.get(domain)
        if state is None:
            state = self._states[domain] = _State()
            self._trim()
        policy = state.in_force(now)
        if policy is not None:
            if now >= state.retry_at and (now - state.checked_at >= self.recheck
                                          or state.expires_at - now < policy.max_age / 4):
                self._discover(domain, state)          # RFC 8461 5.1: refreshed in the background
            return (policy if policy.mode != "none" else None), None
        if now >= state.retry_at:
            await asyncio.shield(self._discover(domain, state))
            policy = state.in_force(time.time())
            if policy is not None:
                return (policy if policy.mode != "none" else None), None
        return None, state.failure

    async def close(self) -> None:
        """Stop the background refreshes."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ discovery
    def _discover(self, domain: str, state: _State) -> asyncio.Task:
        task = self._running.get(domain)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refresh(domain, state))
            self._running[domain] = task
            task.add_done_callback(lambda _t: self._running.pop(domain, None))
        return task

    async def _refresh(self, domain: str, state: _State) -> None:
        try:
            await self._refresh_once(domain, state)
        except Exception:            # a bug or a store failure: the domain goes on without a new policy
            log.exception("MTA-STS refresh for %s failed", domain)
            state.retry_at = time.time() + self.retry

    async def _refresh_once(self, domain: str, state: _State) -> None:
        from mxd.delivery.tlspolicy import TlsFailure
        now = time.time()
        state.checked_at = now
        try:
            records = await self.resolver.atxt(f"_mta-sts.{domain}")
        except DNSError as exc:
            state.retry_at = now + self.retry
            log.info("MTA-STS discovery for %s failed: %s", domain, exc)
            return
        policy_id = txt_id(records)
        cached = state.in_force(now)
        if policy_id is None:
            # RFC 8461 3.1, 5.1: no (valid) record; a cached policy stays in force until it expires
            state.retry_at, state.failure = now + self.retry, None
            return
        if cached is not None and cached.policy_id == policy_id and state.expires_at - now >= cached.max_age / 4:
            return                                      # the same policy, not near its end
        try:
            text = await asyncio.wait_for(self._fetch(domain), self.fetch_timeout)
            parsed = parse_policy(text)
        except (FetchError, PolicyError, asyncio.TimeoutError) as exc:
            if isinstance(exc, FetchError):
                failure = TlsFailure(exc.result_type, f"MTA-STS policy of {domain}: {exc.text}")
            elif isinstance(exc, PolicyError):
                failure = TlsFailure(POLICY_INVALID, f"MTA-STS policy of {domain} is invalid: {exc}")
            else:
                failure = TlsFailure(FETCH_ERROR, f"MTA-STS policy of {domain}: no answer within "
                                                  f"{self.fetch_timeout:g} s")
            state.retry_at, state.failure = time.time() + self.retry, failure
            log.info("%s%s", failure.text, " (the cached policy stays in force)" if cached else "")
            if state.policy is not None:
                await self.db.write(_note_error, domain, failure.text)
            return
        now = time.time()
        policy = Policy(domain, policy_id, parsed.mode, list(parsed.mx), parsed.max_age, text)
        state.policy, state.expires_at = policy, now + max(parsed.max_age, MIN_CACHE)
        state.failure, state.retry_at = None, 0.0
        await self.db.write(_save, policy, now, state.expires_at)

    async def _fetch(self, domain: str) -> str:
        """The policy text from https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461 3.3)."""
        host = f"mta-sts.{domain}"
        try:
            addresses = await self.resolver.aa(host) + await self.resolver.aaaaa(host)
        except DNSError as exc:
            raise FetchError(FETCH_ERROR, f"cannot resolve {host}: {exc}") from None
        if not self.cfg.outbound_allow_private:
            addresses = [ip for ip in addresses if refusal(ip) is None]
        if not addresses:
            raise FetchError(FETCH_ERROR, f"{host} has no (public) address")
        last = FetchError(FETCH_ERROR, f"{host}: no address answered")
        for ip in addresses:
            try:
                return await fetch_policy(host, ip, verifying_context(self.cfg.outbound_tls_ca_file))
            except FetchError as exc:
                if exc.result_type != FETCH_ERROR:
                    raise                                  # an answer that was wrong, not a host that was down
                last = exc
        raise last

    # ------------------------------------------------------------ memory and store
    async def _load(self) -> None:
        async with self._load_lock:
            if self._loaded:
                return
            rows = await self.db.read(_unexpired, time.time())
            for row in rows:
                policy = Policy(row.domain, row.policy_id, row.mode, list(row.mx or []), row.max_age, row.text)
                self._states.setdefault(row.domain, _State(policy, row.expires_at, row.checked_at))
            self._loaded = True

    def _trim(self) -> None:
        if len(self._states) > MAX_DOMAINS:
            now = time.time()
            for domain in [d for d, s in self._states.items() if s.in_force(now) is None and d not in self._running]:
                del self._states[domain]


async def fetch_policy(host: str, ip: str, context: ssl.SSLContext) -> str:
    """GET the policy from `ip` as `host`: verified TLS, no redirects, 200 and text/plain only, at most
    MAX_POLICY bytes (RFC 8461 3.3). Raises FetchError."""
    url = f"https://[{ip}]/.well-known/mta-sts.txt" if ":" in ip else f"https://{ip}/.well-known/mta-sts.txt"
    try:
        async with httpx.AsyncClient(verify=context, follow_redirects=False, trust_env=False,
                                     timeout=FETCH_TIMEOUT) as client:
            async with client.stream("GET", url, headers={"Host": host, "Accept": "text/plain",
                                                          "Accept-Encoding": "identity"},
                                     extensions={"sni_hostname": host}) as r:
                if r.is_redirect:
                    raise FetchError(FETCH_ERROR, f"{host} answered HTTP {r.status_code} (a redirect, "
                                                  "which MTA-STS does not follow)")
                if r.status_code != 200:
                    raise FetchError(FETCH_ERROR, f"{host} answered HTTP {r.status_code}")
                ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype != "text/plain":
                    raise FetchError(POLICY_INVALID, f"{host} served the policy as {ctype[:60] or 'no type'!r}, "
                                                     "not text/plain")
                if r.headers.get("content-encoding", "identity").strip().lower() != "identity":
                    # read as sent: a compressed body could unpack to far more than the size limit
                    raise FetchError(POLICY_INVALID, f"{host} served the policy compressed")
                body = bytearray()
                async for chunk in r.aiter_raw():
                    body += chunk
                    if len(body) > MAX_POLICY:
                        raise FetchError(POLICY_INVALID, f"{host} served more than {MAX_POLICY // 1024} KiB")
    except httpx.HTTPError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise FetchError(WEBPKI_INVALID, f"{host}'s certificate was refused: {cause.verify_message}") from None
        raise FetchError(FETCH_ERROR, f"{host}: {type(exc).__name__}: {exc}"[:300]) from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise FetchError(POLICY_INVALID, f"{host} served a policy that is not UTF-8") from None


def _unexpired(now: float) -> list[MtaStsPolicy]:
    return list(MtaStsPolicy.select().where(MtaStsPolicy.expires_at > now))


def _save(policy: Policy, now: float, expires_at: float) -> None:
    fields = dict(policy_id=policy.policy_id, mode=policy.mode, mx=policy.mx, max_age=policy.max_age,
                  text=policy.text, fetched_at=now, expires_at=expires_at, checked_at=now, last_error="")
    MtaStsPolicy.insert(domain=policy.domain, **fields).on_conflict(
        conflict_target=[MtaStsPolicy.domain],
        update={getattr(MtaStsPolicy, name): value for name, value in fields.items()}).execute()


def _note_error(domain: str, text: str) -> None:
    MtaStsPolicy.update(last_error=text[:1000], checked_at=time.time()).where(MtaStsPolicy.domain == domain).execute()


# ------------------------------------------------------------ certificates
@functools.lru_cache(maxsize=8)
def verifying_context(ca_file: str) -> ssl.SSLContext:
    """A client context that checks the chain against the system's CAs (and ca_file's) and the host name."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        try:
            ctx.load_verify_locations(ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"outbound_tls_ca_file: cannot load CA certificates from {ca_file}: {exc}") from None
    return ctx


def _server_auth(policy: object, cert: x509.Certificate, value: x509.ExtendedKeyUsage | None) -> None:
    if value is not None and not ({ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
                                  & set(value)):
        raise ValueError("the certificate is not for TLS servers")


# What OpenSSL's verification (the enforce path) accepts, so that testing reports what enforce would
# refuse: the WebPKI rules, except that subjectAltName and extendedKeyUsage may be marked critical.
_EE_POLICY = (ExtensionPolicy.webpki_defaults_ee()
              .require_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
              .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _server_auth))


@functools.lru_cache(maxsize=8)
def _store(ca_file: str) -> Store:
    """The system's trusted CAs and ca_file's, loaded once per ca_file."""
    paths = ssl.get_default_verify_paths()
    certs: list[x509.Certificate] = []
    for path in dict.fromkeys(p for p in (paths.cafile, paths.openssl_cafile) if p and os.path.isfile(p)):
        certs += _pem_file(path)
        break
    if not certs and paths.capath and os.path.isdir(paths.capath):
        for name in sorted(os.listdir(paths.capath)):
            if name.endswith((".pem", ".crt")):
                certs += _pem_file(os.path.join(paths.capath, name))
    if ca_file:
        certs += _pem_file(ca_file)
    return Store(certs)


def _pem_file(path: str) -> list[x509.Certificate]:
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")      # a system CA or two with a negative serial number
            return x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError):
        log.warning("cannot read CA certificates from %s", path)
        return []


def _names_match(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 6.4: a dNSName of the certificate names host ("*" only as the whole leftmost label)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except (x509.ExtensionNotFound, ValueError):
        return False
    host = host.lower().rstrip(".")
    for name in names:
        name = name.lower().rstrip(".")
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:] and "." in host):
            return True
    return False


def webpki_check(chain: list[bytes], host: str, ca_file: str) -> "TlsFailure | None":
    """What an enforced policy would have refused about this chain (testing mode reports it)."""
    from mxd.delivery.tlspolicy import TlsFailure
    if not chain:
        return TlsFailure("validation-failure", f"{host} presented no certificate")
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
        verifier = (PolicyBuilder().store(_store(ca_file))
                    .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_EE_POLICY)
                    .build_server_verifier(x509.DNSName(host.lower().rstrip("."))))
    except ValueError as exc:
        return TlsFailure("validation-failure", f"the certificate of {host} cannot be checked: {exc}"[:300])
    try:
        verifier.verify(certs[0], certs[1:])
        return None
    except VerificationError as exc:
        why = str(exc)
    now = datetime.datetime.now(datetime.timezone.utc)
    if any(c.not_valid_after_utc < now for c in certs):
        return TlsFailure("certificate-expired", f"the certificate of {host} has expired")
    if not _names_match(certs[0], host):
        return TlsFailure("certificate-host-mismatch", f"the certificate of {host} is not valid for that name")
    if "candidates exhausted" in why or "issuer" in why:
        return TlsFailure("certificate-not-trusted", f"the certificate of {host} does not chain to a trusted CA")
    return TlsFailure("validation-failure", f"the certificate of {host} was refused: {why}"[:300])
