"""Satisfaction surveys by email: the survey when a ticket is resolved, the rating that comes back.

Place in the flow (docs/architecture.md sections 1 and 5): whatever resolves a ticket for
an agent (actions.py, the CLI) calls `maybe_send` with its `jobs.Pass`; the pipeline's
`rating` step, right after `thread`, calls `find` and `record` for a message that rates.

- The survey (outbox kind `survey`, template `survey`, a `survey` event) holds one
  `mailto:` link per rating (1 to 5, or good and bad: `[surveys] scale`), each to a
  signed address of the helpdesk (`auth.survey_address`: an HMAC over the ticket and
  the score) with a prefilled subject and body in the ticket's language (RFC 6068), so
  one click and Send rates, and what the customer types is the comment.  At most one
  per customer in `[surveys] period_days`; none for a merged ticket or one tagged spam.
- A rating is a message to such an address whose MAC holds (`via` "link"), or a reply
  to our survey (its In-Reply-To/References name a `survey` outbox row) whose new text
  starts with a rating (`parse_rating`: "5", "4/5", "★★★★", "****", a word in English,
  French, Dutch or German; `via` "reply").  A tag whose MAC fails rates nothing: the
  step records a `security` event and lets the message go on as ordinary mail.
- `record` writes a `rating` event (the newest is the current rating; `replaces` names
  the one before), thanks the customer (`survey-thanks`, at most once per ticket per
  hour), and for a low rating (`[surveys] low`) tells the assignee (or group) and the
  queue's lead, and with `reopen_on_low` reopens the ticket.  The queue's lead is the
  active members of group `<queue>-lead`, else of group `lead`; none when both are empty.

The web form of issue 13 (`https://` links served by the daemon) is not built: mail only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote

from . import auth, jobs, notifications, notify, sla, tickets
from .errors import ConfigError
from .models import Event, Outbox, Ticket

if TYPE_CHECKING:
    from .parsers import ParsedMessage

log = logging.getLogger(__name__)

MAX_COMMENT = 2000
THANKS_EVERY = timedelta(hours=1)  # at most one thank-you per ticket in this time
SCALES = {"1-5": (5, 4, 3, 2, 1), "good-bad": (5, 1)}  # the links' scores, best first

# The prefilled subject and body of a link, per language; the body is also what `find`
# takes out of the comment.  (Data the parser must know, hence here, not in a template.)
_LINK_TEXT = {
    "en": ("Rating {score} for {token} {subject}", "Anything to add? Write it here."),
    "fr": ("Note {score} pour {token} {subject}", "Un commentaire ? Écrivez-le ici."),
    "nl": ("Beoordeling {score} voor {token} {subject}", "Nog iets toe te voegen? Schrijf het hier."),
    "de": ("Bewertung {score} für {token} {subject}", "Möchten Sie etwas hinzufügen? Schreiben Sie es hier."),
}
_GOOD_BAD = {
    "en": ("good", "bad"),
    "fr": ("bien", "mauvais"),
    "nl": ("goed", "slecht"),
    "de": ("gut", "schlecht"),
}
_PROMPTS = frozenset(" ".join(body.split()).casefold() for _, body in _LINK_TEXT.values())


# --- sending -------------------------------------------------------------------------------


def maybe_send(p: jobs.Pass, ticket: Ticket) -> list[dict]:
    """The survey to `ticket`'s customer, when it is due: the events that say so (none
    when it is not due: surveys off, a merged or spam ticket, no address, a survey to the
    same customer within `[surveys] period_days`).  Call it when an agent resolves a
    ticket, with the Pass that queues the resolution's mail; the caller flushes it."""
    env, now = p.env, p.at
    cfg = env.config.surveys
    to = ticket.requester or ""
    if not cfg.enabled or ticket.merged_into or "spam" in (ticket.tags or []) or "@" not in to:
        return []
    if cfg.period_days and _surveyed(p, to, now - timedelta(days=cfg.period_days)):
        p.did(ticket, "survey-skipped", why=f"surveyed within {cfg.period_days} days")
        return []
    try:
        secret = env.agent_secret()
    except ConfigError as exc:  # no secret, no signed links: no survey, the resolution goes on
        log.warning("survey for #%s not sent: %s", ticket.number, exc)
        return [tickets.event(ticket, "system", "survey-skipped", {"why": "no signing secret"})]
    links = survey_links(ticket, env, secret)
    return p.tell(ticket, "survey", "survey", links=links, scale=cfg.scale)


def _surveyed(p: jobs.Pass, to: str, since: datetime) -> bool:
    """Did `to` get a survey since `since`: in this pass, or a `survey` event of any of
    their tickets (one query)."""
    if any(a["action"] == "survey" and a.get("to") == to for a in p.actions):
        return True
    query = (
        Event.select(Event.id)
        .join(Ticket, on=(Event.ticket == Ticket.number))
        .where((Ticket.requester == to) & (Event.kind == "survey") & (Event.at >= since))
        .limit(1)
    )
    return query.exists()


def survey_links(ticket: Ticket, env, secret: bytes) -> list[dict]:
    """One link per score of the scale, best first: `{"score", "address", "url"}`, the url a
    `mailto:` (RFC 6068: every reserved character of a header value percent-encoded)."""
    hd, scale = env.config.helpdesk, env.config.surveys.scale
    language = ticket.language if ticket.language in _LINK_TEXT else "en"
    subject_f, body = _LINK_TEXT[language]
    token = env.tokens.format(ticket.number)
    out = []
    for score in SCALES[scale]:
        address = auth.survey_address(hd.address, ticket=ticket.number, score=score, secret=secret)
        shown = str(score) if scale == "1-5" else _GOOD_BAD[language][score != 5]
        subject = subject_f.format(score=shown, token=token, subject=ticket.subject)[: notify.MAX_SUBJECT]
        url = f"mailto:{address}?subject={quote(subject, safe='')}&body={quote(body + chr(10), safe='')}"
        out.append({"score": score, "address": address, "url": url})
    return out


# --- what comes back -----------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A message that rates, or that carries a survey tag but may not rate (`why`)."""

    ticket: Ticket | None
    score: int
    comment: str
    via: str  # link | reply
    why: str = ""  # not a rating: why (a forged tag, an unknown ticket, a score off the scale)
    forged: int | None = None  # the ticket a tag whose MAC fails names

    @property
    def ok(self) -> bool:
        return not self.why


def find(pm: ParsedMessage, recipients: list[str], env) -> Found | None:
    """Does this customer's message rate a ticket?  A signed survey address among
    `recipients` (the To, Cc and envelope recipient), else a reply to a survey that starts
    with a rating; None when neither (the usual message, no query but for a reply to
    our mail that starts like a rating)."""
    hd, scale = env.config.helpdesk.address, env.config.surveys.scale
    if auth.carries_survey_tag(recipients, hd):
        return _by_link(pm, recipients, env)
    split = split_rating(pm.new_text, scale)
    domain = env.config.helpdesk.domain
    if split is None or not any(notify.is_our_msgid(m, domain) for m in pm.thread_ids):
        return None
    number = _survey_of(pm.thread_ids)
    if number is None:
        return None
    t = tickets.by_number(number)
    if t is None:  # pragma: no cover - outbox rows of a ticket that is gone
        return None
    score, comment = split
    return Found(t, score, comment[:MAX_COMMENT], "reply")


def _by_link(pm: ParsedMessage, recipients: list[str], env) -> Found:
    def refused(why: str, forged: int | None = None) -> Found:
        return Found(None, 0, "", "link", why=why, forged=forged)

    try:
        secret = env.agent_secret()
    except ConfigError as exc:
        return refused(f"survey address not verified: {exc}")
    rated = auth.verify_survey(recipients, secret=secret, helpdesk_address=env.config.helpdesk.address)
    assert rated is not None  # carries_survey_tag said there is one
    where = f"survey address of #{rated.ticket}"
    if not rated.valid:
        return refused(f"{where}: {rated.why}", forged=rated.ticket)
    if rated.score not in SCALES["1-5"]:  # signed by us, so never; but not worth a crash
        return refused(f"{where}: score {rated.score} off the scale")
    t = tickets.by_number(rated.ticket)
    if t is None:
        return refused(f"{where}: no such ticket")
    return Found(t, rated.score, link_comment(pm.new_text), "link")


def link_comment(text: str) -> str:
    """What the customer typed in a link's mail: its text without the prefilled prompt."""
    lines = [line for line in text.splitlines() if " ".join(line.split()).casefold() not in _PROMPTS]
    return "\n".join(lines).strip()[:MAX_COMMENT]


def _survey_of(ids: list[str]) -> int | None:
    """The ticket of the first of `ids` that is a survey we sent (one query)."""
    query = Outbox.select(Outbox.ticket, Outbox.message_id).where(
        Outbox.message_id.in_(ids) & (Outbox.kind == "survey")
    )
    found = {row.message_id: row.ticket for row in query}
    return next((found[m] for m in ids if m in found and found[m] is not None), None)


def record(
    ticket: Ticket,
    score: int,
    comment: str,
    actor: str,
    via: str,
    now: datetime,
    env,
    *,
    thank: bool = True,
) -> list[dict]:
    """Record `actor`'s rating of `ticket`; the events (for the caller to write).

    A `rating` event `{score, scale, good, comment, via, replaces}`; the customer
    thanked (`survey-thanks`, unless thanked within the hour or the limits say no); a
    low rating tells the assignee and the queue's lead, and may reopen the ticket."""
    cfg = env.config.surveys
    scale = "good-bad" if cfg.scale == "good-bad" and score in SCALES["good-bad"] else "1-5"
    comment = comment.strip()[:MAX_COMMENT]
    previous = current(ticket.number)
    detail = {
        "score": score,
        "scale": scale,
        "good": score >= 4,
        "comment": comment,
        "via": via,
        "replaces": previous["score"] if previous else None,
    }
    events = [tickets.event(ticket, actor, "rating", detail)]
    low = score <= cfg.low
    reopened = False
    if low and cfg.reopen_on_low and ticket.status in ("resolved", "closed") and not ticket.merged_into:
        changed = tickets.change(ticket, {"status": "open"}, actor="system", now=now, why="low rating")
        sla.refresh(ticket, env.config, now, pending=changed)
        events += changed
        reopened = bool(changed)
    if low:
        events += notifications.notify_agents(
            ticket,
            why="low-rating",
            text=comment,
            author=None,
            now=now,
            env=env,
            also=_lead(ticket, env),
            extra={"score": score},
        )
    if thank:
        events += _thank(ticket, env, now, score=score, low=low, reopened=reopened)
    return events


def current(number: int) -> dict | None:
    """The current rating of ticket `number` (its newest `rating` event's detail), or None."""
    row = (
        Event.select(Event.detail)
        .where((Event.ticket == number) & (Event.kind == "rating"))
        .order_by(Event.id.desc())
        .first()
    )
    return row.detail if row is not None else None


def _lead(ticket: Ticket, env) -> tuple[str, ...]:
    """The queue's lead group: `<queue>-lead` when it has active members, else `lead`."""
    active = env.active_agents()
    for group in (f"{ticket.queue}-lead", "lead"):
        if any(group in (a.groups or []) for a in active):
            return (group,)
    return ()


def _thank(ticket: Ticket, env, now: datetime, **context) -> list[dict]:
    since = now - THANKS_EVERY
    thanked = (
        Event.select(Event.id)
        .where((Event.ticket == ticket.number) & (Event.kind == "survey-thanks") & (Event.at > since))
        .exists()
    )
    if thanked:
        return []
    p = jobs.Pass(env, now, [ticket])
    events = p.tell(ticket, "survey", "survey-thanks", **context)
    p.flush()
    return events


# --- reading a rating from text ------------------------------------------------------------

# Words, in English, French, Dutch and German, and the score each says (1-5).  Matched
# at the start of the text, longest first, and only when what follows on the line is
# nothing or punctuation: "Good morning, the printer..." is not a rating, "Good!" is.
_WORDS = {
    5: "excellent, excellente, great, perfect, superb, outstanding, amazing, fantastic, awesome, "
    "very good, very satisfied, parfait, parfaite, génial, géniale, très bien, tres bien, très bon, "
    "très bonne, très satisfait, très satisfaite, uitstekend, geweldig, fantastisch, zeer goed, heel goed, "
    "zeer tevreden, sehr gut, ausgezeichnet, hervorragend, perfekt, super, toll, sehr zufrieden",
    4: "good, satisfied, not bad, bien, bon, bonne, satisfait, satisfaite, pas mal, goed, tevreden, prima, "
    "niet slecht, gut, zufrieden, nicht schlecht",
    3: "ok, okay, average, neutral, so-so, moyen, moyenne, correct, correcte, passable, neutre, redelijk, "
    "gemiddeld, neutraal, gaat wel, mittel, mittelmäßig, befriedigend, geht so",
    2: "bad, poor, unsatisfied, dissatisfied, not good, mauvais, mauvaise, insatisfait, insatisfaite, "
    "pas bien, pas bon, pas bonne, slecht, matig, ontevreden, niet goed, schlecht, unzufrieden, "
    "mangelhaft, nicht gut",
    1: "terrible, awful, horrible, very bad, very poor, très mauvais, très mauvaise, nul, nulle, "
    "catastrophique, zeer slecht, heel slecht, vreselijk, waardeloos, sehr schlecht, schrecklich, "
    "furchtbar, katastrophal, ungenügend",
}
_WORD_SCORE = {w.strip(): score for score, words in _WORDS.items() for w in words.split(",")}
_ALTERNATIVES = "|".join(
    re.escape(w).replace("\\ ", " ").replace(" ", r"\s+") for w in sorted(_WORD_SCORE, key=len, reverse=True)
)
_PREFIX = r"(?:(?:rating|score|note|cijfer|beoordeling|bewertung)\s*:?\s*)?"
_OUT_OF = r"(?P<of>\s*(?:/|out\s+of|sur|van|von|op)\s*5)?"
_STARS_WORD = r"(?P<unit>\s*(?:stars?|étoiles?|sterren|ster|sterne|stern)\b)?"
_RATING = re.compile(
    rf"^{_PREFIX}(?:(?P<number>[1-5])(?![\d.,]\d){_OUT_OF}{_STARS_WORD}"
    r"|(?P<stars>(?:[★⭐]\ufe0f?){1,5})[☆\s]*|(?P<asterisks>\*{1,5})(?!\*)"
    rf"|(?P<word>{_ALTERNATIVES})(?![\w-]))",
    re.IGNORECASE,
)
_SEPARATORS = ".,;:!?-–—()"


def parse_rating(text: str, scale: str) -> int | None:
    """The rating `text` starts with, on `scale` ("1-5": 1 to 5; "good-bad": 5 good, 1
    bad), or None when it does not start with one."""
    split = split_rating(text, scale)
    return split[0] if split is not None else None


def split_rating(text: str, scale: str) -> tuple[int, str] | None:
    """The rating `text` starts with and the rest of the text (the comment), or None.

    "5", "4/5", "4 out of 5", "4 stars", "★★★★" (☆ not counted), "****", a word or two
    ("great", "très bien", "slecht", "sehr gut"); on the good-bad scale 4 and 5 are good
    (5), 1 and 2 bad (1), and 3 is no rating.  What follows on the first line must be
    nothing or punctuation ("5 minutes later it broke again" is no rating).
    """
    stripped = text.strip()
    first, _, rest = stripped.partition("\n")
    m = _RATING.match(first.strip())
    if m is None:
        return None
    after = first.strip()[m.end() :].strip()
    # Stars and "4/5" say they rate whatever follows; a bare number or word must stand alone.
    unmistakable = m.group("stars") or m.group("asterisks") or m.group("of") or m.group("unit")
    if after and after[0] not in _SEPARATORS and not unmistakable:
        return None
    if m.group("number"):
        score = int(m.group("number"))
    elif m.group("stars"):
        score = sum(c in "★⭐" for c in m.group("stars"))
    elif m.group("asterisks"):
        score = len(m.group("asterisks"))
    else:
        score = _WORD_SCORE[" ".join(m.group("word").lower().split())]
    if scale == "good-bad":
        if score == 3:
            return None
        score = 5 if score >= 4 else 1
    comment = "\n".join(part for part in (after.lstrip(_SEPARATORS + " "), rest.strip()) if part)
    return score, comment.strip()
