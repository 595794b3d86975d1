"""Hand-made test messages: small builders that return raw bytes."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

_seq = itertools.count(1)


def mail(
    *,
    sender: str = "Alice Customer <alice@customer.test>",
    to: str = "support@helpdesk.test",
    cc: str | None = None,
    subject: str = "Printer is broken",
    body: str = "Hello,\n\nmy printer does not print.\n\nAlice\n",
    message_id: str | None = "auto",
    in_reply_to: str | None = None,
    references: str | None = None,
    headers: dict[str, str] | None = None,
    html: str | None = None,
    attachments: list[tuple[str, str, bytes]] = (),
) -> bytes:
    msg = EmailMessage(policy=SMTP)
    if sender:
        msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc))
    if message_id == "auto":
        message_id = f"<m{next(_seq)}.{id(msg)}@customer.test>"
    if message_id:
        msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    if html:
        msg.add_alternative(html, subtype="html")
    for filename, ctype, payload in attachments:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def msgid(raw: bytes) -> str:
    for line in raw.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError("no Message-ID")


def bounce_for(original: bytes, *, to: str = "support@helpdesk.test") -> bytes:
    """A DSN (RFC 3464) that returns `original`'s headers."""
    head = original.split(b"\r\n\r\n", 1)[0].decode()
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.customer.test>\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn1@mx.customer.test>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nThis is the mail system. Your message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.customer.test\r\n\r\nFinal-Recipient: rfc822; gone@customer.test\r\n"
        "Action: failed\r\nStatus: 5.1.1\r\n\r\n"
        f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n{head}\r\n"
        "--B--\r\n"
    ).encode()
