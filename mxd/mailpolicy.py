"""A mailbox's own policy: whom it may send to, and what mail it accepts.

The document an agent or operator puts with `PUT /api/mailboxes/{mailbox}/policy` (and `/v1`, the CLI) is
normalised here into one shape, the only one the store keeps and the send preflight and the inbound
pipeline read:

    {
      "outbound": {
        "allow": ["partner.example", "*.partner.example", "bob@example.com"],   # [] = anyone
        "otherwise": "refuse" | "hold"          # what happens to a recipient outside "allow"
      },
      "inbound": {
        "allow_senders": [...],                 # [] = anyone; else only these authors reach the mailbox
        "block_senders": [...],                 # quarantined (block wins over allow)
        "require_authenticated": false,         # unauthenticated mail is quarantined
        "blocked_attachments": [...] | "default",   # file types (extensions, no dot) quarantined
        "max_message_size": null | int          # bytes; larger mail is quarantined
      }
    }

Senders are matched on the author (RFC5322.From) address and domain; an allow-list does not make
forged mail trusted, which is what `require_authenticated` is for. Whatever the inbound policy does not
let through is quarantined, never refused or lost.

Pure: no I/O. Errors are `MxdError`s naming the field.
"""
from __future__ import annotations

from typing import Any

from mxd import address as addr
from mxd.errors import MxdError

# Executables, scripts, macro-enabled Office files and disk images: what an agent mailbox refuses by default
# (archives are opened and their members checked against the same list).
DEFAULT_BLOCKED_ATTACHMENTS = (
    "exe", "com", "scr", "pif", "bat", "cmd", "msi", "msp", "dll", "cpl", "jar", "js", "jse", "vbs", "vbe",
    "wsf", "wsh", "ps1", "psm1", "hta", "lnk", "reg", "scf", "iso", "img", "vhd", "vhdx", "docm", "dotm",
    "xlsm", "xltm", "xlam", "pptm", "potm", "ppam", "sldm", "apk", "app", "dmg", "sh", "msc", "chm",
)

OUTBOUND_CHOICES = ("refuse", "hold")
EMPTY: dict[str, Any] = {
    "outbound": {"allow": [], "otherwise": "refuse"},
    "inbound": {"allow_senders": [], "block_senders": [], "require_authenticated": False,
                "blocked_attachments": "default", "max_message_size": None},
}
_MAX_ENTRIES = 1000


def _bad(field: str, message: str) -> MxdError:
    return MxdError("invalid_policy", f"{field}: {message}")


def _patterns(value: Any, field: str) -> list[str]:
    """Addresses, domains and *.domains, lower case, A-labels, without repeats."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(field, "expected a list of addresses or domains")
    if len(value) > _MAX_ENTRIES:
        raise _bad(field, f"at most {_MAX_ENTRIES} entries")
    out: list[str] = []
    for raw in value:
        text = raw.strip()
        try:
            if "@" in text:
                parsed = addr.parse(text)
                item = f"{parsed.local.lower()}@{parsed.domain}"
            else:
                wild = text.startswith("*.")
                item = ("*." if wild else "") + addr.normalize_domain(text[2:] if wild else text)
        except (addr.AddressError, ValueError):
            raise _bad(field, f"{raw!r} is not an address, a domain or *.domain") from None
        if item not in out:
            out.append(item)
    return out


def _attachment_types(value: Any, field: str) -> list[str] | str:
    if value is None or value == "default":
        return "default"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(field, 'expected "default" or a list of file extensions like ["exe", "docm"]')
    out: list[str] = []
    for raw in value:
        ext = raw.strip().lower().lstrip(".")
        if not ext or not ext.replace("-", "").replace("_", "").isalnum() or len(ext) > 20:
            raise _bad(field, f"{raw!r} is not a file extension")
        if ext not in out:
            out.append(ext)
    return out


def normalise(body: Any, current: dict | None = None) -> dict:
    """The stored document from a request body. Sections and keys not given keep their `current` value
    (or the default); unknown keys are refused so that a typo never passes for a rule."""
    if not isinstance(body, dict):
        raise _bad("policy", "expected a JSON object with \"outbound\" and/or \"inbound\"")
    unknown = set(body) - {"outbound", "inbound"}
    if unknown:
        raise _bad(sorted(unknown)[0], "unknown key (expected \"outbound\" or \"inbound\")")
    base = current or EMPTY
    out = {"outbound": dict(base["outbound"]), "inbound": dict(base["inbound"])}
    outbound = body.get("outbound")
    if outbound is not None:
        if not isinstance(outbound, dict):
            raise _bad("outbound", "expected an object")
        for key in set(outbound) - {"allow", "otherwise"}:
            raise _bad(f"outbound.{key}", "unknown key")
        if "allow" in outbound:
            out["outbound"]["allow"] = _patterns(outbound["allow"], "outbound.allow")
        if "otherwise" in outbound:
            if outbound["otherwise"] not in OUTBOUND_CHOICES:
                raise _bad("outbound.otherwise", 'expected "refuse" or "hold"')
            out["outbound"]["otherwise"] = outbound["otherwise"]
    inbound = body.get("inbound")
    if inbound is not None:
        if not isinstance(inbound, dict):
            raise _bad("inbound", "expected an object")
        for key in set(inbound) - set(EMPTY["inbound"]):
            raise _bad(f"inbound.{key}", "unknown key")
        for key in ("allow_senders", "block_senders"):
            if key in inbound:
                out["inbound"][key] = _patterns(inbound[key], f"inbound.{key}")
        if "require_authenticated" in inbound:
            if not isinstance(inbound["require_authenticated"], bool):
                raise _bad("inbound.require_authenticated", "expected true or false")
            out["inbound"]["require_authenticated"] = inbound["require_authenticated"]
        if "blocked_attachments" in inbound:
            out["inbound"]["blocked_attachments"] = _attachment_types(inbound["blocked_attachments"],
                                                                      "inbound.blocked_attachments")
        if "max_message_size" in inbound:
            size = inbound["max_message_size"]
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
                raise _bad("inbound.max_message_size", "expected a positive number of bytes or null")
            out["inbound"]["max_message_size"] = size
    return out


def blocked_types(policy: dict | None) -> frozenset[str]:
    """The attachment extensions a mailbox quarantines."""
    chosen = (policy or EMPTY)["inbound"]["blocked_attachments"]
    return frozenset(DEFAULT_BLOCKED_ATTACHMENTS if chosen == "default" else chosen)


def matches(patterns: list[str], address: str) -> bool:
    """True when `address` (any case) is one of the addresses, in one of the domains, or under a *.domain."""
    address = address.strip().lower()
    domain = address.rsplit("@", 1)[-1]
    for pattern in patterns:
        if pattern == address or pattern == domain:
            return True
        if pattern.startswith("*.") and (domain == pattern[2:] or domain.endswith(pattern[1:])):
            return True
    return False


def quarantine_reasons(policy: dict | None, *, author: str, authenticated: bool, blocked_attachments: list[str],
                       size: int) -> list[dict]:
    """Why one inbound message is quarantined under a mailbox's `policy` (None: `EMPTY`), as
    [{"code", "detail"}] in the order of the rules; [] when it reaches the mailbox.

    `author` is the RFC5322.From address ("" when there is none), `authenticated` the trust signal of that
    name (DMARC pass, or aligned SPF/DKIM without a DMARC record), `blocked_attachments` the names of the
    attachments and archive members whose type is in `blocked_types(policy)`, `size` the message's bytes.
    A mailbox without a policy of its own has the default attachment list, so every mailbox quarantines
    executables, scripts and macro-enabled files unless its policy says otherwise (`"blocked_attachments": []`).
    """
    rules = (policy or EMPTY)["inbound"]
    reasons: list[dict] = []
    if author and matches(rules["block_senders"], author):
        reasons.append({"code": "sender_blocked", "detail": f"{author} is on the mailbox's block list"})
    elif rules["allow_senders"] and not (author and matches(rules["allow_senders"], author)):
        reasons.append({"code": "sender_not_allowed",
                        "detail": f"{author or 'a message without an author'} is not on the mailbox's allow list"})
    if rules["require_authenticated"] and not authenticated:
        reasons.append({"code": "unauthenticated",
                        "detail": "the mailbox accepts only authenticated mail (DMARC, or aligned SPF/DKIM)"})
    if blocked_attachments:
        more = f" and {len(blocked_attachments) - 1} more" if len(blocked_attachments) > 1 else ""
        reasons.append({"code": "blocked_attachment",
                        "detail": f"{blocked_attachments[0][:200]}{more}: a blocked file type"})
    limit = rules["max_message_size"]
    if limit is not None and size > limit:
        reasons.append({"code": "too_large", "detail": f"{size} bytes, the mailbox takes at most {limit}"})
    return reasons
