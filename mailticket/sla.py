"""SLA due times: which policy and calendar hold for a ticket, and when each timer is due.

Place in the flow: every change that matters (a new ticket, a customer's or agent's
message, a status, priority or queue change, a timed job's action) ends with `refresh`,
which recomputes the ticket's due times and `next_check` (when jobs.py next has
something to do for it) and writes them if they moved.  `explain` says how a due time
was reached, for `mailticket sla explain` and `ticket show`.

Three timers, each counted in calendar time (calendars.py) from the ticket's creation:
first response (stops at the first agent reply), resolution (stops while resolved), and
the update interval (from the last mail the customer got).  The first two pause while
the ticket is `pending` (waiting on the customer) or `on-hold`; the pauses are read from
the ticket's status events, so nothing but the events needs to be kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import models
from .calendars import Calendar
from .models import Event, Message, Ticket

TIMERS = ("first_response", "update", "resolution")
PAUSED = frozenset({"pending", "on-hold", "resolved", "closed"})  # the SLA clocks stop
DONE = frozenset({"resolved", "closed"})
NO_UPDATES = frozenset({"pending", "resolved", "closed"})  # waiting on the customer, or done
# The events after which the due times may move; any other change leaves them as they are.
MATTERS = frozenset(
    {"status", "priority", "queue", "sla_policy", "update_every", "first-response", "merged-from"}
)


@dataclass(frozen=True)
class Terms:
    """The SLA that holds for a ticket: its policy's budgets (minutes) and calendar."""

    policy: str  # "default" or a [sla.policies] name
    source: str  # why this policy: "default", "queue billing", "rule or agent"
    calendar: Calendar
    first_response: int
    update_interval: int
    resolution: int
    warning: int  # percent of a timer's time left when the assignee is warned

    def minutes(self, timer: str) -> int:
        return {"first_response": self.first_response, "update": self.update_interval}.get(
            timer, self.resolution
        )


def terms(ticket: Ticket, config) -> Terms:
    """The policy for `ticket`: its own (a rule's `sla:` or an agent's), else its queue's,
    else [sla]; the calendar: the policy's, else the queue's, else [sla]'s."""
    sla = config.sla
    queue = config.queues.get(ticket.queue)
    name, source = "default", "default"
    if ticket.sla_policy and ticket.sla_policy in sla.policies:
        name, source = ticket.sla_policy, "set on the ticket"
    elif queue and queue.sla:
        name, source = queue.sla, f"queue {ticket.queue}"
    elif ticket.sla_policy:  # a rule's `sla:` naming no policy: say so where it is explained
        source = f"no policy {ticket.sla_policy!r} in [sla.policies]: the default"
    policy = sla.policies.get(name)
    p = ticket.priority

    def budget(timer: str) -> int:
        own = getattr(policy, timer, {}) if policy else {}
        return own.get(p, getattr(sla, timer).get(p, 0))

    calendar = (policy.calendar if policy else "") or (queue.calendar if queue else "") or sla.calendar
    return Terms(
        name,
        source,
        config.calendar(calendar),
        budget("first_response"),
        budget("update_interval"),
        budget("resolution"),
        (policy.warning if policy and policy.warning else sla.warning),
    )


@dataclass
class Timer:
    """One timer of a ticket as of now."""

    name: str
    minutes: int  # its budget
    due: datetime | None  # None: met, stopped, off, or paused
    warn_at: datetime | None
    paused: str = ""  # the status it is paused in
    start: datetime | None = None  # where its last running stretch began (explain)
    left: float = 0.0  # open seconds of the budget left at `start`
    pauses: list[tuple[datetime, datetime, str]] = field(default_factory=list)


def periods(
    ticket: Ticket, changes: list[tuple[datetime, str]]
) -> list[tuple[datetime, datetime | None, str]]:
    """The ticket's life as (from, to or None for now, status), from its status changes."""
    out: list[tuple[datetime, datetime | None, str]] = []
    start, status = ticket.created_at, "new"
    for at, to in changes:
        if at > start:
            out.append((start, at, status))
            start = at
        status = to
    out.append((start, None, status))
    return out


def status_changes(ticket: Ticket) -> list[tuple[datetime, str]]:
    """(when, new status) for each status event of `ticket`, oldest first."""
    rows = models.raw(
        Event,
        ("status_changes",),
        lambda p: (
            f'SELECT "at", "detail" FROM "event" WHERE "ticket_id" = {p} AND "kind" = {p} ORDER BY "id"'
        ),
        [ticket.number, "status"],
    )
    return [(row.at, row.detail.get("to")) for row in rows]


def status_changes_many(numbers: list[int]) -> dict[int, list[tuple[datetime, str]]]:
    """`status_changes` of several tickets in one query."""
    out: dict[int, list[tuple[datetime, str]]] = {n: [] for n in numbers}
    if numbers:
        k = len(numbers)
        rows = models.raw(
            Event,
            ("status_changes_many", k),
            lambda p: (
                f'SELECT "ticket_id" AS "of_ticket", "at", "detail" FROM "event" WHERE "ticket_id" IN '
                f'({", ".join([p] * k)}) AND "kind" = {p} ORDER BY "id"'
            ),
            [*numbers, "status"],
        )
        for row in rows:
            out[row.of_ticket].append((row.at, row.detail.get("to")))
    return out


def last_sent_many(numbers: list[int]) -> dict[int, datetime]:
    """`last_sent` of several tickets in one query (absent: nothing sent)."""
    if not numbers:
        return {}
    k = len(numbers)
    rows = models.raw(
        Message,
        ("last_sent_many", k),
        lambda p: (
            f'SELECT "ticket_id" AS "of_ticket", MAX("created_at") AS "created_at" FROM "message" '
            f'WHERE "ticket_id" IN ({", ".join([p] * k)}) AND "direction" = {p} GROUP BY "ticket_id"'
        ),
        [*numbers, "out"],
    )
    return {row.of_ticket: row.created_at for row in rows if row.created_at}


def last_sent(ticket: Ticket) -> datetime:
    """When the customer last got mail of ours about `ticket` (an acknowledgement, an
    agent's reply, an update): the update interval counts from there."""
    rows = models.raw(
        Message,
        ("last_sent",),
        lambda p: (
            f'SELECT MAX("created_at") AS "created_at" FROM "message" WHERE "ticket_id" = {p} '
            f'AND "direction" = {p}'
        ),
        [ticket.number, "out"],
    )
    found = next((row.created_at for row in rows), None)
    return found or ticket.created_at


def _count(cal, life, seconds: float) -> Timer:
    """Walk `life` spending `seconds` of open time in its running stretches."""
    timer = Timer("", 0, None, None, left=seconds)
    for start, end, status in life:
        if status in PAUSED:
            if end is not None:
                timer.pauses.append((start, end, status))
            else:
                timer.paused = status
            continue
        used = cal.between(start, end) if end is not None else None
        if used is None or used >= timer.left:
            timer.start, timer.due = start, cal.add(start, timer.left)
            return timer
        timer.left -= used
    return timer


def timers(
    ticket: Ticket, terms_: Terms, changes: list[tuple[datetime, str]], sent: datetime
) -> dict[str, Timer]:
    """The three timers of `ticket` (see the module's docstring)."""
    cal = terms_.calendar
    life = periods(ticket, changes)
    out = {}
    for name in ("first_response", "resolution"):
        minutes = terms_.minutes(name)
        if (
            minutes <= 0
            or (name == "first_response" and ticket.first_response_at)
            or (name == "resolution" and ticket.status in DONE)
        ):
            out[name] = Timer(name, minutes, None, None)
            continue
        t = _count(cal, life, minutes * 60)
        warn = _count(cal, life, minutes * 60 * (100 - terms_.warning) / 100)
        t.name, t.minutes, t.warn_at = name, minutes, warn.due
        out[name] = t
    every = terms_.update_interval if ticket.update_every is None else ticket.update_every
    if every <= 0 or ticket.status in NO_UPDATES:
        out["update"] = Timer("update", every, None, None, paused=ticket.status if every > 0 else "")
    else:
        due = cal.add(sent, every * 60)
        out["update"] = Timer("update", every, due, None, start=sent, left=every * 60)
    return out


def refresh(
    ticket: Ticket,
    config,
    now: datetime,
    *,
    pending: list[dict] | tuple = (),
    sent: datetime | None = None,
    changes: list[tuple[datetime, str]] | None = None,
) -> dict:
    """Recompute `ticket`'s due times and `next_check`; write the ones that moved (no
    event: they follow from what changed; a new ticket has them from tickets.create).
    `pending`: events of this unit of
    work not written yet (the pipeline writes a batch's at its end).  `sent`: the caller
    just mailed the customer (the update interval counts from it); `changes`: the ticket's
    `status_changes`, read already.  Returns what was written."""
    t = terms(ticket, config)
    if changes is None:
        changes = status_changes(ticket)
    changes = changes + [
        (now, e["detail"]["to"]) for e in pending if e["kind"] == "status" and e["ticket"] == ticket.number
    ]
    sent = sent or last_sent(ticket)
    values = due_values(ticket, config, changes, sent, t)
    moved = {k: v for k, v in values.items() if getattr(ticket, k) != v}
    if moved:
        models.update(Ticket, ticket.number, moved)
        for k, v in moved.items():
            setattr(ticket, k, v)
    return moved


def due_values(ticket: Ticket, config, changes: list, sent: datetime, terms_: Terms | None = None) -> dict:
    """The due-time columns of `ticket` (and `next_check`) from its status `changes` and
    the last mail `sent` to the customer; tickets.create puts them in a new ticket's INSERT."""
    found = timers(ticket, terms_ or terms(ticket, config), changes, sent)
    return {
        "due_first_response": found["first_response"].due,
        "due_next_update": found["update"].due,
        "due_resolution": found["resolution"].due,
        "next_check": next_check(ticket, found, config, changes),
    }


def next_check(ticket: Ticket, found: dict[str, Timer], config, changes) -> datetime | None:
    """The first moment a timed job has something to do for `ticket`: a warning not yet
    given, a breach not yet acted on, an update, a reminder, an auto-resolve, a close."""
    state = ticket.sla_state or {}
    warned, breached = state.get("warned", {}), state.get("breached", {})
    times = []
    for name in ("first_response", "resolution"):
        timer = found[name]
        if timer.due is None:
            continue
        key = timer.due.isoformat()
        if breached.get(name) != key:
            times.append(timer.due)
        if timer.warn_at is not None and warned.get(name) != key and breached.get(name) != key:
            times.append(timer.warn_at)
    if found["update"].due is not None:
        times.append(found["update"].due)
    since = status_since(ticket, changes)
    sla = config.sla
    if ticket.status == "pending":
        if sla.reminder_days and state.get("reminded") != since.isoformat():
            times.append(since + timedelta(days=sla.reminder_days))
        if sla.autoresolve_days:
            times.append(since + timedelta(days=sla.reminder_days + sla.autoresolve_days))
    if ticket.status == "resolved":
        times.append(since + timedelta(days=sla.reopen_days))
    return min(times) if times else None


def status_since(ticket: Ticket, changes: list[tuple[datetime, str]]) -> datetime:
    """When `ticket` took its current status."""
    return changes[-1][0] if changes else ticket.created_at


def explain(ticket: Ticket, config, now: datetime) -> dict:
    """How each due time of `ticket` was reached: the policy and why, the calendar, and
    per timer its budget, the pauses, and the calendar's own account of the last stretch
    (the closed days and holidays it skipped)."""
    t = terms(ticket, config)
    changes = status_changes(ticket)
    found = timers(ticket, t, changes, last_sent(ticket))
    out = {
        "ticket": ticket.number,
        "priority": ticket.priority,
        "status": ticket.status,
        "policy": t.policy,
        "policy_source": t.source,
        "calendar": t.calendar.describe(),
        "warning_percent": t.warning,
        "timers": {},
    }
    for name, timer in found.items():
        lines = []
        if name == "first_response" and ticket.first_response_at:
            lines.append(f"met: first response at {ticket.first_response_at.isoformat()}")
        elif timer.minutes <= 0:
            lines.append("off")
        elif timer.due is None:
            lines.append(f"paused while {timer.paused}" if timer.paused else "stopped")
        for a, b, status in timer.pauses:
            lines.append(f"paused {a:%Y-%m-%d %H:%M} to {b:%Y-%m-%d %H:%M} UTC ({status}): not counted")
        if timer.due is not None and timer.start is not None:
            spent = timer.minutes * 60 - timer.left
            if spent > 0:
                lines.append(
                    f"{_minutes(spent / 60)} already counted before {timer.start:%Y-%m-%d %H:%M} UTC"
                )
            _, walk = t.calendar.explain(timer.start, timer.left)
            lines += walk
        out["timers"][name] = {
            "minutes": timer.minutes,
            "due": timer.due.isoformat() if timer.due else None,
            "warn_at": timer.warn_at.isoformat() if timer.warn_at else None,
            "breached": bool(timer.due and timer.due <= now),
            "lines": lines,
        }
    return out


def _minutes(m: float) -> str:
    m = int(round(m))
    return f"{m // 60}h{m % 60:02d}" if m >= 60 else f"{m} min"
