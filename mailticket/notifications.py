"""Notifications to agents: a ticket's news in the outbox for the agents who should hear it.

Place in the flow: the pipeline's `notify` step calls `notify_agents` for a new ticket
and a customer's reply, `actions.py` for an assignment or a note.  Who hears of it is
decided here (the assignee, else a group, plus a rule's `notify:`); the templates, the
headers and the automatic-mail limits are notify.py's, and each notification is queued
through `notify.queue` like any automatic mail.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import auth, models, tickets
from .models import Outbox, Ticket
from .notify import (
    MAX_SUBJECT,
    agent_counts,
    bounced_reason,
    make_msgid,
    outbox_row,
    queue_rows,
    reply_headers,
)
from .parsers.quotes import MARKER

# MARKER, the first line of every notification, is where the quote stripper cuts an
# agent's reply (parsers/quotes.py), whatever their client does with the quoted copy.
MAX_NOTIFIED_TEXT = 4000


@dataclass(frozen=True)
class Recipient:
    address: str
    name: str
    language: str  # "" for the helpdesk's

    @classmethod
    def of(cls, agent: models.Agent) -> Recipient:
        return cls(agent.email, agent.name, agent.language)


def _members(active: list[models.Agent], group: str | None) -> list[Recipient]:
    """The agents of `group` among `active` (read once: `agents.members` would query again)."""
    return [Recipient.of(a) for a in active if group in (a.groups or [])] if group else []


def notify_agents(
    ticket,
    *,
    why: str,
    text: str,
    author: str | None,
    now: datetime,
    env,
    also: tuple[str, ...] = (),
    rules: tuple[str, ...] = (),
    kind: str = "notification",
    extra: dict | None = None,
) -> list[dict]:
    """Tell the agents about `why` on `ticket` ("created", "customer-reply", "assigned",
    "note"): a `notification` in the outbox for each; the ticket events that say so.

    Recipients: the assignee (an active agent), else the members of the ticket's group,
    else of a group named like its queue; plus `also`, a rule's `notify:` (addresses,
    groups: `notify_targets`).  Never `author`, the ticket's requester or CCs (an agent
    who wrote as a customer hears nothing of their own message), nor our own addresses.
    Each gets the template in their language, a Reply-To signed for them and this
    ticket, the signed note address in the body, and counts against the automatic-mail
    limit of their address (`[agents] notification_limit`).  A helpdesk with no agents and no
    rule's `notify:` pays one query of the agents, nothing more.

    `kind` is the outbox kind and the template (`warning`, `escalation` from the timed
    jobs), `extra` more for the template (the timer, the due time, the reason).
    """
    active = env.active_agents()
    if not active and not also:
        return []
    events, recipients = _recipients(ticket, active, also, author, env.config)
    if not recipients:
        return events
    by_address = {a.email: a for a in active}
    who = by_address[author].name if author in by_address else author or "system"
    if author and author == ticket.requester and ticket.requester_name:
        who = f"{ticket.requester_name} <{author}>"
    intent = Intent(ticket, why, text, who, now, recipients, rules, kind, extra or {})
    if env.deferred is not None:  # the worker sends a batch's notifications together
        env.deferred.append(intent)
        return events
    return events + send([intent], env)


@dataclass
class Intent:
    """A notification decided on (its recipients known), to be rendered and queued by `send`."""

    ticket: Ticket
    why: str
    text: str
    who: str
    now: datetime
    recipients: list[Recipient]
    rules: tuple[str, ...]
    kind: str
    extra: dict


def send(intents: list[Intent], env) -> list[dict]:
    """Render and queue the notifications of `intents`, reading what they show for all of
    them at once: the histories, the previous tickets, the earlier notifications (to
    thread to) and the recipients' limits are a query each, the outbox rows one INSERT,
    whether one notification or a worker batch's hundreds.  The `notified` and
    `notify-skipped` events, to be written by the caller."""
    if not intents:
        return []
    hd = env.config.helpdesk
    now = max(i.now for i in intents)
    secret = env.agent_secret()
    shown = tickets.histories([(i.ticket.number, i.text, i.now) for i in intents])
    before = tickets.previous_many([i.ticket for i in intents])
    earlier = _earlier_notifications(sorted({i.ticket.number for i in intents}))
    addresses = sorted({r.address for i in intents for r in i.recipients})
    limit = env.config.agents.notification_limit
    counts, marks = agent_counts(addresses, now)
    events: list[dict] = []
    rows = []
    for intent, history, previous in zip(intents, shown, before):
        ticket = intent.ticket
        token = env.tokens.format(ticket.number)
        expires = intent.now + timedelta(days=env.config.agents.reply_days)
        context = dict(
            token=token,
            ticket=ticket,
            why=intent.why,
            who=intent.who,
            rules=", ".join(intent.rules),
            text=intent.text[:MAX_NOTIFIED_TEXT],
            history=history,
            previous=previous,
            helpdesk=hd.name,
            marker=MARKER,
            **intent.extra,
        )
        threads = earlier.setdefault(ticket.number, {})
        for r in intent.recipients:
            blocked = _blocked(r.address, marks.get(r.address), counts.get(r.address, 0), limit)
            if blocked:
                events.append(
                    tickets.event(ticket, "system", "notify-skipped", {"to": r.address, "why": blocked})
                )
                continue
            counts[r.address] = counts.get(r.address, 0) + 1

            def signed(purpose: str, to: str = r.address, number: int = ticket.number, until=expires) -> str:
                return auth.reply_address(
                    hd.address, ticket=number, agent=to, purpose=purpose, expires=until, secret=secret
                )

            rendered = env.templates.render(
                intent.kind,
                r.language or hd.language,
                hd.language,
                agent=r,
                note_address=signed("note"),
                **context,
            )
            parent = threads.get(r.address)
            headers = {
                "From": email.utils.formataddr((hd.name, hd.address)),
                "Reply-To": signed("reply"),
                **reply_headers(
                    parent, [parent] if parent else [], None, ticket.subject[:MAX_SUBJECT], intent.now, False
                ),
                # RFC 3834 section 5: not a response to a message, made by a program; and
                # ask Exchange not to answer it with the agent's out-of-office.
                "Auto-Submitted": "auto-generated",
                "X-Auto-Response-Suppress": "All",
            }
            msgid = make_msgid(hd.domain)
            threads[r.address] = msgid  # the next one in this batch threads to this one
            rows.append(
                outbox_row(
                    kind=intent.kind,
                    ticket=ticket.number,
                    mail_from=hd.address,
                    to=r.address,
                    rendered=rendered,
                    headers=headers,
                    message_id=msgid,
                    now=intent.now,
                    automatic=True,
                )
            )
            detail = {
                "to": r.address,
                "why": intent.why,
                **({"kind": intent.kind} if intent.kind != "notification" else {}),
            }
            events.append(tickets.event(ticket, "system", "notified", detail))
    queue_rows(rows, now)
    return events


def _blocked(address: str, bounced: str | None, count: int, limit: int) -> str:
    if bounced:
        return bounced_reason(address, bounced)
    return f"{address} reached {limit} automatic mails this hour" if count >= limit else ""


def _recipients(ticket, active, also, author, config) -> tuple[list[dict], list[Recipient]]:
    """Who hears of `ticket` (`notify_agents`), and events for a rule's group with no one in it."""
    assignee = next((a for a in active if a.email == (ticket.assignee or "").lower()), None)
    chosen = (
        [Recipient.of(assignee)]
        if assignee
        else _members(active, ticket.group) or _members(active, ticket.queue)
    )
    events, extra = notify_targets(ticket, also, active)
    people = {ticket.requester, *(ticket.cc or []), (author or "").lower()}
    out: dict[str, Recipient] = {}
    for r in chosen + extra:
        if r.address not in people and not config.is_ours(r.address):
            out.setdefault(r.address, r)
    return events, list(out.values())


def notify_targets(ticket, targets: tuple[str, ...], active) -> tuple[list[dict], list[Recipient]]:
    """The recipients a rule's `notify:` names: an address as it is (an agent's with their
    language), a group as its active members; a `notify-skipped` event for a group with
    none (a typo in a rule, or everyone removed)."""
    by_address = {a.email: a for a in active}
    events, out = [], []
    for target in targets:
        if "@" in target:
            a = by_address.get(target.lower())
            out.append(Recipient.of(a) if a else Recipient(target.lower(), "", ""))
            continue
        members = _members(active, target)
        if not members:
            events.append(
                tickets.event(ticket, "system", "notify-skipped", {"to": target, "why": "no agent in group"})
            )
        out += members
    return events, out


def _earlier_notifications(numbers: list[int]) -> dict[int, dict[str, str]]:
    """Per ticket, the Message-ID of the last mail to agents about it, by address: the
    next one threads to it (In-Reply-To), so an agent's client shows one conversation."""
    k = len(numbers)
    rows = models.raw(
        Outbox,
        ("earlier_notifications", k),
        lambda p: (
            f'SELECT "ticket", "to_addr", "message_id" FROM "outbox" WHERE "ticket" IN '
            f'({", ".join([p] * k)}) AND "kind" IN ({p}, {p}, {p}) ORDER BY "id"'
        ),
        [*numbers, "notification", "warning", "escalation"],
    )
    out: dict[int, dict[str, str]] = {}
    for row in rows:
        out.setdefault(row.ticket, {})[row.to_addr] = row.message_id
    return out
