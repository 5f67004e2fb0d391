"""Key material on disk: per-domain DKIM keys with their manifest, and the TLS certificate and key.

Private keys are written once and never overwritten: each file is written to a
temporary name opened O_CREAT|O_EXCL with mode 0600, fsynced, then hard-linked
to its final name (link(2) fails rather than replace an existing file) and the
directory is fsynced.

Layout under cfg.dkim_dir::

    <domain>/keys.json          manifest: selector, algorithm, created, state
    <domain>/<selector>.pem     PKCS#8 PEM private key, mode 0600
"""
from __future__ import annotations

import base64
import contextlib
import datetime as dt
import errno
import fcntl
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mxd.address import normalize_domain

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"      # RFC 8463
ALGORITHMS = (RSA, ED25519)
ACTIVE = "active"          # signs new mail, published in DNS
PUBLISHED = "published"    # rotated out: signs nothing, stays in DNS so mail already sent still verifies
RETIRED = "retired"        # the operator took it out of DNS
MANIFEST = "keys.json"

RSA_BITS = 2048                 # RFC 8301 3.2: at least 1024, 2048 recommended
CERT_DAYS = 3650
_SUFFIX = {RSA: "r", ED25519: "e"}
# RFC 6376 3.1: a selector is a sequence of DNS labels; ours are one LDH label.
_SELECTOR = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class KeyMaterialError(Exception):
    """Key material on disk is missing, inconsistent or unreadable; the message names the file."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: str                          # "rsa-sha256" | "ed25519-sha256"
    private_key_pem: bytes = field(repr=False)
    public_dns_value: str                   # TXT value at <selector>._domainkey.<domain>
    state: str                              # "active" | "published" | "retired"
    created: str = ""                       # ISO 8601 UTC, from the manifest

    @property
    def dns_name(self) -> str:
        """RFC 6376 3.6.2.1: the key record lives at <selector>._domainkey.<domain>."""
        return f"{self.selector}._domainkey.{self.domain}"


# ---------------------------------------------------------------- DKIM

def generate_dkim_keys(dkim_dir: Path, domain: str, now: dt.datetime | None = None) -> list[DkimKey]:
    """Ensure the domain has one active RSA-2048 and one active Ed25519 key; return all its keys.

    Existing keys are never touched: an algorithm that already has an active
    key gets no new one. Selectors are mxd<YYYYMM>r / mxd<YYYYMM>e, with a
    counter appended if that name was used before.
    """
    domain = normalize_domain(domain)
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    folder = Path(dkim_dir) / domain
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(folder):
        entries = _read_manifest(folder, domain)
        taken = {e["selector"] for e in entries} | {p.stem for p in folder.glob("*.pem")}
        changed = False
        for algorithm in ALGORITHMS:
            if any(e["algorithm"] == algorithm and e["state"] == ACTIVE for e in entries):
                continue
            selector = _new_selector(now, algorithm, taken)
            taken.add(selector)
            _write_new(folder / f"{selector}.pem", _new_private_pem(algorithm))
            entries.append({
                "selector": selector,
                "algorithm": algorithm,
                "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "state": ACTIVE,
            })
            changed = True
        if changed:
            _write_replace(folder / MANIFEST, _manifest_bytes(domain, entries))
    return load_dkim_keys(dkim_dir, domain)


def rotate_dkim_keys(dkim_dir: Path, domain: str, now: dt.datetime | None = None) -> list[DkimKey]:
    """New active keys (RSA and Ed25519, new selectors); the old active ones stay published until retired."""
    domain = normalize_domain(domain)
    folder = Path(dkim_dir) / domain
    if not (folder / MANIFEST).exists():
        raise KeyMaterialError(f"{domain} has no DKIM keys to rotate; create the domain first")
    with _locked(folder):
        entries = _read_manifest(folder, domain)
        for entry in entries:
            if entry["state"] == ACTIVE:
                entry["state"] = PUBLISHED
        _write_replace(folder / MANIFEST, _manifest_bytes(domain, entries))
    return generate_dkim_keys(dkim_dir, domain, now)


def retire_dkim_key(dkim_dir: Path, domain: str, selector: str) -> list[DkimKey]:
    """Take a rotated-out selector out of DNS; the active keys cannot be retired."""
    domain = normalize_domain(domain)
    folder = Path(dkim_dir) / domain
    with _locked(folder):
        entries = _read_manifest(folder, domain)
        matches = [e for e in entries if e["selector"] == selector]
        if not matches:
            raise KeyMaterialError(f"{domain} has no selector {selector!r}")
        if matches[0]["state"] == ACTIVE:
            raise KeyMaterialError(f"{selector} is active; rotate first, then retire the old selector")
        matches[0]["state"] = RETIRED
        _write_replace(folder / MANIFEST, _manifest_bytes(domain, entries))
    return load_dkim_keys(dkim_dir, domain)


def manifest_mtime(dkim_dir: Path, domain: str) -> float:
    try:
        return (Path(dkim_dir) / normalize_domain(domain) / MANIFEST).stat().st_mtime
    except (OSError, ValueError):
        return 0.0


def load_dkim_keys(dkim_dir: Path, domain: str) -> list[DkimKey]:
    """The domain's keys in manifest order; [] when it has none."""
    domain = normalize_domain(domain)
    folder = Path(dkim_dir) / domain
    keys = []
    for entry in _read_manifest(folder, domain):
        path = folder / f"{entry['selector']}.pem"
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            raise KeyMaterialError(f"{path}: listed in {MANIFEST} but missing") from None
        keys.append(DkimKey(
            domain=domain,
            selector=entry["selector"],
            algorithm=entry["algorithm"],
            private_key_pem=pem,
            public_dns_value=_public_dns_value(_load_private(pem, path, entry["algorithm"])),
            state=entry["state"],
            created=entry.get("created", ""),
        ))
    return keys


def dkim_private_for_dkimpy(key: DkimKey) -> bytes:
    """The private key in the form dkim.sign(privkey=...) takes.

    dkimpy parses RSA keys from PEM (PKCS#1 or PKCS#8) itself, but builds its
    Ed25519 SigningKey from the base64 of the raw 32-byte seed (RFC 8032 5.1.5).
    """
    if key.algorithm == RSA:
        return key.private_key_pem
    private = serialization.load_pem_private_key(key.private_key_pem, password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(seed)


def _new_selector(now: dt.datetime, algorithm: str, taken: set[str]) -> str:
    base = f"mxd{now:%Y%m}{_SUFFIX[algorithm]}"
    selector, n = base, 1
    while selector in taken:
        n += 1
        selector = f"{base}{n}"
    assert _SELECTOR.fullmatch(selector)
    return selector


def _new_private_pem(algorithm: str) -> bytes:
    if algorithm == RSA:
        private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = rsa.generate_private_key(65537, RSA_BITS)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_private(pem: bytes, path: Path, algorithm: str) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(f"{path}: not a readable PEM private key ({exc})") from None
    expected = rsa.RSAPrivateKey if algorithm == RSA else ed25519.Ed25519PrivateKey
    if not isinstance(private, expected):
        raise KeyMaterialError(f"{path}: {MANIFEST} says {algorithm} but the file holds another key type")
    return private


def _public_dns_value(private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    public = private.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        # RFC 8463 4.2: p= is the base64 of the raw 32-byte public key.
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
    # RFC 6376 3.6.1: p= is the base64 of the DER SubjectPublicKeyInfo.
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def _read_manifest(folder: Path, domain: str) -> list[dict]:
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise KeyMaterialError(f"{path}: not valid JSON ({exc})") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeyMaterialError(f"{path}: expected an object with a \"keys\" list")
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or not _SELECTOR.fullmatch(str(entry.get("selector", "")))
            or entry.get("algorithm") not in ALGORITHMS
            or entry.get("state") not in (ACTIVE, PUBLISHED, RETIRED)
        ):
            raise KeyMaterialError(f"{path}: bad key entry {entry!r}")
    return entries


def _manifest_bytes(domain: str, entries: list[dict]) -> bytes:
    return (json.dumps({"version": 1, "domain": domain, "keys": entries}, indent=2) + "\n").encode()


# ---------------------------------------------------------------- TLS

def ensure_self_signed_cert(cert_path: Path, key_path: Path, hostname: str) -> bool:
    """Create a self-signed certificate for hostname when neither file exists; True when created.

    RSA-2048 rather than ECDSA, so that every sending MTA can negotiate it.
    One file without the other is refused, never repaired by overwriting.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if have_cert and have_key:
        return False
    if have_cert or have_key:
        present, absent = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise KeyMaterialError(f"{present} exists but {absent} does not; restore it or remove both")
    key_pem, cert_pem = _self_signed(hostname)
    for path in (cert_path, key_path):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_new(key_path, key_pem)
    _write_new(cert_path, cert_pem, mode=0o644)
    return True


def _self_signed(hostname: str) -> tuple[bytes, bytes]:
    hostname = hostname.strip().rstrip(".")
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        hostname = normalize_domain(hostname)
        san = x509.DNSName(hostname)
    key = rsa.generate_private_key(65537, RSA_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.timezone.utc)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))        # tolerate clock skew
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=True, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------- the key that seals stored secrets

def ensure_secret_key(path: Path) -> bytes:
    """The 32-byte key kept (base64) in `path`, mode 0600; made on first use, never replaced."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            _write_new(path, base64.b64encode(secrets.token_bytes(32)) + b"\n")
        except FileExistsError:
            pass                            # another process made it first: use that one
    private_mode(path)
    try:
        key = base64.b64decode(path.read_bytes().strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise KeyMaterialError(f"{path}: expected 32 bytes of base64")
    return key


def private_mode(path: Path) -> None:
    """Take away group and other permissions of an existing file (one made by an older mxd, or under a
    loose umask); a file owned by another user is left and reported."""
    try:
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, mode & 0o700)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise KeyMaterialError(f"{path}: cannot make it private (mode 0600): {exc.strerror}") from None


# ---------------------------------------------------------------- files

def write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a private file atomically (fsynced); FileExistsError rather than replace one."""
    _write_new(Path(path), data, mode)


def write_replace(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace a private file atomically: a temporary file, fsync, rename, fsync of the directory."""
    _write_replace(Path(path), data, mode)


def _write_tmp(path: Path, data: bytes, mode: int) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.fchmod(fd, mode)                 # exact mode whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write path atomically; raise FileExistsError rather than replace an existing file."""
    tmp = _write_tmp(path, data, mode)
    try:
        try:
            os.link(tmp, path)              # atomic, and refuses to replace (EEXIST)
        except OSError as exc:              # a filesystem without hard links
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if path.exists():
                raise FileExistsError(errno.EEXIST, "refusing to overwrite", str(path)) from None
            os.rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _write_replace(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = _write_tmp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialise generators of one domain's keys across processes (e.g. `mxd init` while serving)."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
