"""`mailticket report` over a known history built with a frozen clock, on both backends: the
exact figures in JSON, CSV and the terminal table.

The office calendar (Brussels, Monday to Friday 09:00-17:00) gives the business times.
Two weeks, March 2026 (no Belgian holiday), four tickets:

  #1 Mon 2 09:00 alice "Printer": answered 10:00, resolved Tue 09:00; rated 5, good
  #2 Mon 2 12:00 bob "Printer": answered 16:00 and Tue 10:00, resolved Tue 11:00; rated 2
  #3 Wed 4 09:00 alice "VPN": answered 09:30, resolved 10:00, reopened Thu 09:00, resolved
     Thu 10:00; surveyed, not rated
  #4 Mon 9 09:00 carl "Scanner": never answered; its first response breached at 17:00,
     escalated by the system to tier 2; open at the end of the period
"""

from __future__ import annotations

import json
from datetime import timezone

import pytest
from mails import mail
from test_time import BOB, Desk, local, office  # noqa: F401 - the fixture, and its helpers

from mailticket import actions, agents, tickets
from mailticket.cli.report import to_csv
from mailticket.db import writing
from mailticket.report import day_bounds

PERIOD = ["--since", "2026-03-02", "--until", "2026-03-15", "--by", "tier"]


def at(desk: Desk, *a) -> None:
    desk.clock.set(local(*a).astimezone(timezone.utc))


def reply(desk: Desk, number: int) -> None:
    with writing(), desk.app.db.atomic():
        actions.reply(
            desk.ticket(number), agent=agents.find(BOB), text="On it.", now=desk.clock.now(),
            env=desk.app.pipeline.env,
        )


def feedback(desk: Desk, number: int, rating: dict | None) -> None:
    t = desk.ticket(number)
    events = [tickets.event(t, "system", "survey", {"to": t.requester, "message_id": f"<s{number}@x>"})]
    if rating:
        events.append(tickets.event(t, t.requester, "rating", {"scale": "1-5", "via": "link", **rating}))
    with writing(), desk.app.db.atomic():
        tickets.save_events(events, desk.clock.now())


@pytest.fixture
def history(office):  # noqa: F811 - the fixture imported above
    desk: Desk = office(local(2026, 3, 2, 9, 0))
    desk.ingest(mail(subject="Printer"))
    at(desk, 2026, 3, 2, 10, 0)
    reply(desk, 1)
    at(desk, 2026, 3, 2, 12, 0)
    desk.ingest(mail(subject="Printer", sender="bob@other.test"))
    at(desk, 2026, 3, 2, 16, 0)
    reply(desk, 2)
    at(desk, 2026, 3, 3, 9, 0)
    desk.command(1, "#status resolved")
    at(desk, 2026, 3, 3, 10, 0)
    reply(desk, 2)
    at(desk, 2026, 3, 3, 11, 0)
    desk.command(2, "#status resolved")
    at(desk, 2026, 3, 3, 12, 0)
    feedback(desk, 1, {"score": 5, "good": True, "comment": "thanks"})
    feedback(desk, 2, {"score": 2, "good": False, "comment": "slow"})
    at(desk, 2026, 3, 4, 9, 0)
    desk.ingest(mail(subject="VPN"))
    at(desk, 2026, 3, 4, 9, 30)
    reply(desk, 3)
    at(desk, 2026, 3, 4, 10, 0)
    desk.command(3, "#status resolved")
    at(desk, 2026, 3, 5, 9, 0)
    desk.command(3, "#status open")
    at(desk, 2026, 3, 5, 10, 0)
    desk.command(3, "#status resolved")
    feedback(desk, 3, None)
    at(desk, 2026, 3, 9, 9, 0)
    desk.ingest(mail(subject="Scanner", sender="carl@third.test"))
    acts = desk.tick(local(2026, 3, 9, 17, 1))
    assert {"ticket": 4, "action": "escalated"}.items() <= next(a for a in acts if a["ticket"] == 4).items()
    at(desk, 2026, 3, 20, 9, 0)  # the report is run later: nothing after the period counts
    return desk


H = 3600
TIER1 = {
    "tickets": 3,
    "first_response": {"median": 1 * H, "p90": 4 * H, "business_median": 1 * H, "business_p90": 4 * H},
    "resolution": {"median": 24 * H, "p90": 25 * H, "business_median": 8 * H, "business_p90": 9 * H},
    "resolved": 3,
    "resolution_rate": 1.0,
    "first_contact_resolution_rate": 0.3333,
    "reopen_rate": 0.3333,
    "backlog": {"open": 0, "age_median": None},
    "sla_compliance": {"first_response": 1.0, "resolution": 1.0},
    "escalations": {},
    "csat": {"surveys": 3, "responses": 2, "response_rate": 0.6667, "mean": 3.5, "good_share": 0.5},
}
NONE4 = {"median": None, "p90": None, "business_median": None, "business_p90": None}
AGE = (local(2026, 3, 16) - local(2026, 3, 9, 9, 0)).total_seconds()  # to the end of Sunday 15
TIER2 = {
    "tickets": 1,
    "first_response": NONE4,
    "resolution": NONE4,
    "resolved": 0,
    "resolution_rate": 0.0,
    "first_contact_resolution_rate": None,
    "reopen_rate": 0.0,
    "backlog": {"open": 1, "age_median": AGE},
    "sla_compliance": {"first_response": 0.0, "resolution": 1.0},
    "escalations": {"2": 1},
    "csat": {"surveys": 0, "responses": 0, "response_rate": None, "mean": None, "good_share": None},
}
TOTAL = {
    **TIER1,
    "tickets": 4,
    "resolution_rate": 0.75,
    "reopen_rate": 0.25,
    "backlog": {"open": 1, "age_median": AGE},
    "sla_compliance": {"first_response": 0.75, "resolution": 1.0},
    "escalations": {"2": 1},
}


def test_report_json_has_the_exact_figures(history):
    res = history.hd.cli("report", *PERIOD, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    since, until = day_bounds(local(2026, 3, 2).date(), local(2026, 3, 15).date(), "Europe/Brussels")
    assert data["period"] == {
        "since": since.isoformat(), "until": until.isoformat(), "by": "tier", "timezone": "Europe/Brussels"
    }
    assert until == local(2026, 3, 16).astimezone(timezone.utc)
    assert data["total"] == TOTAL
    assert data["groups"] == {"1": TIER1, "2": TIER2}
    assert data["low_rated"] == [{"ticket": 2, "score": 2, "comment": "slow"}]
    assert data["recurring_subjects"] == [{"subject": "printer", "tickets": 2}]
    assert data["top_requesters"] == [
        {"requester": "alice@customer.test", "tickets": 2},
        {"requester": "bob@other.test", "tickets": 1},
        {"requester": "carl@third.test", "tickets": 1},
    ]
    assert data["top_units"] == []
    assert data["series"] == {
        "days": [
            {"day": "2026-03-02", "tickets": 2},
            {"day": "2026-03-04", "tickets": 1},
            {"day": "2026-03-09", "tickets": 1},
        ],
        "weeks": [
            {"week": "2026-W10", "ratings": 2, "good": 1, "breaches": 0},
            {"week": "2026-W11", "ratings": 0, "good": 0, "breaches": 1},
        ],
    }


def test_a_period_before_the_history_holds_nothing_and_by_channel_groups_email(history):
    res = history.hd.cli("report", "--since", "2026-02-01", "--until", "2026-02-28", "--json")
    data = json.loads(res.output)
    assert data["total"]["tickets"] == 0 and data["groups"] == {} and data["total"]["resolution_rate"] is None
    # The first week alone: #4 not yet created, #3 reopened and resolved within it.
    week = ["--since", "2026-03-02", "--until", "2026-03-08"]
    res = history.hd.cli("report", *week, "--by", "channel", "--json")
    data = json.loads(res.output)
    assert list(data["groups"]) == ["email"]
    assert data["total"]["tickets"] == 3 and data["total"]["backlog"] == {"open": 0, "age_median": None}


def test_report_csv_one_row_per_group(history):
    res = history.hd.cli("report", *PERIOD, "--csv")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("group,tickets,first_response.median,first_response.p90,")
    assert lines[1:] == [
        "total,4,3600.0,14400.0,3600.0,14400.0,86400.0,90000.0,28800.0,32400.0,3,0.75,0.3333,0.25,1,"
        f"{AGE},0.75,1.0,1,,3,2,0.6667,3.5,0.5",
        "1,3,3600.0,14400.0,3600.0,14400.0,86400.0,90000.0,28800.0,32400.0,3,1.0,0.3333,0.3333,0,,"
        "1.0,1.0,,,3,2,0.6667,3.5,0.5",
        f"2,1,,,,,,,,,0,0.0,,0.0,1,{AGE},0.0,1.0,1,,0,0,,,",
    ]
    assert to_csv(json.loads(history.hd.cli("report", *PERIOD, "--json").output)) == res.output


def test_report_terminal_table(history):
    res = history.hd.cli("report", *PERIOD)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "Tickets created 2026-03-02 to 2026-03-15, by tier"
    rows = {line.split()[0]: line.split() for line in lines[4:7]}
    assert rows["total"] == [
        "total", "4", "1h00m/4h00m", "1h00m/4h00m", "1d00h/1d01h", "8h00m/9h00m", "75%", "33%", "25%",
        "1", "(6d15h)", "75%/100%", "t2:1", "2/3", "3.5", "50%",
    ]
    assert rows["1"] == [
        "1", "3", "1h00m/4h00m", "1h00m/4h00m", "1d00h/1d01h", "8h00m/9h00m", "100%", "33%", "33%",
        "0", "(-)", "100%/100%", "-", "2/3", "3.5", "50%",
    ]
    assert rows["2"] == ["2", "1", "-/-", "-/-", "-/-", "-/-", "0%", "-", "0%", "1", "(6d15h)", "0%/100%",
                         "t2:1", "0/0", "-", "-"]
    text = res.output
    assert "Low ratings:\n  #2 2: slow" in text
    assert "Recurring subjects:\n      2  printer" in text
    assert "Top requesters:\n      2  alice@customer.test" in text


def test_report_rejects_a_period_backwards(history):
    res = history.hd.cli("report", "--since", "2026-03-10", "--until", "2026-03-01")
    assert res.exit_code != 0 and "is after --until" in res.output
