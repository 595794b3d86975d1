"""Is this stored message one we processed already?  The pipeline's dedupe step asks here.

A duplicate is the same Message-ID with the same content, trace headers aside: a
resend after a crash, a second recipient's copy, an mbox imported twice.  The key is
the Message-ID; contents are compared only when another row holds it.
Some mailers reuse one Message-ID for different messages (scanners, old list
software, hand-made mail): such a message is a new one, keyed by its content hash (as
a message without a Message-ID is) so that its own copies are still duplicates.

The key is claimed, not looked up: a row of `DedupeKey` per key, inserted in the
transaction that processes the message.  With several daemons on one PostgreSQL
database, two copies of one message (sent to two daemons, or fetched twice) may be
processed at the same moment; a lookup would find neither and make two tickets,
whereas the second INSERT waits for the first transaction and finds the key taken.  A
message that fails and is quarantined rolls its claim back with the rest.
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
    """`row`'s dedupe key, taken for it (`models.claim_dedupe_key`, in the caller's
    transaction); the inbox row it duplicates, as `(inbox id, ticket, state)`, or None; the
    inbox row whose Message-ID it reuses with other content, or None."""
    key = message_id[:250] if message_id else "sha256:" + content_hash(bytes(row.raw))
    holder = models.claim_dedupe_key(key, row.id)
    reused_from = None
    if holder is not None and message_id:
        digest = content_hash(bytes(row.raw))
        if content_hash(bytes(models.get(Inbox, holder).raw)) != digest:
            reused_from, key = holder, "sha256:" + digest
            holder = models.claim_dedupe_key(key, row.id)
    return key, models.inbox_brief(holder) if holder is not None else None, reused_from
