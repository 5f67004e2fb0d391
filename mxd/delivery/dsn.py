"""Delivery status notifications own the RFC 3464 report mxd writes when mail fails or is delayed, and the reading of reports that come back."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import format_datetime

from mxd.mime.compose import address_list, encode_text, entity, multipart, unstructured
from mxd.mime.parse import attachment, parse

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")      # RFC 3464 2.3.3
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")                   # RFC 3464 2.3.4, RFC 3463
_TYPED = re.compile(r"^\s*([A-Za-z0-9.+-]+)\s*;\s*(.*)$", re.S)
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_ORIGINAL_TYPES = ("text/rfc822-headers", "message/global-headers", "message/rfc822", "message/global")
# a delivery-status part found by its header when the MIME structure is broken (`_fallback`)
_FALLBACK = re.compile(rb"^content-type:[ \t]*+message/(?:global-)?delivery-status\b", re.I | re.M)
_MSGID = re.compile(r"<([^<>\s]+)>")
_HEAD_LIMIT = 64 * 1024                  # a report's own header section is short


@dataclass
class FailedRecipient:
    address: str
    status: str                          # RFC 3463 code, e.g. "5.1.1"
    action: str                          # "failed" | "delayed"
    diagnostic: str                      # e.g. "smtp; 550 5.1.1 no such user"
    remote_mta: str | None
    last_attempt: datetime | None
    will_retry_until: datetime | None = None


def _date(value: datetime) -> str:
    return format_datetime(value if value.tzinfo else value.replace(tzinfo=timezone.utc))


def _line(value: object, name: str) -> str:
    text = str(value)
    if any(c in text for c in "\r\n\x00"):
        raise ValueError(f"{name} contains CR, LF or NUL")
    return text


def _text(value: str, utf8: bool) -> str:
    """A value from elsewhere (a remote server's reply) made safe for one status field."""
    value = re.sub(r"[\x00-\x1f\x7f]+", " ", value).strip()
    if not utf8:
        value = value.encode("ascii", "replace").decode("ascii")
    return value[:900]


def _field(name: str, value: str) -> str:
    """A status field folded at spaces near 78 characters (RFC 3464 2.1 uses RFC 822 field syntax)."""
    lines, line = [], f"{name}:"
    for word in value.split(" "):
        if len(line) + 1 + len(word) > 78 and line.strip() != f"{name}:" and word:
            lines.append(line)
            line = " " + word
        else:
            line += " " + word
    lines.append(line)
    return "\r\n".join(lines)


def _header_section(message: bytes) -> bytes:
    end = re.search(rb"\r?\n\r?\n", message)
    head = message[:end.start()] if end else message
    return re.sub(rb"\r\n|\r|\n", b"\r\n", head) + b"\r\n"


def _original_id(head: bytes) -> str | None:
    m = re.search(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", head, re.I | re.M)
    ids = _MSGID.findall(m.group(1).decode("utf-8", "replace")) if m else []
    return ids[0] if ids else None


def build_dsn(*, reporting_mta: str, original_envelope_id: str | None, original_message: bytes,
              original_mail_from: str, recipients: list[FailedRecipient], to_addr: str, from_addr: str,
              arrival: datetime, headers_only: bool = True, now: datetime | None = None) -> bytes:
    """A multipart/report delivery status notification (RFC 3464, RFC 6522) with CRLF line ends.

    Parts: a human-readable text/plain, the message/delivery-status, and the
    original's header section as text/rfc822-headers (the whole message as
    message/rfc822 with headers_only=False). UTF-8 addresses or header fields
    switch to the message/global-* types (RFC 6533). The message is marked
    Auto-Submitted: auto-replied (RFC 3834 5) and refers to the original's
    Message-ID so it threads with it.

    The caller sends it with an empty reverse-path, MAIL FROM:<> (RFC 5321 4.5.5,
    RFC 3464 2), and never for a message whose own reverse-path was empty.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    reporting_mta = _line(reporting_mta, "reporting_mta").strip()
    to_addr, from_addr = _line(to_addr, "to_addr").strip("<> "), _line(from_addr, "from_addr").strip("<> ")
    original_mail_from = _line(original_mail_from, "original_mail_from").strip("<> ")
    for r in recipients:
        _line(r.address, "recipient address")
        if r.action not in ACTIONS:
            raise ValueError(f"action {r.action!r} is not one of {ACTIONS}")
        if not _STATUS.fullmatch(r.status):
            raise ValueError(f"status {r.status!r} is not an RFC 3463 code")
    now = now or datetime.now(timezone.utc)
    head = _header_section(original_message)
    original_id = _original_id(head)
    utf8 = not head.isascii() or not all(r.address.isascii() for r in recipients)

    # the human-readable part (RFC 3464 2: first part, for people)
    failed = [r for r in recipients if r.action == "failed"]
    delayed = [r for r in recipients if r.action == "delayed"]
    text = [f"This is the mail system at {reporting_mta}.", ""]
    if failed:
        text += ["Your message could not be delivered to the recipients below. mxd has given up on them.", ""]
    if delayed:
        text += ["Your message has not been delivered yet to the recipients below. mxd keeps trying;",
                 "you do not need to send it again.", ""]
    for r in failed + delayed:
        verb = "delivery failed" if r.action == "failed" else "delivery delayed"
        text.append(f"<{r.address}>: {verb} ({r.status})")
        reason = _text(_TYPED.sub(r"\2", r.diagnostic or ""), True)
        if r.remote_mta and reason:
            text.append(f"    Host {r.remote_mta} said: {reason}")
        elif reason:
            text.append(f"    Reason: {reason}")
        if r.action == "delayed":
            until = f"until {_date(r.will_retry_until)}" if r.will_retry_until else "until the message expires"
            text.append(f"    mxd will keep trying {until}.")
        text.append("")
    text += [f"The message from <{original_mail_from}> arrived at {_date(arrival)}"
             + (f" with Message-ID <{original_id}>." if original_id else "."),
             "Its header fields are attached." if headers_only else "It is attached."]
    human = entity(["Content-Type: text/plain; charset=utf-8", "Content-Description: Notification",
                    f"Content-Transfer-Encoding: {encode_text(chr(10).join(text))[0]}"],
                   encode_text("\n".join(text))[1])

    # the machine-readable part (RFC 3464 2.2 per-message fields, 2.3 per-recipient fields)
    fields = []
    if original_envelope_id:
        fields.append(_field("Original-Envelope-Id", _text(original_envelope_id, utf8)))
    fields.append(f"Reporting-MTA: dns; {_text(reporting_mta, utf8)}")
    fields.append(f"Arrival-Date: {_date(arrival)}")
    blocks = ["\r\n".join(fields)]
    for r in recipients:
        addr_type = "rfc822" if r.address.isascii() else "utf-8"                  # RFC 6533 3
        fields = [f"Final-Recipient: {addr_type}; {_text(r.address, utf8)}", f"Action: {r.action}",
                  f"Status: {r.status}"]
        if r.remote_mta:
            fields.append(f"Remote-MTA: dns; {_text(r.remote_mta, utf8)}")
        if r.diagnostic:
            diagnostic = r.diagnostic if _TYPED.match(r.diagnostic) else f"X-mxd; {r.diagnostic}"
            fields.append(_field("Diagnostic-Code", _text(diagnostic, utf8)))
        if r.last_attempt:
            fields.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if r.action == "delayed" and r.will_retry_until:
            fields.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")     # RFC 3464 2.3.7
        blocks.append("\r\n".join(fields))
    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    status_body = ("\r\n\r\n".join(blocks) + "\r\n").encode("utf-8")
    status = entity([f"Content-Type: {status_type}", "Content-Description: Delivery report",
                     f"Content-Transfer-Encoding: {'7bit' if status_body.isascii() else '8bit'}"], status_body)

    # the original (RFC 3464 2: the third part, RFC 6522 text/rfc822-headers)
    if headers_only:
        body = head
        ctype = "message/global-headers" if utf8 else "text/rfc822-headers"      # RFC 6533 6.3
    else:
        body = re.sub(rb"\r\n|\r|\n", b"\r\n", original_message)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        ctype = "message/global" if not head.isascii() else "message/rfc822"   # RFC 6533 6.1
    original = entity([f"Content-Type: {ctype}", "Content-Description: Undelivered message"
                       if not headers_only else "Content-Description: Undelivered message headers",
                       f"Content-Transfer-Encoding: {'7bit' if body.isascii() else '8bit'}"], body)

    report_type = "global-delivery-status" if utf8 else "delivery-status"
    report = multipart("report", [human, status, original], [f"report-type={report_type}"])
    subject = "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    headers = [f"Date: {_date(now)}", address_list("From", [("Mail Delivery System", from_addr)]),
               address_list("To", [("", to_addr)]), unstructured("Subject", subject),
               f"Message-ID: <{secrets.token_hex(16)}@{reporting_mta}>"]
    if original_id:
        headers += [f"In-Reply-To: <{original_id}>", f"References: <{original_id}>"]
    headers += ["Auto-Submitted: auto-replied", "MIME-Version: 1.0"]                # RFC 3834 5
    return entity(headers + report[0], report[1])


# --- reading reports ---------------------------------------------------------------

def _blocks(text: str) -> list[dict[str, str]]:
    """Groups of "Name: value" fields separated by empty lines; names lower-cased, folds joined."""
    blocks: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last: str | None = None
    for line in re.split(r"\r?\n", text):
        if not line.strip():
            if cur:
                blocks.append(cur)
            cur, last = {}, None
            continue
        if line[0] in " \t":
            if last is not None:
                cur[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or name in cur:
            last = None
            continue
        cur[name], last = value.strip(), name
    if cur:
        blocks.append(cur)
    return blocks


def _typed_value(value: str | None) -> str | None:
    """The value of "type; value" fields (Final-Recipient, Remote-MTA), without angle brackets."""
    if not value:
        return None
    m = _TYPED.match(value)
    value = (m.group(2) if m else value).strip()
    value = _without_trailing_comment(value).strip("<>").strip()
    return value or None


def is_delivery_report(raw: bytes) -> bool:
    """Whether a message is, at its top level, multipart/report with report-type delivery-status (RFC 6522 3,
    RFC 3464 2) or global-delivery-status (RFC 6533): what a bounce must be before it may change anything."""
    head = _header_section(raw[:_HEAD_LIMIT])
    try:
        msg = BytesHeaderParser(policy=compat32).parsebytes(head)
        report_type = msg.get_param("report-type")
        return (msg.get_content_type() == "multipart/report" and isinstance(report_type, str)
                and report_type.strip().lower() in ("delivery-status", "global-delivery-status"))
    except Exception:                     # a header section no parser can read is no report
        return False


def _without_trailing_comment(value: str) -> str:
    """`value` without one trailing "(comment)" (no parentheses inside), stripped; scanned from the end,
    not by a search that retries each position."""
    value = value.strip()
    if value.endswith(")"):
        start = value.rfind("(")
        if start >= 0 and ")" not in value[start + 1:-1]:
            return value[:start].strip()
    return value


def _fallback(raw: bytes) -> bytes | None:
    """The fields after the first "Content-Type: message/delivery-status" line and its header, up to a
    line starting "--" or the end; None without one. Linear: one forward scan from the first such line
    (when no empty line follows it, none follows any later one either)."""
    m = _FALLBACK.search(raw)
    if m is None:
        return None
    nl = raw.find(b"\n", m.end())
    if nl < 0:
        return None
    pos = nl + 1
    while not raw.startswith(b"\n", pos) and not raw.startswith(b"\r\n", pos):   # to the empty line
        nl = raw.find(b"\n", pos)
        if nl < 0:
            return None
        pos = nl + 1
    pos += 1 if raw.startswith(b"\n", pos) else 2
    end = raw.find(b"\n--", pos - 1)
    return raw[pos:] if end < 0 else raw[pos:end + 1]


def parse_dsn(raw: bytes) -> list[dict]:
    """Per-recipient results of an incoming DSN, or [] if it holds no delivery-status part; never raises.

    Each dict: final_recipient, original_recipient, action, status ("5.1.1", comments
    dropped), diagnostic (as written, e.g. "smtp; 550 5.1.1 ..."), remote_mta,
    and from the report as a whole reporting_mta, original_envelope_id and
    original_message_id (from the returned headers, for matching the bounce).
    """
    try:
        return _parse_dsn(raw)
    except Exception:       # a malformed report from outside is not an error of mxd's
        return []


def _parse_dsn(raw: bytes) -> list[dict]:
    status_data: bytes | None = None
    original_id: str | None = None
    for att in parse(raw).attachments:
        if att.content_type in _STATUS_TYPES and status_data is None:
            got = attachment(raw, att.index)
            status_data = got[1] if got else None
        elif att.content_type in _ORIGINAL_TYPES and original_id is None:
            got = attachment(raw, att.index)
            original_id = _original_id(_header_section(got[1])) if got else None
    if status_data is None:
        status_data = _fallback(raw)
        if status_data is None:
            return []
    blocks = _blocks(status_data.decode("utf-8", "replace"))
    per_message = blocks[0] if blocks and "final-recipient" not in blocks[0] \
        and "original-recipient" not in blocks[0] else {}
    out = []
    for b in blocks:
        if "final-recipient" not in b and "original-recipient" not in b:
            continue
        status = _STATUS.search(b.get("status", ""))
        action = b.get("action", "").split()
        out.append({
            "final_recipient": _typed_value(b.get("final-recipient") or b.get("original-recipient")),
            "original_recipient": _typed_value(b.get("original-recipient")),
            "action": action[0].lower() if action else None,
            "status": status.group(0) if status else None,
            "diagnostic": b.get("diagnostic-code") or None,
            "remote_mta": _typed_value(b.get("remote-mta")),
            "reporting_mta": _typed_value(per_message.get("reporting-mta")),
            "original_envelope_id": per_message.get("original-envelope-id") or None,
            "original_message_id": original_id,
        })
    return out
