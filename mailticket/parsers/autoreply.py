"""Who sent this: a person, an auto-responder, a mail server reporting a failure, or a list?

Place in the flow: the last step of `message.parse` calls `classify(pm)`; the pipeline's
guard step uses `mail_class` to never answer machines (mail loops); `bounce_refs` and
`bounce_subject` find the ticket of the message that bounced, and `bounce_failed` the
recipients to send no more automatic mail to.  `class_reason` names the sign that decided,
for the ticket's history.

Signs, strongest first (a DSN often also says `Auto-Submitted: auto-replied`, so bounces
are tested before auto-replies, and both before bulk):
- BOUNCE: `multipart/report; report-type=delivery-status` (RFC 3464, RFC 6522); or a
  failure subject ("Undelivered Mail Returned to Sender" Postfix, "Delivery Status
  Notification (Failure)" Gmail, "Mail delivery failed" Exim, "Undeliverable:" Exchange,
  "failure notice" qmail) together with a MAILER-DAEMON/postmaster sender or an empty
  Return-Path `<>` (RFC 5321 section 4.5.5: notifications use the null reverse-path).
- AUTO_REPLY: `Auto-Submitted` other than `no` (RFC 3834 section 5); `X-Autoreply`,
  `X-Autorespond` (vacation programs, cPanel); `Precedence: auto_reply`; a read receipt
  (`report-type=disposition-notification`, RFC 8098); an out-of-office subject.
- BULK: `Precedence: bulk|list|junk` (RFC 2076; what Roundup and RT also honour),
  `List-Id` (RFC 2919), `List-Unsubscribe` (RFC 2369: a CRM newsletter carries it even
  without a list), `Feedback-ID` (Gmail's bulk-sender header).
"""

from __future__ import annotations

import re
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from typing import NamedTuple

from . import MailClass, ParsedMessage


class Classification(NamedTuple):
    mail_class: MailClass
    reason: str
    bounce_refs: list[str]
    bounce_subject: str = ""  # the returned message's Subject (it may carry our token)
    bounce_failed: list[tuple[str, str]] = []  # (recipient, 5.x.x status) failed for good


NORMAL = Classification(MailClass.NORMAL, "", [])

_FAILURE_SUBJECT = re.compile(
    r"undeliver|undelivered mail|returned mail|delivery status notification"
    r"|delivery (?:has )?fail|mail delivery failed|failure notice|delivery failure"
    r"|mail system error|non remis|non distribuable|onbestelbaar|niet afgeleverd"
    r"|unzustellbar|nicht zustellbar|returned to sender",
    re.IGNORECASE,
)
_DAEMON_LOCAL = re.compile(r"^(?:mailer-daemon|postmaster|mail-daemon|mailerdaemon)$", re.IGNORECASE)

# Subjects that on their own mean an auto-responder: each client's fixed prefix
# (Exchange "Automatic reply:", its French/Dutch/German "Réponse automatique :",
# "Automatisch antwoord:", "Automatische Antwort:", Lotus Notes "Abwesenheitsnotiz").
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:out of (?:the )?office|automatic reply|auto[- ]?reply|autoreply|auto[- ]?response"
    r"|réponse automatique|reponse automatique|automatisch antwoord|automatische antwort"
    r"|abwesenheitsnotiz|out-of-office)\b",
    re.IGNORECASE,
)
# Words that are also ordinary subjects ("Absence of Jane tomorrow") count only as the
# whole subject or a prefix before ":", or next to an Exchange suppress header.
_WEAK_AUTO_SUBJECT = re.compile(
    r"^\s*(?:absence|absent|afwezig|afwezigheid|abwesend|abwesenheit|away|vacation|congés)"
    r"\b\s*(?::|$|(?:du bureau|van kantoor|außer haus)\b)",
    re.IGNORECASE,
)
_WEAK_WORD = re.compile(r"absen|afwezig|abwesen|away|vacation|congé", re.IGNORECASE)

_MESSAGE_ID_LINE = re.compile(r"^\s*Message-ID:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_MSG_ID = re.compile(r"<[^<>\s]+>")
_REPORT_TYPE = re.compile(r"report-type\s*=\s*\"?([\w-]+)", re.IGNORECASE)


def classify(pm: ParsedMessage) -> Classification:
    """The mail class of `pm`, the sign that decided, and for a bounce the reported ids."""
    bounce = _bounce_reason(pm)
    if bounce:
        refs, subject = _returned(pm)
        return Classification(MailClass.BOUNCE, bounce, refs, subject, _failed(pm))
    auto = _auto_reply_reason(pm)
    if auto:
        return Classification(MailClass.AUTO_REPLY, auto, [])
    bulk = _bulk_reason(pm)
    if bulk:
        return Classification(MailClass.BULK, bulk, [])
    return NORMAL


def _report_type(pm: ParsedMessage) -> str:
    ctype = (pm.header("content-type") or "").lower()
    if not ctype.lstrip().startswith("multipart/report"):
        return ""
    m = _REPORT_TYPE.search(ctype)
    return m.group(1) if m else ""


def _bounce_reason(pm: ParsedMessage) -> str:
    if _report_type(pm) == "delivery-status":
        return "Content-Type: multipart/report; report-type=delivery-status"
    if not _FAILURE_SUBJECT.search(pm.subject):
        return ""
    local = pm.from_.email.partition("@")[0] if pm.from_ else ""
    if _DAEMON_LOCAL.match(local):
        return f"From: {pm.from_.email if pm.from_ else ''} with subject {pm.subject[:80]!r}"
    if pm.envelope_sender == "":
        return f"Return-Path: <> with subject {pm.subject[:80]!r}"
    return ""


def _auto_reply_reason(pm: ParsedMessage) -> str:
    submitted = (pm.header("auto-submitted") or "").strip()
    if submitted and submitted.split(";")[0].strip().lower() != "no":
        return f"Auto-Submitted: {submitted[:60]}"
    for name in ("x-autoreply", "x-autorespond", "x-autoresponder"):
        value = pm.header(name)
        if value is not None and value.strip().lower() not in ("no", "false", "0"):
            return f"{name}: {value.strip()[:60]}"
    precedence = (pm.header("precedence") or "").strip().lower()
    if precedence == "auto_reply":
        return "Precedence: auto_reply"
    if _report_type(pm) == "disposition-notification":
        return "Content-Type: multipart/report; report-type=disposition-notification"
    if _AUTO_SUBJECT.search(pm.subject) or _WEAK_AUTO_SUBJECT.search(pm.subject):
        return f"Subject: {pm.subject[:80]}"
    # Exchange stamps its own out-of-office replies with this header; on an ordinary
    # message it is too common to mean anything, so it needs a vacation word too.
    suppress = pm.header("x-auto-response-suppress")
    if suppress and _WEAK_WORD.search(pm.subject):
        return f"X-Auto-Response-Suppress: {suppress[:40]} with subject {pm.subject[:60]!r}"
    return ""


def _bulk_reason(pm: ParsedMessage) -> str:
    precedence = (pm.header("precedence") or "").strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return f"Precedence: {precedence}"
    for name in ("list-id", "list-unsubscribe", "feedback-id"):
        value = pm.header(name)
        if value is not None:
            return f"{name.title()}: {value.strip()[:60]}"
    return ""


def _returned(pm: ParsedMessage) -> tuple[list[str], str]:
    """Message-IDs of the message(s) the bounce reports on, and the returned Subject.

    Where they are, by mailer: the attached message/rfc822 (Postfix, Gmail, Exchange) or
    text/rfc822-headers (RFC 6522) part; the bounce's own In-Reply-To/References (some
    Exchange and Google NDRs); a "Message-ID:" line in the text (qmail quotes the
    original inline, with no attachment).  Some MTAs rewrite the Message-ID of what
    they relay, so the returned Subject (with the ticket's token) is the second way back.
    """
    refs: list[str] = []
    subject = ""
    for att in pm.attachments:
        if att.content_type in (
            "message/rfc822",
            "text/rfc822-headers",
            "message/rfc822-headers",
            "message/global",
            "message/global-headers",
        ):
            head = att.payload[:65536]
            try:
                msg = BytesHeaderParser().parsebytes(head)
                value = str(msg.get("message-id") or "")
                subject = subject or _decoded(msg.get("subject"))
            except Exception:  # noqa: BLE001 - a broken attached header is no reason to fail
                value = ""
            refs.extend(m for m in _MSG_ID.findall(value) if m not in refs)
    if not refs:
        refs.extend(m for m in [*pm.in_reply_to, *pm.references] if m not in refs)
    if not refs:
        for m in _MESSAGE_ID_LINE.finditer(pm.text[:65536]):
            if m.group(1) not in refs and m.group(1) != pm.message_id:
                refs.append(m.group(1))
    return refs[:20], subject


def _decoded(value) -> str:
    """A header value from `BytesHeaderParser` as one line of text (RFC 2047 decoded)."""
    if value is None:
        return ""
    try:
        text = str(make_header(decode_header(str(value))))
    except Exception:  # noqa: BLE001 - an unknown charset: the raw words still hold the token
        text = str(value)
    return " ".join(text.replace("\x00", "").split())[:998]


_STATUS = re.compile(r"^\s*status\s*:\s*(\d\.\d{1,3}\.\d{1,3})", re.IGNORECASE | re.MULTILINE)
_RECIPIENT = re.compile(
    r"^\s*(original|final)-recipient\s*:\s*[^;\n]*;\s*<?([^\s<>]+@[^\s<>]+?)>?\s*$",
    re.IGNORECASE | re.MULTILINE,
)


def _failed(pm: ParsedMessage) -> list[tuple[str, str]]:
    """(recipient, status) of each per-recipient group of the DSN that failed for good.

    RFC 3464 section 2.3: a group names the recipient (Original-Recipient, the address as
    we wrote it, before any forwarding, else Final-Recipient) and a Status whose first
    digit 5 is a permanent failure (RFC 3463); 4 is transient and changes nothing.
    """
    failed: list[tuple[str, str]] = []
    for att in pm.attachments:
        if att.content_type not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        text = att.payload[:65536].decode("utf-8", "replace").replace("\r\n", "\n")
        for group in re.split(r"\n\s*\n", text)[1:]:  # the first group is per-message
            status = _STATUS.search(group)
            found = {kind.lower(): addr.lower() for kind, addr in _RECIPIENT.findall(group)}
            address = found.get("original") or found.get("final")
            if status and address and status.group(1).startswith("5"):
                failed.append((address, status.group(1)))
    return failed[:20]
