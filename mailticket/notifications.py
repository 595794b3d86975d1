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
from .models import Outbox
from .notify import MAX_SUBJECT, agent_blocks, make_msgid, outbox_row, queue_rows, reply_headers
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
    limit of their address (`agent_blocks`).  A helpdesk with no agents and no
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
    hd, token = env.config.helpdesk, env.tokens.format(ticket.number)
    expires = now + timedelta(days=env.config.agents.reply_days)
    secret, by_address = env.agent_secret(), {a.email: a for a in active}
    who = by_address[author].name if author in by_address else author or "system"
    if author and author == ticket.requester and ticket.requester_name:
        who = f"{ticket.requester_name} <{author}>"
    context = dict(
        token=token,
        ticket=ticket,
        why=why,
        who=who,
        rules=", ".join(rules),
        text=text[:MAX_NOTIFIED_TEXT],
        history=tickets.history(ticket, new_text=text),
        previous=tickets.previous(ticket),
        helpdesk=hd.name,
        marker=MARKER,
        **(extra or {}),
    )
    earlier = _earlier_notifications(ticket.number)
    blocks = agent_blocks([r.address for r in recipients], env.config.agents.notification_limit, now)
    rows = []
    for r in recipients:
        blocked = blocks[r.address]
        if blocked:
            events.append(
                tickets.event(ticket, "system", "notify-skipped", {"to": r.address, "why": blocked})
            )
            continue

        def signed(purpose: str, to: str = r.address) -> str:
            return auth.reply_address(
                hd.address, ticket=ticket.number, agent=to, purpose=purpose, expires=expires, secret=secret
            )

        rendered = env.templates.render(
            kind,
            r.language or hd.language,
            hd.language,
            agent=r,
            note_address=signed("note"),
            **context,
        )
        parent = earlier.get(r.address)
        headers = {
            "From": email.utils.formataddr((hd.name, hd.address)),
            "Reply-To": signed("reply"),
            **reply_headers(
                parent, [parent] if parent else [], None, ticket.subject[:MAX_SUBJECT], now, False
            ),
            # RFC 3834 section 5: not a response to a message, made by a program; and
            # ask Exchange not to answer it with the agent's out-of-office.
            "Auto-Submitted": "auto-generated",
            "X-Auto-Response-Suppress": "All",
        }
        msgid = make_msgid(hd.domain)
        rows.append(
            outbox_row(
                kind=kind,
                ticket=ticket.number,
                mail_from=hd.address,
                to=r.address,
                rendered=rendered,
                headers=headers,
                message_id=msgid,
                now=now,
                automatic=True,
            )
        )
        detail = {"to": r.address, "why": why, **({"kind": kind} if kind != "notification" else {})}
        events.append(tickets.event(ticket, "system", "notified", detail))
    queue_rows(rows, now)
    return events


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


def _earlier_notifications(number: int) -> dict[str, str]:
    """The Message-ID of the last notification about ticket `number` to each address: the
    next one threads to it (In-Reply-To), so an agent's client shows one conversation."""
    rows = models.raw(
        Outbox,
        ("earlier_notifications",),
        lambda p: (
            f'SELECT "to_addr", "message_id" FROM "outbox" WHERE "ticket" = {p} '
            f'AND "kind" IN ({p}, {p}, {p}) ORDER BY "id"'
        ),
        [number, "notification", "warning", "escalation"],
    )
    return {row.to_addr: row.message_id for row in rows}
