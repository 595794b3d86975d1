"""Everything that reads an email, one module per concern.

The pipeline calls `parsers.message.parse(raw)` and gets a `ParsedMessage`.  The
types below are the only thing the rest of mailticket knows about parsing: the
parsers import nothing else of ours.

    message    raw bytes -> ParsedMessage (mail-parser for addresses, compat32 email for parts)
    feed       raw bytes -> email Message, with a time limit and a fast path for big base64
    decode     charsets, RFC 2047 words, message ids, dates, safe file names, format=flowed
    html       HTML -> readable text
    quotes     the new text of a reply: quoted history and signature removed
    autoreply  auto-reply / bounce / bulk classification (RFC 3834, RFC 3464)
    language   the language of a message, for templates
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class MailClass(str, enum.Enum):
    """What kind of sender produced the message, for loop protection."""

    NORMAL = "normal"
    AUTO_REPLY = "auto-reply"  # vacation / out-of-office / autoresponder (RFC 3834)
    BOUNCE = "bounce"  # delivery status notification (RFC 3464) or a mailer-daemon report
    BULK = "bulk"  # mailing list, newsletter, Precedence: bulk/list/junk


@dataclass(frozen=True)
class Address:
    """A decoded mailbox: display name (may be empty) and address (lower-cased)."""

    name: str
    email: str

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


@dataclass(frozen=True)
class Attachment:
    """One attached or inline part.  `filename` is already safe to show and to store."""

    filename: str
    content_type: str
    payload: bytes
    inline: bool = False
    content_id: str | None = None


@dataclass
class ParsedMessage:
    """Everything the pipeline needs to know about one email.

    Message ids keep their angle brackets (`<abc@example.com>`), as they appear in
    In-Reply-To and References, so that lookups compare like with like.
    """

    message_id: str | None
    subject: str
    from_: Address | None
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    date: datetime | None = None
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    # Lower-cased header name -> decoded values, in order of appearance.
    headers: dict[str, list[str]] = field(default_factory=dict)
    text: str = ""  # the whole readable body: text/plain, or the HTML part as text
    html: str | None = None  # the raw HTML part, when there is one
    new_text: str = ""  # `text` without quoted history and signature
    attachments: list[Attachment] = field(default_factory=list)
    mail_class: MailClass = MailClass.NORMAL
    class_reason: str = ""  # why mail_class is not NORMAL, e.g. "Auto-Submitted: auto-replied"
    bounce_refs: list[str] = field(default_factory=list)  # ids of the messages a bounce reports on
    bounce_subject: str = ""  # the Subject of the message a bounce returns, when it has one
    # (address, status) of each recipient a DSN reports as failed permanently (5.x.x)
    bounce_failed: list[tuple[str, str]] = field(default_factory=list)
    # The topmost Return-Path (RFC 5321 section 4.4, the envelope sender): None when there
    # is none, "" for the null sender `<>` (bounces and auto-replies: RFC 3834 section 2
    # forbids answering it), else the lower-cased address.
    envelope_sender: str | None = None
    language: str | None = None  # ISO 639-1 code when it could be told, else None
    defects: list[str] = field(default_factory=list)  # what was broken and repaired on the way

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def thread_ids(self) -> list[str]:
        """In-Reply-To then References, newest first, without repeats: the ids to thread by."""
        seen: list[str] = []
        for mid in [*self.in_reply_to, *reversed(self.references)]:
            if mid not in seen:
                seen.append(mid)
        return seen
