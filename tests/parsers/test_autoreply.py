"""Auto-replies, bounces and bulk mail, as real mailers send them."""

from __future__ import annotations

import pytest

from mailticket.parsers import MailClass
from mailticket.parsers.message import parse

from . import mailbuild as mb

ORIGINAL = mb.plain(
    "Your ticket [#42] was received.",
    {
        "From": "Support <support@helpdesk.example>",
        "To": "gone@example.com",
        "Subject": "[#42] Printer on fire",
        "Message-ID": "<ack-42@helpdesk.example>",
    },
)


def postfix_dsn() -> bytes:
    """Postfix: multipart/report with the original message attached (RFC 3464)."""
    status = (
        "Reporting-MTA: dns; mx.example.com\n\nFinal-Recipient: rfc822; gone@example.com\n"
        "Action: failed\nStatus: 5.1.1\n"
    )
    report = mb.multipart(
        "report",
        [
            mb.leaf(
                "text/plain; charset=us-ascii",
                "I'm sorry to have to inform you that your message could not be delivered.\n",
            ),
            mb.leaf("message/delivery-status", status, cte="7bit"),
            mb.leaf("message/rfc822", ORIGINAL, cte="7bit"),
        ],
        params="; report-type=delivery-status",
    )
    return mb.message(
        report,
        {
            "From": "MAILER-DAEMON@mx.example.com (Mail Delivery System)",
            "To": "support@helpdesk.example",
            "Subject": "Undelivered Mail Returned to Sender",
            "Auto-Submitted": "auto-replied",
            "Message-ID": "<dsn1@mx.example.com>",
        },
    )


def test_postfix_dsn_is_a_bounce_with_the_original_id() -> None:
    pm = parse(postfix_dsn())
    assert pm.mail_class is MailClass.BOUNCE
    assert "delivery-status" in pm.class_reason
    assert pm.bounce_refs == ["<ack-42@helpdesk.example>"]
    assert pm.text.startswith("I'm sorry")
    assert [a.content_type for a in pm.attachments] == ["message/delivery-status", "message/rfc822"]


def test_rfc822_headers_part_gives_the_original_id() -> None:
    headers_only = ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    report = mb.multipart(
        "report",
        [
            mb.leaf("text/plain", "Delivery has failed to these recipients."),
            mb.leaf("text/rfc822-headers", headers_only, cte="7bit"),
        ],
        params='; report-type="delivery-status"',
    )
    pm = parse(
        mb.message(
            report,
            {"From": "postmaster@corp.example", "Subject": "Undeliverable: [#42] Printer on fire"},
        )
    )
    assert pm.mail_class is MailClass.BOUNCE
    assert pm.bounce_refs == ["<ack-42@helpdesk.example>"]


@pytest.mark.parametrize(
    ("sender", "subject"),
    [
        (
            "Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
            "Delivery Status Notification (Failure)",
        ),
        (
            "Mail Delivery System <Mailer-Daemon@mx.example.net>",
            "Mail delivery failed: returning message to sender",
        ),
        ("MAILER-DAEMON@qmail.example", "failure notice"),
        ("Microsoft Outlook <postmaster@corp.example>", "Onbestelbaar: [#42] Printer"),
        ("postmaster@corp.example", "Unzustellbar: [#42] Drucker"),
        ("postmaster@corp.example", "Non remis : [#42] Imprimante"),
    ],
)
def test_daemon_sender_with_failure_subject(sender: str, subject: str) -> None:
    body = (
        "Hi. This is the qmail-send program.\n--- Below this line is a copy of the message.\n\n"
        "Message-ID: <ack-42@helpdesk.example>\nSubject: [#42] Printer on fire\n"
    )
    pm = parse(mb.plain(body, {"From": sender, "Subject": subject}))
    assert pm.mail_class is MailClass.BOUNCE
    assert pm.bounce_refs == ["<ack-42@helpdesk.example>"]


def test_empty_return_path_with_failure_subject() -> None:
    pm = parse(
        mb.plain(
            "Could not deliver.",
            {
                "From": "robot@mx.example",
                "Return-Path": "<>",
                "Subject": "Returned mail: see transcript",
                "In-Reply-To": "<ack-42@helpdesk.example>",
            },
        )
    )
    assert pm.mail_class is MailClass.BOUNCE
    assert pm.class_reason.startswith("Return-Path: <>")
    assert pm.bounce_refs == ["<ack-42@helpdesk.example>"]


def test_failure_subject_from_a_person_is_normal() -> None:
    pm = parse(
        mb.plain(
            "Your shop says my parcel is undeliverable, why?", {"Subject": "Undeliverable parcel"}
        )
    )
    assert pm.mail_class is MailClass.NORMAL


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Auto-Submitted": "auto-replied"}, "Auto-Submitted: auto-replied"),
        ({"Auto-Submitted": "auto-generated; type=vacation"}, "Auto-Submitted: auto-generated"),
        ({"X-Autoreply": "yes"}, "x-autoreply: yes"),
        ({"X-Autorespond": "Printer on fire"}, "x-autorespond"),
        ({"Precedence": "auto_reply"}, "Precedence: auto_reply"),
        ({"Subject": "Out of Office: Printer on fire"}, "Subject: Out of Office"),
        ({"Subject": "Automatic reply: Printer on fire"}, "Subject: Automatic reply"),
        ({"Subject": "Autoreply: Printer on fire"}, "Subject"),
        ({"Subject": "Réponse automatique : Imprimante"}, "Subject"),
        ({"Subject": "Absence : Imprimante en feu"}, "Subject"),
        ({"Subject": "Automatisch antwoord: Printer"}, "Subject"),
        ({"Subject": "Afwezig"}, "Subject"),
        ({"Subject": "Abwesenheitsnotiz: Drucker"}, "Subject"),
        ({"Subject": "Automatische Antwort: Drucker"}, "Subject"),
        (
            {"Subject": "Away until Monday", "X-Auto-Response-Suppress": "All"},
            "X-Auto-Response-Suppress",
        ),
    ],
)
def test_auto_replies(headers: dict[str, str], reason: str) -> None:
    pm = parse(mb.plain("I am away until Monday.", headers))
    assert pm.mail_class is MailClass.AUTO_REPLY
    assert pm.class_reason.startswith(reason)


def test_read_receipt_is_an_auto_reply() -> None:
    report = mb.multipart(
        "report",
        [
            mb.leaf("text/plain", "Your message was read."),
            mb.leaf("message/disposition-notification", "x", cte="7bit"),
        ],
        params="; report-type=disposition-notification",
    )
    pm = parse(mb.message(report, {"Subject": "Read: Printer on fire"}))
    assert pm.mail_class is MailClass.AUTO_REPLY


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto-Submitted": "no"},
        {"Subject": "Absence of Jane tomorrow, who covers the printer?"},
        {"Subject": "Re: Out of paper"},
        {"X-Auto-Response-Suppress": "All"},
    ],
)
def test_people_are_normal(headers: dict[str, str]) -> None:
    assert parse(mb.plain("hello", headers)).mail_class is MailClass.NORMAL


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Precedence": "bulk"}, "Precedence: bulk"),
        ({"Precedence": "list"}, "Precedence: list"),
        ({"Precedence": "junk"}, "Precedence: junk"),
        ({"List-Id": "Users <users.lists.example.org>"}, "List-Id"),
        ({"List-Unsubscribe": "<https://crm.example/u/123>"}, "List-Unsubscribe"),
        ({"Feedback-ID": "123:campaign:gmail"}, "Feedback-Id"),
    ],
)
def test_bulk(headers: dict[str, str], reason: str) -> None:
    pm = parse(mb.plain("Our new offers!", headers))
    assert pm.mail_class is MailClass.BULK
    assert pm.class_reason.startswith(reason)


def test_bounce_wins_over_auto_submitted_and_auto_reply_over_bulk() -> None:
    assert parse(postfix_dsn()).mail_class is MailClass.BOUNCE
    pm = parse(mb.plain("away", {"Auto-Submitted": "auto-replied", "Precedence": "bulk"}))
    assert pm.mail_class is MailClass.AUTO_REPLY
