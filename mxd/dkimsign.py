"""DKIM signing (RFC 6376, RFC 8463): DKIM-Signature fields for outgoing mail, fast.

The header is split into fields by mxd's one header splitter
(`mxd.mime.header.split`), the one the parser, the From check of a send and
DMARC read it with, so the From field signed is the From field checked; a
header that splitter reads only liberally (white space before a colon, an
mbox "From " line, a line that is no field) is not signed at all. Header
canonicalisation and selection are dkimpy's own code, so signer and
verifier cannot disagree on them; the relaxed body
canonicalisation is a faster twin of dkimpy's, tested byte for byte against
it. The signing itself goes through `cryptography` (OpenSSL): dkimpy signs
RSA in pure Python, about 20 times slower. Private keys are parsed once, in
`Signer.__init__`; signing is thread-safe.

Every signature is relaxed/relaxed, a=rsa-sha256 or a=ed25519-sha256, with
t= and without l= (a length limit lets a body be appended to, RFC 6376 8.2).
Both algorithms use SHA-256, so the body hash is computed once per message
and shared by all its signatures; so is the canonical form of the signed
header fields.
"""
from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from dkim import select_headers
from dkim.canonicalization import Relaxed, correct_empty_body, strip_trailing_lines

from mxd.address import AddressError, normalize_domain
from mxd.keys import ACTIVE, ED25519, RSA, DkimKey
from mxd.mime.header import split

SIGNED_HEADERS = (
    "from", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding", "reply-to",
)

# Header fields signed once more than they occur (RFC 6376 5.4.2, 8.15), which
# for an absent field means signed once: a verifier hashes a missing instance
# as the null string (RFC 6376 5.4), so adding the field later breaks the
# signature. These are the RFC 5322 3.6 fields allowed at most once, so no
# relay may legitimately add another instance; it stops a second From or
# Subject, or an injected Reply-To / In-Reply-To / Cc, riding on our signature.
#
# MIME-Version, Content-Type and Content-Transfer-Encoding are signed only as
# often as they occur. When absent they mean their RFC 2045 defaults (4, 5.2,
# 6.1: text/plain; charset=us-ascii, 7bit), and gateways (Exchange among
# them) add exactly those defaults to a non-MIME message without touching the
# body: signing their absence would break such a message for no protection,
# since the added field only states what a reader assumed anyway.
OVERSIGNED = tuple(h for h in SIGNED_HEADERS if h != "mime-version" and not h.startswith("content-"))

MAX_LINE = 78                   # RFC 5322 2.1.1: SHOULD be no more than 78 characters
_C = b"relaxed/relaxed"
_LINE_END = re.compile(rb"\r\n|\r|\n")
_WSP = re.compile(rb"[\t ]+")
_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


class NoSigningKey(LookupError):
    """The Signer holds no active key for the domain asked for."""


class _Key:
    __slots__ = ("algorithm", "domain", "selector", "private")

    def __init__(self, key: DkimKey) -> None:
        private = load_pem_private_key(key.private_key_pem, password=None)
        expected = rsa.RSAPrivateKey if key.algorithm == RSA else ed25519.Ed25519PrivateKey
        if key.algorithm not in (RSA, ED25519) or not isinstance(private, expected):
            raise ValueError(f"DKIM key {key.dns_name}: {key.algorithm} does not match the PEM key type")
        self.algorithm = key.algorithm.encode("ascii")
        self.domain = normalize_domain(key.domain).encode("ascii")      # RFC 8616 4.2: d= is A-labels
        self.selector = key.selector.encode("ascii")
        self.private = private

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private, rsa.RSAPrivateKey):
            # RFC 6376 3.3.1: RSASSA-PKCS1-v1_5 over SHA-256 of the hashed data
            return self.private.sign(data, _PKCS1, _SHA256)
        # RFC 8463 3: PureEdDSA over the SHA-256 hash of the hashed data
        return self.private.sign(hashlib.sha256(data).digest())


class Signer:
    """Signs messages with every active key of the sender's domain (typically one RSA, one Ed25519)."""

    def __init__(self, keys: Iterable[DkimKey]) -> None:
        self._keys: dict[str, list[_Key]] = {}
        for key in keys:
            if key.state != ACTIVE:     # retired keys stay published for verifiers, never sign
                continue
            self._keys.setdefault(normalize_domain(key.domain), []).append(_Key(key))

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def sign(self, message: bytes, domain: str) -> bytes:
        """The DKIM-Signature fields (each ending CRLF) to prepend to `message`, one per active key of `domain`.

        `message` should already be CRLF-normalised; bare CR or LF (and a
        missing final CRLF) is normalised here as aiosmtplib does on the
        wire, so the signature is over the bytes the recipient will see.
        Raises NoSigningKey for a domain without active keys, ValueError for
        a message without From or with an unparsable header.
        """
        try:
            keys = self._keys.get(normalize_domain(domain))
        except AddressError:
            keys = None
        if not keys:
            raise NoSigningKey(f"no active DKIM key for {domain}")
        headers, body = _split(normalize_crlf(message))

        # RFC 6376 3.4.4, 3.7: the relaxed body hash, shared by every signature
        bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())

        counts: dict[bytes, int] = {}
        for name, _ in headers:
            lname = name.lower()
            counts[lname] = counts.get(lname, 0) + 1
        if not counts.get(b"from"):
            raise ValueError("message has no From header field; RFC 6376 5.4 requires signing it")
        include: list[bytes] = []
        for name in SIGNED_HEADERS:
            bname = name.encode("ascii")
            n = counts.get(bname, 0) + (1 if name in OVERSIGNED else 0)
            include.extend([bname] * n)

        # RFC 6376 5.4.2: instances are taken bottom-up; absent ones hash as nothing
        canonical = Relaxed.canonicalize_headers(headers)
        hashed = b"".join(n + b":" + v for n, v in select_headers(canonical, include))

        t = str(int(time.time())).encode("ascii")
        out = []
        for key in keys:
            unsigned = _fold([
                b"v=1;", b"a=" + key.algorithm + b";", b"c=" + _C + b";", b"d=" + key.domain + b";",
                b"s=" + key.selector + b";", b"t=" + t + b";",
            ], include, bh)
            # RFC 6376 3.7: the signature field itself is hashed last, relaxed, b= empty, no CRLF
            (name, value), = Relaxed.canonicalize_headers([(b"DKIM-Signature", unsigned[len(b"DKIM-Signature:"):])])
            signature = key.sign(hashed + name + b":" + value.rstrip(b"\r\n"))
            out.append(unsigned + _fold_b(base64.b64encode(signature)) + b"\r\n")
        return b"".join(out)


def sign_message(message: bytes, keys: list[DkimKey]) -> bytes:
    """The message with DKIM-Signature fields prepended, signed for the keys' domain(s).

    Builds a Signer per call (keys parsed each time): long-lived code keeps a
    Signer instead. With keys of several domains, each domain signs.
    """
    signer = Signer(keys)
    message = normalize_crlf(message)
    return b"".join(signer.sign(message, d) for d in signer.domains) + message


def normalize_crlf(message: bytes) -> bytes:
    """The message as it goes on the wire: every bare CR or LF made CRLF (RFC 5322 2.3), ending in CRLF.

    This is what aiosmtplib sends (it also adds the final CRLF before the
    terminating ".", RFC 5321 4.1.1.4), so it is what the verifier sees.
    Already-normal input is returned as is.
    """
    if not (message.count(b"\n") == message.count(b"\r\n") == message.count(b"\r")):
        message = _LINE_END.sub(b"\r\n", message)
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4 relaxed body canonicalisation: byte for byte dkimpy's Relaxed.canonicalize_body, faster.

    dkimpy runs its whitespace regexes over the whole body and rewrites every
    single space; this strips line ends and compresses only the lines that
    need it (a tab or two spaces in a row), then uses dkimpy's own helpers
    for trailing empty lines. tests/test_dkimsign.py checks the equivalence.
    """
    lines = body.split(b"\r\n")
    last = lines.pop()          # dkimpy strips trailing WSP only before a CRLF
    out = []
    for line in lines:
        line = line.rstrip(b" \t")
        if b"\t" in line or b"  " in line:
            line = _WSP.sub(b" ", line)
        out.append(line)
    if b"\t" in last or b"  " in last:
        last = _WSP.sub(b" ", last)
    out.append(last)
    return correct_empty_body(strip_trailing_lines(b"\r\n".join(out)))


def _split(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields, body) of a CRLF message in dkimpy's form (name, value with its line ends), split by
    `mxd.mime.header.split`. Raises ValueError for a header it reads only liberally: signing that would
    vouch for fields another reader sees differently."""
    head = split(message)
    if head.defects:
        raise ValueError(f"unparsable header: {head.defects[0]}")
    return [(f.name, b"".join(line + b"\r\n" for line in f.lines)) for f in head.fields], message[head.body:]


def _fold(tags: list[bytes], include: list[bytes], bh: bytes) -> bytes:
    """`DKIM-Signature: ` + tags, h= and bh=, folded at MAX_LINE; ends with CRLF so b= starts a line."""
    lines = [b"DKIM-Signature:"]

    def put(token: bytes, sep: bytes) -> None:
        if len(lines[-1]) + len(sep) + len(token) <= MAX_LINE:
            lines[-1] += sep + token
        else:
            lines.append(b" " + token)

    for tag in tags:
        put(tag, b" ")
    # RFC 6376 3.5: FWS is allowed around the colons of h=
    names = [n + b":" for n in include[:-1]] + [include[-1] + b";"]
    put(b"h=" + names[0], b" ")
    for name in names[1:]:
        put(name, b"")
    put(b"bh=" + bh + b";", b" ")
    return b"\r\n".join(lines) + b"\r\n b="


def _fold_b(b64: bytes) -> bytes:
    """The b= value, its lines continuing after " b=" (3 characters) and " " (1 character)."""
    first = MAX_LINE - 3
    rest = [b64[i:i + MAX_LINE - 1] for i in range(first, len(b64), MAX_LINE - 1)]
    return b"\r\n ".join([b64[:first], *rest])
