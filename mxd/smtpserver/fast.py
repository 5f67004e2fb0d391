"""aiosmtpd's SMTP with the two hot steps made fast: reading DATA and parsing <local@domain> paths.

Both the MX and submission listeners use it; the protocol rules stay aiosmtpd's.
"""
from __future__ import annotations

import asyncio
import re

from aiosmtpd.smtp import SMTP

_SIMPLE_PATH = re.compile(r"\s*<((?:[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+)*"
                          r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)?)>(.*)\Z", re.S)


_TERMINATOR = b"\r\n.\r\n"


class FastSMTP(SMTP):
    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # The common <local@domain> form without the stdlib header parser (the slowest step of a
        # transaction); anything unusual still goes through aiosmtpd's full RFC 5322 parsing.
        match = _SIMPLE_PATH.match(arg)
        if match:
            return match.group(1) or "<>", match.group(2)
        return super()._getaddr(arg)

    async def smtp_DATA(self, arg: str) -> None:
        """DATA read in one piece up to <CRLF>.<CRLF> instead of line by line (the MX's hot loop).

        The rules are aiosmtpd's: only <CRLF>.<CRLF> ends the data (RFC 5321 4.1.1.4; a bare CR or
        LF next to the dot never does), lines over 1000 octets plus the transparency dot give 500
        (RFC 5321 4.5.3.1.6), more than SIZE octets give 552 after the data is drained, and a
        leading dot is removed from every line (RFC 5321 4.5.2). Bytes after the terminator stay
        in the reader for the next pipelined command.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader = self._reader
        limit = self.data_size_limit or 0
        # The DATA line's own CRLF starts the terminator of an empty message: count it in, drop it after.
        data = bytearray(b"\r\n")
        too_much = False

        def note_size() -> None:
            nonlocal too_much
            if limit and len(data) > limit + 7:
                too_much = True
                del data[:-5]                    # drain, keeping only what may start the terminator

        saved = reader._limit
        reader._limit = 1 << 20                  # read up to the terminator, not up to each line
        try:
            while True:
                # A terminator that began in what is read already: read exactly what would complete it
                # (never more, so that the next pipelined command stays in the reader).
                k = next((k for k in (4, 3, 2, 1) if data.endswith(_TERMINATOR[:k])), 0)
                if k:
                    want = _TERMINATOR[k:]
                    got = await reader.readexactly(len(want))
                    data += got
                    note_size()
                    if got == want:
                        break
                    continue
                try:
                    data += await reader.readuntil(_TERMINATOR)
                except asyncio.LimitOverrunError as exc:
                    data += await reader.readexactly(exc.consumed)
                note_size()
                if data.endswith(_TERMINATOR):
                    break
        finally:
            reader._limit = saved
        if not too_much:
            del data[-3:]                        # the terminator's ".<CRLF>"; its CRLF ends the last line
            del data[:2]
        lines = bytes(data).split(b"\r\n")
        if too_much:
            await self.push("552 Error: Too much mail data")
        elif max(map(len, lines), default=0) > self.line_length_limit - 2:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
        else:
            content = b"\r\n".join(line[1:] if line[:1] == b"." else line for line in lines)
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push(status)
            return
        self._set_post_data_state()

