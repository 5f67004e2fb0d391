"""Parsing owns the step from a message's raw bytes to a Parsed record: header fields, addresses, thread ids, bodies and attachments; it never raises."""
from __future__ import annotations

import binascii
import codecs
import functools
import html as htmllib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from email.utils import getaddresses, mktime_tz, parsedate_tz

from mxd.mime.header import FOLDED_FIRST, NOT_ENDED, Header, split, unfold

MAX_DEPTH = 50      # multipart nesting followed; deeper parts are kept opaque
MAX_PARTS = 1000    # MIME parts walked; the rest of the message is not split
MAX_ERRORS = 50     # defects recorded per message
MAX_ADDRESS_FIELD = 32 * 1024   # characters of an address header (all its fields) read; the stdlib reader is slow


@dataclass
class Address:
    """One mailbox of an address header."""
    name: str               # display name, RFC 2047-decoded, "" if none
    address: str            # addr-spec as written, "" if unparseable


@dataclass
class Attachment:
    index: int              # position of the part in a depth-first (pre-order) walk; the root is 0
    filename: str | None    # RFC 2231 / RFC 2047-decoded
    content_type: str       # lower-case maintype/subtype
    size: int               # decoded payload size in bytes
    content_id: str | None  # without <>
    disposition: str        # "attachment" or "inline"


@dataclass
class Parsed:
    message_id: str | None = None
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    subject: str = ""
    from_: list[Address] = field(default_factory=list)
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    date: datetime | None = None
    text: str = ""
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse(raw: bytes) -> Parsed:
    """Parse one message. Defects go to Parsed.errors; nothing is raised."""
    try:
        walk = _Walk(raw)
        return _build(walk)
    except Exception as exc:  # a bug here must never cost the message: report it as a defect
        return Parsed(errors=[f"internal error: {type(exc).__name__}: {exc}"[:300]])


def attachment(raw: bytes, index: int) -> tuple[Attachment, bytes] | None:
    """The attachment whose index parse() reported, with its decoded bytes; None if there is none."""
    try:
        walk = _Walk(raw)
        _, _, leaves = _classify(walk)
        for part in leaves:
            if part.index == index:
                return _attachment(walk, part)
    except Exception:
        pass
    return None


def attachment_text(raw: bytes, index: int) -> tuple[Attachment, str] | None:
    """The attachment whose index parse() reported, decoded as text in its declared charset the way
    bodies are; None if there is none. For text parts only: binary data decodes to nonsense."""
    try:
        walk = _Walk(raw)
        _, _, leaves = _classify(walk)
        for part in leaves:
            if part.index == index:
                return _attachment(walk, part)[0], _body(walk, part)
    except Exception:
        pass
    return None


# --- header fields ----------------------------------------------------------


@dataclass(slots=True)
class _Part:
    index: int
    fields: list[tuple[str, str]]    # unfolded, charset-decoded, not RFC 2047-decoded
    ctype: str
    mime: Message | None             # compat32 Message carrying Content-Type/-Disposition, for parameters
    start: int                       # body span in _Walk.buf
    end: int
    container: bool = False

    def get(self, name: str) -> str | None:
        for n, v in self.fields:
            if n.lower() == name:
                return v
        return None


class _Walk:
    """The MIME tree of one message as spans over its bytes (nothing is copied per level)."""

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes):
            raw = bytes(raw)
        if b"\n" not in raw and b"\r" in raw:       # a message with bare-CR line ends only
            raw = raw.replace(b"\r", b"\n")
        self.buf = raw
        self.errors: list[str] = []
        self._seen: set[str] = set()
        self.parts: list[_Part] = []
        self._walk(0, len(raw), 0, "text/plain")   # RFC 2045 5.2 default

    def error(self, msg: str) -> None:
        if msg in self._seen or len(self.errors) > MAX_ERRORS:
            return
        self._seen.add(msg)
        self.errors.append(msg if len(self.errors) < MAX_ERRORS else "further defects not recorded")

    def _walk(self, start: int, end: int, depth: int, default: str) -> None:
        index = len(self.parts)
        if index >= MAX_PARTS:
            self.error(f"more than {MAX_PARTS} MIME parts; the rest is not split")
            return
        fields, body = self._fields(start, end, index)
        mime = None
        for name, value in fields:
            lname = name.lower()
            if lname in ("content-type", "content-disposition"):
                if mime is None:
                    mime = Message()
                    mime.set_default_type(default)
                if lname not in mime:
                    mime[name] = value
        ctype = mime.get_content_type() if mime is not None else default
        part = _Part(index, fields, ctype, mime, body, end)
        self.parts.append(part)
        if not ctype.startswith("multipart/"):
            return
        boundary = _safe(lambda: mime.get_boundary())
        if not boundary:
            self.error(f"part {index}: {ctype} without boundary; read as text/plain")   # RFC 2046 5.1.1
            part.ctype = "text/plain"
            return
        if depth >= MAX_DEPTH:
            self.error(f"part {index}: MIME nesting deeper than {MAX_DEPTH}; not descended")
            return
        spans = self._split(boundary, body, end, index)
        if spans is None:
            if self.buf[body:end].strip():
                self.error(f"part {index}: boundary {boundary!r} not found; read as text/plain")
                part.ctype = "text/plain"
            else:
                self.error(f"part {index}: {ctype} is empty")
                part.container = True
            return
        part.container = True
        child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"   # RFC 2046 5.1.5
        for s, e in spans:
            self._walk(s, e, depth + 1, child_default)

    def _fields(self, start: int, end: int, index: int) -> tuple[list[tuple[str, str]], int]:
        """Header fields of the entity at start, and where its body begins (`mxd.mime.header.split`)."""
        head = split(self.buf, start, end, mbox=index == 0)
        for defect in head.defects:
            if defect in (FOLDED_FIRST, NOT_ENDED):
                self.error(f"part {index}: {defect}")
        return [(f.name.decode("ascii"), self._value(f.lines, f.name)) for f in head.fields], head.body

    def _value(self, chunks: list[bytes], name: bytes) -> str:
        return field_value(chunks, name.decode("ascii"), self)

    def _split(self, boundary: str, start: int, end: int, index: int) -> list[tuple[int, int]] | None:
        """Body parts of a multipart between start and end (RFC 2046 5.1.1)."""
        buf = self.buf
        try:
            delim = b"--" + boundary.encode("utf-8")
        except UnicodeEncodeError:
            return None
        spans: list[tuple[int, int]] = []
        part_start: int | None = None
        pos = start
        while True:
            i = buf.find(delim, pos, end)
            if i < 0:
                break
            # the delimiter begins a line and only transport padding may follow it
            if i != start and buf[i - 1] != 0x0A:
                pos = i + 1
                continue
            j = i + len(delim)
            close = buf.startswith(b"--", j, end)
            pad = _PADDING.match(buf, j + 2 if close else j, end)
            if pad is None:
                pos = i + 1
                continue
            if part_start is not None:
                # the line break before the delimiter belongs to it
                e = i
                if e > part_start and buf[e - 1] == 0x0A:
                    e -= 1
                    if e > part_start and buf[e - 1] == 0x0D:
                        e -= 1
                spans.append((part_start, e))
            pos = part_start = pad.end()
            if close:
                return spans
            if len(spans) > MAX_PARTS:        # _walk reports the cap
                return spans
        if part_start is None:
            return None
        self.error(f"part {index}: multipart has no close delimiter")
        spans.append((part_start, end))
        return spans


_PADDING = re.compile(rb"[ \t\r]*+(?:\n|\Z)")


class _Defects:
    """Where header-only readers (`authors`) put the defects a _Walk would record."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, msg: str) -> None:
        if msg not in self.errors and len(self.errors) < MAX_ERRORS:
            self.errors.append(msg)


def field_value(chunks: list[bytes], name: str, walk: _Walk | _Defects) -> str:
    """A header field's value as the parser reads it: unfolded, UTF-8 (else Latin-1), NUL removed."""
    raw = unfold(chunks)
    if raw.isascii():
        value = raw.decode("ascii")
    else:
        try:
            value = raw.decode("utf-8")    # RFC 6532 3.2: 8-bit header fields are UTF-8
        except UnicodeDecodeError:
            walk.error(f"{name}: 8-bit header field is not UTF-8; read as Latin-1")
            value = raw.decode("latin-1")
    if "\x00" in value:
        walk.error(f"{name}: NUL in header field")
        value = value.replace("\x00", "")
    return value.replace("\r", " ") if "\r" in value else value


def authors(raw: bytes, head: Header | None = None) -> list[Address]:
    """The From addresses of a message exactly as parse() reads them, from its header alone
    (`head`: its split, when the caller has it). The one answer to "who is this from"."""
    if head is None:
        if b"\n" not in raw and b"\r" in raw:       # as _Walk reads a message with bare-CR line ends only
            raw = raw.replace(b"\r", b"\n")
        head = split(raw)
    sink = _Defects()
    try:
        values = [field_value(f.lines, "From", sink) for f in head.fields if f.name.lower() == b"from"]
        return _addresses(values, "From", sink)
    except Exception:               # as parse(): a bug here reads as no author, never as another one
        return []


def _safe(fn, default=None):
    try:
        return fn()
    except Exception:
        return default


# --- RFC 2047 encoded words and charsets ------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_ALIASES = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030",
    "iso-8859-1": "cp1252", "latin1": "cp1252", "iso8859-1": "cp1252", "l1": "cp1252",   # WHATWG label mapping
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "euc-kr": "cp949",
    "iso-8859-8-i": "iso-8859-8", "windows-874": "cp874", "x-sjis": "shift_jis",
    "utf8": "utf-8", "unicode-1-1-utf-8": "utf-8", "x-mac-roman": "mac-roman",
}
_NOT_CHARSETS = {"rot-13", "undefined", "unicode-escape", "raw-unicode-escape", "idna", "punycode",
                 "unicode-internal", "escape", "raw_unicode_escape", "unicode_escape"}


@functools.lru_cache(maxsize=512)
def _codec(charset: str) -> tuple[str, bool] | None:
    """Python codec for a MIME charset name, and whether ASCII bytes decode to themselves in it."""
    name = charset.strip().strip("\"'").lower().split("*", 1)[0]      # RFC 2231 5: charset*language
    name = _ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except Exception:
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None                                                       # base64_codec, zlib_codec ...
    probe = bytes(range(128))
    try:
        ascii_safe = probe.decode(info.name) == probe.decode("ascii")
    except Exception:
        ascii_safe = False
    return info.name, ascii_safe


def _text(data: bytes, charset: str | None, where: str, walk: _Walk) -> str:
    """Decode data in its declared charset, tolerating unknown and lying ones."""
    codec = _codec(charset) if charset else None
    if charset and codec is None:
        walk.error(f"{where}: unknown charset {charset!r}")
    if (codec is None or codec[1]) and data.isascii():
        return data.decode("ascii")
    if codec is not None:
        try:
            return data.decode(codec[0])
        except Exception:
            pass
        if codec[0] == "cp1252" and _ALIASES.get(charset.strip().strip("\"'").lower()) == "cp1252":
            return data.decode("latin-1")     # a Latin-1 label: bytes cp1252 leaves undefined are C1 controls
    if codec is None or codec[0] != "utf-8":
        try:
            text = data.decode("utf-8")
            if codec is not None:
                walk.error(f"{where}: not valid {charset}; read as UTF-8")
            return text
        except UnicodeDecodeError:
            pass
    if codec is not None:
        walk.error(f"{where}: not valid {charset}; undecodable bytes replaced")
        try:
            return data.decode(codec[0], "replace")
        except Exception:
            pass
    if not charset:                           # an unknown charset was reported above
        walk.error(f"{where}: 8-bit text without a charset; read as Latin-1")
    return data.decode("latin-1")


def _words(value: str, where: str, walk: _Walk) -> str:
    """Decode RFC 2047 encoded words in a header value."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list = []           # [charset, bytearray] of adjacent words, joined before decoding
    pos = 0

    def flush() -> None:
        if pending:
            out.append(_text(bytes(pending[1]), pending[0], where, walk))
            pending.clear()

    for m in _ENCODED_WORD.finditer(value):
        gap = value[pos:m.start()]
        if not (pending and not gap.strip()):        # RFC 2047 6.2: space between words is dropped
            flush()
            out.append(gap)
        charset, enc, payload = m.group(1), m.group(2), m.group(3)
        data = payload.encode("utf-8", "replace")
        if enc in "qQ":
            data = binascii.a2b_qp(data, header=True)         # RFC 2047 4.2
        else:
            data = _b64(data, walk, where)                    # RFC 2047 4.1
        cs = charset.split("*", 1)[0].lower()                 # RFC 2231 5
        if pending and pending[0] == cs:
            pending[1] += data
        else:
            flush()
            pending[:] = [cs, bytearray(data)]
        pos = m.end()
    flush()
    out.append(value[pos:])
    return "".join(out)


# --- transfer encodings -----------------------------------------------------

_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")


def _b64(data: bytes, walk: _Walk, where: str) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        pass
    clean = _B64_JUNK.sub(b"", data)
    clean = clean[: len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
    walk.error(f"{where}: invalid base64")
    try:
        return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
    except binascii.Error:
        return b""


def _uu(data: bytes) -> bytes:
    out = []
    lines = iter(data.splitlines())
    for line in lines:
        if line.startswith(b"begin"):
            break
    for line in lines:
        if line.strip() in (b"end", b"`"):
            break
        if not line.strip():
            continue
        try:
            out.append(binascii.a2b_uu(line))
        except binascii.Error:                  # lines from sloppy encoders: trust the length byte
            n = (((line[0] - 32) & 63) * 4 + 5) // 3
            try:
                out.append(binascii.a2b_uu(line[:n]))
            except binascii.Error:
                pass
    return b"".join(out)


def _payload(walk: _Walk, part: _Part) -> bytes:
    data = walk.buf[part.start:part.end]
    cte = (part.get("content-transfer-encoding") or "").strip().lower()
    cte = cte.split(None, 1)[0] if cte else ""
    if cte in ("", "7bit", "8bit", "binary"):          # RFC 2045 6.1
        return data
    if cte == "base64":
        return _b64(data, walk, f"part {part.index}")
    if cte == "quoted-printable":
        return binascii.a2b_qp(data)                   # RFC 2045 6.7
    if cte in ("x-uuencode", "uuencode", "x-uue", "uue"):
        return _uu(data)
    walk.error(f"part {part.index}: unknown Content-Transfer-Encoding {cte!r}; read as 8bit")
    return data


# --- the record -------------------------------------------------------------

_ANGLE_ID = re.compile(r"<([^<>]*)>")
_COMMENT = re.compile(r"\([^()]*\)")
_BARE_SPLIT = re.compile(r"[\s,;]+")


def _msgids(value: str) -> tuple[list[str], bool]:
    """msg-ids in a header value (RFC 5322 3.6.4), and whether any was without angle brackets."""
    ids = []
    for m in _ANGLE_ID.finditer(value):
        mid = "".join(m.group(1).split())
        if mid:
            ids.append(mid)
    if ids:
        return ids, False
    for token in _BARE_SPLIT.split(_COMMENT.sub(" ", value)):
        token = token.strip("\"'<>")
        if "@" in token.strip("@"):
            ids.append(token)
    return ids, bool(ids)


def _addresses(values: list[str], name: str, walk: _Walk) -> list[Address]:
    out: list[Address] = []
    if not values:
        return out
    if sum(map(len, values)) > MAX_ADDRESS_FIELD:     # bounded before it is read, cut between addresses
        walk.error(f"{name}: longer than {MAX_ADDRESS_FIELD} characters; the rest is not read")
        kept, room = [], MAX_ADDRESS_FIELD
        for value in values:
            if len(value) > room:
                cut = value.rfind(",", 0, room)
                if cut > 0:
                    kept.append(value[:cut])
                break
            kept.append(value)
            room -= len(value)
        values = kept
    pairs = _safe(lambda: getaddresses(values), [])
    for display, addr in pairs:
        display = _words(display, name, walk).strip()
        addr = addr.strip()
        local, at, domain = addr.rpartition("@")
        if addr and not (at and local and domain and "<" not in addr and ">" not in addr
                         and not any(c.isspace() for c in domain)):
            walk.error(f"{name}: unparseable address {addr!r}")
            display, addr = display or addr, ""
        if display or addr:
            out.append(Address(display, addr))
    if not out and any(v.strip() for v in values) and not all(v.rstrip().endswith(";") for v in values):
        walk.error(f"{name}: no address found")
    return out


def _date(value: str | None, walk: _Walk) -> datetime | None:
    if value is None:
        return None
    try:
        parts = parsedate_tz(value)                   # RFC 5322 3.3, with obsolete forms
        if parts is not None:
            return datetime.fromtimestamp(mktime_tz(parts), timezone.utc)
    except Exception:
        pass
    walk.error(f"Date: unparseable {value[:80]!r}")
    return None


def _classify(walk: _Walk) -> tuple[_Part | None, _Part | None, list[_Part]]:
    """The text/plain body, the text/html body, and the attachment parts."""
    text = html = None
    leaves = []
    for part in walk.parts:
        if part.container:
            continue
        disposition = _safe(part.mime.get_content_disposition) if part.mime is not None else None
        if disposition != "attachment":                       # RFC 2183 2.1: inline is part of the body
            if part.ctype == "text/plain" and text is None:
                text = part
                continue
            if part.ctype == "text/html" and html is None:
                html = part
                continue
        leaves.append(part)
    return text, html, leaves


def _body(walk: _Walk, part: _Part) -> str:
    charset = _safe(lambda: part.mime.get_content_charset()) if part.mime is not None else None
    body = _text(_payload(walk, part), charset, f"part {part.index} ({part.ctype})", walk)
    if "\x00" in body:
        walk.error(f"part {part.index}: NUL in text")
        body = body.replace("\x00", "\ufffd")
    return body.replace("\r\n", "\n")


def _attachment(walk: _Walk, part: _Part) -> tuple[Attachment, bytes]:
    data = _payload(walk, part)
    mime = part.mime
    filename = _safe(lambda: mime.get_filename()) if mime is not None else None
    if filename:
        filename = _words(filename, f"part {part.index} filename", walk)
        filename = "".join(c for c in filename if c >= " " and c != "\x7f").strip() or None
    else:
        filename = None
    cid = part.get("content-id")
    cid = cid.strip().strip("<>").strip() or None if cid else None
    disposition = _safe(mime.get_content_disposition) if mime is not None else None
    if disposition is None:
        # none given: inline when referenced by cid, or displayable text without a file name
        inline = cid is not None or (filename is None and part.ctype.startswith("text/"))
        disposition = "inline" if inline else "attachment"
    elif disposition != "inline":
        disposition = "attachment"          # RFC 2183 2.8: an unknown disposition is an attachment
    return Attachment(part.index, filename, part.ctype, len(data), cid, disposition), data


def _build(walk: _Walk) -> Parsed:
    parsed = Parsed()
    root = walk.parts[0]
    if not root.fields:
        walk.error("no header fields")
    first: dict[str, str] = {}
    every: dict[str, list[str]] = {}
    for name, value in root.fields:
        lname = name.lower()
        first.setdefault(lname, value)
        every.setdefault(lname, []).append(value)
        parsed.headers.append((name, _words(value, name, walk)))

    if "message-id" in first:
        ids, bare = _msgids(first["message-id"])
        if ids:
            parsed.message_id = ids[0]
        else:
            walk.error("Message-ID: no msg-id found")
        if bare:
            walk.error("Message-ID: msg-id without angle brackets")
    if "in-reply-to" in first:
        parsed.in_reply_to = _msgids(first["in-reply-to"])[0]
    refs, _ = _msgids(" ".join(every.get("references", [])))
    parsed.references = list(dict.fromkeys(refs))
    parsed.subject = _words(first.get("subject", ""), "Subject", walk).strip()
    parsed.from_ = _addresses(every.get("from", []), "From", walk)
    parsed.to = _addresses(every.get("to", []), "To", walk)
    parsed.cc = _addresses(every.get("cc", []), "Cc", walk)
    parsed.reply_to = _addresses(every.get("reply-to", []), "Reply-To", walk)
    parsed.date = _date(first.get("date"), walk)

    text, html, leaves = _classify(walk)
    if html is not None:
        parsed.html = _body(walk, html)
    if text is not None:
        parsed.text = _body(walk, text)
    elif parsed.html is not None:
        parsed.text = html_to_text(parsed.html)
    parsed.attachments = [_attachment(walk, part)[0] for part in leaves]
    parsed.errors = walk.errors
    return parsed


# --- HTML to text -----------------------------------------------------------

_HIDDEN = re.compile(r"<(script|style|head|title|template)\b", re.I)
_CLOSERS = {n: re.compile(f"</{n}", re.I) for n in ("script", "style", "head", "title", "template")}
# The tag name's characters are attribute characters too: possessive, so an unclosed tag fails in linear time.
_TAG = re.compile(r"""<(?=[A-Za-z/!?])(/?)([A-Za-z][A-Za-z0-9:-]*+)?+(?:[^<>"']++|"[^"<]*+"|'[^'<]*+')*+>""")
_PARAGRAPH = frozenset("p h1 h2 h3 h4 h5 h6 table ul ol dl blockquote pre hr section article header "
                       "footer form fieldset figure nav main aside address center".split())
_LINE = frozenset("br div li tr dd dt caption option".split())
_CELL = frozenset("td th".split())
_SPACES = re.compile(r"[ \t\r\n\f\v\xa0]+")
_BLANKS = re.compile(r"\n{3,}")


def _tag(m: re.Match) -> str:
    name = (m.group(2) or "").lower()
    if name in _PARAGRAPH:
        return "\n\n"
    if name in _LINE:
        return "\n"
    if name in _CELL:
        return " "
    return ""


def html_to_text(source: str) -> str:
    """A plain-text rendering of HTML: tags and hidden elements dropped, entities unescaped, blocks on their own lines."""
    kept: list[str] = []
    pos = 0
    c, h = source.find("<!--"), _HIDDEN.search(source)
    while True:                       # one pass: each search result is reused until the scan passes it
        if 0 <= c < pos:
            c = source.find("<!--", pos)
        if h is not None and h.start() < pos:
            h = _HIDDEN.search(source, pos)
        if c < 0 and h is None:
            kept.append(source[pos:])
            break
        if h is None or (0 <= c < h.start()):
            kept.append(source[pos:c])
            close = source.find("-->", c + 4)
            pos = len(source) if close < 0 else close + 3
        else:
            kept.append(source[pos:h.start()])
            close = _CLOSERS[h.group(1).lower()].search(source, h.end())
            if close is None:
                pos = len(source)
            else:
                gt = source.find(">", close.end())
                pos = len(source) if gt < 0 else gt + 1
    text = _SPACES.sub(" ", "".join(kept))          # HTML collapses source white space
    text = htmllib.unescape(_TAG.sub(_tag, text))
    lines = [" ".join(line.replace("\xa0", " ").split()) for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()

