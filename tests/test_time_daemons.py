"""The timed side under downtime, races and reopening (issue 12), on both backends: one
catch-up pass after three days down sends one update per ticket and escalates once; two
`mailticket tick` processes racing over the same due tickets send each update once; a
customer's reply reopens a resolved ticket inside `reopen_days` and opens a linked new
ticket after it was closed; due times cross a DST change in wall-clock open hours; an
update goes once per interval and an agent's reply pushes the next one out.

The office calendar: Brussels, Monday to Friday 09:00-17:00, Belgian public holidays.
Default budgets (config.Sla): P2 first response 60, update 240, resolution 1440 open
minutes; P3 480, 1440, 4320.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from mails import mail

from mailticket import actions, agents, config, jobs, tickets
from mailticket.app import open_app
from mailticket.clock import FrozenClock
from mailticket.db import writing
from mailticket.ingest import store_and_process
from mailticket.models import Event, Outbox, Ticket
from mailticket.parsers import commands

BXL = ZoneInfo("Europe/Brussels")
BOB, TIA = "bob@agents.test", "tia@agents.test"  # tier 1, tier 2
OFFICE = """
[sla]
calendar = "office"
{sla}

[calendars.office]
timezone = "Europe/Brussels"
hours = {{ "mon-fri" = "09:00-17:00" }}
holidays = "BE"
"""


def local(*a) -> datetime:
    return datetime(*a, tzinfo=BXL)


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


def customer(i: int) -> str:
    """A customer address of their own per ticket: the automatic-mail limits are per address."""
    return f"Customer {i} <c{i}@customer.test>"


class Desk:
    """A helpdesk opened with a frozen clock: ingest, tick, act as an agent."""

    def __init__(self, helpdesk, tmp_path, start: datetime) -> None:
        self.hd, self.tmp = helpdesk, tmp_path
        self.clock = FrozenClock(start.astimezone(timezone.utc))
        self.app = open_app(config.load(helpdesk.config_path), clock=self.clock)
        self.n = 0

    def at(self, when: datetime) -> None:
        self.clock.set(when.astimezone(timezone.utc))

    def ingest(self, *raws: bytes, outcome: str = "created") -> None:
        paths = []
        for raw in raws:
            self.n += 1
            path = self.tmp / f"m{self.n}.eml"
            path.write_bytes(raw)
            paths.append(str(path))
        summary = store_and_process(self.app, tuple(paths), batch=100)
        assert summary.counts == {outcome: len(raws)}, summary

    def tick(self, at: datetime) -> list[dict]:
        self.at(at)
        with writing(), self.app.db.atomic():
            return jobs.tick(self.app.pipeline.env, self.clock.now()).actions

    def command(self, number: int, line: str, who: str = BOB) -> None:
        found, _ = commands.parse(line)
        with writing(), self.app.db.atomic():
            [outcome] = actions.apply(
                tickets.by_number(number),
                found,
                agent=agents.find(who),
                now=self.clock.now(),
                env=self.app.pipeline.env,
            )
        assert outcome.ok, outcome

    def reply(self, number: int, text: str = "Looking at it.", who: str = BOB) -> None:
        with writing(), self.app.db.atomic():
            actions.reply(
                self.ticket(number),
                agent=agents.find(who),
                text=text,
                now=self.clock.now(),
                env=self.app.pipeline.env,
            )

    def ticket(self, number: int = 1) -> Ticket:
        return Ticket.get_by_id(number)

    def outbox(self, kind: str, number: int | None = None) -> list[Outbox]:
        query = Outbox.select().where(Outbox.kind == kind)
        if number is not None:
            query = query.where(Outbox.ticket == number)
        return list(query.order_by(Outbox.id))

    def events(self, number: int, kind: str) -> list[Event]:
        return list(Event.select().where((Event.ticket == number) & (Event.kind == kind)).order_by(Event.id))

    def close(self) -> None:
        self.app.close()


@pytest.fixture
def office(helpdesk, tmp_path, monkeypatch):
    """make(start, sla=""): the office helpdesk (more `[sla]` keys in `sla`), agents Bob
    (tier1) and Tia (tier2), and a Desk on it with its clock at `start`."""
    monkeypatch.delenv("MAILTICKET_AGENT_SECRET", raising=False)
    (tmp_path / "secret").write_text("s3cret\n")
    desks = []

    def make(start: datetime, sla: str = "") -> Desk:
        helpdesk.write_config(
            f'[agents]\nsecret_file = "{tmp_path / "secret"}"\n' + OFFICE.format(sla=sla),
            timezone="Europe/Brussels",
        )
        helpdesk.rule_file(
            "10-all.yaml",
            """
            - name: everything to tier1
              then: {group: tier1}
        """,
        )
        for address, name, extra in (
            (BOB, "Bob", ["--group", "tier1"]),
            (TIA, "Tia", ["--group", "tier2", "--tier", "2"]),
        ):
            assert helpdesk.cli("agents", "add", address, "--name", name, *extra).exit_code == 0
        desks.append(Desk(helpdesk, tmp_path, start))
        return desks[-1]

    yield make
    for d in desks:
        d.close()


def test_one_pass_after_three_days_down_catches_up_once_per_ticket(office):
    monday = local(2026, 6, 8, 9, 0)
    desk = office(monday)
    desk.ingest(*(mail(subject=f"Problem {i}", sender=customer(i)) for i in range(1, 5)))
    # 1, 2: P2 answered at once: updates every 4 open hours (13:00, then Tuesday ...), the
    #       resolution warned Wednesday 11:12 and due Wednesday 17:00.
    # 3:    P3 unanswered: first response warned Monday 15:24 and due 17:00, update Wednesday 17:00.
    # 4:    P3 answered: only its update, Wednesday 17:00.
    for n in (1, 2):
        desk.command(n, "#priority P2")
    for n in (1, 2, 4):
        desk.reply(n)
    assert desk.ticket(1).due_next_update == local(2026, 6, 8, 13, 0).astimezone(timezone.utc)
    assert desk.ticket(1).due_resolution == local(2026, 6, 10, 17, 0).astimezone(timezone.utc)
    assert desk.ticket(3).due_first_response == local(2026, 6, 8, 17, 0).astimezone(timezone.utc)
    # Down from Monday 09:00 to Thursday 09:00: one pass.
    acts = desk.tick(monday.replace(day=11))
    by_ticket: dict[int, list[str]] = {}
    for a in acts:
        by_ticket.setdefault(a["ticket"], []).append(a["action"])
    # A breached ticket's customer hears once: the escalation notice is the update.
    assert sorted(by_ticket[1]) == sorted(by_ticket[2]) == ["escalated", "escalated"], acts
    assert sorted(by_ticket[3]) == ["escalated", "escalated"], acts
    assert by_ticket[4] == ["update"], acts
    for n in (1, 2, 3, 4):
        # One mail to the customer, not one per missed interval.
        assert len(desk.events(n, "update" if n == 4 else "escalated")) == 1, n
        assert desk.events(n, "sla-warning") == []  # past due when seen: breached, never warned
        t = desk.ticket(n)
        if n == 4:
            assert desk.outbox("escalation", n) == [] and len(desk.outbox("update", n)) == 1
            assert t.tier == 1
            continue
        # The breach escalates once: Tia (tier2) told, the customer told (that is their update).
        assert [o.to_addr for o in desk.outbox("escalation", n)] == [TIA], n
        assert len(desk.events(n, "sla-breached")) == 1 and len(desk.events(n, "escalated")) == 1
        assert (t.tier, t.group) == (2, "tier2")
        assert [o.to_addr for o in desk.outbox("update", n)] == [f"c{n}@customer.test"]
    assert [e.detail["timer"] for n in (1, 2, 3) for e in desk.events(n, "sla-breached")] == [
        "resolution",
        "resolution",
        "first_response",
    ]
    # The next update counts from the one just sent: Thursday 13:00 for P2.
    assert desk.ticket(1).due_next_update == local(2026, 6, 11, 13, 0).astimezone(timezone.utc)
    counts = {kind: len(desk.outbox(kind)) for kind in ("update", "escalation", "warning")}
    # A second pass at the same time, and one a minute later, send nothing more.
    assert desk.tick(monday.replace(day=11)) == []
    assert desk.tick(monday.replace(day=11, minute=1)) == []
    assert {kind: len(desk.outbox(kind)) for kind in counts} == counts


def _tick_process(cfg, at: str, limit: int = 200) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailticket.cli",
            "--config",
            str(cfg),
            "tick",
            "--at",
            at,
            "--json",
            "--limit",
            str(limit),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> list[dict]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)["actions"]


def test_two_tick_processes_racing_send_each_update_once(office, helpdesk, db_url):
    """Two passes at once, each taking at most half of the due tickets: on PostgreSQL each
    skips the rows the other holds (FOR UPDATE SKIP LOCKED), on SQLite they take turns
    (the writer lock); either way every due ticket gets one update, from one of them."""
    desk = office(local(2026, 6, 8, 9, 0), sla="update_interval = { P3 = 30 }")
    many = 50
    desk.ingest(*(mail(subject=f"Problem {i}", sender=customer(i)) for i in range(1, many + 1)))
    at = local(2026, 6, 8, 9, 31).isoformat()  # every update due (09:30), nothing else yet
    cfg = helpdesk.config_path
    procs = [_tick_process(cfg, at, limit=many // 2), _tick_process(cfg, at, limit=many // 2)]
    try:
        done = [_finish(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(len(acts) <= many // 2 for acts in done)
    updated = sorted(a["ticket"] for acts in done for a in acts if a["action"] == "update")
    assert updated == list(range(1, many + 1))  # every due ticket, each by one process
    assert sorted(o.ticket for o in desk.outbox("update")) == list(range(1, many + 1))
    assert desk.outbox("escalation") == [] and desk.outbox("warning") == []
    # A third, later, finds the next updates not yet due.
    assert _finish(_tick_process(cfg, local(2026, 6, 8, 9, 40).isoformat())) == []


def test_a_reply_reopens_a_resolved_ticket_and_after_closing_opens_a_linked_one(office):
    monday = local(2026, 6, 8, 9, 0)
    desk = office(monday)
    desk.ingest(mail(subject="Printer", sender=customer(1)), mail(subject="Scanner", sender=customer(2)))
    desk.at(local(2026, 6, 8, 10, 0))
    desk.command(1, "#status resolved")
    desk.command(2, "#status resolved")
    assert desk.ticket(1).status == desk.ticket(2).status == "resolved"
    notified = len(desk.outbox("notification"))
    # Two days later, inside reopen_days (7): the customer's reply reopens #1 and Bob hears of it.
    desk.at(local(2026, 6, 10, 10, 0))
    desk.ingest(
        mail(subject="Re: [#1] Printer", sender=customer(1), body="It jams again.\n"), outcome="appended"
    )
    assert desk.ticket(1).status == "open"
    [note] = desk.outbox("notification")[notified:]
    assert note.to_addr == BOB and note.ticket == 1 and "It jams again." in note.body
    # #2, untouched: a tick on the eighth day closes it (a tick on the sixth does not).
    assert [a for a in desk.tick(local(2026, 6, 14, 10, 0)) if a["ticket"] == 2] == []
    assert [a["action"] for a in desk.tick(local(2026, 6, 16, 10, 0)) if a["ticket"] == 2] == ["closed"]
    assert desk.ticket(2).status == "closed" and desk.ticket(1).status == "open"  # #1 was reopened
    # Its customer writes again with its token: a new ticket linked to it; #2 stays closed.
    desk.ingest(mail(subject="Re: [#2] Scanner", sender=customer(2), body="Broken again.\n"))
    new = desk.ticket(3)
    assert (new.linked_to, new.requester, new.status) == (2, "c2@customer.test", "new")
    assert desk.ticket(2).status == "closed"
    assert [e.detail["to"] for e in desk.events(3, "linked")] == [2]


def test_open_hours_are_wall_clock_across_the_dst_change(office):
    # Friday 27 March 2026 16:00 CET (UTC+1); clocks go to CEST (UTC+2) on Sunday 29 March.
    desk = office(local(2026, 3, 27, 16, 0))
    desk.ingest(mail(subject="Printer"))
    t = desk.ticket()
    # P3, 480 open minutes: one hour on Friday, seven on Monday 30 March: 16:00 CEST, 14:00 UTC
    # (counting the hours in Friday's offset would say 15:00 UTC).
    assert t.due_first_response == local(2026, 3, 30, 16, 0).astimezone(timezone.utc) == utc(2026, 3, 30, 14)
    [ack] = desk.outbox("ack")
    assert "Monday, March 30 at 4:00" in " ".join(ack.body.split())
    # The warning with 20% left (96 minutes): 14:24 CEST = 12:24 UTC; the breach at 14:00 UTC.
    assert desk.tick(utc(2026, 3, 30, 12, 23)) == []
    assert [a["action"] for a in desk.tick(utc(2026, 3, 30, 12, 25))] == ["warning"]
    assert desk.tick(utc(2026, 3, 30, 13, 59)) == []
    assert "escalated" in [a["action"] for a in desk.tick(utc(2026, 3, 30, 14, 1))]


def test_an_update_once_per_interval_and_an_agent_reply_pushes_the_next_out(office):
    desk = office(local(2026, 6, 8, 9, 0))  # Monday
    desk.ingest(mail(subject="Printer"))
    desk.command(1, "#priority P2")  # an update every 240 open minutes
    desk.at(local(2026, 6, 8, 9, 30))
    desk.reply(1)
    assert desk.tick(local(2026, 6, 8, 13, 29)) == []
    assert [a["action"] for a in desk.tick(local(2026, 6, 8, 13, 31))] == ["update"]
    # The next counts from that update: 3h29 to closing, then 31 minutes on Tuesday.
    assert desk.ticket().due_next_update == local(2026, 6, 9, 9, 31).astimezone(timezone.utc)
    for when in (local(2026, 6, 8, 13, 32), local(2026, 6, 8, 16, 59), local(2026, 6, 9, 9, 30)):
        assert desk.tick(when) == [], when
    assert len(desk.outbox("update")) == 1
    # Bob answers at 09:00 on Tuesday, before the next update was due: it moves to 13:00.
    desk.at(local(2026, 6, 9, 9, 0))
    desk.reply(1, "Still on it.")
    assert desk.ticket().due_next_update == local(2026, 6, 9, 13, 0).astimezone(timezone.utc)
    assert desk.tick(local(2026, 6, 9, 9, 32)) == []
    assert desk.tick(local(2026, 6, 9, 12, 59)) == []
    assert [a["action"] for a in desk.tick(local(2026, 6, 9, 13, 1))] == ["update"]
    assert len(desk.outbox("update")) == 2
