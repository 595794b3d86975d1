"""The envelope sender of a message that arrives without SMTP: an MTA pipe or an mbox file.

Its place in the flow (docs/architecture.md section 1): `mailticket ingest` calls it on each message before
`inbox.store_many`, so that the stored raw bytes carry the envelope sender as their
topmost `Return-Path:` header, the way the SMTP listener's trace headers do
(RFC 5321 4.4).  The pipeline reads that header and never answers `<>` (RFC 3834 2:
no automatic reply to a bounce or to another automatic message).

Postfix's pipe transport gives the sender in two ways (pipe(8), global/mail_copy.c):
flag F prepends an mbox From_ line, `From sender  date`, with MAILER-DAEMON for the
null sender; flag R prepends `Return-Path: <sender>`, `<>` for the null sender.  Other
MTAs and hand-made files write `<MAILER-DAEMON>` too: every spelling of the null
sender becomes `Return-Path: <>`.

In an mbox *file* MAILER-DAEMON means nothing: Python's mailbox module and several mail
readers write it on every message whose sender they do not know, so there only a real
address (one with an @) is taken.
"""

from __future__ import annotations

import re

# `From sender  date`: Postfix quotes a local part with spaces ("john doe"@example.com).
_FROM_LINE = re.compile(rb'From ("[^"\r\n]*"\S*|\S+)[^\n]*\n?')
_RETURN_PATH = re.compile(rb"Return-Path:[ \t]*([^\r\n]*)\r?\n", re.IGNORECASE)
_NULL_SENDERS = {b"", b"<>", b"mailer-daemon", b"<mailer-daemon>"}


def split_from_line(data: bytes) -> tuple[bytes | None, bytes]:
    """The sender of a leading mbox From_ line, and the message without that line."""
    match = _FROM_LINE.match(data)
    if match is None:
        return None, data
    return match.group(1), data[match.end() :]


def return_path(sender: bytes) -> bytes:
    """`<sender>` as a Return-Path header says it; every null sender spelling is `<>`."""
    sender = sender.strip()
    if sender.lower() in _NULL_SENDERS:
        return b"<>"
    return sender if sender.startswith(b"<") else b"<" + sender + b">"


def with_return_path(data: bytes, sender: bytes | None) -> bytes:
    """The message with its envelope sender as the topmost `Return-Path:` header.

    A Return-Path already on top (Postfix flag R) is the MTA's and wins over `sender`
    (the From_ line of flag F): it is kept, with the null sender spelled `<>`.  With
    neither, the message is returned as it is.
    """
    match = _RETURN_PATH.match(data)
    if match is not None:
        sender, data = match.group(1), data[match.end() :]
    elif sender is None:
        return data
    first_line = data.split(b"\n", 1)[0]
    eol = b"\r\n" if first_line.endswith(b"\r") else b"\n"  # as the message's own lines end
    return b"Return-Path: " + return_path(sender) + eol + data


def from_pipe(data: bytes) -> bytes:
    """A message as an MTA pipe gives it (maybe a From_ line, maybe a Return-Path first)."""
    sender, data = split_from_line(data)
    return with_return_path(data, sender)


def from_mbox(data: bytes) -> bytes:
    """A message of an mbox file, From_ line included: a real sender becomes Return-Path."""
    sender, data = split_from_line(data)
    if sender is not None and b"@" not in sender:
        sender = None  # "MAILER-DAEMON" or "-": a placeholder in a file, not a sender
    return with_return_path(data, sender) if sender is not None else data
