"""The envelope sender (topmost Return-Path) and what a bounce tells beyond its class:
the returned subject (a token when the Message-ID was rewritten) and the recipients
that failed for good."""

from __future__ import annotations

import pytest

from mailticket.parsers import MailClass
from mailticket.parsers.message import parse

from . import mailbuild as mb


@pytest.mark.parametrize(
    ("return_paths", "expected"),
    [
        ([], None),
        (["<>"], ""),
        (["  < >  "], ""),
        (["<MAILER-DAEMON>"], ""),
        (["<Bounce+X@Lists.Example> (via relay)"], "bounce+x@lists.example"),
        (["<>", "<jane@example.com>"], ""),  # the topmost: the last MTA's
        (["<jane@example.com>", "<>"], "jane@example.com"),
    ],
)
def test_envelope_sender_is_the_topmost_return_path(return_paths: list[str], expected: str | None) -> None:
    head = [("Return-Path", rp) for rp in return_paths] + list(mb.top().items())
    pm = parse(mb.headers_block(head) + b"\r\nHello.\r\n")
    assert pm.envelope_sender == expected


def dsn(status_groups: str, returned: bytes, returned_type: str = "message/rfc822") -> bytes:
    report = mb.multipart(
        "report",
        [
            mb.leaf("text/plain", "Your message could not be delivered."),
            mb.leaf("message/delivery-status", "Reporting-MTA: dns; mx.example.com\n\n" + status_groups,
                    cte="7bit"),
            mb.leaf(returned_type, returned, cte="7bit"),
        ],
        params="; report-type=delivery-status",
    )
    return mb.message(report, {"From": "MAILER-DAEMON@mx.example.com", "Subject": "Undelivered Mail"})


RETURNED = mb.plain(
    "Your ticket was received.",
    {"From": "support@helpdesk.example", "To": "gone@example.com",
     "Subject": "=?utf-8?q?[#42]_Caf=C3=A9_machine?=", "Message-ID": "<rewritten@relay.example>"},
)


@pytest.mark.parametrize("returned_type", ["message/rfc822", "text/rfc822-headers"])
def test_returned_subject_is_decoded(returned_type: str) -> None:
    returned = RETURNED if returned_type == "message/rfc822" else RETURNED.split(b"\r\n\r\n")[0] + b"\r\n"
    pm = parse(dsn("Final-Recipient: rfc822; gone@example.com\nAction: failed\nStatus: 5.1.1\n",
                   returned, returned_type))
    assert pm.mail_class is MailClass.BOUNCE
    assert pm.bounce_subject == "[#42] Café machine"
    assert pm.bounce_refs == ["<rewritten@relay.example>"]


def test_failed_recipients_are_the_permanent_ones_as_we_wrote_them() -> None:
    groups = (
        "Original-Recipient: rfc822; Gone@Example.com\nFinal-Recipient: rfc822; gone@mailhost.example.com\n"
        "Action: failed\nStatus: 5.1.1\n\n"
        "Final-Recipient: rfc822;full@example.com\nAction: delayed\nStatus: 4.2.2\n\n"
        "Final-Recipient: RFC822; <spam@example.com>\nAction: failed\nStatus: 5.7.1\n"
    )
    pm = parse(dsn(groups, RETURNED))
    assert pm.bounce_failed == [("gone@example.com", "5.1.1"), ("spam@example.com", "5.7.1")]


def test_ordinary_mail_has_no_bounce_details() -> None:
    pm = parse(mb.plain("Hello.", {"Subject": "[#42] Thanks"}))
    assert pm.bounce_subject == "" and pm.bounce_failed == []
