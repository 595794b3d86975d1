"""The DATA command of the SMTP/LMTP listener, reading the message in blocks.

Its place in the flow (docs/architecture.md section 1): inside the edge, between the
354 and the handler's store.  `BulkData` is a mixin for aiosmtpd's SMTP and LMTP
session classes (smtp.py composes them): it overrides `smtp_DATA` and uses the
session's reader, timers and checks by name, but imports nothing of aiosmtpd, so that
smtp.py stays the only module that does.  Its one reply of its own is ERR_552; the
others are aiosmtpd's own texts, in aiosmtpd's order.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for mypy only: at run time smtp.py stays the one module importing aiosmtpd
    from aiosmtpd.smtp import SMTP as _Session
else:
    _Session = object

log = logging.getLogger(__name__)

ERR_552 = "552 5.3.4 Message exceeds the maximum size"  # RFC 5321 4.5.3.1.10, RFC 1870

# DATA must average this many bytes a second after its first idle_timeout seconds, or
# the client gets 421: a trickle cannot hold a connection for ever (Postfix's
# smtpd_min_data_rate has the same default).
MIN_DATA_RATE = 500

_END_OF_DATA = b"\r\n.\r\n"
_BLOCK = 1 << 20  # read whatever the connection holds, up to this much at a time
_MESSAGE_ID = re.compile(
    rb"^message-id:[ \t]*(?:\r?\n[ \t]+)?(<[^>\r\n]{1,250}>)", re.IGNORECASE | re.MULTILINE
)


class BulkData(_Session):
    """The DATA command, reading the message in blocks rather than line by line.

    aiosmtpd's own `smtp_DATA` awaits one `readuntil` per line and checks each in
    Python: about 4 microseconds a line, a millisecond for a 150 KB attachment, and
    half the listener's CPU on a helpdesk's mix of mail (benchmarks/bench_smtp.py).
    Here the blocks are searched for the end of data and the dot-stuffing is undone
    in one pass (RFC 5321 4.5.2), with the same replies and limits otherwise, except
    that long lines are taken (RFC 5321 4.5.3.1: a receiver should impose no limit
    it can avoid; the parser copes, and refusing would bounce the customer's mail).
    Past the size limit the rest is read and dropped, and the reply is 552.
    """

    async def smtp_DATA(self, arg: str) -> None:
        # The checks and replies of aiosmtpd's smtp_DATA, in its order.
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None  # set from connection_made on, before any command
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await self._read_data(self.loop.time())
        except asyncio.CancelledError:  # the connection was lost during DATA
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        if content is None:
            await self.push(ERR_552)
            self._set_post_data_state()
            return
        envelope.content = envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        # Not a string: aiosmtpd's MISSING, a handler without handle_DATA ("250 OK" as
        # aiosmtpd answers then; its sentinel is not imported, see the docstring).
        await self.push(status if isinstance(status, str) else "250 OK")

    async def _read_data(self, started: float) -> bytes | None:
        """The message up to the lone dot, unstuffed; None when it is over the size limit."""
        reader, limit = self._reader, self.data_size_limit
        # Starting with the DATA line's CRLF makes the first line like any other: a lone
        # "." ends an empty message, and a leading dot is unstuffed by the same replace.
        buf = bytearray(b"\r\n")
        dropped = 0  # bytes of an oversized message already thrown away
        while True:
            start = max(len(buf) - 4, 0)  # the end marker may straddle two blocks
            block = await reader.read(_BLOCK)
            if not block:  # the client went away (aiosmtpd usually cancels us first)
                raise asyncio.CancelledError
            buf += block
            self._keep_pace(started, dropped + len(buf))
            end = buf.find(_END_OF_DATA, start)
            if end >= 0:
                break
            # Over the limit whatever comes next (buf: 2 bytes of ours, the message, and at
            # most ".\r" of the end marker): drop all but what the end marker may begin with.
            if limit and dropped + len(buf) - 4 > limit:
                dropped += len(buf) - 4
                del buf[:-4]
        if excess := buf[end + 5 :]:
            # The client sent its next command without waiting for our reply: give it back
            # to the reader, ahead of anything after it (StreamReader has no unread).
            reader._buffer[0:0] = excess  # type: ignore[attr-defined]  # private, as in aiosmtpd
        del buf[end + 2 :]  # the message ends with its last line's CRLF
        if dropped or (limit and len(buf) - 2 > limit):
            return None
        return bytes(buf).replace(b"\r\n.", b"\r\n")[2:]

    def _keep_pace(self, started: float, received: int) -> None:
        """Restart the idle timer after a block, but never past the minimum-rate deadline.

        aiosmtpd restarts it only on a command, so without this a message that takes
        longer than idle_timeout to arrive would be cut however fast it comes, and a
        silent client would not be told (Guard._timeout_cb).
        """
        deadline = started + self._timeout_duration + received / MIN_DATA_RATE
        self._reset_timeout(max(min(self._timeout_duration, deadline - self.loop.time()), 0.001))


def message_id_of(raw: bytes) -> str:
    """The Message-ID of the header, for the log line of a message not yet parsed ("-": none)."""
    end = raw.find(b"\r\n\r\n")
    match = _MESSAGE_ID.search(raw, 0, end if end >= 0 else len(raw))
    return match.group(1).decode("ascii", "replace") if match else "-"
