"""Composing owns the step from a send request (a Draft) to RFC 5322 bytes: header encoding, MIME structure, transfer encodings and reply threading fields."""
from __future__ import annotations

import base64
import binascii
import re
import secrets
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime

from mxd.address import AddressError, normalize_domain
from mxd.address import parse as parse_address

MAX_REFERENCES = 20      # References kept in a reply: the thread root and the 19 newest
MAX_MSGID = 250          # a msg-id longer than this is refused (it must fit a 998-octet line)
FOLD_AT = 78             # RFC 5322 2.1.1: SHOULD be no more than 78 characters
MAX_LINE = 998           # RFC 5322 2.1.1: MUST be no more than 998 characters

# Header fields mxd writes itself, or that only an MTA may add (trace and authentication fields).
_RESERVED = frozenset({
    "from", "to", "cc", "bcc", "date", "message-id", "sender", "return-path", "dkim-signature",
    "received", "mime-version", "subject", "reply-to", "in-reply-to", "references",
    "authentication-results", "received-spf", "delivered-to",
})
_RESERVED_PREFIXES = ("content-", "resent-", "arc-")

_INJECTION = re.compile(r"[\r\n\x00]")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")                 # RFC 5322 2.2 ftext
_PLAIN = re.compile(r"[\x20-\x7e\t]*")                                 # printable ASCII and WSP
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_MSGID = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]{1,%d}" % MAX_MSGID)   # visible ASCII except < and >
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"                                # RFC 2045 5.1 token
_PARAM = rf"{_TOKEN}=(?:{_TOKEN}|\"[ !#-\[\]-~]*\")"
# Possessive white space: no two quantifiers may trade characters, so a value that fails does so in linear time.
_CONTENT_TYPE = re.compile(rf"({_TOKEN})/({_TOKEN})((?:\s*+;\s*+{_PARAM})*+)\s*+;?+\s*+")
_WS_TOKENS = re.compile(r"[ \t]*[^ \t]+|[ \t]+")
_Q_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")  # RFC 2047 5(3)
_LOW = bytes(range(128))


class ComposeError(ValueError):
    """A draft mxd will not turn into a message; `code` is an mxd error code, `field` names the input."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(message)
        self.code = code          # "header_injection" | "invalid_address" | "bad_request"
        self.field = field        # e.g. "subject", "to[1]", "headers.X-Tag", "attachments[0].filename"
        self.message = message


@dataclass
class OutAttachment:
    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None     # without <>; with inline=True and an HTML body it goes in multipart/related
    inline: bool = False


@dataclass
class Draft:
    from_addr: str
    to: list[str]                     # entries "addr" or "Name <addr>"
    from_name: str = ""
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)          # envelope only, never written
    reply_to: list[str] = field(default_factory=list)
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: list[OutAttachment] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    in_reply_to: str | None = None    # msg-id without <>
    references: list[str] = field(default_factory=list)


# --- validation --------------------------------------------------------------

def _check(value: object, name: str) -> str:
    """A field value that may go into a header: a str without CR, LF or NUL that encodes as UTF-8."""
    if not isinstance(value, str):
        raise ComposeError("bad_request", name, f"{name} must be a string")
    if _INJECTION.search(value):
        raise ComposeError("header_injection", name, f"{name} contains CR, LF or NUL")
    _utf8(value, name)
    return value


def _utf8(value: str, name: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ComposeError("bad_request", name, f"{name} is not valid Unicode (lone surrogate)") from None


def _split_entry(entry: object, name: str) -> tuple[str, str]:
    """("Name", "addr") from "addr", "<addr>", "Name <addr>" or "\"Name\" <addr>"."""
    text = _check(entry, name).strip()
    if text.endswith(">") and "<" in text:
        i = text.rindex("<")
        display, addr = text[:i].strip(), text[i + 1:-1].strip()
        if len(display) >= 2 and display[0] == display[-1] == '"':
            display = re.sub(r"\\(.)", r"\1", display[1:-1])
        return display, addr
    return "", text


def _address(addr: str, name: str) -> str:
    """addr-spec with the domain in A-labels (IDNA), local part as written."""
    try:
        return str(parse_address(addr))
    except AddressError as exc:
        raise ComposeError("invalid_address", name, f"{name}: {exc}") from None


def _msgid(value: object, name: str) -> str:
    text = _check(value, name).strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if not _MSGID.fullmatch(text):
        raise ComposeError("bad_request", name, f"{name} is not a msg-id (visible ASCII, no spaces or <>)")
    return text


def _mailboxes(entries: object, name: str) -> list[tuple[str, str]]:
    if not isinstance(entries, (list, tuple)):
        raise ComposeError("bad_request", name, f"{name} must be a list of addresses")
    out = []
    for i, entry in enumerate(entries):
        where = f"{name}[{i}]"
        display, addr = _split_entry(entry, where)
        out.append((display, _address(addr, where)))
    return out


# --- header encoding ---------------------------------------------------------

def _q_word(ch: str) -> str:
    if ch in _Q_SAFE:
        return ch
    if ch == " ":
        return "_"
    return "".join(f"={b:02X}" for b in ch.encode("utf-8"))


def encoded_words(text: str) -> list[str]:
    """RFC 2047 encoded-words (UTF-8, Q or B, whichever is shorter) of at most 75 characters each.

    Words are cut at character boundaries (RFC 2047 5), and only characters safe
    in a phrase are left bare, so the words fit any header field.
    """
    data = text.encode("utf-8")
    q = [_q_word(ch) for ch in text]
    use_q = sum(map(len, q)) <= (len(data) + 2) // 3 * 4
    words: list[str] = []
    if use_q:
        cur = ""
        for piece in q:
            if len(cur) + len(piece) > 63:          # 75 - len("=?utf-8?q?") - len("?=")
                words.append(f"=?utf-8?q?{cur}?=")
                cur = ""
            cur += piece
        if cur or not words:
            words.append(f"=?utf-8?q?{cur}?=")
        return words
    chunk = b""
    for ch in text:
        b = ch.encode("utf-8")
        if len(chunk) + len(b) > 45:                # 45 octets -> 60 base64 characters
            words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
            chunk = b""
        chunk += b
    if chunk or not words:
        words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
    return words


def _fold(name: str, tokens: list[str]) -> str:
    """name: tokens joined by single spaces, folded before a token when the line passes 78 (RFC 5322 2.2.3)."""
    lines: list[str] = []
    line = f"{name}:"
    bare = True
    for tok in tokens:
        if not bare and len(line) + 1 + len(tok) > FOLD_AT:
            lines.append(line)
            line = " " + tok
        else:
            line += " " + tok
        bare = False
    lines.append(line)
    return "\r\n".join(lines)


def _fold_verbatim(name: str, value: str) -> str | None:
    """Unstructured text kept as written, folded only before existing whitespace; None if a line would pass 998."""
    lines: list[str] = []
    line = f"{name}:"
    content = False                      # the current line holds more than the name and whitespace
    for tok in _WS_TOKENS.findall(" " + value) if value else []:
        # RFC 5322 2.2.3: fold only before existing whitespace, and only before a single
        # space, which every unfolding (even one that squeezes whitespace) gives back as is
        if content and len(line) + len(tok) > FOLD_AT and tok[0] == " " and tok[1:2] not in (" ", "\t", ""):
            lines.append(line)
            line = tok
        else:
            line += tok
        content = content or bool(tok.strip())
    lines.append(line)
    if any(len(ln) > MAX_LINE for ln in lines):
        return None
    return "\r\n".join(lines)


def unstructured(name: str, value: str, *, literal_ascii: bool = False) -> str:
    """A folded unstructured header field (no final CRLF): verbatim when it is plain ASCII, else RFC 2047 words.

    With literal_ascii, printable ASCII is never encoded even if it looks like an
    encoded-word (custom fields may be structured, e.g. List-Unsubscribe).
    """
    if _PLAIN.fullmatch(value) and (literal_ascii or "=?" not in value):
        folded = _fold_verbatim(name, value)
        if folded is not None:
            return folded
        if literal_ascii:
            raise ComposeError("bad_request", f"headers.{name}", f"{name} holds a word longer than {MAX_LINE} characters")
    return _fold(name, encoded_words(value))


def _phrase(display: str) -> list[str]:
    """Tokens of a display name (RFC 5322 3.2.5 phrase): atoms, one quoted-string, or encoded-words."""
    if _ATOM_PHRASE.fullmatch(display) and "=?" not in display:
        return display.split(" ")
    if len(display) <= 200 and "=?" not in display and all(" " <= c <= "~" for c in display):
        return ['"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return encoded_words(display)


def address_list(name: str, mailboxes: list[tuple[str, str]]) -> str:
    """A folded address-list field from (display name, addr-spec) pairs."""
    tokens: list[str] = []
    for i, (display, addr) in enumerate(mailboxes):
        parts = _phrase(display) + [f"<{addr}>"] if display else [addr]
        if i < len(mailboxes) - 1:
            parts[-1] += ","
        tokens.extend(parts)
    return _fold(name, tokens)


# --- bodies --------------------------------------------------------------------

def _crlf(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\n", "\r\n")


def _max_line(data: bytes) -> int:
    return max(map(len, data.split(b"\r\n"))) if data else 0


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def encode_text(text: str, name: str = "text") -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, body) for text as UTF-8 with CRLF line ends and a final line break.

    7bit when it is ASCII with lines within 998 octets; otherwise quoted-printable,
    or base64 when most of it is not ASCII (RFC 2045 6); lines stay within 76.
    """
    if "\x00" in text:
        raise ComposeError("bad_request", name, f"{name} contains NUL")
    if text and not text.endswith(("\n", "\r")):
        text += "\n"
    data = _utf8(_crlf(text), name)
    if data.isascii() and _max_line(data) <= MAX_LINE:
        return "7bit", data
    high = len(data.translate(None, _LOW))
    if high * 3 > len(data):
        return "base64", _b64(data)
    qp = binascii.b2a_qp(data, istext=True)
    return "quoted-printable", re.sub(rb"\r?\n", b"\r\n", qp)


def new_boundary() -> str:
    # "=_" never occurs in quoted-printable or base64 output (RFC 2045 6.7, RFC 2046 5.1.1)
    return f"=_mxd_{secrets.token_hex(12)}"


def new_message_id(domain: str) -> str:
    """A fresh msg-id (without <>) at the given domain (RFC 5322 3.6.4: globally unique)."""
    return f"{secrets.token_hex(16)}@{normalize_domain(domain)}"


def multipart(subtype: str, parts: list[bytes], params: list[str] | None = None) -> tuple[list[str], bytes]:
    """(header fields, body) of a multipart entity holding already serialised parts."""
    params = params or []
    while True:
        boundary = new_boundary()
        delim = boundary.encode("ascii")
        if not any(delim in p for p in parts):
            break
    chunks = []
    for p in parts:
        chunks += [b"--", delim, b"\r\n", p, b"\r\n"]
    chunks += [b"--", delim, b"--\r\n"]
    return [_with_params(f"Content-Type: multipart/{subtype}", params + [f'boundary="{boundary}"'])], b"".join(chunks)


def entity(fields: list[str], body: bytes) -> bytes:
    return ("\r\n".join(fields) + "\r\n\r\n").encode("utf-8") + body


def _text_part(text: str, subtype: str, name: str) -> tuple[list[str], bytes]:
    cte, body = encode_text(text, name)
    return [f"Content-Type: text/{subtype}; charset=utf-8", f"Content-Transfer-Encoding: {cte}"], body


def _simple(value: str) -> bool:
    return len(value) <= 60 and all(" " <= c <= "~" for c in value) and '"' not in value and "\\" not in value


def _param(key: str, value: str) -> list[str]:
    """One MIME parameter, RFC 2231-encoded (with continuations) unless it is short plain ASCII."""
    if _simple(value):
        return [f'{key}="{value}"']
    enc = urllib.parse.quote(value.encode("utf-8"), safe="!#$&+-.^_`|~")   # RFC 2231 7 attribute-char
    if len(enc) <= 60:
        return [f"{key}*=utf-8''{enc}"]
    pieces, i = [], 0
    while i < len(enc):
        j = min(i + 60, len(enc))
        if "%" in enc[j - 2:j] and j < len(enc):          # never cut a %XX escape
            j = i + enc[i:j].rindex("%")
        pieces.append(enc[i:j])
        i = j
    pieces[0] = "utf-8''" + pieces[0]                   # RFC 2231 4: charset only on the first section
    return [f"{key}*{n}*={p}" for n, p in enumerate(pieces)]                 # RFC 2231 3


def _with_params(head: str, params: list[str]) -> str:
    line, lines = head, []
    for p in params:
        if len(line) + 2 + len(p) > FOLD_AT:
            lines.append(line + ";")
            line = " " + p
        else:
            line += "; " + p
    lines.append(line)
    return "\r\n".join(lines)


def _attachment_part(att: object, i: int, inline: bool) -> tuple[list[str], bytes]:
    where = f"attachments[{i}]"
    if not isinstance(att, OutAttachment):
        raise ComposeError("bad_request", where, f"{where} must be an OutAttachment")
    filename = _check(att.filename if att.filename is not None else "", f"{where}.filename")
    ctype_text = _check(att.content_type or "application/octet-stream", f"{where}.content_type").strip()
    m = _CONTENT_TYPE.fullmatch(ctype_text)
    if not m or not ctype_text.isascii():
        raise ComposeError("bad_request", f"{where}.content_type", f"{where}.content_type is not a MIME type")
    maintype, subtype, params = m.group(1).lower(), m.group(2).lower(), m.group(3).strip()
    content = att.content
    if isinstance(content, str):
        content = _utf8(content, f"{where}.content")
    if not isinstance(content, (bytes, bytearray, memoryview)):
        raise ComposeError("bad_request", f"{where}.content", f"{where}.content must be bytes")
    content = bytes(content)
    if maintype == "multipart":
        raise ComposeError("bad_request", f"{where}.content_type", "an attachment cannot be multipart/*")
    ctype = f"{maintype}/{subtype}"
    if params:
        ctype += "; " + "; ".join(re.findall(_PARAM, params))
    if maintype == "message":
        # RFC 2046 5.2.1: message/* takes no base64; send it in canonical form as 7bit or 8bit
        data = re.sub(rb"\r\n|\r|\n", b"\r\n", content)
        if b"\x00" in data or _max_line(data) > MAX_LINE:
            raise ComposeError("bad_request", f"{where}.content", f"{where}: message/* content has NUL or over-long lines")
        cte, body = ("7bit" if data.isascii() else "8bit"), data
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"
    else:
        cte, body = "base64", _b64(content)
    fields = [_with_params(f"Content-Type: {ctype}", _param("name", filename) if filename and _simple(filename) else [])]
    fields.append(f"Content-Transfer-Encoding: {cte}")
    disposition = "inline" if inline else "attachment"
    fields.append(_with_params(f"Content-Disposition: {disposition}", _param("filename", filename) if filename else []))
    if att.content_id is not None:
        fields.append(f"Content-ID: <{_msgid(att.content_id, f'{where}.content_id')}>")
    return fields, body


def _custom_headers(headers: object) -> list[str]:
    if not isinstance(headers, dict):
        raise ComposeError("bad_request", "headers", "headers must be an object of name: value")
    out = []
    for name, value in headers.items():
        where = f"headers.{name}"
        _check(name, where)
        _check(value, where)
        if not _FIELD_NAME.fullmatch(name):
            raise ComposeError("bad_request", where, f"{name!r} is not an RFC 5322 field name")
        lname = name.lower()
        if lname in _RESERVED or lname.startswith(_RESERVED_PREFIXES):
            raise ComposeError("bad_request", where, f"{name} is set by mxd and cannot be given")
        out.append(unstructured(name, value, literal_ascii=True))
    return out


def _body_text(value: object, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ComposeError("bad_request", name, f"{name} must be a string")
    return value


# --- the message ---------------------------------------------------------------

def compose(draft: Draft, *, message_id_domain: str, now: datetime | None = None) -> tuple[bytes, str]:
    """(RFC 5322 message with CRLF line ends, Message-ID without <>) for a draft; raises ComposeError.

    Date and Message-ID are always made here. Bcc is never written (RFC 5322 3.6.3
    allows either; leaving it out keeps Bcc recipients hidden from each other).
    A text-only draft is text/plain, HTML-only text/html (no text is invented),
    both multipart/alternative; inline attachments with a Content-ID go with the
    HTML in multipart/related, other attachments in multipart/mixed.
    """
    if not isinstance(draft, Draft):
        raise ComposeError("bad_request", "draft", "draft must be a Draft")
    # headers: validated and encoded first, so a bad field fails before any body work
    from_display, from_addr = _split_entry(draft.from_addr, "from_addr")
    from_addr = _address(from_addr, "from_addr")
    from_name = _check(draft.from_name or "", "from_name").strip() or from_display
    to = _mailboxes(draft.to, "to")
    cc = _mailboxes(draft.cc, "cc")
    bcc = _mailboxes(draft.bcc, "bcc")
    reply_to = _mailboxes(draft.reply_to, "reply_to")
    if not (to or cc or bcc):
        raise ComposeError("bad_request", "to", "the message has no recipients")
    subject = _check(draft.subject or "", "subject")
    in_reply_to = _msgid(draft.in_reply_to, "in_reply_to") if draft.in_reply_to else None
    if not isinstance(draft.references, (list, tuple)):
        raise ComposeError("bad_request", "references", "references must be a list")
    references = [_msgid(r, f"references[{i}]") for i, r in enumerate(draft.references)]
    custom = _custom_headers(draft.headers)
    try:
        domain = normalize_domain(message_id_domain)
    except AddressError as exc:
        raise ComposeError("bad_request", "message_id_domain", f"message_id_domain: {exc}") from None

    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    message_id = new_message_id(domain)
    fields = [f"Date: {format_datetime(now)}", address_list("From", [(from_name, from_addr)])]
    if reply_to:
        fields.append(address_list("Reply-To", reply_to))
    if to:
        fields.append(address_list("To", to))
    elif not cc:
        fields.append("To: undisclosed-recipients:;")     # RFC 5322 3.6.3: Bcc-only, an empty group
    if cc:
        fields.append(address_list("Cc", cc))
    fields.append(unstructured("Subject", subject))
    fields.append(f"Message-ID: <{message_id}>")
    if in_reply_to:
        fields.append(f"In-Reply-To: <{in_reply_to}>")
    if references:
        fields.append(_fold("References", [f"<{r}>" for r in references]))
    fields.append("MIME-Version: 1.0")
    fields.extend(custom)

    # body
    text, html = _body_text(draft.text, "text"), _body_text(draft.html, "html")
    if not isinstance(draft.attachments, (list, tuple)):
        raise ComposeError("bad_request", "attachments", "attachments must be a list")
    related, mixed = [], []
    for i, att in enumerate(draft.attachments):
        embed = bool(html) and isinstance(att, OutAttachment) and att.inline and att.content_id is not None
        part = _attachment_part(att, i, inline=isinstance(att, OutAttachment) and att.inline)
        (related if embed else mixed).append(entity(*part))
    alternatives = []
    if text or not html:
        alternatives.append(_text_part(text or "", "plain", "text"))
    if html:
        html_part = _text_part(html, "html", "html")
        if related:
            html_part = multipart("related", [entity(*html_part)] + related, ['type="text/html"'])  # RFC 2387 3.1
        alternatives.append(html_part)
    body = alternatives[0] if len(alternatives) == 1 else multipart("alternative", [entity(*p) for p in alternatives])
    if mixed:
        body = multipart("mixed", ([entity(*body)] if (text or html) else []) + mixed)
    raw = entity(fields + body[0], body[1])
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    return raw, message_id


def envelope_recipients(draft: Draft) -> list[str]:
    """RCPT TO addresses: To, Cc and Bcc addr-specs, IDNA-normalised, each once (compared case-insensitively)."""
    seen: dict[str, str] = {}
    for name in ("to", "cc", "bcc"):
        for _display, addr in _mailboxes(getattr(draft, name), name):
            local, _, domain = addr.rpartition("@")
            seen.setdefault(f"{local.lower()}@{domain}", addr)
    return list(seen.values())


# --- replies -------------------------------------------------------------------

def _clean_id(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text if _MSGID.fullmatch(text) else None


def reply_headers(parent_message_id: str | None, parent_references: list[str],
                  parent_in_reply_to: list[str]) -> tuple[str | None, list[str]]:
    """(In-Reply-To, References) for a reply to the parent, ids without <> (RFC 5322 3.6.4).

    References is the parent's References, or else its In-Reply-To when that holds
    exactly one id, then the parent's Message-ID; beyond MAX_REFERENCES the first
    (thread root) and the newest are kept. Ids that could not be written are dropped.
    """
    parent = _clean_id(parent_message_id)
    refs = [c for c in map(_clean_id, parent_references or []) if c]
    if not refs and parent_in_reply_to and len(parent_in_reply_to) == 1:
        refs = [c for c in [_clean_id(parent_in_reply_to[0])] if c]
    refs = [r for r in dict.fromkeys(refs) if r != parent]
    if parent:
        refs.append(parent)
    if len(refs) > MAX_REFERENCES:
        refs = refs[:1] + refs[-(MAX_REFERENCES - 1):]
    return parent, refs


_REPLY_PREFIX = re.compile(r"^(?:\s*+(?:re|aw|sv|antw)\s*+(?:\[\d++\]|\(\d++\))?+\s*+:)+\s*", re.IGNORECASE)


def reply_subject(subject: str) -> str:
    """The subject with one "Re: " in front; existing Re:/RE[2]:/AW:/SV:/Antw: prefixes fold into it (RFC 5322 3.6.5)."""
    return "Re: " + _REPLY_PREFIX.sub("", subject or "", count=1).strip()
