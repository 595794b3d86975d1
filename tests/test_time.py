"""The timed side through the library with a frozen clock, on both backends: SLA due times on
a business calendar (holidays, pauses), the acknowledgement's promise, warnings, escalation
on a breach, status updates, reminders, auto-resolve, closing; and `mailticket tick`,
`sla explain`, `ticket list --due` from the command line.

The office calendar: Brussels, Monday to Friday 09:00-17:00, Belgian public holidays.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from mailticket import actions, agents, config, jobs, tickets
from mailticket.app import open_app
from mailticket.clock import FrozenClock
from mailticket.db import writing
from mailticket.ingest import store_and_process
from mailticket.models import Outbox, Ticket
from mailticket.parsers import commands

from mails import mail

BXL = ZoneInfo("Europe/Brussels")
BOB, TIA = "bob@agents.test", "tia@agents.test"  # tier 1, tier 2
OFFICE = """
[sla]
calendar = "office"

[calendars.office]
timezone = "Europe/Brussels"
hours = { "mon-fri" = "09:00-17:00" }
holidays = "BE"
"""


def local(*a) -> datetime:
    return datetime(*a, tzinfo=BXL)


class Desk:
    """A helpdesk opened with a frozen clock: ingest, tick, act as an agent."""

    def __init__(self, helpdesk, tmp_path, start: datetime) -> None:
        self.hd, self.tmp = helpdesk, tmp_path
        self.clock = FrozenClock(start.astimezone(timezone.utc))
        self.app = open_app(config.load(helpdesk.config_path), clock=self.clock)
        self.n = 0

    def ingest(self, raw: bytes) -> None:
        self.n += 1
        path = self.tmp / f"m{self.n}.eml"
        path.write_bytes(raw)
        summary = store_and_process(self.app, (str(path),), batch=10)
        assert sum(summary.counts.values()) == 1, summary

    def tick(self, at: datetime) -> list[dict]:
        self.clock.set(at.astimezone(timezone.utc))
        with writing(), self.app.db.atomic():
            return jobs.tick(self.app.pipeline.env, self.clock.now()).actions

    def command(self, number: int, line: str, who: str = BOB) -> None:
        found, _ = commands.parse(line)
        with writing(), self.app.db.atomic():
            [outcome] = actions.apply(
                tickets.by_number(number), found, agent=agents.find(who), now=self.clock.now(),
                env=self.app.pipeline.env,
            )
        assert outcome.ok, outcome

    def ticket(self, number: int = 1) -> Ticket:
        return Ticket.get_by_id(number)

    def outbox(self, kind: str) -> list[Outbox]:
        return list(Outbox.select().where(Outbox.kind == kind).order_by(Outbox.id))

    def close(self) -> None:
        self.app.close()


@pytest.fixture
def office(helpdesk, tmp_path, monkeypatch):
    monkeypatch.delenv("MAILTICKET_AGENT_SECRET", raising=False)
    (tmp_path / "secret").write_text("s3cret\n")
    helpdesk.write_config(f'[agents]\nsecret_file = "{tmp_path / "secret"}"\n' + OFFICE,
                          timezone="Europe/Brussels")
    helpdesk.rule_file("10-all.yaml", """
        - name: everything to tier1
          then: {group: tier1}
    """)
    for address, name, extra in ((BOB, "Bob", ["--group", "tier1"]),
                                 (TIA, "Tia", ["--group", "tier2", "--tier", "2"])):
        assert helpdesk.cli("agents", "add", address, "--name", name, *extra).exit_code == 0
    desks = []

    def make(start: datetime) -> Desk:
        desks.append(Desk(helpdesk, tmp_path, start))
        return desks[-1]

    yield make
    for d in desks:
        d.close()


def test_due_time_on_the_calendar_and_the_acknowledgement_promises_it(office):
    desk = office(local(2026, 12, 18, 16, 30))  # Friday, half an hour before closing
    desk.ingest(mail(subject="Printer"))
    t = desk.ticket()
    # P3: 480 open minutes = 30 minutes on Friday, then Monday 09:00 + 7h30.
    assert t.due_first_response == local(2026, 12, 21, 16, 30).astimezone(timezone.utc)
    [ack] = desk.outbox("ack")
    assert "We will answer by Monday, December 21 at 4:30" in " ".join(ack.body.split())
    assert "closed" not in ack.body
    # On Saturday the acknowledgement says the office is closed.
    desk.clock.set(local(2026, 12, 19, 11, 0).astimezone(timezone.utc))
    desk.ingest(mail(subject="Scanner", sender="carl@customer.test"))
    [_, ack2] = desk.outbox("ack")
    assert "closed" in ack2.body and "December 21" in " ".join(ack2.body.split())


def test_warning_then_breach_escalates_once_and_tells_the_customer(office):
    desk = office(local(2026, 12, 18, 16, 30))
    desk.ingest(mail(subject="Printer"))
    assert desk.tick(local(2026, 12, 21, 14, 0)) == []  # nothing due yet
    # 20% of 480 minutes left = 96 minutes before 16:30: the group is warned, once.
    acts = desk.tick(local(2026, 12, 21, 15, 0))
    assert [a["action"] for a in acts] == ["warning"]
    [warning] = desk.outbox("warning")
    assert warning.to_addr == BOB and "First response" in warning.subject
    assert desk.tick(local(2026, 12, 21, 15, 5)) == []
    # Past due: tier 2, its group notified with the history, the customer told; once.
    acts = desk.tick(local(2026, 12, 21, 16, 31))
    assert "escalated" in [a["action"] for a in acts]
    t = desk.ticket()
    assert (t.tier, t.group, t.assignee) == (2, "tier2", None)
    [escalation] = desk.outbox("escalation")
    assert escalation.to_addr == TIA and "my printer does not print" in escalation.body
    updates = desk.outbox("update")
    assert [u.to_addr for u in updates] == ["alice@customer.test"] and "tier 2" in updates[0].body
    kinds = [e.kind for e in t.events]
    assert kinds.count("sla-breached") == 1 and kinds.count("sla-warning") == 1
    assert desk.tick(local(2026, 12, 21, 16, 40)) == []
    assert len(desk.outbox("escalation")) == 1


def test_updates_count_open_hours_from_the_last_mail_and_update_commands(office):
    desk = office(local(2026, 12, 21, 9, 0))  # Monday
    desk.ingest(mail(subject="Printer"))
    desk.command(1, "#priority P2")  # update every 240 open minutes: 13:00
    assert desk.ticket().due_next_update == local(2026, 12, 21, 13, 0).astimezone(timezone.utc)
    # An agent's reply at 09:30 is the first response, and the interval counts from it.
    desk.clock.set(local(2026, 12, 21, 9, 30).astimezone(timezone.utc))
    with writing(), desk.app.db.atomic():
        actions.reply(desk.ticket(), agent=agents.find(BOB), text="Looking at it.", now=desk.clock.now(),
                      env=desk.app.pipeline.env)
    t = desk.ticket()
    assert t.due_first_response is None and t.due_next_update == local(2026, 12, 21, 13, 30).astimezone(
        timezone.utc)
    assert desk.tick(local(2026, 12, 21, 13, 29)) == []
    acts = desk.tick(local(2026, 12, 21, 13, 31))
    assert [a["action"] for a in acts] == ["update"]
    [update] = desk.outbox("update")
    assert update.to_addr == "alice@customer.test" and "[#1]" in update.subject and "tier1" in update.body
    # The next counts from that mail in open hours: 3h29 to closing, 31 minutes on Tuesday.
    assert desk.ticket().due_next_update == local(2026, 12, 22, 9, 31).astimezone(timezone.utc)
    desk.command(1, "#update off")
    assert desk.ticket().due_next_update is None and desk.ticket().update_every == 0
    desk.command(1, "#update 2d")
    assert desk.ticket().update_every == 2880
    desk.command(1, "#update now")
    assert len(desk.outbox("update")) == 2
    # The same from the command line, recorded under the agent's name.
    res = desk.hd.cli("ticket", "set", "1", "--as", BOB, "--update", "off", "--json")
    assert res.exit_code == 0, res.output
    assert desk.ticket().update_every == 0
    change = [e for e in desk.ticket().events if e.kind == "update_every" and e.detail["to"] == 0][-1]
    assert change.actor == BOB
    res = desk.hd.cli("ticket", "set", "1", "--as", BOB, "--update", "soon")
    assert res.exit_code != 0 and "#update takes an interval" in res.output


def test_pending_pauses_the_clock_reminds_once_resolves_then_closes(office):
    desk = office(local(2026, 12, 21, 9, 0))
    desk.ingest(mail(subject="Printer"))
    before = desk.ticket().due_resolution
    desk.clock.set(local(2026, 12, 21, 10, 0).astimezone(timezone.utc))
    desk.command(1, "#status pending")
    assert desk.ticket().due_resolution is None  # paused
    assert desk.tick(local(2026, 12, 23, 10, 0)) == []
    acts = desk.tick(local(2026, 12, 24, 10, 1))  # three days waiting
    assert [a["action"] for a in acts] == ["reminder"]
    assert desk.tick(local(2026, 12, 24, 11, 0)) == []  # once
    acts = desk.tick(local(2026, 12, 28, 10, 1))  # four days more
    assert "autoresolved" in [a["action"] for a in acts]
    t = desk.ticket()
    assert t.status == "resolved" and t.resolved_at is not None
    [reminder] = desk.outbox("reminder")
    [resolution] = desk.outbox("resolution")
    assert "reply" in reminder.body.lower() and "7 days" in resolution.body
    assert [a["action"] for a in desk.tick(local(2027, 1, 4, 10, 2))] == ["closed"]
    assert desk.ticket().status == "closed"
    # The resolution clock moved by the paused time (a customer's reply would resume it).
    assert before is not None


def test_sla_explain_names_the_holidays_and_the_cli_ticks_dry_and_wet(office, helpdesk):
    desk = office(local(2026, 12, 24, 16, 0))  # Thursday before Christmas
    desk.ingest(mail(subject="Printer"))
    res = helpdesk.cli("sla", "explain", "1", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["policy"] == "default" and "Europe/Brussels" in data["calendar"]
    lines = " ".join(data["timers"]["resolution"]["lines"])
    assert "Christmas" in lines and "New Year" in lines
    text = helpdesk.cli("sla", "explain", "1").output
    assert "resolution:" in text and "Christmas" in text
    # `tick --dry-run` says what it would do and keeps nothing; `tick` does it.
    at = "2027-01-20T10:00:00+01:00"
    dry = json.loads(helpdesk.cli("tick", "--at", at, "--dry-run", "--json").output)
    assert dry["dry_run"] and {a["action"] for a in dry["actions"]} >= {"escalated"}
    assert desk.outbox("escalation") == []
    wet = json.loads(helpdesk.cli("tick", "--at", at, "--json").output)
    assert [a["action"] for a in wet["actions"]] == [a["action"] for a in dry["actions"]]
    assert len(desk.outbox("escalation")) == 1
    listed = json.loads(helpdesk.cli("ticket", "list", "--due", "--json").output)
    assert [t["number"] for t in listed] == [1] and listed[0]["due"]["resolution"]
    assert "(none)" in helpdesk.cli("ticket", "list", "--breached", "--at", "2026-12-24T16:00+01:00").output
    human = helpdesk.cli("ticket", "list", "--breached", "--at", at).output
    assert "#1" in human and "LATE" in human


def test_a_rules_sla_policy_and_a_queues_calendar_set_the_due_time(office, helpdesk, tmp_path):
    helpdesk.write_config(
        f'[agents]\nsecret_file = "{tmp_path / "secret"}"\n' + OFFICE + """
[calendars.always]
hours = "24/7"

[sla.policies.gold]
first_response = { P3 = 60 }
calendar = "always"

[queues.billing]
calendar = "always"
""", timezone="Europe/Brussels")
    helpdesk.rule_file("20-vip.yaml", """
        - name: vip
          when: {subject: {contains: VIP}}
          then: {sla: gold}
        - name: billing
          when: {subject: {contains: invoice}}
          then: {queue: billing}
    """)
    desk = office(local(2026, 12, 19, 11, 0))  # Saturday: the office is closed
    desk.ingest(mail(subject="VIP printer"))
    desk.ingest(mail(subject="An invoice", sender="carl@customer.test"))
    gold, billing = desk.ticket(1), desk.ticket(2)
    assert gold.sla_policy == "gold"
    assert gold.due_first_response == local(2026, 12, 19, 12, 0).astimezone(timezone.utc)  # 24/7, 60 min
    # The billing queue's calendar is 24/7 too, with [sla]'s 480 minutes for a P3.
    assert billing.due_first_response == local(2026, 12, 19, 19, 0).astimezone(timezone.utc)
    data = json.loads(helpdesk.cli("sla", "explain", "1", "--json").output)
    assert (data["policy"], data["policy_source"]) == ("gold", "set on the ticket")
    assert json.loads(helpdesk.cli("sla", "explain", "2", "--json").output)["calendar"].startswith("always")
