"""Trust signals: how far the author of one inbound message can be trusted, for one mailbox.

Computed once in the pipeline and stored as `Message.trust`; every reader shows it as it is. Two steps:

- `facts(parsed, raw)` reads what the message alone says (author, display name, Reply-To, attachment names
  and types, the members of zip archives). It needs only the message, so it runs in the analysis step
  beside parsing (a worker process), bounded in parts, archives, members and bytes read.
- `signals(...)` turns those facts, the authentication results, the MX's checks and what the mailbox
  knows (its correspondents, mxd's own domains) into the stored document:

    {"verdict": "trusted" | "unverified" | "suspicious",
     "reasons": [{"code": ..., "detail": ...}],      # what decided the verdict
     "author": "a@b.example" | null,
     "authenticated": bool, "authentication": {"how": "dmarc" | "spf" | "dkim" | "local" | null, ...},
     "first_contact": {"address": bool, "domain": bool},   # true: never seen by this mailbox
     "lookalike": null | {"domain", "resembles", "how": "homoglyph" | "one_edit" | "embedded" | "mixed_script"},
     "display_name_spoof": null | {"name", "why"},
     "reply_to_mismatch": null | {"author_domain", "reply_to"},
     "risky_attachments": [{"name", "why"}],
     "spam": null | {"score", "required_score", "action", "symbols"}}

The verdict rule (`verdict`, the one place it is decided):
- **suspicious** when any of: a lookalike author domain; a display-name spoof; DMARC fail; mail claiming one
  of mxd's own domains that is not authenticated; risky attachments; a spam engine verdict of
  quarantine or worse, or a score at or above its required score;
- **trusted** when authenticated, the author address is a known correspondent, no Reply-To mismatch and
  nothing suspicious;
- **unverified** otherwise (not authenticated, first contact, or a Reply-To to another domain).

Homoglyphs come from maintained Unicode confusables data (`confusables` for pairs, including multi-letter
ones such as "rn" for "m"; `confusable_homoglyphs` for scripts), edit distance from `rapidfuzz`,
registrable domains from the public suffix list. Pure: no I/O, no store.
"""
from __future__ import annotations

import functools
import io
import re
import threading
import unicodedata
import zipfile
from dataclasses import dataclass
from typing import Any, Iterable

import idna

MAX_ATTACHMENTS = 2000          # attachment entries (parts and archive members) kept in the facts
MAX_ARCHIVES = 20               # zip attachments opened per message
MAX_ARCHIVE_BYTES = 25 * 1024 * 1024   # a zip attachment larger than this is not opened
MAX_MEMBERS = 1000              # members listed per archive
MAX_NESTED_BYTES = 5 * 1024 * 1024     # a zip inside a zip is read (decompressed) up to this size
MAX_RISKY_SHOWN = 50            # risky attachments listed in the signal (the count is always given)
MAX_LOOKALIKE_REFERENCES = 500   # domains compared with for lookalikes (mxd's own first, then the newest correspondents)
MIN_EDIT_LABEL = 4              # one edit away counts only for names of at least this many letters

# Content types of executables, scripts and macro-enabled Office files, as the extension the policy lists.
TYPE_EXTENSIONS = {
    "application/x-msdownload": "exe", "application/x-msdos-program": "exe", "application/x-dosexec": "exe",
    "application/x-executable": "exe", "application/vnd.microsoft.portable-executable": "exe",
    "application/x-ms-installer": "msi", "application/x-msi": "msi", "application/x-ms-shortcut": "lnk",
    "application/java-archive": "jar", "application/x-java-archive": "jar", "application/hta": "hta",
    "application/x-sh": "sh", "application/x-shellscript": "sh", "text/x-shellscript": "sh",
    "application/x-bat": "bat", "application/x-msdos-batch": "bat", "text/vbscript": "vbs",
    "application/x-vbscript": "vbs", "application/x-powershell": "ps1", "application/x-iso9660-image": "iso",
    "application/x-apple-diskimage": "dmg", "application/vnd.android.package-archive": "apk",
    "application/vnd.ms-word.document.macroenabled.12": "docm",
    "application/vnd.ms-word.template.macroenabled.12": "dotm",
    "application/vnd.ms-excel.sheet.macroenabled.12": "xlsm",
    "application/vnd.ms-excel.template.macroenabled.12": "xltm",
    "application/vnd.ms-excel.addin.macroenabled.12": "xlam",
    "application/vnd.ms-powerpoint.presentation.macroenabled.12": "pptm",
    "application/vnd.ms-powerpoint.template.macroenabled.12": "potm",
    "application/vnd.ms-powerpoint.addin.macroenabled.12": "ppam",
    "application/vnd.ms-powerpoint.slide.macroenabled.12": "sldm",
}
ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/x-zip"})
# Extensions of documents and pictures a sender puts before a hidden executable one ("invoice.pdf.exe").
DECOY_EXTENSIONS = frozenset({"pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "txt", "rtf", "jpg", "jpeg",
                              "png", "gif", "htm", "html", "csv", "odt", "zip", "mp3", "mp4", "wav"})
SPAM_SUSPICIOUS_ACTIONS = frozenset({"quarantine", "reject", "soft_reject"})
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
_ADDRESS_IN_NAME = re.compile(r"[^\s<>\"'(),;:@\[\]]+@[^\s<>\"'(),;:@\[\]]+\.[^\s<>\"'(),;:@\[\]]+")


# ---------------------------------------------------------------- what the message alone says
def _domain_of(address: str) -> str:
    """The lower-case A-label domain of an address ("" when there is none or it is not a domain)."""
    if "@" not in address:
        return ""
    domain = address.rsplit("@", 1)[1].strip().rstrip(".").lower()
    if not domain or len(domain) > 253:
        return ""
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return domain
    return domain


def _extensions(name: str) -> list[str]:
    """The extensions of a file name, last first ("a.pdf.exe" -> ["exe", "pdf"]), lower case, trimmed."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    parts = [p.strip().lower() for p in base.split(".")[1:]]
    return [p for p in reversed(parts) if p][:3]


def _entry(name: str, ctype: str, inside: str | None = None, note: str = "") -> dict:
    return {"name": name[:300], "type": ctype[:100], "in": inside, "note": note}


def _zip_members(data: bytes, archive: str, depth: int, out: list[dict]) -> str:
    """Add the member names of a zip (from its central directory: nothing is decompressed), and those of
    zips inside it up to MAX_NESTED_BYTES each, to `out`; returns a note on the archive itself ("" when
    it was read whole)."""
    note = ""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                note = f"archive of {len(infos)} members: the first {MAX_MEMBERS} checked"
            for info in infos[:MAX_MEMBERS]:
                if len(out) >= MAX_ATTACHMENTS:
                    return note or "archive not checked whole: too many attachments"
                if info.is_dir():
                    continue
                name = info.filename
                if info.flag_bits & 0x1:
                    out.append(_entry(name, "", archive, "encrypted"))
                    continue
                out.append(_entry(name, "", archive))
                if depth < 2 and _extensions(name)[:1] == ["zip"] and info.file_size <= MAX_NESTED_BYTES:
                    with zf.open(info) as member:
                        inner = member.read(MAX_NESTED_BYTES + 1)
                    if len(inner) <= MAX_NESTED_BYTES:
                        out[-1]["note"] = _zip_members(inner, f"{archive}/{name}"[:300], depth + 1, out)
    except Exception as exc:            # zipfile.BadZipFile, a bad CRC, a truncated member: not checkable
        return f"archive not readable: {type(exc).__name__}"
    return note


def facts(parsed: Any, raw: bytes, attachment_bytes: Any = None) -> dict:
    """What the message says of itself, as JSON-able data; never raises.

    `parsed` is a mxd.mime.parse.Parsed (or None), `attachment_bytes(index)` gives an attachment's decoded
    bytes or None (mxd.mime.parse.attachment; used for zip attachments only)."""
    out: dict[str, Any] = {"author": "", "author_domain": "", "authors": 0, "display_name": "",
                           "reply_to_domains": [], "attachments": [], "attachments_total": 0}
    if parsed is None:
        return out
    try:
        authors = [a for a in parsed.from_ if a.address]
        out["authors"] = len(parsed.from_)
        if authors:
            first = authors[0]
            out["author"] = first.address.strip().lower()[:320]
            out["author_domain"] = _domain_of(first.address)
            out["display_name"] = (first.name or "")[:300]
        seen: list[str] = []
        for a in parsed.reply_to[:50]:
            domain = _domain_of(a.address)
            if domain and domain not in seen:
                seen.append(domain)
        out["reply_to_domains"] = seen
        entries: list[dict] = []
        archives = 0
        out["attachments_total"] = len(parsed.attachments)
        for a in parsed.attachments:
            if len(entries) >= MAX_ATTACHMENTS:
                break
            name = a.filename or ""
            entries.append(_entry(name, a.content_type or ""))
            is_zip = a.content_type in ZIP_TYPES or _extensions(name)[:1] == ["zip"]
            if is_zip and attachment_bytes is not None:
                archives += 1
                if archives > MAX_ARCHIVES:
                    entries[-1]["note"] = "not opened: too many archives"
                    continue
                if a.size > MAX_ARCHIVE_BYTES:
                    entries[-1]["note"] = "not opened: too large"
                    continue
                found = attachment_bytes(a.index)
                if found is not None:
                    archive = entries[-1]
                    archive["note"] = _zip_members(found, name or "archive.zip", 1, entries)
        out["attachments"] = entries
    except Exception as exc:                # a bug here must never cost the message
        out["error"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


# ---------------------------------------------------------------- domains: registrable part, lookalikes
_psl: Any = None
_psl_lock = threading.Lock()


def registrable(domain: str) -> str:
    """The registrable part of a domain (the public suffix and one label), or the domain itself."""
    global _psl
    if _psl is None:
        with _psl_lock:
            if _psl is None:
                from publicsuffixlist import PublicSuffixList
                _psl = PublicSuffixList()
    try:
        return _psl.privatesuffix(domain) or domain
    except Exception:
        return domain


def unicode_form(domain: str) -> str:
    """The U-label form of an A-label domain (itself when it does not decode)."""
    if "xn--" not in domain:
        return domain
    try:
        return idna.decode(domain)
    except (idna.IDNAError, UnicodeError, ValueError):
        labels = []
        for label in domain.split("."):
            try:
                labels.append(label[4:].encode("ascii").decode("punycode") if label.startswith("xn--") else label)
            except (UnicodeError, ValueError):
                labels.append(label)
        return ".".join(labels)


def _scripts(text: str) -> set[str]:
    from confusable_homoglyphs import categories
    found = set()
    for char in text:
        try:
            alias = categories.alias(char)
        except Exception:
            continue
        if alias not in ("COMMON", "INHERITED"):
            found.add(alias)
    return found


@functools.lru_cache(maxsize=4096)
def _starts(char: str) -> frozenset[str]:
    """The first letters of everything `char` is confusable with (itself included)."""
    from confusables import confusable_characters
    return frozenset({char} | {c[0] for c in (confusable_characters(char) or []) if c})


def _confusable(a: str, b: str) -> bool:
    """The `confusables` library's pairwise test, after a cheap necessary condition on the first letters
    (its test starts by matching a prefix of one with a confusable of the other's first letter)."""
    if not a or not b or (b[0] not in _starts(a[0]) and a[0] not in _starts(b[0])):
        return False
    from confusables import is_confusable
    try:
        return bool(is_confusable(a, b))
    except Exception:
        return False


def _one_edit(a: str, b: str) -> bool:
    from rapidfuzz.distance import DamerauLevenshtein
    label = a.split(".", 1)[0]
    return len(label) >= MIN_EDIT_LABEL and DamerauLevenshtein.distance(a, b, score_cutoff=1) <= 1


def lookalike(domain: str, references: Iterable[str]) -> dict | None:
    """{"domain", "resembles", "how"} when `domain` (A-label) is confusable with, or one edit away from,
    one of the `references` (A-labels) without being it or under it, or wears one as its subdomain
    (example.com.evil.net); or is a Latin name mixed with Cyrillic or Greek letters. Compared on the
    registrable parts, in Unicode form."""
    if not domain or len(domain) > 253:
        return None
    mine = registrable(domain)
    mine_u = unicode_form(mine).lower()
    mine_skeleton = unicodedata.normalize("NFKC", mine_u)
    checked: dict[str, None] = {}           # in the order given: mxd's own domains are named first
    for count, ref in enumerate(references):
        if count >= MAX_LOOKALIKE_REFERENCES:
            break
        if not ref:
            continue
        theirs = registrable(ref)
        if theirs in checked:
            continue
        checked[theirs] = None
        if theirs == mine:
            return None                     # the same organisation (or a subdomain of it): not a lookalike
    for theirs in checked:
        theirs_u = unicode_form(theirs).lower()
        if theirs_u == mine_u:
            continue
        if f".{theirs}." in f".{domain}.":          # example.com.evil.net: the name worn as a subdomain
            return {"domain": domain, "resembles": theirs, "how": "embedded"}
        if _confusable(mine_skeleton, theirs_u):
            return {"domain": domain, "resembles": theirs, "how": "homoglyph"}
        if mine.isascii() and _one_edit(mine, theirs):
            return {"domain": domain, "resembles": theirs, "how": "one_edit"}
    if not mine_u.isascii():
        scripts = _scripts(mine_u.split(".", 1)[0])
        if "LATIN" in scripts and scripts & {"CYRILLIC", "GREEK"}:
            return {"domain": domain, "resembles": None, "how": "mixed_script"}
    return None


def warm() -> None:
    """Load the public suffix list and the confusables data now (about half a second), so that the first
    message does not wait for them in the writer."""
    registrable("example.com")
    _scripts("a")
    _confusable("a", "a")
    _one_edit("warm.example", "warn.example")


# ---------------------------------------------------------------- authentication
def _aligned(a: str, b: str) -> bool:
    """Relaxed alignment (RFC 7489 3.1): the same organisational domain."""
    return bool(a) and bool(b) and registrable(a.lower().rstrip(".")) == registrable(b.lower().rstrip("."))


def authentication(auth: Any, author_domain: str, local: bool = False) -> dict:
    """{"authenticated", "how", "dmarc", "spf", "dkim"}: DMARC pass; or, when the author domain publishes no
    DMARC record, SPF or DKIM pass aligned with it. `auth` is an mxd.authn.AuthResults (or None: not
    checked); `local` marks mail mxd itself composed for a local mailbox (a send by one of its mailboxes, a DSN)."""
    if local:
        return {"authenticated": True, "how": "local", "dmarc": None, "spf": None, "dkim": None}
    if auth is None:
        return {"authenticated": False, "how": None, "dmarc": None, "spf": None, "dkim": None}
    dmarc = getattr(auth, "dmarc", "") or ""
    spf = getattr(auth, "spf", "") or ""
    dkim_pass = [d.domain for d in (getattr(auth, "dkim", None) or []) if getattr(d, "result", "") == "pass"]
    out = {"authenticated": False, "how": None, "dmarc": dmarc or None, "spf": spf or None,
           "dkim": "pass" if dkim_pass else next((getattr(d, "result", None) for d in getattr(auth, "dkim", None) or []),
                                                 None)}
    if dmarc == "pass":
        out.update(authenticated=True, how="dmarc")
    elif dmarc == "none" and author_domain:
        if any(_aligned(d, author_domain) for d in dkim_pass):
            out.update(authenticated=True, how="dkim")
        elif spf == "pass" and _aligned(getattr(auth, "spf_domain", "") or "", author_domain):
            out.update(authenticated=True, how="spf")
    return out


# ---------------------------------------------------------------- the signals and the verdict
@dataclass(frozen=True)
class Known:
    """What one mailbox knows of the author: seen the address, seen the domain; and the domains it
    corresponds with (for lookalikes)."""
    address: bool
    domain: bool
    domains: tuple[str, ...] = ()


def display_name_spoof(name: str, author: str, author_domain: str, own_domains: Iterable[str]) -> dict | None:
    """The display name holds an address other than the author's, or names one of mxd's own domains
    while the author is outside them."""
    if not name:
        return None
    clean = _BIDI.sub("", unicodedata.normalize("NFKC", name)).lower()
    for found in _ADDRESS_IN_NAME.findall(clean[:1000]):
        if found.strip(".") != author:
            return {"name": name[:200], "why": f"the name holds the address {found[:200]}"}
    if author_domain:
        words = set(re.findall(r"[a-z0-9.-]+\.[a-z]{2,}", clean[:1000]))
        for own in own_domains:
            if own in words and not (author_domain == own or author_domain.endswith("." + own)):
                return {"name": name[:200], "why": f"the name names {own}, the author is at {author_domain}"}
    return None


def risky(entries: list[dict], blocked: frozenset[str]) -> list[dict]:
    """The attachment entries (from `facts`) a mailbox with the `blocked` extensions should not trust:
    a blocked extension or content type, a double extension hiding one, a name with direction controls,
    an encrypted or unreadable archive."""
    out = []
    for e in entries:
        name, ctype, note = e.get("name") or "", (e.get("type") or "").lower(), e.get("note") or ""
        exts = _extensions(name)
        where = f" in {e['in']}" if e.get("in") else ""
        why = ""
        if _BIDI.search(name):
            why = "the name holds text-direction controls that disguise its type"
        elif exts and exts[0] in blocked:
            why = (f"double extension .{exts[1]}.{exts[0]}" if len(exts) > 1 and exts[1] in DECOY_EXTENSIONS
                   else f"file type .{exts[0]}")
        elif TYPE_EXTENSIONS.get(ctype) in blocked:
            why = f"content type {ctype}"
        elif note == "encrypted":
            why = "an encrypted archive member: it cannot be checked"
        elif note.startswith("archive not readable"):
            why = note
        if why:
            out.append({"name": name, "why": why + where})
    return out


def blocked_found(entries: list[dict], blocked: frozenset[str]) -> list[str]:
    """The names of attachments (and archive members) whose extension or content type is in `blocked`."""
    out = []
    for e in entries:
        exts = _extensions(e.get("name") or "")
        if (exts and exts[0] in blocked) or TYPE_EXTENSIONS.get((e.get("type") or "").lower()) in blocked:
            out.append((f"{e['in']}/" if e.get("in") else "") + (e.get("name") or ""))
    return out


def _over(score: Any, required: Any) -> bool:
    """A spam score at or above the engine's own reject-worthy score."""
    numbers = (int, float)
    return (isinstance(score, numbers) and isinstance(required, numbers) and not isinstance(score, bool)
            and not isinstance(required, bool) and required > 0 and score >= required)


def verdict(doc: dict) -> tuple[str, list[dict]]:
    """The one verdict rule (see the module docstring): (verdict, reasons)."""
    suspicious: list[dict] = []
    auth = doc.get("authentication") or {}
    if doc.get("lookalike"):
        look = doc["lookalike"]
        suspicious.append({"code": "lookalike", "detail": f"{look['domain']} resembles {look['resembles']}"
                           if look.get("resembles") else f"{look['domain']} mixes scripts"})
    if doc.get("display_name_spoof"):
        suspicious.append({"code": "display_name_spoof", "detail": doc["display_name_spoof"]["why"]})
    if auth.get("dmarc") == "fail":
        suspicious.append({"code": "dmarc_fail", "detail": "the author domain's DMARC check failed"})
    if doc.get("own_domain_unauthenticated"):
        suspicious.append({"code": "own_domain_unauthenticated",
                           "detail": "claims to be from one of this server's domains but is not authenticated"})
    if doc.get("risky_attachments"):
        first = doc["risky_attachments"][0]
        suspicious.append({"code": "risky_attachments", "detail": f"{first['name']}: {first['why']}"
                           + (f" (and {doc['risky_count'] - 1} more)" if doc.get("risky_count", 1) > 1 else "")})
    spam = doc.get("spam")
    if spam and (spam.get("action") in SPAM_SUSPICIOUS_ACTIONS or _over(spam.get("score"), spam.get("required_score"))):
        suspicious.append({"code": "spam", "detail": f"spam engine: {spam['action']} (score {spam.get('score')}"
                           f" of {spam.get('required_score')})"})
    if suspicious:
        return "suspicious", suspicious
    reasons: list[dict] = []
    if not doc.get("authenticated"):
        reasons.append({"code": "not_authenticated",
                        "detail": "authentication was not checked" if not auth.get("dmarc") and not auth.get("how")
                        else f"DMARC {auth.get('dmarc')}, no aligned SPF or DKIM pass"})
    first = doc.get("first_contact") or {}
    if first.get("address"):
        reasons.append({"code": "first_contact", "detail": "first message from this address"
                        + (" and this domain" if first.get("domain") else "")})
    if doc.get("reply_to_mismatch"):
        reasons.append({"code": "reply_to_mismatch",
                        "detail": "replies go to " + ", ".join(doc["reply_to_mismatch"]["reply_to"])})
    return ("unverified", reasons) if reasons else ("trusted", [])


def signals(fact: dict, *, auth: Any, checks: dict | None, known: Known, own_domains: Iterable[str],
            blocked: frozenset[str], local: bool = False, lookalikes: dict[str, dict | None] | None = None) -> dict:
    """The stored trust document of one message for one mailbox (see the module docstring).

    `lookalikes` caches `lookalike` answers by author domain for one mailbox's references (a batch)."""
    own = tuple(own_domains)
    author, domain = fact.get("author") or "", fact.get("author_domain") or ""
    authn = authentication(auth, domain, local)
    found = risky(fact.get("attachments") or [], blocked)
    spam = (checks or {}).get("spam") if isinstance(checks, dict) else None
    reply = [d for d in fact.get("reply_to_domains") or [] if d and domain and registrable(d) != registrable(domain)]
    look = None
    if not local and domain:
        if lookalikes is not None and domain in lookalikes:
            look = lookalikes[domain]
        else:
            look = lookalike(domain, (*own, *known.domains))
            if lookalikes is not None:
                lookalikes[domain] = look
    doc: dict[str, Any] = {
        "author": author or None,
        "authenticated": authn["authenticated"],
        "authentication": authn,
        "first_contact": {"address": not known.address, "domain": not known.domain},
        "lookalike": look,
        "display_name_spoof": None if local else display_name_spoof(fact.get("display_name") or "", author, domain, own),
        "reply_to_mismatch": {"author_domain": domain, "reply_to": reply[:10]} if reply else None,
        "risky_attachments": found[:MAX_RISKY_SHOWN],
        "risky_count": len(found),
        "spam": {"score": spam.get("score"), "required_score": spam.get("required_score"),
                 "action": spam.get("action"),
                 "symbols": spam["symbols"] if isinstance(spam.get("symbols"), dict) else {}}
        if isinstance(spam, dict) else None,
    }
    if not authn["authenticated"] and domain and any(domain == o or domain.endswith("." + o) for o in own):
        doc["own_domain_unauthenticated"] = True
    doc["verdict"], doc["reasons"] = verdict(doc)
    return doc
