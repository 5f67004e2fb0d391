"""DMARC aggregate reports (RFC 7489 appendix C) and SMTP TLS reports (RFC 8460): bytes in, typed reports
or a `ReportError` out.

A report arrives zipped, gzipped or plain, as an attachment or as the body of a message. Unpacking is
bounded: a member or stream that expands past `max_bytes` is refused as it is read (never inflated whole),
an archive with more than `MAX_MEMBERS` members or holding another archive is refused, and XML carrying a
DTD or entity declarations (entity-expansion bombs) is refused before parsing (defusedxml). The report
formats themselves are read by parsedmarc, with its network features off (no DNS, no downloads: its
bundled IP database only names the source's network).
"""
from __future__ import annotations

import email
import email.policy
import io
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Union

MAX_MEMBERS = 16          # members of one zip archive
MAX_PARTS = 64            # MIME parts looked at in one message
MAX_RECORDS = 100_000     # records (DMARC) or policies (TLS) of one report
_CHUNK = 64 * 1024
_MAX_COUNT = 2**31 - 1    # counts are clamped into a 32-bit column; a reporter's absurd number stays a number


def _count(value: Any) -> int:
    return min(max(int(value or 0), 0), _MAX_COUNT)

_ZIP = b"PK\x03\x04"
_GZIP = b"\x1f\x8b"
_REPORT_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip", "application/gzip",
                 "application/x-gzip", "application/tlsrpt+gzip", "application/tlsrpt+json", "application/xml",
                 "text/xml", "application/json", "application/octet-stream")
_REPORT_SUFFIXES = (".zip", ".gz", ".gzip", ".xml", ".json")


class ReportError(Exception):
    """A report that cannot be read: `code` is stable (corrupt_archive, too_large, too_many_members,
    nested_archive, forbidden_xml, invalid_report, unknown_format), `detail` says what was found."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail

    def to_json(self) -> dict:
        return {"code": self.code, "detail": self.detail}


@dataclass(frozen=True)
class DmarcRow:
    """One <record>: `count` messages from `source_ip` with one set of results. spf/dkim are the results
    DMARC evaluated (aligned with the author domain, RFC 7489 appendix C policy_evaluated); dmarc is pass
    when either passed."""
    source_ip: str
    count: int
    header_from: str
    spf: str
    dkim: str
    dmarc: str
    disposition: str
    envelope_from: str = ""


@dataclass(frozen=True)
class DmarcReport:
    org_name: str
    org_email: str
    report_id: str
    begin: float
    end: float
    domain: str              # policy_published/domain
    policy: str              # policy_published/p
    rows: list[DmarcRow] = field(default_factory=list)
    kind: str = "dmarc"


@dataclass(frozen=True)
class TlsPolicy:
    policy_type: str         # sts, tlsa, no-policy-found
    policy_domain: str
    successful: int
    failed: int
    failures: list[dict] = field(default_factory=list)   # [{"result_type": ..., "count": ..., ...}]


@dataclass(frozen=True)
class TlsReport:
    org_name: str
    contact: str
    report_id: str
    begin: float
    end: float
    policies: list[TlsPolicy] = field(default_factory=list)
    kind: str = "tls"


Report = Union[DmarcReport, TlsReport]


# ---------------------------------------------------------------- unpacking, bounded
def _read_capped(stream: Any, max_bytes: int, what: str) -> bytes:
    out = bytearray()
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            return bytes(out)
        out += chunk
        if len(out) > max_bytes:
            raise ReportError("too_large", f"{what} expands past {max_bytes} bytes")


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    out = bytearray()
    pending = data
    try:
        while pending and not inflater.eof:
            out += inflater.decompress(pending, _CHUNK)
            if len(out) > max_bytes:
                raise ReportError("too_large", f"gzip stream expands past {max_bytes} bytes")
            pending = inflater.unconsumed_tail
    except zlib.error as e:
        raise ReportError("corrupt_archive", f"gzip: {e}") from None
    if not inflater.eof:
        raise ReportError("corrupt_archive", "gzip stream ends early")
    return bytes(out)


def _unzip(data: bytes, max_bytes: int) -> list[tuple[str, bytes]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError, NotImplementedError) as e:
        raise ReportError("corrupt_archive", f"zip: {e}") from None
    if len(members) > MAX_MEMBERS:
        raise ReportError("too_many_members", f"zip holds {len(members)} members (at most {MAX_MEMBERS})")
    if not members:
        raise ReportError("corrupt_archive", "zip holds no file")
    out = []
    for member in members:
        if member.file_size > max_bytes:      # the declared size; the read below is capped whatever it says
            raise ReportError("too_large", f"zip member {member.filename[:80]!r} declares {member.file_size} bytes")
        try:
            with archive.open(member) as stream:
                content = _read_capped(stream, max_bytes, f"zip member {member.filename[:80]!r}")
        except ReportError:
            raise
        except Exception as e:   # bad CRC, unsupported compression or encryption, truncated data
            raise ReportError("corrupt_archive", f"zip member {member.filename[:80]!r}: {e}") from None
        if content[:4] == _ZIP or content[:2] == _GZIP or member.filename.lower().endswith((".zip", ".gz")):
            raise ReportError("nested_archive", f"zip member {member.filename[:80]!r} is itself an archive")
        out.append((member.filename, content))
    return out


def unpack(data: bytes, max_bytes: int, name: str = "") -> list[tuple[str, bytes]]:
    """The report files in `data` (a zip, a gzip stream, or plain XML/JSON) as (name, bytes)."""
    if len(data) > max_bytes:
        raise ReportError("too_large", f"{len(data)} bytes (at most {max_bytes})")
    if data[:4] == _ZIP:
        return _unzip(data, max_bytes)
    if data[:2] == _GZIP:
        content = _gunzip(data, max_bytes)
        if content[:4] == _ZIP or content[:2] == _GZIP:
            raise ReportError("nested_archive", "gzip stream holds another archive")
        return [(name.removesuffix(".gz"), content)]
    return [(name, data)]


# ---------------------------------------------------------------- the two formats
def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")


_LAST_TIME = 253402300799.0     # 9999-12-31T23:59:59Z: any later time is not one a report can mean


def _epoch(value: Any) -> float:
    """Seconds since the epoch of a report's time (parsedmarc writes UTC without a zone), 0 when unusable."""
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = str(value or "").strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return 0.0
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        number = parsed.timestamp()
    return number if 0.0 <= number <= _LAST_TIME else 0.0


def _refuse_dtd(text: str) -> None:
    """RFC 7489 appendix C reports have no DTD; one with a DOCTYPE or entity declarations is refused
    (billion laughs, external entities) before any parser expands it."""
    import defusedxml
    from defusedxml.ElementTree import fromstring
    try:
        fromstring(text.encode("utf-8"), forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as e:
        raise ReportError("forbidden_xml", f"{e.__class__.__name__}: DTD or entity declarations") from None
    except Exception:
        pass    # not well-formed: parsedmarc's recovering parser decides


def parse_dmarc(data: bytes) -> DmarcReport:
    """One DMARC aggregate report (XML)."""
    import parsedmarc
    text = _text(data)
    _refuse_dtd(text)
    try:
        parsed = parsedmarc.parse_aggregate_report_xml(text, offline=True, always_use_local_files=True)
    except Exception as e:
        raise ReportError("invalid_report", f"DMARC aggregate report: {str(e)[:200]}") from None
    try:
        meta, published = parsed["report_metadata"], parsed["policy_published"]
        records = parsed["records"]
        if len(records) > MAX_RECORDS:
            raise ReportError("too_large", f"{len(records)} records")
        rows = []
        for r in records:
            evaluated = r.get("policy_evaluated") or {}
            spf, dkim = str(evaluated.get("spf") or "none"), str(evaluated.get("dkim") or "none")
            ids = r.get("identifiers") or {}
            rows.append(DmarcRow(
                str(r["source"]["ip_address"]), _count(r.get("count")),
                str(ids.get("header_from") or "").lower(), spf, dkim,
                "pass" if "pass" in (spf, dkim) else "fail", str(evaluated.get("disposition") or "none"),
                str(ids.get("envelope_from") or "")))
        return DmarcReport(str(meta.get("org_name") or ""), str(meta.get("org_email") or ""),
                           str(meta.get("report_id") or ""), _epoch(meta.get("begin_date")),
                           _epoch(meta.get("end_date")), str(published.get("domain") or "").lower(),
                           str(published.get("p") or ""), rows)
    except ReportError:
        raise
    except Exception as e:
        raise ReportError("invalid_report", f"DMARC aggregate report: {e.__class__.__name__}: {str(e)[:160]}") \
            from None


def parse_tls(data: bytes) -> TlsReport:
    """One SMTP TLS report (RFC 8460 4, JSON)."""
    import parsedmarc
    try:
        parsed = parsedmarc.parse_smtp_tls_report_json(_text(data))
    except Exception as e:
        raise ReportError("invalid_report", f"TLS report: {str(e)[:200]}") from None
    try:
        policies = []
        if len(parsed["policies"]) > MAX_RECORDS:
            raise ReportError("too_large", f"{len(parsed['policies'])} policies")
        for p in parsed["policies"]:
            failures = [{"result_type": str(f.get("result_type")), "count": _count(f.get("failed_session_count")),
                         **{k: str(f[k]) for k in ("receiving_mx_hostname", "receiving_ip", "sending_mta_ip",
                                                   "failure_reason_code") if f.get(k) is not None}}
                        for f in p.get("failure_details") or []]
            policies.append(TlsPolicy(str(p["policy_type"]), str(p["policy_domain"]).lower(),
                                      _count(p["successful_session_count"]), _count(p["failed_session_count"]),
                                      failures))
        return TlsReport(str(parsed["organization_name"]), str(parsed["contact_info"]), str(parsed["report_id"]),
                         _epoch(parsed["begin_date"]), _epoch(parsed["end_date"]), policies)
    except ReportError:
        raise
    except Exception as e:
        raise ReportError("invalid_report", f"TLS report: {e.__class__.__name__}: {str(e)[:160]}") from None


def parse_file(data: bytes, max_bytes: int, name: str = "") -> list[Report]:
    """Every report in one file (zipped, gzipped or plain)."""
    out: list[Report] = []
    for member, content in unpack(data, max_bytes, name):
        text = _text(content[:256])
        if text.startswith("<"):
            out.append(parse_dmarc(content))
        elif text.startswith("{"):
            out.append(parse_tls(content))
        else:
            raise ReportError("unknown_format", f"{member[:80] or 'content'} is neither XML nor JSON")
    return out


# ---------------------------------------------------------------- a message holding reports
def _looks_like_report(content_type: str, filename: str, payload: bytes) -> bool:
    if content_type in _REPORT_TYPES or filename.lower().endswith(_REPORT_SUFFIXES):
        return True
    head = _text(payload[:256])
    return payload[:4] == _ZIP or payload[:2] == _GZIP or head.startswith(("<?xml", "<feedback", '{"organization-name"'))


def in_message(raw: bytes, max_bytes: int) -> tuple[list[Report], list[dict]]:
    """(reports, errors) of every part of a message that is or carries a report; a message with no report
    part gives ([], []). Errors are `ReportError.to_json()` with the part's file name."""
    reports: list[Report] = []
    errors: list[dict] = []
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        parts = [p for p in msg.walk() if not p.is_multipart()][:MAX_PARTS]
    except Exception as e:
        return [], [{"code": "invalid_report", "detail": f"message: {e.__class__.__name__}", "part": ""}]
    for part in parts:
        try:
            content_type = part.get_content_type().lower()
            filename = str(part.get_filename() or "")
            payload = part.get_payload(decode=True)
        except Exception:
            continue
        if not isinstance(payload, bytes) or not payload or not _looks_like_report(content_type, filename, payload):
            continue
        try:
            reports += parse_file(payload, max_bytes, filename)
        except ReportError as e:
            errors.append(dict(e.to_json(), part=filename[:200]))
    return reports, errors
