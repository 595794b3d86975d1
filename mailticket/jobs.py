"""The timed jobs: one pass over the tickets that have something due, as of a time.

Place in the flow: the daemon's scheduler (APScheduler, daemon.py) calls `tick` every
minute; `mailticket tick [--at] [--dry-run]` calls the same for cron or an admin's
look ahead.  All state lives in the ticket rows (sla.py's due times, `next_check`,
`sla_state` recording what was sent for which due time), so a restart, a day of
downtime or a second daemon loses nothing and sends nothing twice: each ticket is
claimed by moving its `next_check` (compare-and-set) before anything is done for it.

For each ticket whose `next_check` has come:
- a timer (first response, resolution) near its due time: a `warning` to the assignee
  (or the group), once per due time;
- a timer past its due time: the ticket escalates to the next tier's group, which is
  notified (`escalation`) with the full history, and the customer is told (`update`,
  template `escalated`); at the last tier the assignee is warned instead;
- the update interval elapsed: a status `update` to the customer, inside the ticket's
  calendar hours (the due time is counted in them);
- pending for `reminder_days`: one `reminder`; `autoresolve_days` later: resolved, with
  a `resolution` mail (template `autoresolve`);
- resolved for `reopen_days`: closed.
Every step is an event by "system" on the ticket; the ticket changes go through
tickets.change like an agent's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import agents, models, notifications, notify, sla, tickets
from .calendars import format_when
from .models import Ticket

CLAIM = timedelta(minutes=5)  # a claimed ticket's next_check: another daemon waits that long
BATCH = 200  # tickets per pass


@dataclass
class Pass:
    """What one pass did (or, dry, would do)."""

    at: datetime
    actions: list[dict] = field(default_factory=list)

    def did(self, ticket: Ticket, action: str, **detail) -> None:
        self.actions.append({"ticket": ticket.number, "action": action, **detail})


def tick(env, now: datetime, *, limit: int = BATCH) -> Pass:
    """One pass of every timed job as of `now` (inside the caller's transaction)."""
    done = Pass(now)
    for number, check in due(now, limit):
        if not _claim(number, check, now):
            continue  # another daemon has it
        ticket = tickets.by_number(number)
        if ticket is not None:
            act(ticket, env, now, done)
    models.prune_automatic_counts(now)
    return done


def due(now: datetime, limit: int) -> list[tuple[int, datetime]]:
    rows = models.raw(
        Ticket,
        ("jobs_due",),
        lambda p: (
            f'SELECT "number", "next_check" FROM "ticket" WHERE "next_check" <= {p} '
            f'ORDER BY "next_check" LIMIT {p}'
        ),
        [Ticket.next_check.db_value(now), limit],
    )
    return [(row.number, row.next_check) for row in rows]


def _claim(number: int, check: datetime, now: datetime) -> bool:
    """Move the ticket's next_check out of the others' way, if it is still `check`."""
    query = Ticket.update(next_check=now + CLAIM).where(
        (Ticket.number == number) & (Ticket.next_check == check)
    )
    return query.execute() == 1


def act(ticket: Ticket, env, now: datetime, done: Pass) -> None:
    """Everything due for `ticket` at `now`, then its due times afresh."""
    cfg = env.config
    terms = sla.terms(ticket, cfg)
    changes = sla.status_changes(ticket)
    found = sla.timers(ticket, terms, changes, sla.last_sent(ticket))
    state = dict(ticket.sla_state or {})
    warned, breached = dict(state.get("warned", {})), dict(state.get("breached", {}))
    events: list[dict] = []
    for name in ("first_response", "resolution"):
        timer = found[name]
        if timer.due is None:
            continue
        key = timer.due.isoformat()
        if timer.due <= now and breached.get(name) != key:
            breached[name] = key
            events += _breach(ticket, name, timer, env, now, done)
        elif (
            timer.warn_at is not None
            and timer.warn_at <= now
            and key not in (warned.get(name), breached.get(name))
        ):
            warned[name] = key
            events += _warn(ticket, name, timer, env, now, done, breached=False)
    update = found["update"]
    if update.due is not None and update.due <= now:
        events += send_update(ticket, env, now, done)
    since = sla.status_since(ticket, changes)
    s = cfg.sla
    if ticket.status == "pending" and s.reminder_days:
        if now >= since + timedelta(days=s.reminder_days) and state.get("reminded") != since.isoformat():
            state["reminded"] = since.isoformat()
            events += _customer(
                ticket,
                "reminder",
                "reminder",
                env,
                now,
                done,
                days=(now - since).days,
                resolve_on=_when(ticket, env, since + timedelta(days=s.reminder_days + s.autoresolve_days))
                if s.autoresolve_days
                else "",
            )
    if ticket.status == "pending" and s.autoresolve_days:
        if now >= since + timedelta(days=s.reminder_days + s.autoresolve_days):
            events += tickets.change(
                ticket,
                {"status": "resolved"},
                actor="system",
                now=now,
                why=f"no answer for {(now - since).days} days",
            )
            events += _customer(
                ticket,
                "resolution",
                "autoresolve",
                env,
                now,
                done,
                days=(now - since).days,
                reopen_days=s.reopen_days,
            )
            done.did(ticket, "autoresolved")
    elif ticket.status == "resolved" and now >= since + timedelta(days=s.reopen_days):
        events += tickets.change(
            ticket, {"status": "closed"}, actor="system", now=now, why=f"resolved {s.reopen_days} days ago"
        )
        done.did(ticket, "closed")
    state["warned"], state["breached"] = warned, breached
    if state != (ticket.sla_state or {}):
        models.update(Ticket, ticket.number, {"sla_state": state})
        ticket.sla_state = state
    tickets.save_events(events, now)
    sla.refresh(ticket, cfg, now)


def _when(ticket: Ticket, env, when: datetime) -> str:
    return format_when(when, ticket.language, env.config.helpdesk.timezone)


def _customer(
    ticket: Ticket, kind: str, template: str, env, now: datetime, done: Pass, **context
) -> list[dict]:
    """`template` to the customer as outbox `kind`, or the reason it was withheld."""
    msgid = notify.tell_customer(ticket, kind=kind, template=template, env=env, now=now, **context)
    if not msgid:
        why = notify.automatic_block(ticket.requester, env.config.helpdesk, now)
        done.did(ticket, f"{template}-skipped", why=why)
        return [tickets.event(ticket, "system", f"{template}-skipped", {"why": why})]
    done.did(ticket, template, to=ticket.requester)
    return [tickets.event(ticket, "system", template, {"to": ticket.requester, "message_id": msgid})]


def send_update(ticket: Ticket, env, now: datetime, done: Pass, text: str = "") -> list[dict]:
    """A status update to the customer: where the ticket stands, who holds it, at which tier."""
    holder = ""
    if ticket.assignee:
        found = agents.find(ticket.assignee)
        holder = found.name if found and found.name else ticket.assignee
    elif ticket.group:
        holder = ticket.group
    interval = (
        sla.terms(ticket, env.config).update_interval if ticket.update_every is None else ticket.update_every
    )
    nxt = (
        _when(ticket, env, sla.terms(ticket, env.config).calendar.add(now, interval * 60))
        if interval > 0
        else ""
    )
    return _customer(
        ticket,
        "update",
        "update",
        env,
        now,
        done,
        status=ticket.status,
        holder=holder,
        tier=ticket.tier,
        next_update=nxt,
        text=text,
    )


def _warn(ticket: Ticket, name: str, timer, env, now: datetime, done: Pass, *, breached: bool) -> list[dict]:
    left = "" if breached else _duration(sla.terms(ticket, env.config).calendar.between(now, timer.due))
    extra = {"timer": name, "due": _when(ticket, env, timer.due), "left": left, "breached": breached}
    out = [
        tickets.event(
            ticket,
            "system",
            "sla-warning",
            {"timer": name, "due": timer.due.isoformat(), "breached": breached},
        )
    ]
    out += notifications.notify_agents(
        ticket, why=f"sla-{name}", text="", author=None, now=now, env=env, kind="warning", extra=extra
    )
    done.did(ticket, "warning", timer=name, due=timer.due.isoformat(), breached=breached)
    return out


def _breach(ticket: Ticket, name: str, timer, env, now: datetime, done: Pass) -> list[dict]:
    """Past due: up one tier (its group told, with the history; the customer told), or,
    at the last tier, the assignee warned that it is breached."""
    due = timer.due.isoformat()
    out = [tickets.event(ticket, "system", "sla-breached", {"timer": name, "due": due})]
    reason = f"{name.replace('_', ' ')} due {_when(ticket, env, timer.due)} was breached"
    escalated = escalate(ticket, env, now, done, actor="system", reason=reason)
    if escalated is None:
        return out + _warn(ticket, name, timer, env, now, done, breached=True)
    return out + escalated


def escalate(ticket: Ticket, env, now: datetime, done: Pass, *, actor: str, reason: str) -> list[dict] | None:
    """Move `ticket` to the next tier's group, notify that group (`escalation`, with the
    history) and tell the customer; None when there is no next tier or no group for it."""
    tier = (ticket.tier or 1) + 1
    if tier > env.config.sla.tiers:
        return None
    group = agents.group_for_tier(tier)
    if group is None:
        done.did(ticket, "escalation-skipped", why=f"no group of tier {tier} agents")
        return None
    out = tickets.change(
        ticket, {"tier": tier, "group": group, "assignee": None}, actor=actor, now=now, why=reason
    )
    out += notifications.notify_agents(
        ticket,
        why="escalated",
        text=reason,
        author=None,
        now=now,
        env=env,
        kind="escalation",
        extra={"reason": reason, "tier": tier},
    )
    out += _customer(ticket, "update", "escalated", env, now, done, tier=tier, group=group)
    done.did(ticket, "escalated", tier=tier, group=group, reason=reason)
    return out


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes >= 120:
        return f"{minutes // 60} hours"
    return f"{minutes} minutes"


def tell_resolved(ticket: Ticket, env, now: datetime, *, agent_name: str = "", text: str = "") -> list[dict]:
    """The customer's `resolution` mail when an agent resolves `ticket` (the agent's text
    when given; how to reopen)."""
    return _customer(
        ticket,
        "resolution",
        "resolution",
        env,
        now,
        Pass(now),
        text=text,
        agent_name=agent_name,
        reopen_days=env.config.sla.reopen_days,
    )
