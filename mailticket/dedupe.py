"""Is this stored message one we processed already?  The pipeline's dedupe step asks here.

A duplicate is the same Message-ID with the same content, trace headers aside: a
resend after a crash, a second recipient's copy, an mbox imported twice.  The key is
the Message-ID, one indexed lookup; contents are compared only when that finds a row.
Some mailers reuse one Message-ID for different messages (scanners, old list
software, hand-made mail): such a message is a new one, keyed by its content hash (as
a message without a Message-ID is) so that its own copies are still duplicates.
"""

from __future__ import annotations

import hashlib
import re

from . import models
from .models import Inbox

# Trace headers that relays and mail stores add: two copies of one message that differ
# only in these are the same message (a resend after a crash, a second recipient).
_TRACE = re.compile(
    rb"^(received|return-path|delivered-to|x-original-to|x-received|authentication-results"
    rb"|arc-[a-z-]+|x-spam-[a-z-]+|envelope-to|x-envelope-[a-z-]+|x-delivered-to"
    rb"|status|x-status|x-keywords|x-uid):.*(\n[ \t].*)*\n",
    re.IGNORECASE | re.MULTILINE,
)


def content_hash(raw: bytes) -> str:
    """The message without its trace headers, hashed (line endings made LF first: an
    mbox or an .eml file may hold LF what SMTP brought as CRLF)."""
    raw = raw.replace(b"\r\n", b"\n")
    end = raw.find(b"\n\n")
    head, body = (raw, b"") if end < 0 else (raw[: end + 1], raw[end + 1 :])
    return hashlib.sha256(_TRACE.sub(b"", head) + body).hexdigest()


def check(row: Inbox, message_id: str | None) -> tuple[str, tuple | None, int | None]:
    """`row`'s dedupe key; the earliest processed row it duplicates, as
    `(inbox id, ticket, state)`, or None; the inbox row whose Message-ID it reuses with
    other content, or None."""
    key = message_id[:250] if message_id else "sha256:" + content_hash(bytes(row.raw))
    earlier = _done_rows(row, key)
    reused_from = None
    if earlier and message_id:
        digest = content_hash(bytes(row.raw))
        first = min(earlier)[0]
        if content_hash(bytes(models.get(Inbox, first).raw)) != digest:
            reused_from, key = first, "sha256:" + digest
            earlier = _done_rows(row, key)
    return key, min(earlier) if earlier else None, reused_from


def _done_rows(row: Inbox, key: str) -> list[tuple]:
    # Only the indexed column in the WHERE: with `state` in it too, SQLite's planner
    # may pick the state index and scan every processed row (10 ms a message at 10^4).
    return [r for r in models.inbox_by_dedupe_key(key) if r[2] == "done" and r[0] != row.id]
