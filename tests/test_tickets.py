"""tickets.py's write functions, the one way to change a ticket: on each backend."""

from __future__ import annotations

import pytest

from mailticket import tickets
from mailticket.clock import FrozenClock
from mailticket.db import open_database
from mailticket.errors import MailticketError, TicketError
from mailticket.models import Event, Message, Ticket


@pytest.fixture
def clock(db_url):
    db = open_database(db_url)
    yield FrozenClock()
    db.close()


def new_ticket(clock) -> Ticket:
    message = {"direction": "in", "kind": "customer", "message_id": "<1@customer.test>",
               "from_addr": "alice@customer.test", "text": "Printer broken"}
    ticket, events = tickets.create(
        {"subject": "Printer", "requester": "alice@customer.test"}, message,
        actor="alice@customer.test", now=clock.now(), detail={"source": "test"})
    tickets.save_events(events, clock.now())
    return ticket


def stored_events(number: int) -> list[tuple]:
    rows = Event.select().where(Event.ticket == number).order_by(Event.id)
    return [(e.actor, e.kind, e.detail) for e in rows]


def test_create_stores_the_ticket_its_first_message_and_one_event(clock):
    t = new_ticket(clock)
    row = Ticket.get_by_id(t.number)
    assert (row.status, row.priority, row.created_at) == ("new", "P3", clock.now())
    assert [m.text for m in Message.select().where(Message.ticket == t.number)] == ["Printer broken"]
    assert stored_events(t.number) == [("alice@customer.test", "created", {"source": "test"})]


def test_change_records_one_event_per_attribute_naming_the_actor(clock):
    t = new_ticket(clock)
    later = clock.advance(minutes=5)
    events = tickets.change(t, {"status": "open", "priority": "P1", "queue": "general"},
                            actor="bob@helpdesk.test", now=later, why="#status open")
    tickets.save_events(events, later)
    # The queue was `general` already: no event for it.
    assert stored_events(t.number)[1:] == [
        ("bob@helpdesk.test", "status", {"from": "new", "to": "open", "why": "#status open"}),
        ("bob@helpdesk.test", "priority", {"from": "P3", "to": "P1", "why": "#status open"}),
    ]
    row = Ticket.get_by_id(t.number)
    assert (row.status, row.priority, row.updated_at) == ("open", "P1", later)
    assert (t.status, t.priority) == ("open", "P1")  # the caller's ticket is current too


@pytest.mark.parametrize("changes, words", [
    ({"status": "opened"}, "unknown status 'opened'"),
    ({"priority": "urgent"}, "unknown priority 'urgent'"),
    ({"subject": "x"}, "cannot change subject"),
])
def test_change_refuses_what_a_ticket_cannot_take(clock, changes, words):
    t = new_ticket(clock)
    with pytest.raises(TicketError, match=words) as caught:
        tickets.change(t, {"tier": 2, **changes}, actor="bob@helpdesk.test", now=clock.advance(minutes=1))
    assert isinstance(caught.value, MailticketError)
    assert Ticket.get_by_id(t.number).tier == 1  # refused before anything was written


def test_change_to_the_same_values_is_a_no_op(clock):
    t, created = new_ticket(clock), clock.now()
    later = clock.advance(minutes=5)
    assert tickets.change(t, {"status": "new", "priority": "P3", "tags": []},
                          actor="bob@helpdesk.test", now=later) == []
    assert Ticket.get_by_id(t.number).updated_at == created
    assert [kind for _, kind, _ in stored_events(t.number)] == ["created"]


def test_add_message_moves_updated_at_and_records_who(clock):
    t = new_ticket(clock)
    later = clock.advance(minutes=5)
    events = tickets.add_message(
        t, {"direction": "in", "kind": "customer", "message_id": "<2@customer.test>", "text": "Still broken"},
        [{"filename": "a.txt", "content_type": "text/plain", "size": 1, "sha256": "0" * 64}],
        actor="alice@customer.test", now=later)
    assert events == [tickets.event(t, "alice@customer.test", "message", {"kind": "customer"})]
    assert Ticket.get_by_id(t.number).updated_at == later
    texts = [(m.text, [a.filename for a in m.attachments])
             for m in Message.select().where(Message.ticket == t.number).order_by(Message.id)]
    assert texts == [("Printer broken", []), ("Still broken", ["a.txt"])]


def test_a_reply_changes_its_ticket_through_change_naming_each_actor(helpdesk):
    """The pipeline's record step: the customer reopens, the rules raise the priority, each
    an event of its own with who did it (beside the rule's own `rule` event)."""
    from mails import mail

    (helpdesk.root / "rules" / "outage.yaml").write_text(
        "- name: outage\n  applies_to: reply\n  when: {subject: {words: [outage]}}\n"
        "  then: {priority: P1}\n")
    helpdesk.ingest(mail(subject="Help", body="The printer is slow.\n"))
    db = open_database(helpdesk.db_url)
    Ticket.update(status="pending").where(Ticket.number == 1).execute()
    db.close()
    helpdesk.ingest(mail(subject="Re: [#1] Help: now an outage"))
    t = helpdesk.show(1)
    assert (t["status"], t["priority"]) == ("open", "P1")
    changes = [(e["actor"], e["kind"], e["detail"])
               for e in t["events"] if e["kind"] in ("status", "priority")]
    assert changes == [
        ("alice@customer.test", "status", {"from": "pending", "to": "open"}),
        ("rules", "priority", {"from": "P3", "to": "P1", "why": "rule outage"}),
    ]
    assert [e["actor"] for e in t["events"] if e["kind"] == "rule"] == ["rule:outage"]
