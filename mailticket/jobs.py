"""The timed jobs: one pass over the tickets that have something due, as of a time.

Place in the flow: the daemon's timers process (children.py, APScheduler) calls `tick`
every `[daemon] tick_interval` seconds; `mailticket tick [--at] [--dry-run]` calls the
same for cron or an admin's look ahead.  All state lives in the ticket rows (sla.py's
due times, `next_check`, `sla_state` recording what was sent for which due time), so a
restart, a day of downtime or a second daemon loses nothing and sends nothing twice:
a pass takes its tickets with `FOR UPDATE SKIP LOCKED` on PostgreSQL (another daemon's
pass takes others), under the writer lock on SQLite, and their new `next_check` is
written before the pass commits.

For each ticket whose `next_check` has come:
- a timer (first response, resolution) near its due time: a `warning` to the assignee
  (or the group), once per due time;
- a timer past its due time: the ticket escalates to the next tier's group, which is
  notified (`escalation`) with the full history, and the customer is told (`update`,
  template `escalated`); at the last tier the assignee is warned instead;
- the update interval elapsed: a status `update` to the customer, inside the ticket's
  calendar hours (the due time is counted in them), unless this pass told them already;
- pending for `reminder_days`: one `reminder`; `autoresolve_days` later: resolved, with
  a `resolution` mail (template `autoresolve`);
- resolved for `reopen_days`: closed.
Every step is an event by "system" on the ticket; the ticket changes go through
tickets.change like an agent's.  A pass reads what its tickets need in a few queries
for them all and writes its mail, messages and events in one statement each.
"""

from __future__ import annotations

import email.utils
import logging
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from . import agents, models, notifications, notify, sla, tickets
from .calendars import WEEKDAYS, format_when
from .db import TRANSIENT_ERRORS
from .models import Job, Message, SqliteDatabase, Ticket, database_proxy

log = logging.getLogger(__name__)

BATCH = 1000  # tickets per pass
RETRY_FAILED = timedelta(hours=1)  # a ticket whose jobs failed is tried again after this


class Pass:
    """One pass, as of `at`: what it did (or, dry, would do), and the customers' mail it
    queues for its tickets, written together by `flush`."""

    def __init__(self, env, at: datetime, batch: list[Ticket] = ()) -> None:  # type: ignore[assignment]
        self.env, self.at = env, at
        self.actions: list[dict] = []
        self.told: set[int] = set()  # tickets whose customer this pass mailed
        self._rows: list[dict] = []
        self._messages: list[dict] = []
        self._parents = tickets.last_customer_message_ids([t.number for t in batch])
        self._counts, self._marks = notify.customer_counts(sorted({t.requester for t in batch}), at)

    def did(self, ticket: Ticket, action: str, **detail) -> None:
        self.actions.append({"ticket": ticket.number, "action": action, **detail})

    def mark(self) -> tuple[int, int, int, int]:
        return len(self.actions), len(self._rows), len(self._messages), len(self.told)

    def undo(self, mark: tuple[int, int, int, int], ticket: Ticket) -> None:
        """Forget what the pass did for `ticket` since `mark` (its jobs failed)."""
        del self.actions[mark[0] :], self._rows[mark[1] :], self._messages[mark[2] :]
        self.told.discard(ticket.number)

    def tell(self, ticket: Ticket, kind: str, template: str, **context) -> list[dict]:
        """`template` to `ticket`'s customer as outbox `kind` (update, reminder,
        resolution), threaded to their last message and recorded on the ticket (the
        update interval counts from it); or, when the automatic-mail limits say no, the
        reason.  The events that say which."""
        env, now = self.env, self.at
        hd, to = env.config.helpdesk, ticket.requester
        why = self._blocked(to)
        if why:
            self.did(ticket, f"{template}-skipped", why=why)
            return [tickets.event(ticket, "system", f"{template}-skipped", {"why": why})]
        if ticket.number not in self._parents:
            self._parents.update(tickets.last_customer_message_ids([ticket.number]))
        parent = self._parents.get(ticket.number)
        row, message = notify.customer_mail(
            ticket,
            kind=kind,
            template=template,
            to=to,
            parent=(parent, [parent] if parent else [], None),
            helpdesk=hd,
            templates=env.templates,
            token=env.tokens.format(ticket.number),
            now=now,
            **context,
        )
        msgid = row["message_id"]
        self._rows.append(row)
        self._messages.append(message)
        for scope in notify.limit_scopes(to, kind):
            self._counts[scope] = self._counts.get(scope, 0) + 1
        self.told.add(ticket.number)
        self.did(ticket, template, to=to)
        return [tickets.event(ticket, "system", template, {"to": to, "message_id": msgid})]

    def _blocked(self, to: str) -> str:
        scopes = notify.limit_scopes(to, "update")
        if any(s not in self._counts for s in scopes) or to.lower() not in self._marks:
            counts, marks = notify.customer_counts([to], self.at)
            for scope, n in counts.items():
                self._counts.setdefault(scope, n)
            self._marks.setdefault(to.lower(), marks.get(to.lower()))
        return notify.customer_block(to, self.env.config.helpdesk, self._counts, self._marks.get(to.lower()))

    def flush(self) -> None:
        """Write the customers' mail of the pass: the outbox rows, their messages."""
        notify.queue_rows(self._rows, self.at)
        if self._messages:
            models.insert_many(Message, self._messages)
        self._rows, self._messages = [], []


def tick(env, now: datetime, *, limit: int = BATCH) -> Pass:
    """One pass of every timed job as of `now` (inside the caller's transaction)."""
    batch = claim(now, limit)
    done = Pass(env, now, batch)
    numbers = [t.number for t in batch]
    changes, sent = sla.status_changes_many(numbers), sla.last_sent_many(numbers)
    db = database_proxy
    sqlite = isinstance(db.obj, SqliteDatabase)
    events: list[dict] = []
    env.deferred = []  # the pass's notifications to agents, sent together below
    try:
        for ticket in batch:
            # A savepoint: a failure undoes this ticket only (PostgreSQL's are released by
            # the commit, as the worker's are).
            point = f'"t{ticket.number}"'
            db.execute_sql(f"SAVEPOINT {point}")
            mark, written, intents = done.mark(), len(events), len(env.deferred)
            try:
                events += act(ticket, done, changes.get(ticket.number, []), sent.get(ticket.number))
                if sqlite:
                    db.execute_sql(f"RELEASE SAVEPOINT {point}")
            except TRANSIENT_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - this ticket undone; the others go on
                db.execute_sql(f"ROLLBACK TO SAVEPOINT {point}")
                del events[written:], env.deferred[intents:]
                done.undo(mark, ticket)
                events += _failed(ticket, exc, done, now)
        events += notifications.send(env.deferred, env)
    finally:
        env.deferred = None
    done.flush()
    tickets.save_events(events, now)
    report_job(env, now, done)
    models.prune_automatic_counts(now)
    return done


# --- the helpdesk's own jobs -------------------------------------------------------------


def report_job(env, now: datetime, done: Pass) -> None:
    """`[report] mail_to`: the report of the last `every_days` mailed to the admins when
    it is due (Job "report"; a daemon that was down sends one, not one per missed week)."""
    cfg = env.config.report
    if not cfg.mail_to:
        return
    query = Job.select().where(Job.name == "report")
    if not isinstance(database_proxy.obj, SqliteDatabase):
        query = query.for_update(skip_locked=True)  # another daemon's pass has it: skip
    row = query.first()
    if row is None:
        Job.insert(name="report", next_at=next_report_at(env.config, now)).on_conflict_ignore().execute()
        return
    if row.next_at > now:
        return
    mail_report(env, now - timedelta(days=cfg.every_days), now, done)
    Job.update(last_at=now, next_at=next_report_at(env.config, now)).where(Job.name == "report").execute()


def next_report_at(config, after: datetime) -> datetime:
    """The next time the report is due after `after`: `[report] hour` o'clock in the
    helpdesk's timezone, on `weekday` when it goes weekly, else `every_days` on."""
    cfg = config.report
    zone = ZoneInfo(config.helpdesk.timezone)
    local = after.astimezone(zone)
    weekly = cfg.every_days % 7 == 0
    for n in range(cfg.every_days + 8):
        day = local.date() + timedelta(days=n)
        at = datetime.combine(day, time(cfg.hour), zone)
        if at > after and (not weekly or day.weekday() == WEEKDAYS.index(cfg.weekday)):
            return at.astimezone(timezone.utc)
    return after + timedelta(days=cfg.every_days)  # (not reached)


def mail_report(env, since: datetime, until: datetime, done: Pass) -> list[int]:
    """The report of [since, until) to `[report] mail_to`: its figures as text, the HTML
    report (charts inline) attached; outbox kind `report`.  The outbox rows' ids."""
    from . import report, report_html
    from .attachments import AttachmentStore

    cfg, hd = env.config.report, env.config.helpdesk
    data = report.compute(env.config, since, until, cfg.by)
    html = report_html.render(data).encode("utf-8")
    sha = AttachmentStore(env.config.paths.attachments).save(html)
    period = f"{since:%Y-%m-%d} to {until:%Y-%m-%d}"
    rendered = env.templates.render(
        "report", hd.language, hd.language, helpdesk=hd.name, period=period, data=data, by=cfg.by
    )
    rows = [
        notify.outbox_row(
            kind="report",
            ticket=None,
            mail_from=hd.address,
            to=to,
            rendered=rendered,
            headers={
                "From": email.utils.formataddr((hd.name, hd.address)),
                "Auto-Submitted": "auto-generated",
            },
            message_id=notify.make_msgid(hd.domain),
            now=until,
            automatic=False,
            attachments=[
                {"filename": f"report-{since:%Y%m%d}.html", "content_type": "text/html", "sha256": sha}
            ],
        )
        for to in cfg.mail_to
    ]
    done.actions.append({"ticket": None, "action": "report", "to": list(cfg.mail_to), "period": period})
    return notify.queue_rows(rows, until)


def claim(now: datetime, limit: int) -> list[Ticket]:
    """The tickets with something due, soonest first; on PostgreSQL locked for this pass,
    skipping those another daemon's pass holds."""
    query = Ticket.select().where(Ticket.next_check <= now).order_by(Ticket.next_check).limit(limit)
    if not isinstance(database_proxy.obj, SqliteDatabase):
        query = query.for_update(skip_locked=True)  # FOR UPDATE SKIP LOCKED
    return list(query)


def _failed(ticket: Ticket, exc: Exception, done: Pass, now: datetime) -> list[dict]:
    """A ticket whose jobs raised: logged, tried again later, the others go on."""
    log.error("timers: #%s: %s: %s", ticket.number, type(exc).__name__, exc, exc_info=exc)
    models.update(Ticket, ticket.number, {"next_check": now + RETRY_FAILED})
    done.did(ticket, "failed", why=f"{type(exc).__name__}: {exc}")
    return [tickets.event(ticket, "system", "timers-failed", {"why": f"{type(exc).__name__}: {exc}"[:500]})]


def act(ticket: Ticket, p: Pass, changes: list, sent: datetime | None) -> list[dict]:
    """Everything due for `ticket` at the pass's time, then its due times afresh; the events."""
    env, now = p.env, p.at
    cfg = env.config
    terms = sla.terms(ticket, cfg)
    found = sla.timers(ticket, terms, changes, sent or ticket.created_at)
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
            events += _breach(ticket, name, timer, p)
        elif (
            timer.warn_at is not None
            and timer.warn_at <= now
            and key not in (warned.get(name), breached.get(name))
        ):
            warned[name] = key
            events += _warn(ticket, name, timer, p, breached=False)
    update = found["update"]
    if update.due is not None and update.due <= now and ticket.number not in p.told:
        events += send_update(ticket, p)  # (an escalation's notice just told the customer)
    since = sla.status_since(ticket, changes)
    s = cfg.sla
    if ticket.status == "pending" and s.reminder_days:
        if now >= since + timedelta(days=s.reminder_days) and state.get("reminded") != since.isoformat():
            state["reminded"] = since.isoformat()
            resolve_on = since + timedelta(days=s.reminder_days + s.autoresolve_days)
            events += p.tell(
                ticket,
                "reminder",
                "reminder",
                days=(now - since).days,
                resolve_on=_when(ticket, env, resolve_on) if s.autoresolve_days else "",
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
            events += p.tell(
                ticket, "resolution", "autoresolve", days=(now - since).days, reopen_days=s.reopen_days
            )
            p.did(ticket, "autoresolved")
    elif ticket.status == "resolved" and now >= since + timedelta(days=s.reopen_days):
        events += tickets.change(
            ticket, {"status": "closed"}, actor="system", now=now, why=f"resolved {s.reopen_days} days ago"
        )
        p.did(ticket, "closed")
    state.update({k: v for k, v in (("warned", warned), ("breached", breached)) if v})
    if state != (ticket.sla_state or {}):
        models.update(Ticket, ticket.number, {"sla_state": state})
        ticket.sla_state = state
    told = now if ticket.number in p.told else sent
    sla.refresh(ticket, cfg, now, changes=changes, pending=events, sent=told)
    return events


def _when(ticket: Ticket, env, when: datetime) -> str:
    return format_when(when, ticket.language, env.config.helpdesk.timezone)


def send_update(ticket: Ticket, p: Pass, text: str = "") -> list[dict]:
    """A status update to the customer: where the ticket stands, who holds it, at which tier."""
    env, now = p.env, p.at
    holder = ""
    if ticket.assignee:
        found = agents.find(ticket.assignee)
        holder = found.name if found and found.name else ticket.assignee
    elif ticket.group:
        holder = ticket.group
    terms = sla.terms(ticket, env.config)
    interval = terms.update_interval if ticket.update_every is None else ticket.update_every
    nxt = _when(ticket, env, terms.calendar.add(now, interval * 60)) if interval > 0 else ""
    return p.tell(
        ticket,
        "update",
        "update",
        status=ticket.status,
        holder=holder,
        tier=ticket.tier,
        next_update=nxt,
        text=text,
    )


def _warn(ticket: Ticket, name: str, timer, p: Pass, *, breached: bool) -> list[dict]:
    env, now = p.env, p.at
    left = "" if breached else _duration(sla.terms(ticket, env.config).calendar.between(now, timer.due))
    extra = {"timer": name, "due": _when(ticket, env, timer.due), "left": left, "breached": breached}
    detail = {"timer": name, "due": timer.due.isoformat(), "breached": breached}
    out = [tickets.event(ticket, "system", "sla-warning", detail)]
    out += notifications.notify_agents(
        ticket, why=f"sla-{name}", text="", author=None, now=now, env=env, kind="warning", extra=extra
    )
    p.did(ticket, "warning", timer=name, due=timer.due.isoformat(), breached=breached)
    return out


def _breach(ticket: Ticket, name: str, timer, p: Pass) -> list[dict]:
    """Past due: up one tier (its group told, with the history; the customer told), or,
    at the last tier, the assignee warned that it is breached."""
    due = timer.due.isoformat()
    out = [tickets.event(ticket, "system", "sla-breached", {"timer": name, "due": due})]
    reason = f"{name.replace('_', ' ')} due {_when(ticket, p.env, timer.due)} was breached"
    escalated = escalate(ticket, p, actor="system", reason=reason)
    if escalated is None:
        return out + _warn(ticket, name, timer, p, breached=True)
    return out + escalated


def escalate(ticket: Ticket, p: Pass, *, actor: str, reason: str) -> list[dict] | None:
    """Move `ticket` to the next tier's group, notify that group (`escalation`, with the
    history) and tell the customer; None when there is no next tier or no group for it."""
    env, now = p.env, p.at
    tier = (ticket.tier or 1) + 1
    if tier > env.config.sla.tiers:
        return None
    group = agents.group_for_tier(tier)
    if group is None:
        p.did(ticket, "escalation-skipped", why=f"no group of tier {tier} agents")
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
    out += p.tell(ticket, "update", "escalated", tier=tier, group=group)
    p.did(ticket, "escalated", tier=tier, group=group, reason=reason)
    return out


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes >= 120:
        return f"{minutes // 60} hours"
    return f"{minutes} minutes"


def tell_resolved(p: Pass, ticket: Ticket, *, agent_name: str = "", text: str = "") -> list[dict]:
    """The customer's `resolution` mail when an agent resolves `ticket` (the agent's text
    when given; how to reopen)."""
    return p.tell(
        ticket,
        "resolution",
        "resolution",
        text=text,
        agent_name=agent_name,
        reopen_days=p.env.config.sla.reopen_days,
    )
