"""The one header splitter: where a message's header fields begin and end, and where its body starts.

Everything in mxd that asks who a message is from reads the header through
`split`: the parser the stored message is parsed with (`mxd.mime.parse`), the
From check of a submission (`mxd.sending.authors_of`), DKIM signing's header
selection (`mxd.dkimsign`) and DMARC's author domain (`mxd.authn.dmarc`). Two
splitters that disagree on one line let a sender show one From to the check
and another to the reader, so there is only this one.

Reading is liberal, as a receiver must be (RFC 5322 4.5): white space before
the colon of a field name is accepted as the obsolete syntax allows, an mbox
"From " separator as the first line is skipped, and a line that is not a
field ends the header section there. Each such liberty is reported in
`Header.defects`, so a submission (mail we sign and vouch for) can be refused
instead of read two ways (`strict_problems`).

It scans each byte a constant number of times and runs no regular
expression over a field.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_LINE = 998                  # RFC 5322 2.1.1: a line MUST be no more than 998 characters

FOLDED_FIRST = "header section starts with a folded line"
NOT_ENDED = "header section not ended by an empty line"
SPACE_BEFORE_COLON = "white space between a field name and its colon"
MBOX_FROM = "an mbox 'From ' line in the header section"

_FTEXT = bytes(range(33, 127)).replace(b":", b"")       # RFC 5322 3.6.8: printable US-ASCII except colon


@dataclass(slots=True)
class Field:
    name: bytes                 # as written, without white space before the colon
    lines: list[bytes]          # the rest of its first line after the colon, then its folded lines; no line ends


@dataclass(slots=True)
class Header:
    fields: list[Field]
    body: int                   # where the body begins in the buffer
    defects: list[str] = field(default_factory=list)    # each liberty taken, once, in the order met

    def values(self, name: bytes) -> list[list[bytes]]:
        """The lines of every field called `name` (case-insensitive), in order."""
        wanted = name.lower()
        return [f.lines for f in self.fields if f.name.lower() == wanted]


def is_field_name(name: bytes) -> bool:
    return bool(name) and not name.translate(None, _FTEXT)


def split(buf: bytes, start: int = 0, end: int | None = None, *, mbox: bool = True) -> Header:
    """The header fields of the entity at `start` (RFC 5322 2.1, 2.2), up to `end`.

    Lines end with LF, CR LF or at `end`; a line starting with SP or HTAB continues the field
    before it (2.2.3). With `mbox`, a first line "From ..." that is not a field is skipped.
    """
    if end is None:
        end = len(buf)
    if buf.startswith(b"\n", start, end):
        return Header([], start + 1)
    if buf.startswith(b"\r\n", start, end):
        return Header([], start + 2)
    fields: list[Field] = []
    defects: list[str] = []
    body = end
    current: list[bytes] | None = None
    pos = start
    first = True
    while pos < end:
        nl = buf.find(b"\n", pos, end)
        line_start, pos = pos, (end if nl < 0 else nl + 1)
        line = buf[line_start:pos if nl < 0 else nl]
        line = line.rstrip(b"\r")
        if not line:                                    # the empty line that ends the header section
            body = pos
            break
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)                    # RFC 5322 2.2.3 folded line
            elif FOLDED_FIRST not in defects:
                defects.append(FOLDED_FIRST)
            first = False
            continue
        colon = line.find(b":")
        name = line[:colon] if colon > 0 else b""
        stripped = name.rstrip(b" \t")
        if is_field_name(stripped):
            if len(stripped) != len(name) and SPACE_BEFORE_COLON not in defects:
                defects.append(SPACE_BEFORE_COLON)      # RFC 5322 4.5.3 obs-optional: read, never written
            current = [line[colon + 1:]]
            fields.append(Field(stripped, current))
            first = False
            continue
        if line.startswith(b"From "):
            if MBOX_FROM not in defects:
                defects.append(MBOX_FROM)
            if first and mbox:
                first = False
                continue                                # mbox "From " separator line
        if NOT_ENDED not in defects:
            defects.append(NOT_ENDED)
        body = line_start
        break
    return Header(fields, min(body, end), defects)


def unfold(lines: list[bytes]) -> bytes:
    """A field's value on one line as mxd reads it: each line stripped of SP and HTAB, joined by one space."""
    if len(lines) == 1:
        return lines[0].strip(b" \t")
    return b" ".join(line.strip(b" \t") for line in lines)


def strict_problems(head: Header, buf: bytes, end: int) -> list[str]:
    """What a message we sign must not contain, beyond what `split` reads liberally: the defects
    (white space before a colon, an mbox line, a folded first line, a non-field line ending the
    header), a line longer than RFC 5322 allows, and header bytes that are not UTF-8 (RFC 6532 3.2)
    or hold NUL: each can make another reader see different fields than `split` does."""
    problems = list(head.defects)
    block = buf[:min(head.body, end)]
    if any(len(line.rstrip(b"\r")) > MAX_LINE for line in block.split(b"\n")):
        problems.append(f"a header line longer than {MAX_LINE} characters")
    if b"\0" in block:
        problems.append("NUL in the header section")
    elif not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            problems.append("8-bit header bytes that are not UTF-8")
    return problems
