"""Notifications to agents (notifications.notify_agents), through a real ingest on both backends.

A new ticket a rule assigns notifies the assignee with the attributes, the text, the
previous tickets and a signed Reply-To; an unassigned ticket with a group notifies its
members; a customer's reply notifies again with the history newest first, threaded to
the previous notification; an agent who is the requester or a CC hears nothing of their
own message; a rule's `notify: [group]` reaches the members; the marker cuts a quoted
notification from an agent's reply; a French agent gets the French template.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mailticket import auth
from mailticket.parsers import quotes

from mails import mail

SECRET = b"s3cret-for-notifications"
HD = "support@helpdesk.test"
BOB, DAVE, EVE = "bob@agents.test", "dave@agents.test", "eve@agents.test"


@pytest.fixture
def desk(helpdesk, tmp_path, monkeypatch):
    """A helpdesk with a secret file and three agents: Bob and Dave (tier1), Eve (tier2, French)."""
    monkeypatch.delenv("MAILTICKET_AGENT_SECRET", raising=False)
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    helpdesk.write_config(f'[agents]\nsecret_file = "{tmp_path / "secret"}"\n')
    for email, name, extra in [
        (BOB, "Bob", ["--group", "tier1"]),
        (DAVE, "Dave", ["--group", "tier1"]),
        (EVE, "Eve", ["--group", "tier2", "--tier", "2", "--language", "fr"]),
    ]:
        res = helpdesk.cli("agents", "add", email, "--name", name, *extra)
        assert res.exit_code == 0, res.output
    return helpdesk


def notifications(helpdesk, to: str | None = None) -> list:
    """The outbox's notification rows (to `to`), oldest first."""
    from mailticket.db import open_database
    from mailticket.models import Outbox

    db = open_database(helpdesk.db_url)
    rows = list(Outbox.select().where(Outbox.kind == "notification").order_by(Outbox.id))
    db.close()
    return [r for r in rows if to is None or r.to_addr == to]


def events(helpdesk, number: int, kind: str) -> list[dict]:
    return [e["detail"] for e in helpdesk.show(number)["events"] if e["kind"] == kind]


def verify(address: str, agent: str):
    now = datetime.now(timezone.utc)
    return auth.verify([address], agent, now=now, secret=SECRET, helpdesk_address=HD)


def test_a_rule_assignee_gets_attributes_text_previous_tickets_and_a_signed_reply_to(desk):
    desk.rule_file("10-printers.yaml", r"""
        - name: printers
          when: {subject: {contains: printer}}
          then:
            assignee: bob@agents.test
            priority: P2
            extract:
              - {in: body, regex: 'serial\s*:?\s*(?P<serial>[A-Z]{2}\d{5})'}
    """)
    desk.ingest(
        mail(sender="carol@other.test", subject="Printer jams", body="It jams.\nSerial: PR12345\n"),
        mail(subject="Invoice question", body="Why two invoices?\n"),
        mail(subject="Printer is broken", body="It does not print at all.\nSerial: PR12345\n"),
    )
    [note] = [n for n in notifications(desk, BOB) if n.ticket == 3]
    assert [n.ticket for n in notifications(desk)] == [1, 3]  # Dave, Eve: not their tickets
    assert note.subject == "[#3] Printer is broken" and note.automatic
    body = note.body
    assert body.splitlines()[0] == quotes.MARKER
    assert "New ticket [#3] from Alice Customer <alice@customer.test>." in body
    for line in ("Priority:  P2", "Assignee:  bob@agents.test", "Status:    new", "serial:    PR12345"):
        assert line in body, line
    assert "It does not print at all." in body
    # The previous tickets: the customer's own, and the other customer's for the same unit.
    assert "#2 Invoice question (new; requester)" in body
    assert "#1 Printer jams (new; serial=PR12345)" in body
    # Reply-To is signed for Bob and this ticket; the body carries the signed note address.
    reply = verify(note.headers["Reply-To"], BOB)
    assert reply is not None and reply.valid and (reply.purpose, reply.ticket) == ("reply", 3)
    assert reply.expires > datetime.now(timezone.utc) + timedelta(days=29)
    assert not verify(note.headers["Reply-To"], DAVE).valid  # for Bob only
    [comment] = [w for w in body.split() if w.startswith("support+n.")]
    noted = verify(comment, BOB)
    assert noted is not None and noted.valid and (noted.purpose, noted.ticket) == ("note", 3)
    assert note.headers["Auto-Submitted"] == "auto-generated"
    assert {"to": BOB, "why": "created"} in events(desk, 3, "notified")


def test_an_unassigned_ticket_with_a_group_notifies_its_members(desk):
    desk.rule_file("10-group.yaml", """
        - name: first-line
          when: {subject: {contains: printer}}
          then: {group: tier1}
    """)
    [res] = desk.ingest(mail())
    assert sorted(n.to_addr for n in notifications(desk)) == [BOB, DAVE]
    assert sorted(d["to"] for d in events(desk, res["ticket"], "notified")) == [BOB, DAVE]


def test_a_customers_reply_notifies_again_with_the_history_newest_first(desk):
    desk.rule_file("10-bob.yaml", """
        - name: bob
          when: {subject: {contains: printer}}
          then: {assignee: bob@agents.test}
    """)
    desk.ingest(mail(body="First: the printer is broken.\n"))
    desk.ingest(mail(subject="Re: [#1] Printer is broken", body="Second: still broken.\n"))
    desk.ingest(mail(subject="Re: [#1] Printer is broken", body="Third: now it smokes.\n"))
    first, second, third = notifications(desk, BOB)
    body = third.body
    assert "Alice Customer <alice@customer.test> replied on [#1]." in body
    text, history = body.split("History, newest first:")
    assert "Third: now it smokes." in text and "Third" not in history  # the new text once
    assert history.index("Second: still broken.") < history.index("First: the printer is broken.")
    assert "- 2026-03-02 10:00 Alice Customer <alice@customer.test> (customer):" in history
    # One conversation in Bob's client: each notification answers the one before.
    assert third.headers["In-Reply-To"] == second.message_id
    assert second.headers["In-Reply-To"] == first.message_id
    assert [d["why"] for d in events(desk, 1, "notified")] == ["created", "customer-reply", "customer-reply"]


def test_an_agent_is_not_notified_of_their_own_message(desk):
    desk.rule_file("10-group.yaml", """
        - name: first-line
          when: {subject: {contains: printer}}
          then: {group: tier1}
    """)
    # Bob writes as a customer (no signature: an ordinary message from him) ...
    [own] = desk.ingest(mail(sender=f"Bob <{BOB}>"))
    # ... and is a CC of Alice's ticket.
    [cc] = desk.ingest(mail(cc=f"Bob <{BOB}>"))
    assert [(n.ticket, n.to_addr) for n in notifications(desk)] == [(own["ticket"], DAVE), (cc["ticket"], DAVE)]


def test_a_rules_notify_reaches_the_groups_members(desk):
    desk.rule_file("10-notify.yaml", """
        - name: escalate-outage
          when: {subject: {contains: outage}}
          then: {notify: [tier2, nobody-here, oncall@elsewhere.test]}
    """)
    [res] = desk.ingest(mail(subject="Network outage"))
    assert sorted(n.to_addr for n in notifications(desk)) == [EVE, "oncall@elsewhere.test"]
    assert events(desk, res["ticket"], "notify-skipped") == [{"to": "nobody-here", "why": "no agent in group"}]
    [eve] = notifications(desk, EVE)
    assert "Règles : escalate-outage" in eve.body  # Eve reads French


def test_the_marker_cuts_a_quoted_notification_from_an_agents_reply(desk):
    desk.rule_file("10-bob.yaml", """
        - name: bob
          when: {subject: {contains: printer}}
          then: {assignee: bob@agents.test}
    """)
    desk.ingest(mail())
    [note] = notifications(desk, BOB)
    # A client that quotes with no attribution and no ">" (some phones), and one with ">".
    plain = "Restart it, please.\n\n" + note.body
    quoted = "Restart it, please.\n\n" + "".join(f"> {line}\n" for line in note.body.splitlines())
    assert quotes.new_text(plain) == "Restart it, please."
    assert quotes.new_text(quoted) == "Restart it, please."
    assert quotes.new_text("#status resolved\n" + quotes.MARKER + "\nrest") == "#status resolved"


def test_a_french_agent_gets_the_french_template(desk):
    desk.rule_file("10-eve.yaml", """
        - name: eve
          when: {subject: {contains: printer}}
          then: {assignee: eve@agents.test}
    """)
    desk.ingest(mail())
    [note] = notifications(desk)
    assert note.to_addr == EVE
    assert note.body.splitlines()[0] == quotes.MARKER  # the same marker in every language
    assert "Nouveau ticket [#1] de Alice Customer" in note.body and "Priorité" in note.body


def test_notifications_have_the_agents_own_limit_and_leave_the_customers_limits_alone(desk, tmp_path):
    """A busy team's notifications must not use up the limits that stop loops with
    strangers (everyone's, a domain's), nor may an agent be mailed without end."""
    desk.write_config(
        f'[agents]\nsecret_file = "{tmp_path / "secret"}"\nnotification_limit = 3\n',
        auto_reply_limit_total=4,
    )
    desk.rule_file("10-all.yaml", """
        - name: everything to tier1
          then: {group: tier1}
    """)
    results = desk.ingest(*[mail(sender=f"u@domain{n}.test", subject=f"Problem {n}") for n in range(5)])
    assert [r["outcome"] for r in results] == ["created"] * 5
    # Four acknowledgements (everyone's limit), though eight notifications went out before them.
    assert len([r for r in desk.outbox() if r["kind"] == "ack"]) == 4
    assert "all recipients reached 4" in results[4]["reason"]
    # Bob and Dave each had three, then their own limit said no, on the ticket's history.
    assert len(notifications(desk, BOB)) == len(notifications(desk, DAVE)) == 3
    skipped = events(desk, 4, "notify-skipped")
    assert {s["to"] for s in skipped} == {BOB, DAVE}
    assert all("reached 3 automatic mails this hour" in s["why"] for s in skipped)
