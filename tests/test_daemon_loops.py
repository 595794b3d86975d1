"""Loops and the null sender through the real daemon: SMTP in, the outgoing folder out.

An autoresponder elsewhere that answers every mail from a new address (other
helpdesks have one reply address per ticket) must not loop with us; mail with a
null envelope sender (`MAIL FROM:<>`) is recorded and never answered (RFC 3834
section 2).  Bounded: a handful of rounds, every wait on a condition with a deadline.
"""

from __future__ import annotations

import email
import smtplib
from email.policy import SMTP as SMTP_POLICY

from helpers import wait_for
from mails import mail
from test_daemon import daemon, tickets_of  # noqa: F401 - the fixture

ROUNDS = 5


def outgoing(helpdesk) -> list:
    return sorted((helpdesk.root / "var" / "outgoing").glob("*.eml"))


def test_an_autoresponder_answering_from_a_new_address_each_time_does_not_loop(daemon, helpdesk):
    daemon.start()
    daemon.send(mail(sender="Alice <alice@customer.test>", subject="Printer on fire"))
    wait_for(lambda: len(outgoing(helpdesk)) == 1, what="the first acknowledgement")
    for n in range(ROUNDS):
        # The other system answers our latest mail from a new address, quoting our
        # subject token and our Message-ID, with no auto-reply headers at all.
        ours = email.message_from_bytes(outgoing(helpdesk)[-1].read_bytes(), policy=SMTP_POLICY)
        answer = mail(sender=f"Ticket {n} <ticket-{n}@otherdesk.test>",
                      subject=f"Re: {ours['Subject']}", in_reply_to=ours["Message-ID"],
                      references=ours["Message-ID"], body="We received your request.\n")
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as s:
            s.sendmail(f"ticket-{n}@otherdesk.test", ["support@helpdesk.test"], answer)
        wait_for(lambda n=n: len(tickets_of(helpdesk)) + _appended(helpdesk) >= n + 2,
                 what=f"round {n} processed")
    helpdesk.cli("outbox", "deliver")
    assert len(outgoing(helpdesk)) == 1, [p.name for p in outgoing(helpdesk)]


def _appended(helpdesk) -> int:
    import json

    out = helpdesk.cli("inbox", "list", "--json", "--limit", "1000").output
    return sum(1 for row in json.loads(out) if row["outcome"] in ("appended", "suppressed"))


def test_null_envelope_sender_over_smtp_is_recorded_and_never_answered(daemon, helpdesk):
    daemon.start()
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as s:
        s.sendmail("<>", ["support@helpdesk.test"], mail(subject="Please call me back"))
        s.sendmail("bob@customer.test", ["support@helpdesk.test"],
                   mail(sender="Bob <bob@customer.test>", subject="Normal question"))
    wait_for(lambda: len(tickets_of(helpdesk)) == 2, what="both tickets")
    wait_for(lambda: len(outgoing(helpdesk)) == 1, what="the one acknowledgement")
    helpdesk.cli("outbox", "deliver")
    [ack] = outgoing(helpdesk)
    assert b"To: bob@customer.test" in ack.read_bytes() or b"bob@customer.test" in ack.read_bytes()
    assert b"alice@customer.test" not in ack.read_bytes()
