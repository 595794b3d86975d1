"""Tickets: find one for a message, create one, change its status, list them.

Threading order (docs/architecture.md section 1): the subject token first, then In-Reply-To
and References matched against every stored message id (ours and the
customers'), then a new ticket.  A token alone is not proof: a stranger who puts
`[#12]` in a subject must not write into someone else's ticket (`may_write`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from . import models
from .models import Event, Message, Ticket

# A customer's message moves a ticket to `open` from these statuses.
REOPEN_ON_CUSTOMER_REPLY = {"pending": "open", "on-hold": "on-hold", "resolved": "open"}


def by_number(number: int) -> Ticket | None:
    return models.get(Ticket, number)


def by_message_ids(ids: list[str], known: dict[str, int] | None = None) -> tuple[Ticket | None, str | None]:
    """The ticket of the first id in `ids` (most relevant first) that we know, and that id.

    `known` is `models.tickets_of_message_ids(ids)` when the caller has it already.
    """
    found = models.tickets_of_message_ids(ids) if known is None else known
    for mid in ids:
        if mid in found:
            return by_number(found[mid]), mid
    return None, None


def is_agent(address: str, configured: frozenset[str]) -> bool:
    return address in configured or models.is_active_agent(address)


def may_write(ticket: Ticket, sender: str, referenced: Callable[[], set[int]],
              agents: frozenset[str]) -> bool:
    """Whether `sender` may add to `ticket` on the strength of a subject token.

    The requester, a CC of the ticket and an agent may; anyone else only when the
    message's References point at a message of this very ticket (`referenced()`: the
    tickets its In-Reply-To/References name, looked up only when needed; someone the
    customer forwarded our thread to, replying within it).
    """
    if sender and (sender == ticket.requester or sender in (ticket.cc or [])):
        return True
    if ticket.number in referenced():
        return True
    return bool(sender) and is_agent(sender, agents)


def listing(*, status: str | None = None, queue: str | None = None, requester: str | None = None,
            limit: int = 100):
    query = Ticket.select().order_by(Ticket.number.desc()).limit(limit)
    if status:
        query = query.where(Ticket.status == status)
    if queue:
        query = query.where(Ticket.queue == queue)
    if requester:
        query = query.where(Ticket.requester == requester.lower())
    return list(query)


def as_dict(ticket: Ticket, *, full: bool = True) -> dict:
    """The ticket as the `ticket show --json` contract gives it (the README: Command line)."""
    out = {
        "number": ticket.number,
        "subject": ticket.subject,
        "status": ticket.status,
        "priority": ticket.priority,
        "queue": ticket.queue,
        "tier": ticket.tier,
        "requester": ticket.requester,
        "assignee": ticket.assignee,
        "tags": ticket.tags or [],
        "fields": ticket.fields or {},
        "cc": ticket.cc or [],
        "language": ticket.language,
        "linked_to": ticket.linked_to,
        "created_at": _iso(ticket.created_at),
        "updated_at": _iso(ticket.updated_at),
    }
    if full:
        out["messages"] = [
            {
                "message_id": m.message_id,
                "direction": m.direction,
                "kind": m.kind,
                "from": m.from_addr,
                "to": m.to,
                "date": _iso(m.date or m.created_at),
                "text": m.text,
                "body": m.body,
                "attachments": [
                    {"filename": a.filename, "content_type": a.content_type, "size": a.size,
                     "sha256": a.sha256, "inline": a.inline}
                    for a in m.attachments
                ],
            }
            for m in ticket.messages.order_by(Message.id)
        ]
        out["events"] = [
            {"at": _iso(e.at), "actor": e.actor, "kind": e.kind, "detail": e.detail}
            for e in ticket.events.order_by(Event.id)
        ]
        out["previous_tickets"] = [
            t.number
            for t in Ticket.select(Ticket.number)
            .where((Ticket.requester == ticket.requester) & (Ticket.number != ticket.number))
            .order_by(Ticket.number.desc())
            .limit(20)
        ]
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
