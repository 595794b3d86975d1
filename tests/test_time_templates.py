"""The timed side's mail templates (issue 12) in English, French and Dutch, through notify.Templates.

Customer-facing: `update`, `reminder`, `autoresolve`, `resolution`, `escalated`; agent-facing:
`warning`, `escalation`; and the acknowledgement's due time and closed-office sentence.  Every
template renders with StrictUndefined from the context the scheduler passes, keeps the token in
its subject and the signature at its end; the values given appear, the optional parts vanish when
empty (no stray blank lines), and French and Dutch are not English.
"""

from __future__ import annotations

import re
from datetime import datetime
from types import SimpleNamespace

import pytest

from mailticket.notify import Rendered, Templates

LANGS = ("en", "fr", "nl")
TOKEN = "[#42]"
HELPDESK = "Acme Support"
MARKER = "## Please reply above this line ##"
NOTE = "support+note-42-sam-x1y2@helpdesk.test"
DUE = "Monday 21 December at 10:00 CET"


def a_ticket(**changes) -> SimpleNamespace:
    fields = dict(
        number=42,
        subject="Printer on the third floor jams",
        status="open",
        priority="P2",
        tier=2,
        queue="it-support",
        assignee="sam@agents.test",
        group="Hardware",
        requester="anna@example.org",
        requester_name="Anna Peeters",
        fields={"site": "Gent"},
    )
    fields.update(changes)
    return SimpleNamespace(**fields)


AGENT = SimpleNamespace(name="Sam Jansen", address="sam@agents.test")


def customer(**extra) -> dict:
    ticket = a_ticket()
    ctx = dict(token=TOKEN, subject=ticket.subject, name="Anna", helpdesk=HELPDESK, ticket=ticket)
    return {**ctx, **extra}


def agent_side(**extra) -> dict:
    return dict(token=TOKEN, ticket=a_ticket(), helpdesk=HELPDESK, agent=AGENT, marker=MARKER, **extra)


def warning_ctx(**changes) -> dict:
    ctx = agent_side(timer="first_response", due=DUE, left="25 minutes", breached=False, note_address=NOTE)
    ctx.update(changes)
    return ctx


def escalation_ctx(**changes) -> dict:
    ctx = agent_side(
        why="escalated",
        who="system",
        rules="vip-customers",
        text="The printer jams on every second page.",
        history=[
            SimpleNamespace(
                at=datetime(2026, 1, 5, 9, 30),
                who="Anna Peeters",
                kind="customer",
                verdict="",
                text="Still jamming this morning.",
            )
        ],
        previous=[
            SimpleNamespace(
                number=7,
                subject="Toner empty",
                status="closed",
                resolved_at=datetime(2025, 12, 1),
                why="same requester",
            )
        ],
        note_address=NOTE,
        reason="#escalate by Bob",
        tier=2,
    )
    ctx.update(changes)
    return ctx


# The fullest context of each new kind: every optional part filled in.
FULL = {
    "update": lambda: customer(
        status="open",
        holder="Sam Jansen",
        tier=2,
        next_update=DUE,
        text="We have ordered a new fuser unit.",
    ),
    "reminder": lambda: customer(days=3, resolve_on="Friday 25 December at 10:00 CET"),
    "autoresolve": lambda: customer(days=7, reopen_days=14),
    "resolution": lambda: customer(
        text="The fuser unit was replaced; printing works again.", agent_name="Sam Jansen", reopen_days=14
    ),
    "escalated": lambda: customer(tier=2, group="Hardware specialists"),
    "warning": warning_ctx,
    "escalation": escalation_ctx,
}


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates()


def has_number(text: str, number: int) -> bool:
    return re.search(rf"\b{number}\b", text) is not None


def lines(rendered: Rendered) -> set[str]:
    return set(rendered.body.splitlines())


def render(templates: Templates, kind: str, lang: str, ctx: dict) -> Rendered:
    rendered = templates.render(kind, lang, "en", **ctx)
    assert TOKEN in rendered.subject
    assert rendered.body.endswith(f"\n-- \n{HELPDESK}\n")
    assert "\n\n\n" not in rendered.body, rendered.body  # an empty optional part leaves no gap
    assert "{{" not in rendered.body and "{%" not in rendered.body
    assert "<html" not in rendered.body.lower()
    return rendered


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("kind", sorted(FULL))
def test_every_new_template_exists_and_renders(templates, kind, lang):
    assert f"{kind}.{lang}.txt.j2" in templates.names()
    render(templates, kind, lang, FULL[kind]())


@pytest.mark.parametrize("lang", ("fr", "nl"))
@pytest.mark.parametrize("kind", sorted(FULL))
def test_french_and_dutch_are_not_english(templates, kind, lang):
    en = render(templates, kind, "en", FULL[kind]())
    other = render(templates, kind, lang, FULL[kind]())
    assert other.subject != en.subject
    assert other.body != en.body


@pytest.mark.parametrize("lang", LANGS)
def test_update_says_where_the_ticket_stands(templates, lang):
    full = render(templates, "update", lang, FULL["update"]())
    for value in ("Sam Jansen", "We have ordered a new fuser unit.", DUE, "Anna"):
        assert value in full.body
    assert "Printer on the third floor jams" in full.subject

    bare = customer(status="open", holder="", tier=1, next_update="", text="", name="")
    empty = render(templates, "update", lang, bare)
    for value in ("Sam Jansen", "fuser", DUE, "Anna"):
        assert value not in empty.body
    assert TOKEN in empty.body  # the reply hint keeps the token
    filled = render(
        templates, "update", lang, dict(bare, next_update=DUE, text="We have ordered a new fuser.")
    )
    assert lines(empty) < lines(filled)

    by_status = {
        status: render(templates, "update", lang, dict(bare, status=status)).body
        for status in ("open", "pending", "on-hold")
    }
    assert len(set(by_status.values())) == 3  # each status is said in its own words
    senior = render(templates, "update", lang, dict(bare, tier=2)).body
    assert senior != by_status["open"]  # tier 2 and up: a specialist team has it
    assert render(templates, "update", lang, dict(bare, tier=None)).body == by_status["open"]


@pytest.mark.parametrize("lang", LANGS)
def test_reminder_says_how_long_and_when_it_closes(templates, lang):
    full = render(templates, "reminder", lang, FULL["reminder"]())
    assert has_number(full.body, 3) and "Friday 25 December at 10:00 CET" in full.body
    plain = render(templates, "reminder", lang, customer(days=1, resolve_on=""))
    assert has_number(plain.body, 1) and "25 December" not in plain.body
    dated = render(
        templates, "reminder", lang, customer(days=1, resolve_on="Friday 25 December at 10:00 CET")
    )
    assert lines(plain) < lines(dated)  # without a date, its sentence is gone, nothing else changes


@pytest.mark.parametrize("lang", LANGS)
def test_autoresolve_says_how_to_reopen(templates, lang):
    body = render(templates, "autoresolve", lang, FULL["autoresolve"]()).body
    assert has_number(body, 7) and has_number(body, 14)


@pytest.mark.parametrize("lang", LANGS)
def test_resolution_shows_the_agents_text(templates, lang):
    full = render(templates, "resolution", lang, FULL["resolution"]())
    assert "The fuser unit was replaced; printing works again." in full.body
    assert "Sam Jansen" in full.body and has_number(full.body, 14)
    bare = render(templates, "resolution", lang, customer(text="", agent_name="", reopen_days=14))
    assert "fuser" not in bare.body and "Sam Jansen" not in bare.body and has_number(bare.body, 14)
    with_text = render(
        templates, "resolution", lang, customer(text="Replaced.", agent_name="", reopen_days=14)
    )
    assert lines(bare) < lines(with_text)


@pytest.mark.parametrize("lang", LANGS)
def test_escalated_names_the_tier_and_team(templates, lang):
    full = render(templates, "escalated", lang, FULL["escalated"]())
    assert has_number(full.body, 2) and "Hardware specialists" in full.body
    bare = render(templates, "escalated", lang, customer(tier=3, group=""))
    assert has_number(bare.body, 3) and "Hardware specialists" not in bare.body


@pytest.mark.parametrize("lang", LANGS)
def test_warning_shows_the_due_time_and_the_ticket(templates, lang):
    soon = render(templates, "warning", lang, warning_ctx())
    assert soon.body.splitlines()[0] == MARKER
    assert "25 minutes" in soon.subject and "Printer on the third floor jams" in soon.subject
    shown = (DUE, "25 minutes", "Anna Peeters <anna@example.org>", "P2", "it-support", AGENT.address, NOTE)
    for value in shown:
        assert value in soon.body

    late = render(templates, "warning", lang, warning_ctx(timer="resolution", left="", breached=True))
    assert DUE in late.body and "25 minutes" not in late.body + late.subject
    assert late.subject != soon.subject

    unassigned = render(templates, "warning", lang, warning_ctx(ticket=a_ticket(assignee=None, group=None)))
    assert "sam@agents.test" not in unassigned.body and "Hardware" not in unassigned.body

    by_timer = {
        timer: render(templates, "warning", lang, warning_ctx(timer=timer, left="")).body
        for timer in ("first_response", "update", "resolution")
    }
    assert len(set(by_timer.values())) == 3
    assert not any("first_response" in body for body in by_timer.values())  # said in words


@pytest.mark.parametrize("lang", LANGS)
def test_escalation_is_a_notification_with_a_reason(templates, lang):
    full = render(templates, "escalation", lang, escalation_ctx())
    assert full.body.splitlines()[0] == MARKER
    assert has_number(full.subject, 2) and "Printer on the third floor jams" in full.subject
    for value in (
        "#escalate by Bob",
        "vip-customers",
        "The printer jams on every second page.",
        "Still jamming this morning.",
        "#7 Toner empty",
        "Anna Peeters <anna@example.org>",
        NOTE,
    ):
        assert value in full.body

    bare = render(templates, "escalation", lang, escalation_ctx(rules="", text="", history=[], previous=[]))
    for value in ("vip-customers", "every second page", "Still jamming", "Toner empty"):
        assert value not in bare.body
    assert "#escalate by Bob" in bare.body and NOTE in bare.body

    # The scheduler passes the reason as the text too: said once, not twice.
    reason = "resolution due Monday 21 December at 10:00 CET was breached"
    once = render(templates, "escalation", lang, escalation_ctx(reason=reason, text=reason))
    assert once.body.count(reason) == 1


@pytest.mark.parametrize("lang", LANGS)
def test_ack_promises_the_due_time_and_says_when_closed(templates, lang):
    ctx = customer()
    before = templates.render("ack", lang, "en", **ctx)  # a caller that passes neither key
    assert render(templates, "ack", lang, dict(ctx, due="", open_now=True)) == before

    promised = render(templates, "ack", lang, dict(ctx, due=DUE, open_now=True))
    assert DUE in promised.body and promised.body != before.body
    assert promised.subject == before.subject

    closed = render(templates, "ack", lang, dict(ctx, due=DUE, open_now=False))
    assert DUE in closed.body
    extra = set(closed.body.splitlines()) - set(promised.body.splitlines())
    assert len(extra) == 1  # one sentence: the office is closed now

    closed_no_due = render(templates, "ack", lang, dict(ctx, due="", open_now=False))
    assert extra <= set(closed_no_due.body.splitlines())
