"""MTA-STS text formats (RFC 8461): the `_mta-sts` TXT record (3.1) and the policy file (3.2), parsed
from outside input into plain values, or refused with a PolicyError. No I/O here."""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_AGE_LIMIT = 31557600          # RFC 8461 3.2: max_age is at most about a year
MODES = ("enforce", "testing", "none")

_ID = re.compile(r"[A-Za-z0-9]{1,32}")                                 # 3.1 sts-id-value
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")              # 3.1 / 3.2 extension names
_TXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]{1,}")               # 3.1 sts-ext-value: no ";", "=", space
_POLICY_VALUE = re.compile(r"[\x21-\x7e][\x20-\x7e]*")                 # 3.2 extension value (printable)
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_DIGITS = re.compile(r"[0-9]{1,10}")


class PolicyError(ValueError):
    """The text is not a valid MTA-STS record or policy (RFC 8460's sts-policy-invalid)."""


@dataclass(frozen=True)
class ParsedPolicy:
    mode: str
    mx: tuple[str, ...]
    max_age: int


def txt_id(records: list[str]) -> str | None:
    """The policy id of a domain's `_mta-sts` TXT records; None when there is no valid one.

    RFC 8461 3.1: records not starting with "v=STSv1" are discarded; anything but exactly one left,
    or one that does not parse, means the domain has no available policy."""
    sts = [r for r in records if r.startswith("v=STSv1")]
    if len(sts) != 1:
        return None
    try:
        return _parse_txt(sts[0])
    except PolicyError:
        return None


def _parse_txt(record: str) -> str:
    fields = [f.strip(" \t") for f in record.split(";")]
    if fields and fields[-1] == "":
        fields.pop()                                  # a trailing ";" is allowed
    if not fields or fields[0] != "v=STSv1":
        raise PolicyError("the record does not start with v=STSv1")
    found: str | None = None
    for item in fields[1:]:
        key, eq, value = item.partition("=")
        if not eq:
            raise PolicyError(f"field without '=': {item[:40]!r}")
        if key == "id":
            if found is not None or not _ID.fullmatch(value):
                raise PolicyError("id must appear once and be 1 to 32 letters or digits")
            found = value
        elif not _EXT_NAME.fullmatch(key) or not _TXT_VALUE.fullmatch(value):
            raise PolicyError(f"malformed field {item[:40]!r}")
    if found is None:
        raise PolicyError("the record has no id")
    return found


def _mx_pattern(value: str) -> str:
    """RFC 8461 3.2: a domain name, optionally with "*." as its whole leftmost label."""
    name = value.lower()
    name = name[:-1] if name.endswith(".") else name          # a fully qualified name's final dot
    rest = name[2:] if name.startswith("*.") else name
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in rest.split(".")):
        raise PolicyError(f"mx is not a host name or *.domain pattern: {value[:80]!r}")
    return name


def parse_policy(text: str) -> ParsedPolicy:
    """The policy file (RFC 8461 3.2): key: value lines ended by CRLF or LF, `version: STSv1` first,
    one mode, one max_age, one or more mx; unknown keys ignored. Raises PolicyError."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    values: dict[str, str] = {}
    mx: list[str] = []
    for number, raw in enumerate(lines):
        line = raw[:-1] if raw.endswith("\r") else raw
        key, colon, value = line.partition(":")
        value = value.strip(" \t")
        if not colon or not _EXT_NAME.fullmatch(key) or "\r" in value:
            raise PolicyError(f"line {number + 1} is not a key: value field")
        if number == 0 and (key, value) != ("version", "STSv1"):
            raise PolicyError('the first line must be "version: STSv1"')
        if key == "mx":
            mx.append(_mx_pattern(value))
        elif key in ("version", "mode", "max_age"):
            if key in values:
                raise PolicyError(f"{key} appears more than once")
            values[key] = value
        elif not _POLICY_VALUE.fullmatch(value):
            raise PolicyError(f"line {number + 1}: malformed value of {key}")
    if "version" not in values:
        raise PolicyError('the first line must be "version: STSv1"')
    mode = values.get("mode")
    if mode not in MODES:
        raise PolicyError(f"mode must be one of {', '.join(MODES)}")
    age = values.get("max_age", "")
    if not _DIGITS.fullmatch(age) or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age must be a whole number of seconds from 0 to {MAX_AGE_LIMIT}")
    if not mx and mode != "none":
        raise PolicyError("the policy names no mx host")
    return ParsedPolicy(mode, tuple(mx), int(age))
