"""Tickets: find one for a message; create one, add a message to it, change it; list them.

Threading order (docs/architecture.md section 1): the subject token first, then In-Reply-To
and References matched against every stored message id (ours and the
customers'), then a new ticket.  A token alone is not proof: a stranger who puts
`[#12]` in a subject must not write into someone else's ticket (`may_write`).

Writing (docs/architecture.md section 5, "one way to change a ticket, whoever asks"):
`create`, `add_message` and `change` are the only functions that write a ticket, and
the pipeline, agents' mail commands, `mailticket ticket set` and timed jobs all call
them.  Each returns the events of what it did, naming the actor (an address,
`system`, `rules`), for the caller to write with the rest of its events in one
INSERT (`save_events`; the pipeline writes a message's events when it is done).
They do not commit: the caller holds the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import cast

from peewee import fn

from . import models, notify, sla, states
from .errors import TicketError
from .models import Attachment, Event, Message, Ticket

# A customer's message moves a ticket to `open` from these statuses.
REOPEN_ON_CUSTOMER_REPLY = {"pending": "open", "on-hold": "on-hold", "resolved": "open"}

# What `change` may set; each change is an event of the attribute's name.
CHANGEABLE = (
    "status",
    "priority",
    "queue",
    "tier",
    "assignee",
    "group",
    "tags",
    "fields",
    "sla_policy",
    "update_every",
)
# A status's timestamp, set when a ticket takes it.
STAMPS = {"resolved": "resolved_at", "closed": "closed_at"}


def event(ticket: Ticket, actor: str, kind: str, detail: dict) -> dict:
    """One event row, to be written with the others by `save_events`."""
    return {"ticket": ticket.number, "actor": actor, "kind": kind, "detail": detail}


def save_events(events: list[dict], now: datetime) -> None:
    """Write events in one statement (a round trip each would cost on PostgreSQL)."""
    if events:
        models.insert_many(Event, [{**e, "at": now} for e in events])


def create(
    values: dict,
    message: dict,
    attachments: Iterable[dict] = (),
    *,
    actor: str,
    now: datetime,
    detail: dict,
    why: str | None = None,
    config=None,
) -> tuple[Ticket, list[dict]]:
    """A new ticket of `values` (status `new` and the times `now` unless given) with its
    first message (`add_message`'s `message` and `attachments`), in one INSERT each.

    Events: `created` by `actor` with `detail` (where it came from), and `linked` with
    `why` when `values` link it to another ticket.  Whatever decided the values (the
    rules) records its own events: a new ticket has no "before" to change from.  With
    `config`, its SLA due times (sla.py) go into the INSERT too.
    """
    values = {"status": "new", "created_at": now, "updated_at": now, **values}
    _check(values)
    if config is not None:  # its SLA due times in the same INSERT (sla.refresh keeps them after)
        values.update(sla.due_values(Ticket(**values), config, [], now))
    ticket = Ticket(**values)
    ticket.number = models.insert(Ticket, values)
    _insert_message(ticket, message, attachments, now)
    events = [event(ticket, actor, "created", detail)]
    if ticket.linked_to:
        events.append(event(ticket, "system", "linked", {"to": ticket.linked_to, "why": why}))
    return ticket, events


def add_message(
    ticket: Ticket, message: dict, attachments: Iterable[dict] = (), *, actor: str, now: datetime
) -> list[dict]:
    """Store a message on `ticket` and move its `updated_at` to `now`; a `message` event.

    `message` holds the Message columns but `ticket` and `created_at`; `attachments`
    the Attachment columns but `message`.  The ticket's UPDATE is skipped when a
    `change` at this same `now` made it already (one UPDATE for a reply, on the hot path).
    """
    _insert_message(ticket, message, attachments, now)
    if ticket.updated_at != now:
        models.update(Ticket, ticket.number, {"updated_at": now})
        ticket.updated_at = now
    return [event(ticket, actor, "message", {"kind": message["kind"]})]


def change(ticket: Ticket, changes: dict, *, actor: str, now: datetime, why: str | None = None) -> list[dict]:
    """Set attributes of `ticket` (`CHANGEABLE`) in one UPDATE with `updated_at`; one event
    per attribute whose value differs, of its name: `{"from", "to"}` (and `why` when given).

    Nothing differs: no write, no event.  Raises TicketError for an unknown attribute,
    status or priority, before writing anything.
    """
    _check(changes, CHANGEABLE)
    changed = {k: v for k, v in changes.items() if getattr(ticket, k) != v}
    if not changed:
        return []
    extra = {"why": why} if why else {}
    events = [
        event(ticket, actor, k, {"from": getattr(ticket, k), "to": v, **extra}) for k, v in changed.items()
    ]
    stamp = STAMPS.get(changed.get("status", ""))
    if stamp:
        changed[stamp] = now
    models.update(Ticket, ticket.number, {**changed, "updated_at": now})
    for name, value in {**changed, "updated_at": now}.items():
        setattr(ticket, name, value)
    return events


MAX_MERGE_HOPS = 10  # a chain of merges followed to its end; longer is a loop


def merge(ticket: Ticket, into: Ticket, *, actor: str, now: datetime) -> list[dict]:
    """Merge `ticket` into `into`: its messages (with their attachments) move there, its
    requester and CCs become CCs there, its tags join; `ticket` is closed with
    `merged_into`, so that mail to its token or thread lands in `into` (`follow_merges`).
    Events: `merged` on `ticket`, `merged-from` on `into`.  Raises TicketError for the
    same ticket, one merged already, or a closed or merged target."""
    if into.number == ticket.number:
        raise TicketError("a ticket cannot be merged into itself")
    if ticket.merged_into:
        raise TicketError(f"#{ticket.number} was merged into #{ticket.merged_into} already")
    if into.merged_into or into.status == "closed":
        raise TicketError(
            f"#{into.number} is {'merged' if into.merged_into else 'closed'}: merge into an open ticket"
        )
    moved = Message.update(ticket=into.number).where(Message.ticket == ticket.number).execute()
    people = {into.requester, *(into.cc or [])}
    cc = sorted({*(into.cc or []), *(a for a in [ticket.requester, *(ticket.cc or [])] if a not in people)})
    tags = sorted({*(into.tags or []), *(ticket.tags or [])})
    models.update(Ticket, into.number, {"cc": cc, "tags": tags, "updated_at": now})
    into.cc, into.tags, into.updated_at = cc, tags, now
    values = {"status": "closed", "closed_at": now, "merged_into": into.number, "updated_at": now}
    models.update(Ticket, ticket.number, values)
    before = ticket.status
    for name, value in values.items():
        setattr(ticket, name, value)
    return [
        event(ticket, actor, "merged", {"into": into.number, "messages": moved, "status": before}),
        event(into, actor, "merged-from", {"from": ticket.number, "messages": moved, "cc": cc}),
    ]


def follow_merges(ticket: Ticket | None) -> Ticket | None:
    """The ticket that `ticket`'s mail goes to: itself, or the end of its merges."""
    for _ in range(MAX_MERGE_HOPS):
        if ticket is None or not ticket.merged_into:
            return ticket
        ticket = by_number(ticket.merged_into)
    return ticket


def _check(values: dict, allowed: Iterable[str] | None = None) -> None:
    if allowed is not None:
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise TicketError(f"cannot change {', '.join(unknown)} of a ticket (only {', '.join(allowed)})")
    if "status" in values and values["status"] not in states.STATUSES:
        raise TicketError(f"unknown status {values['status']!r} (one of {', '.join(states.STATUSES)})")
    if "priority" in values and values["priority"] not in states.PRIORITIES:
        raise TicketError(f"unknown priority {values['priority']!r} (one of {', '.join(states.PRIORITIES)})")


def _insert_message(ticket: Ticket, message: dict, attachments: Iterable[dict], now: datetime) -> None:
    msg_id = models.insert(Message, {"ticket": ticket.number, **message, "created_at": now})
    rows = [{"message": msg_id, **a} for a in attachments]
    if rows:
        models.insert_many(Attachment, rows)


def by_number(number: int) -> Ticket | None:
    return models.get(Ticket, number)


def last_customer_message_ids(numbers: list[int]) -> dict[int, str]:
    """`last_customer_message_id` of several tickets in one query (absent: none)."""
    if not numbers:
        return {}
    k = len(numbers)
    rows = models.raw(
        Message,
        ("last_customer_many", k),
        lambda p: (
            f'SELECT "ticket_id" AS "of_ticket", "message_id" FROM "message" WHERE "id" IN (SELECT MAX("id") '
            f'FROM "message" WHERE "ticket_id" IN {_in(p, k)} AND "direction" = {p} AND "kind" = {p} '
            'GROUP BY "ticket_id")'
        ),
        [*numbers, "in", "customer"],
    )
    return {row.of_ticket: row.message_id for row in rows}


def last_customer_message_id(ticket: Ticket) -> str | None:
    """The Message-ID of the customer's newest message on `ticket`, which an agent's reply answers."""
    rows = models.raw(
        Message,
        ("last_customer",),
        lambda p: (
            f'SELECT "message_id" FROM "message" WHERE "ticket_id" = {p} AND "direction" = {p} '
            f'AND "kind" = {p} ORDER BY "id" DESC LIMIT 1'
        ),
        [ticket.number, "in", "customer"],
    )
    return next((row.message_id for row in rows), None)


def by_message_ids(ids: list[str], known: dict[str, int] | None = None) -> tuple[Ticket | None, str | None]:
    """The ticket of the first id in `ids` (most relevant first) that we know, and that id.

    `known` is `models.tickets_of_message_ids(ids)` when the caller has it already.
    """
    found = models.tickets_of_message_ids(ids) if known is None else known
    for mid in ids:
        if mid in found:
            return by_number(found[mid]), mid
    return None, None


def of_bounce(pm, tokens) -> tuple[Ticket | None, bool]:
    """The ticket a bounce (`pm`, a ParsedMessage) returns mail of, and whether it was
    found by the token of a subject rather than by Message-ID."""
    ticket, _ = by_message_ids([*pm.bounce_refs, *pm.thread_ids])
    if ticket is not None:
        return ticket, False
    # Some MTAs rewrite the Message-ID of what they relay: the returned subject (or the
    # bounce's own) still carries the token.
    number = tokens.find(pm.bounce_subject) or tokens.find(pm.subject)
    ticket = by_number(number) if number else None
    return ticket, ticket is not None


def names_our_mail(ids: list[str], domain: str, known: dict[str, int]) -> bool:
    """Do these In-Reply-To/References ids name mail we sent: ids of our making, or of
    those we store (`known`, id -> ticket) the ones of outgoing messages?  Never answering
    a stranger's reply to our mail breaks loops with other mail systems: an auto-responder
    that answers each acknowledgement from a new address would get a new ticket and a new
    acknowledgement each time."""
    if any(notify.is_our_msgid(mid, domain) for mid in ids):
        return True
    return bool(known) and bool(models.outgoing_message_ids(list(known)))


def may_write(ticket: Ticket, sender: str, referenced: Callable[[], set[int]], *, agent: bool) -> bool:
    """Whether `sender` may add to `ticket` on the strength of a subject token.

    The requester, a CC of the ticket and an authenticated agent (`agent`: the pipeline's
    verdict, never the From alone) may; anyone else only when the
    message's References point at a message of this very ticket (`referenced()`: the
    tickets its In-Reply-To/References name, looked up only when needed; someone the
    customer forwarded our thread to, replying within it).
    """
    if sender and (sender == ticket.requester or sender in (ticket.cc or [])):
        return True
    if ticket.number in referenced():
        return True
    return agent


def due_times(ticket: Ticket) -> tuple:
    """The ticket's due times: first response, next update, resolution (None: none)."""
    return ticket.due_first_response, ticket.due_next_update, ticket.due_resolution


def listing(
    *,
    status: str | None = None,
    queue: str | None = None,
    requester: str | None = None,
    limit: int = 100,
    due: bool = False,
    breached_at: datetime | None = None,
):
    """Tickets, newest first; with `due`, those with a due time, soonest first; with
    `breached_at`, those with a due time before it."""
    query = Ticket.select().order_by(Ticket.number.desc()).limit(limit)
    if due or breached_at:
        # The first response comes before the resolution: the soonest SLA due time first.
        soonest = fn.COALESCE(Ticket.due_first_response, Ticket.due_resolution, Ticket.due_next_update)
        query = (
            Ticket.select()
            .where(
                Ticket.due_first_response.is_null(False)
                | Ticket.due_next_update.is_null(False)
                | Ticket.due_resolution.is_null(False)
            )
            .order_by(soonest)
            .limit(limit)
        )
        if breached_at:
            query = query.where(
                (Ticket.due_first_response < breached_at) | (Ticket.due_resolution < breached_at)
            )
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
        "due": {
            "first_response": _iso(ticket.due_first_response),
            "next_update": _iso(ticket.due_next_update),
            "resolution": _iso(ticket.due_resolution),
        },
        "sla_policy": ticket.sla_policy,
        "update_every": ticket.update_every,
        "merged_into": ticket.merged_into,
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
                    {
                        "filename": a.filename,
                        "content_type": a.content_type,
                        "size": a.size,
                        "sha256": a.sha256,
                        "inline": a.inline,
                    }
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


# --- what a notification shows: the history and the customer's other tickets -------------

HISTORY_ENTRIES = 10  # the newest messages and notes a notification shows
HISTORY_CHARS = 1500  # of each one's new text
# Extracted fields that name a unit (a device, a contract): tickets sharing a value of
# one of them are that unit's history.
UNIT_FIELDS = ("serial", "account")


def history(ticket: Ticket, *, limit: int = HISTORY_ENTRIES, new_text: str | None = None) -> list[dict]:
    """`histories` of one ticket."""
    return histories([(ticket.number, new_text, None)], limit=limit)[0]


def _in(p: str, n: int) -> str:
    return "(" + ", ".join([p] * n) + ")"


def histories(
    asks: list[tuple[int, str | None, datetime | None]], *, limit: int = HISTORY_ENTRIES
) -> list[list[dict]]:
    """For each (ticket number, new_text, until): the ticket's messages and notes, newest
    first: who, when, kind, their new text (at most HISTORY_CHARS), and the verdict on an
    agent's: "agent" for an agent's reply or note (only a proven agent makes one),
    "forged" for a message its `security` event names.  Our acknowledgements (kind
    `system`) are not history; nor are messages stored after `until` (a later message
    of the same batch), nor the newest message when its text is `new_text` (a
    notification shows that one on its own).  Two queries for them all."""
    numbers = sorted({n for n, _, _ in asks})
    if not numbers:
        return []
    k = len(numbers)
    rows = models.raw(
        Message,
        ("histories", k),
        lambda p: (
            'SELECT "ticket_id" AS "of_ticket", "inbox", "kind", "from_addr", "from_name", "date", '
            '"created_at", "text" FROM (SELECT "ticket_id", "inbox_id" AS "inbox", "kind", "from_addr", '
            '"from_name", "date", "created_at", "text", '
            'ROW_NUMBER() OVER (PARTITION BY "ticket_id" ORDER BY "id" DESC) AS "rn" '
            f'FROM "message" WHERE "ticket_id" IN {_in(p, k)} AND "kind" <> {p}) AS "h" '
            f'WHERE "rn" <= {p} ORDER BY "ticket_id", "rn"'
        ),
        [*numbers, "system", limit + 2],  # two more: a batch's later messages may be cut
    ).dicts()
    by_ticket: dict[int, list[dict]] = {n: [] for n in numbers}
    for row in cast("list[dict]", list(rows)):
        by_ticket[row["of_ticket"]].append(row)
    forged: dict[int, set] = {}
    if any(m["inbox"] is not None for ms in by_ticket.values() for m in ms):
        security = models.raw(
            Event,
            ("securities", k),
            lambda p: (
                f'SELECT "ticket_id", "detail" FROM "event" WHERE "ticket_id" IN {_in(p, k)} AND "kind" = {p}'
            ),
            [*numbers, "security"],
        ).dicts()
        for e in cast("list[dict]", list(security)):
            detail = e["detail"] if isinstance(e["detail"], dict) else json.loads(e["detail"])
            forged.setdefault(e["of_ticket"], set()).add(detail.get("inbox"))
    out = []
    for number, new_text, until in asks:
        ms = [m for m in by_ticket[number] if until is None or m["created_at"] <= until]
        if ms and new_text is not None and ms[0]["text"] == new_text:
            ms = ms[1:]
        out.append([_entry(m, forged.get(number, set())) for m in ms[:limit]])
    return out


def _entry(m: dict, forged: set) -> dict:
    text, kind = m["text"] or "", m["kind"]
    verdict = "agent" if kind in ("agent-reply", "note") else "forged" if m["inbox"] in forged else ""
    return {
        "at": m["date"] or m["created_at"],
        "who": f"{m['from_name']} <{m['from_addr']}>" if m["from_name"] else m["from_addr"],
        "kind": kind,
        "text": text if len(text) <= HISTORY_CHARS else text[:HISTORY_CHARS] + " [...]",
        "verdict": verdict,
    }


def previous(ticket: Ticket, *, limit: int = 10) -> list[dict]:
    """`previous_many` of one ticket."""
    return previous_many([ticket], limit=limit)[0]


def previous_many(ts: list[Ticket], *, limit: int = 10) -> list[list[dict]]:
    """For each ticket: the requester's other tickets (the newest `limit`), then those for
    the same unit (the same value of a UNIT_FIELDS field, newest `limit` each): number,
    subject, status, resolved_at, and why ("requester" or "serial=X").  One query for
    every requester; one more per unit value, which few tickets have."""
    columns = '"number", "subject", "status", "resolved_at", "fields"'
    requesters = sorted({t.requester for t in ts})
    k = len(requesters)
    by_requester: dict[str, list[Ticket]] = {}
    if requesters:
        rows = models.raw(
            Ticket,
            ("previous_many", k),
            lambda p: (
                f'SELECT "requester", {columns} FROM (SELECT "requester", {columns}, ROW_NUMBER() OVER '
                f'(PARTITION BY "requester" ORDER BY "number" DESC) AS "rn" FROM "ticket" '
                f'WHERE "requester" IN {_in(p, k)}) AS "r" WHERE "rn" <= {p} ORDER BY "number" DESC'
            ),
            [*requesters, limit + 1],  # one more: the ticket itself is among them
        )
        for row in rows:
            by_requester.setdefault(row.requester, []).append(row)
    out = []
    for ticket in ts:
        found: dict[int, dict] = {}

        def add(rows: Iterable[Ticket], why: str, ticket: Ticket = ticket, found: dict = found) -> None:
            for t in rows:
                if t.number != ticket.number and t.number not in found:
                    found[t.number] = {
                        "number": t.number,
                        "subject": t.subject,
                        "status": t.status,
                        "resolved_at": t.resolved_at,
                        "why": why,
                    }

        add(
            [t for t in by_requester.get(ticket.requester, []) if t.number != ticket.number][:limit],
            "requester",
        )
        for key in UNIT_FIELDS:
            value = (ticket.fields or {}).get(key)
            if not isinstance(value, str) or not value:
                continue
            # Fields are JSON text on both backends: the pair as JSONField writes it finds
            # candidates (LIKE; a "_" in the value matches any character), Python confirms.
            pair = Ticket.fields.db_value({key: value})[1:-1]
            rows = models.raw(
                Ticket,
                ("unit",),
                # (CAST: the column is JSON text on SQLite and PostgreSQL alike.)
                lambda p: (
                    f'SELECT {columns} FROM "ticket" WHERE CAST("fields" AS TEXT) LIKE {p} '
                    f'ORDER BY "number" DESC LIMIT {p}'
                ),
                [f"%{pair}%", limit * 2],
            )
            add([t for t in rows if (t.fields or {}).get(key) == value][:limit], f"{key}={value}")
        out.append(list(found.values()))
    return out
