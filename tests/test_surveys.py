"""Satisfaction surveys by email (surveys.py, the pipeline's `rating` step), on both backends
with a frozen clock.

An agent resolves Alice's ticket; she gets a survey in her language with one signed
`mailto:` link per score.  She rates by a link (through the real SMTP listener) or by a
plain reply ("5", "★★★★", "great", "très bien", "slecht", "sehr gut"); the rating is an
event, she is thanked, nothing else is sent.  A forged or altered link rates nothing; a
second rating replaces the first; a low rating tells the assignee and the lead, and can
reopen the ticket; one survey per customer per period, none for a merged ticket.
"""

from __future__ import annotations

import dataclasses
import smtplib
from datetime import datetime, timezone
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from mails import mail

from mailticket import actions, agents, auth, config, jobs, smtp, surveys, tickets
from mailticket.app import open_app
from mailticket.clock import FrozenClock
from mailticket.db import writing
from mailticket.ingest import store_and_process
from mailticket.models import Event, Outbox, Ticket
from mailticket.parsers import commands

SECRET = b"s3cret-for-surveys"
HD = "support@helpdesk.test"
ALICE = "alice@customer.test"
BOB, LENA, GINA = "bob@agents.test", "lena@agents.test", "gina@agents.test"
START = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


class Desk:
    """A helpdesk opened with a frozen clock: mail in, an agent resolves, the survey out."""

    def __init__(self, helpdesk, tmp_path) -> None:
        self.hd, self.tmp, self.n = helpdesk, tmp_path, 0
        self.clock = FrozenClock(START)
        self.app = open_app(config.load(helpdesk.config_path), clock=self.clock)
        self.env = self.app.pipeline.env

    def ingest(self, raw: bytes) -> dict:
        self.n += 1
        path = self.tmp / f"m{self.n}.eml"
        path.write_bytes(raw)
        results = []
        store_and_process(self.app, (str(path),), batch=10, on_result=results.append)
        [result] = results
        return result.as_dict()

    def resolve(self, number: int = 1) -> list[dict]:
        """Bob resolves the ticket (`#status resolved`, which asks for the rating); the
        survey's events of that, if one went out."""
        now = self.clock.now()
        found, _ = commands.parse("#status resolved")
        before = len(self.events("survey", number))
        with writing(), self.app.db.atomic():
            t = tickets.by_number(number)
            [outcome] = actions.apply(t, found, agent=agents.find(BOB), now=now, env=self.env)
            assert outcome.ok, outcome
        return [{"kind": e.kind, "detail": e.detail} for e in self.events("survey", number)[before:]]

    def outbox(self, kind: str, to: str = ALICE) -> list[Outbox]:
        query = Outbox.select().where((Outbox.kind == kind) & (Outbox.to_addr == to)).order_by(Outbox.id)
        return list(query)

    def events(self, kind: str, number: int = 1) -> list[Event]:
        query = Event.select().where((Event.ticket == number) & (Event.kind == kind)).order_by(Event.id)
        return list(query)

    def ticket(self, number: int = 1) -> Ticket:
        return Ticket.get_by_id(number)

    def links(self, number: int = 1) -> list[tuple[int, str, str, str]]:
        """(score, address, subject, body) of each link of the ticket's newest survey."""
        [survey] = [r for r in self.outbox("survey") if r.ticket == number][-1:]
        out = []
        for line in survey.body.splitlines():
            if line.startswith("<mailto:"):
                url = urlsplit(line.strip("<>"))
                query = parse_qs(url.query)
                rated = auth.verify_survey([url.path], secret=SECRET, helpdesk_address=HD)
                assert rated is not None and rated.valid and rated.ticket == number, line
                out.append((rated.score, url.path, query["subject"][0], query["body"][0]))
        return out

    def close(self) -> None:
        self.app.close()


@pytest.fixture
def make(helpdesk, tmp_path, monkeypatch):
    """make(surveys_toml="") -> a Desk with agents Bob (general), Lena (lead), Gina
    (billing-lead) and ticket #1 from Alice, assigned to Bob."""
    monkeypatch.delenv("MAILTICKET_AGENT_SECRET", raising=False)
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    desks = []

    def start(surveys_toml: str = "") -> Desk:
        helpdesk.write_config(
            f'[agents]\nsecret_file = "{tmp_path / "secret"}"\n\n[surveys]\n{surveys_toml}\n',
            languages=["en", "fr", "nl", "de"],
        )
        for address, name, group in (
            (BOB, "Bob", "general"),
            (LENA, "Lena", "lead"),
            (GINA, "Gina", "billing-lead"),
        ):
            assert helpdesk.cli("agents", "add", address, "--name", name, "--group", group).exit_code == 0
        helpdesk.rule_file("10-bob.yaml", "- name: all to bob\n  then: {assignee: bob@agents.test}\n")
        desk = Desk(helpdesk, tmp_path)
        desks.append(desk)
        assert desk.ingest(mail())["outcome"] == "created"
        return desk

    yield start
    for d in desks:
        d.close()


def language(desk: Desk, lang: str, number: int = 1) -> None:
    with writing(), desk.app.db.atomic():
        Ticket.update(language=lang).where(Ticket.number == number).execute()


# --- the survey ----------------------------------------------------------------------------

PROMPTS = {
    "en": ("Rating 4 for [#1] Printer is broken", "Anything to add? Write it here.", "How did we do?"),
    "fr": ("Note 4 pour [#1] Printer is broken", "Un commentaire ? Écrivez-le ici.", "Votre avis"),
    "nl": (
        "Beoordeling 4 voor [#1] Printer is broken",
        "Nog iets toe te voegen? Schrijf het hier.",
        "Hoe hebben",
    ),
    "de": ("Bewertung 4 für [#1] Printer is broken", "Möchten Sie etwas hinzufügen?", "Wie zufrieden"),
}


@pytest.mark.parametrize("lang", ["en", "fr", "nl", "de"])
def test_resolving_sends_a_survey_with_one_signed_link_per_score_in_the_customers_language(make, lang):
    desk = make()
    language(desk, lang)
    events = desk.resolve()
    assert [e["kind"] for e in events] == ["survey"]
    [survey] = desk.outbox("survey")
    subject, body, title = PROMPTS[lang]
    assert title in survey.subject and "[#1]" in survey.subject
    assert survey.headers["Auto-Submitted"] == "auto-replied" and survey.automatic
    links = desk.links()
    assert [score for score, *_ in links] == [5, 4, 3, 2, 1]
    assert len({address for _, address, _, _ in links}) == 5
    [(_, address, prefilled, text)] = [link for link in links if link[0] == 4]
    assert address.startswith("support+s.1.4.") and address.endswith("@helpdesk.test")
    assert prefilled == subject and text.startswith(body)
    [event] = desk.events("survey")
    assert event.detail["to"] == ALICE and event.detail["message_id"] == survey.message_id
    assert len(desk.outbox("resolution")) == 1  # the resolution's mail goes as before


def test_the_good_bad_scale_has_two_links(make):
    desk = make('scale = "good-bad"')
    language(desk, "nl")
    desk.resolve()
    links = desk.links()
    assert [(score, subject) for score, _, subject, _ in links] == [
        (5, "Beoordeling goed voor [#1] Printer is broken"),
        (1, "Beoordeling slecht voor [#1] Printer is broken"),
    ]


def test_no_survey_when_turned_off(make):
    desk = make("enabled = false")
    assert desk.resolve() == [] and desk.outbox("survey") == []


# --- rating by link, through the real SMTP listener ----------------------------------------


def test_a_rating_by_link_through_the_smtp_listener(make):
    desk = make()
    desk.resolve()
    [(score, address, subject, body)] = [link for link in desk.links() if link[0] == 4]
    acks = len(desk.outbox("ack"))
    cfg = dataclasses.replace(
        desk.app.config, smtp=dataclasses.replace(desk.app.config.smtp, listen="127.0.0.1:0")
    )
    desk.clock.advance(minutes=5)
    listener = smtp.start(cfg, desk.clock)
    try:
        raw = mail(to=address, subject=subject, body=f"{body}\nThe printer works again, thanks!\n")
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as client:
            client.sendmail(ALICE, [address], raw)
    finally:
        listener.stop()
    [result] = desk.app.worker.run_pending()
    assert (result.outcome, result.ticket) == ("rating", 1), result
    [rating] = desk.events("rating")
    assert rating.actor == ALICE
    assert rating.detail == {
        "score": 4,
        "scale": "1-5",
        "good": True,
        "comment": "The printer works again, thanks!",
        "via": "link",
        "replaces": None,
    }
    [thanks] = [r for r in desk.outbox("survey") if "Thank you" in r.subject]
    assert thanks.headers["In-Reply-To"] == tickets.last_customer_message_id(desk.ticket())
    assert len(desk.outbox("ack")) == acks  # no acknowledgement
    assert notified(desk) == []  # a good rating tells no agent
    t = desk.ticket()
    assert t.status == "resolved"  # a rating is not a reply that reopens
    [stored] = [m for m in t.messages if m.direction == "in" and m.kind == "customer"][-1:]
    assert "The printer works again" in stored.text


# --- rating by a plain reply -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("lang", "text", "score"),
    [
        ("en", "5", 5),
        ("en", "★★★★", 4),
        ("en", "great", 5),
        ("fr", "très bien", 5),
        ("nl", "slecht", 2),
        ("de", "sehr gut", 5),
    ],
)
def test_a_plain_reply_to_the_survey_rates(make, lang, text, score):
    desk = make()
    language(desk, lang)
    desk.resolve()
    [survey] = desk.outbox("survey")
    desk.clock.advance(minutes=5)
    quoted = "".join(f"> {line}\n" for line in survey.body.splitlines())
    body = f"{text}\nQuick and friendly.\n\nOn Mon, 2 Mar 2026, Support <{HD}> wrote:\n{quoted}"
    res = desk.ingest(mail(subject=f"Re: {survey.subject}", in_reply_to=survey.message_id, body=body))
    assert (res["outcome"], res["ticket"]) == ("rating", 1), res
    [rating] = desk.events("rating")
    assert rating.detail["score"] == score and rating.detail["via"] == "reply"
    assert rating.detail["comment"] == "Quick and friendly."
    assert rating.detail["good"] is (score >= 4)


def test_a_reply_to_the_survey_without_a_rating_is_ordinary_mail(make):
    desk = make()
    desk.resolve()
    [survey] = desk.outbox("survey")
    res = desk.ingest(
        mail(subject=f"Re: {survey.subject}", in_reply_to=survey.message_id, body="It broke again.\n")
    )
    assert res["outcome"] == "appended" and desk.events("rating") == []
    assert desk.ticket().status == "open"


# --- forged links -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["score", "mac", "secret"])
def test_a_forged_or_altered_link_rates_nothing(make, how, caplog):
    desk = make()
    desk.resolve()
    [(_, address, subject, _)] = [link for link in desk.links() if link[0] == 1]
    tag, mac = address.partition("@")[0].rsplit(".", 1)
    altered = {
        "score": f"{tag[:-1]}5.{mac}@helpdesk.test",  # a 1's MAC on a 5
        "mac": f"{tag}.{'a' * len(mac)}@helpdesk.test",
        "secret": auth.survey_address(HD, ticket=1, score=1, secret=b"a guess"),
    }[how]
    desk.clock.advance(minutes=5)
    res = desk.ingest(mail(to=altered, subject=subject, body="Anything to add? Write it here.\n"))
    assert res["outcome"] == "appended" and res["ticket"] == 1, res  # ordinary mail
    assert desk.events("rating") == []
    [security] = desk.events("security")
    assert security.detail["verdict"] == "forged" and security.detail["sender"] == ALICE
    assert "not a rating" in res["reason"] and "not a rating" in caplog.text


def test_a_valid_link_for_a_ticket_that_does_not_exist_is_ordinary_mail(make):
    desk = make()
    address = auth.survey_address(HD, ticket=99, score=5, secret=SECRET)
    res = desk.ingest(mail(to=address, subject="Rating 5 for [#99] x", body="hello\n"))
    assert res["outcome"] == "created" and "no such ticket" in res["reason"]
    assert Event.select().where(Event.kind == "rating").count() == 0


# --- a second rating replaces the first ------------------------------------------------------


def test_rating_twice_the_second_replaces_the_first(make):
    desk = make()
    desk.resolve()
    [(_, address, subject, body)] = [link for link in desk.links() if link[0] == 5]
    desk.clock.advance(minutes=5)
    assert desk.ingest(mail(to=address, subject=subject, body=body))["outcome"] == "rating"
    [survey] = [r for r in desk.outbox("survey") if "Thank you" not in r.subject]
    desk.clock.advance(minutes=5)
    reply = mail(subject=f"Re: {survey.subject}", in_reply_to=survey.message_id, body="3 - it broke again\n")
    assert desk.ingest(reply)["outcome"] == "rating"
    first, second = desk.events("rating")
    assert (first.detail["score"], first.detail["replaces"], first.detail["comment"]) == (5, None, "")
    assert (second.detail["score"], second.detail["replaces"]) == (3, 5)
    assert second.detail["comment"] == "it broke again"
    assert surveys.current(1)["score"] == 3
    assert len([r for r in desk.outbox("survey") if "Thank you" in r.subject]) == 1  # once an hour


# --- low ratings act -------------------------------------------------------------------------


def notified(desk: Desk) -> list[str]:
    rows = Outbox.select().where((Outbox.kind == "notification") & (Outbox.created_at > START))
    return sorted(r.to_addr for r in rows)


@pytest.mark.parametrize("reopen", [False, True])
def test_a_low_rating_notifies_the_assignee_and_the_lead_and_reopens_when_configured(make, reopen):
    desk = make(f"reopen_on_low = {str(reopen).lower()}")
    desk.resolve()
    [(_, address, subject, body)] = [link for link in desk.links() if link[0] == 2]
    desk.clock.advance(minutes=5)
    res = desk.ingest(mail(to=address, subject=subject, body=f"{body}\nNobody answered my question.\n"))
    assert res["outcome"] == "rating"
    assert notified(desk) == [BOB, LENA]
    [note] = [r for r in Outbox.select().where(Outbox.to_addr == LENA)]
    assert "low-rating" in note.body and "Nobody answered my question." in note.body
    assert desk.ticket().status == ("open" if reopen else "resolved")
    if reopen:
        [change] = desk.events("status")[-1:]
        assert change.detail == {"from": "resolved", "to": "open", "why": "low rating"}
        assert change.actor == "system"
    [thanks] = [r for r in desk.outbox("survey") if "Thank you" in r.subject]
    assert ("reopened" in thanks.body) is reopen


def test_the_queues_own_lead_group_comes_before_lead(make):
    desk = make('scale = "good-bad"')
    with writing(), desk.app.db.atomic():
        Ticket.update(queue="billing").where(Ticket.number == 1).execute()
    desk.resolve()
    [(_, address, subject, body)] = [link for link in desk.links() if link[0] == 1]
    desk.clock.advance(minutes=5)
    assert desk.ingest(mail(to=address, subject=subject, body=body))["outcome"] == "rating"
    [rating] = desk.events("rating")
    assert (rating.detail["score"], rating.detail["scale"], rating.detail["good"]) == (1, "good-bad", False)
    assert notified(desk) == [BOB, GINA]


def test_a_good_rating_notifies_no_one(make):
    desk = make()
    desk.resolve()
    [(_, address, subject, body)] = [link for link in desk.links() if link[0] == 3]
    desk.clock.advance(minutes=5)
    assert desk.ingest(mail(to=address, subject=subject, body=body))["outcome"] == "rating"
    assert notified(desk) == []


# --- when no survey goes --------------------------------------------------------------------


def test_one_survey_per_customer_per_period(make):
    desk = make("period_days = 30")
    desk.resolve()
    assert len(desk.outbox("survey")) == 1
    desk.clock.advance(days=10)
    assert desk.ingest(mail(subject="Scanner too"))["ticket"] == 2
    assert desk.resolve(2) == []
    assert len(desk.outbox("survey")) == 1
    desk.clock.advance(days=21)
    assert desk.ingest(mail(subject="And the fax"))["ticket"] == 3
    assert [e["kind"] for e in desk.resolve(3)] == ["survey"]


def test_no_survey_for_a_merged_ticket(make):
    desk = make()
    assert desk.ingest(mail(subject="Printer again"))["ticket"] == 2
    now = desk.clock.now()
    with writing(), desk.app.db.atomic():
        tickets.save_events(
            tickets.merge(tickets.by_number(2), tickets.by_number(1), actor=BOB, now=now), now
        )
        t = tickets.by_number(2)
        p = jobs.Pass(desk.env, now, [t])
        assert surveys.maybe_send(p, t) == []
        p.flush()
    assert desk.outbox("survey") == []


# --- reading a rating --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "one_to_five", "good_bad", "comment"),
    [
        ("5", 5, 5, ""),
        ("4/5 quick", 4, 5, "quick"),
        ("3 out of 5 stars. Slow.", 3, None, "Slow."),
        ("★★★★☆", 4, 5, ""),
        ("⭐️⭐️", 2, 1, ""),
        ("****", 4, 5, ""),
        ("Great!\nThanks a lot", 5, 5, "Thanks a lot"),
        ("Très  bien, merci", 5, 5, "merci"),
        ("bien", 4, 5, ""),
        ("mauvais", 2, 1, ""),
        ("goed", 4, 5, ""),
        ("uitstekend", 5, 5, ""),
        ("slecht", 2, 1, ""),
        ("gut", 4, 5, ""),
        ("Sehr schlecht!!", 1, 1, ""),
        ("terrible", 1, 1, ""),
        ("Rating: 2", 2, 1, ""),
        ("Good morning, my printer", None, None, ""),
        ("5 minutes later it broke", None, None, ""),
        ("10", None, None, ""),
        ("bien reçu", None, None, ""),
        ("", None, None, ""),
    ],
)
def test_parse_rating(text, one_to_five, good_bad, comment):
    assert surveys.parse_rating(text, "1-5") == one_to_five
    assert surveys.parse_rating(text, "good-bad") == good_bad
    if one_to_five is not None:
        assert surveys.split_rating(text, "1-5") == (one_to_five, comment)


def test_the_link_comment_leaves_out_the_prefilled_prompt():
    text = "Möchten Sie etwas hinzufügen? Schreiben Sie es hier.\nAlles gut.\n"
    assert surveys.link_comment(text) == "Alles gut."
    assert unquote("%C3%A9") == "é"  # the links' subjects and bodies are UTF-8, percent-encoded
