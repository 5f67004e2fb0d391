"""ACME (RFC 8555) for the certificate the listeners present, with certbot's protocol library `acme`.

The account key and the certificate live in DATA_DIR/acme/ (0700): `account.pem` (the account key,
made once), `account.json` (its registration URL at the directory), `privkey.pem` and `fullchain.pem`
(the certificate, a new key at every issuance). Every file is 0600 and written atomically (temporary
file, fsync, rename); the key is written before the chain, and a pair that does not match (a crash
between the two) reads as no certificate, which is simply issued again.

`Issuer.issue(names)` is blocking (the library is): callers run it in a thread. It proves each name
with HTTP-01 (RFC 8555 8.3, the key authorization served by mxd.certs.http01) or TLS-ALPN-01 (RFC 8737,
a challenge certificate handed by mxd.certs.contexts to a handshake that offers acme-tls/1); the
pending proofs sit in `Challenges`, shared with those responders. What the CA returns is checked before
it is written: the chain parses, the key matches, every name is covered and it is valid now.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mxd import keys
from mxd.certs.contexts import ServerTLS
from mxd.config import Config

log = logging.getLogger("mxd.acme")

ACCOUNT_KEY, ACCOUNT, CERT, KEY = "account.pem", "account.json", "fullchain.pem", "privkey.pem"
ALPN = "acme-tls/1"                                              # RFC 8737 6.2
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")    # RFC 8737 6.1
ORDER_DEADLINE = 90.0                                            # seconds for validation and issuance
USER_AGENT = "mxd"


class AcmeError(Exception):
    """The ACME server did not give a usable certificate; the message says why."""


# ---------------------------------------------------------------- TLS-ALPN-01 in the library's registry
# acme >= 3 dropped its TLS-ALPN-01 classes; the protocol objects are two lines each.
@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The reply to a tls-alpn-01 challenge: an empty object (RFC 8737 3)."""
    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    response_cls = TLSALPN01Response
    typ = "tls-alpn-01"

    def validation(self, account_key: jose.JWK, **unused: Any) -> bytes:
        """The SHA-256 of the key authorization, carried in the acmeIdentifier extension (RFC 8737 3)."""
        return hashlib.sha256(self.key_authorization(account_key).encode()).digest()


# ---------------------------------------------------------------- names and the certificate on disk
def folder(cfg: Config) -> Path:
    return cfg.data_path / "acme"


def wanted_names(hostname: str, sts_domains: list[str] | tuple[str, ...], https: bool) -> list[str]:
    """The names the certificate covers: the hostname, and mta-sts.<domain> for every domain with MTA-STS
    on when the HTTPS listener serves the policies (RFC 8461 3.3)."""
    names = [hostname.strip().rstrip(".").lower()]
    if https:
        names += [f"mta-sts.{d.strip().rstrip('.').lower()}" for d in sorted(sts_domains)]
    out: list[str] = []
    for name in names:
        if name and name not in out:
            out.append(name)
    return out


@dataclass(frozen=True)
class Certificate:
    path: Path
    key_path: Path
    names: frozenset[str]
    not_before: float
    not_after: float

    def covers(self, names: list[str]) -> bool:
        return all(_matches(name, self.names) for name in names)

    @property
    def renew_at(self) -> float:
        """When a third of the lifetime is left."""
        return self.not_after - (self.not_after - self.not_before) / 3


def _matches(name: str, sans: frozenset[str]) -> bool:
    if name in sans:
        return True
    head, _, rest = name.partition(".")
    return bool(rest) and f"*.{rest}" in sans


def inspect(fullchain_pem: bytes, key_pem: bytes, path: Path, key_path: Path) -> Certificate:
    """The certificate a chain and key make; AcmeError when they do not parse or do not belong together."""
    try:
        chain = x509.load_pem_x509_certificates(fullchain_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise AcmeError(f"the certificate or its key does not parse: {exc}") from None
    leaf = chain[0]
    if leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise AcmeError("the certificate is not for our key")
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = frozenset(n.lower().rstrip(".") for n in sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = frozenset()
    return Certificate(Path(path), Path(key_path), names, leaf.not_valid_before_utc.timestamp(),
                       leaf.not_valid_after_utc.timestamp())


def check_issued(fullchain_pem: bytes, key_pem: bytes, names: list[str], now: float,
                 path: Path = Path(CERT), key_path: Path = Path(KEY)) -> Certificate:
    """What the CA returned, accepted only when it is usable: parses, matches the key, covers every name
    and is valid now. AcmeError says what is wrong."""
    cert = inspect(fullchain_pem, key_pem, path, key_path)
    missing = [n for n in names if not _matches(n, cert.names)]
    if missing:
        raise AcmeError(f"the certificate does not cover {', '.join(missing)} (it names {', '.join(sorted(cert.names)) or 'nothing'})")
    if not cert.not_before - 300 <= now < cert.not_after:
        raise AcmeError("the certificate is not valid now")
    return cert


def current(directory: Path) -> Certificate | None:
    """The certificate kept in `directory`, or None when there is none or it is unusable."""
    path, key_path = Path(directory) / CERT, Path(directory) / KEY
    try:
        return inspect(path.read_bytes(), key_path.read_bytes(), path, key_path)
    except FileNotFoundError:
        return None
    except (OSError, AcmeError) as exc:
        log.warning("the ACME certificate in %s is unusable, a new one will be issued: %s", directory, exc)
        return None


# ---------------------------------------------------------------- pending proofs
class Challenges:
    """The proofs of an order under way: HTTP-01 key authorizations by token, TLS-ALPN-01 contexts by name.
    Written by the issuing thread, read by the responders on the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._http: dict[str, str] = {}
        self._alpn: dict[str, ssl.SSLContext] = {}

    def http01(self, token: str) -> str | None:
        with self._lock:
            return self._http.get(token)

    def tls_alpn01(self, name: str | None) -> ssl.SSLContext | None:
        if not name:
            return None
        with self._lock:
            return self._alpn.get(name.lower().rstrip("."))

    def add_http01(self, token: str, key_authorization: str) -> None:
        with self._lock:
            self._http[token] = key_authorization

    def add_tls_alpn01(self, name: str, context: ssl.SSLContext) -> None:
        with self._lock:
            self._alpn[name] = context

    def clear(self) -> None:
        with self._lock:
            self._http.clear()
            self._alpn.clear()


class AlpnResponder:
    """ServerTLS's challenge hook: the challenge certificate for a handshake that offered acme-tls/1 and
    asked for a name with a pending proof; every other handshake gets the normal certificate."""

    def __init__(self, server_tls: ServerTLS, pending: Challenges) -> None:
        self.server_tls, self.pending = server_tls, pending

    def __call__(self, sslobj: ssl.SSLObject, server_name: str | None) -> ssl.SSLContext | None:
        hello = self.server_tls.hello(sslobj)
        if ALPN not in hello.alpn:
            return None
        return self.pending.tls_alpn01(server_name)


def challenge_context(name: str, digest: bytes) -> ssl.SSLContext:
    """A context presenting the TLS-ALPN-01 certificate for `name` (RFC 8737 3): self-signed, the one
    dNSName, the critical acmeIdentifier extension holding the key authorization's SHA-256; ALPN acme-tls/1."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
            .sign(key, hashes.SHA256()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ALPN])
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)
    # the ssl module loads certificates from files only: a private file, gone as soon as it is read
    fd, tmp = tempfile.mkstemp(prefix=".acme-tls-alpn-", suffix=".pem")
    try:
        os.write(fd, pem)
        os.close(fd)
        ctx.load_cert_chain(tmp)
    finally:
        os.unlink(tmp)
    return ctx


# ---------------------------------------------------------------- issuing
class Issuer:
    def __init__(self, cfg: Config, pending: Challenges, server_tls: ServerTLS | None = None) -> None:
        self.cfg = cfg
        self.pending = pending
        self.server_tls = server_tls
        self.directory = folder(cfg)

    # account
    def _account_key(self) -> jose.JWKRSA:
        path = self.directory / ACCOUNT_KEY
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            pem = rsa.generate_private_key(65537, 2048).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            try:
                keys.write_new(path, pem)
            except FileExistsError:
                pass
        keys.private_mode(path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise AcmeError(f"{path}: expected an RSA account key")
        return jose.JWKRSA(key=key)

    def _register(self, acme: client.ClientV2) -> None:
        """The account of our key: made on first use; found again at a server that already knows it."""
        contact = (f"mailto:{self.cfg.acme_email}",) if self.cfg.acme_email else ()
        try:
            regr = acme.new_account(messages.NewRegistration.from_data(
                email=self.cfg.acme_email or None, terms_of_service_agreed=True))
            uri = regr.uri
        except errors.ConflictError as exc:            # this key already has an account there
            uri = exc.location
            acme.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration(contact=contact))
        record = {"directory": self.cfg.acme_directory, "uri": uri, "contact": list(contact)}
        path = self.directory / ACCOUNT
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = None
        if known != record:
            keys.write_replace(path, json.dumps(record, indent=2).encode() + b"\n")

    @staticmethod
    def _settled(acme: client.ClientV2, authzr: messages.AuthorizationResource,
                 deadline: dt.datetime) -> messages.AuthorizationResource:
        """Poll an authorization until the server has decided (RFC 8555 7.5.1): after 0.25 s, doubling to 3 s
        (the library waits a whole second before its first look). Raises when it is not valid."""
        wait = 0.25
        while authzr.body.status in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
            if dt.datetime.now() + dt.timedelta(seconds=wait) > deadline:
                raise errors.TimeoutError()
            time.sleep(wait)
            wait = min(wait * 2, 3.0)
            authzr, _ = acme.poll(authzr)
        if authzr.body.status != messages.STATUS_VALID:
            raise errors.ValidationError([authzr])
        return authzr

    # order
    def issue(self, names: list[str]) -> Certificate:
        """Order, prove, fetch, check and store a certificate for `names` (blocking); AcmeError on failure."""
        if not names:
            raise AcmeError("no names to put in the certificate")
        try:
            return self._issue(names)
        except AcmeError:
            raise
        except messages.Error as exc:
            raise AcmeError(f"the ACME server refused: {exc}") from None
        except errors.ValidationError as exc:
            reasons = []
            for authzr in exc.failed_authzrs:
                for chall in authzr.body.challenges:
                    if chall.error is not None:
                        reasons.append(f"{authzr.body.identifier.value}: {chall.error}")
            raise AcmeError("validation failed: " + "; ".join(reasons)) from None
        except errors.TimeoutError:
            raise AcmeError(f"the order was not done within {ORDER_DEADLINE:.0f} s") from None
        except Exception as exc:                      # network, HTTP, JSON, JOSE: never more than a failed attempt
            raise AcmeError(f"{type(exc).__name__}: {exc}") from None
        finally:
            self.pending.clear()
            if self.server_tls is not None:
                self.server_tls.watch_hellos(False)

    def _issue(self, names: list[str]) -> Certificate:
        account_key = self._account_key()
        net = client.ClientNetwork(account_key, user_agent=USER_AGENT, timeout=30,
                                   verify_ssl=self.cfg.acme_ca_file or True)   # type: ignore[arg-type]
        acme = client.ClientV2(client.ClientV2.get_directory(self.cfg.acme_directory, net), net)
        self._register(acme)

        cert_key = rsa.generate_private_key(65537, 2048)    # RSA: every sending MTA can negotiate it
        key_pem = cert_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        order = acme.new_order(crypto_util.make_csr(key_pem, names))
        wanted = self.cfg.acme_challenge
        for authzr in order.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue
            name = authzr.body.identifier.value
            challb = next((c for c in authzr.body.challenges if c.chall.typ == wanted), None)
            if challb is None:
                raise AcmeError(f"the ACME server offers no {wanted} challenge for {name}")
            response, validation = challb.chall.response_and_validation(account_key)
            if wanted == "http-01":
                self.pending.add_http01(challb.chall.encode("token"), validation)
            else:
                self.pending.add_tls_alpn01(name.lower(), challenge_context(name, validation))
                if self.server_tls is not None:
                    self.server_tls.watch_hellos(True)
            acme.answer_challenge(challb, response)
        deadline = dt.datetime.now() + dt.timedelta(seconds=ORDER_DEADLINE)
        order = order.update(authorizations=[self._settled(acme, a, deadline) for a in order.authorizations])
        done = acme.finalize_order(order, deadline)
        self.pending.clear()
        fullchain = done.fullchain_pem.encode() if isinstance(done.fullchain_pem, str) else done.fullchain_pem
        check_issued(fullchain, key_pem, names, time.time())
        path, key_path = self.directory / CERT, self.directory / KEY
        keys.write_replace(key_path, key_pem)
        keys.write_replace(path, fullchain)
        return inspect(fullchain, key_pem, path, key_path)
