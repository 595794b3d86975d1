"""The pipeline: what happens to one stored message, step by step (docs/architecture.md section 1).

    parse -> dedupe -> guard -> authenticate -> thread -> rating -> agent -> route -> record -> notify

An authenticated agent's mail ends at `agent` (agentmail.py, with `authenticate`;
actions.py does the reply, the note, the commands or the forward's new ticket): no
rules, no acknowledgement.  A customer's rating of a survey ends at `rating` (surveys.py).

`intake` calls `Pipeline.run(row)` inside a transaction (a savepoint when it
batches) and commits.  Each step is a small function of `(run, env)` that reads
and fills the `Run`.  Two flow-control exceptions, caught only by `Pipeline.run`:

    Stop(outcome, reason)   end quietly with that outcome (duplicate, suppressed, bounce)
    Quarantine(reason)      park the message with the step and reason (spam, ...)

Any other exception is a bug or bad input we did not foresee: `intake` rolls the
message back and quarantines it with the step that raised; except a transient error
of the database (unavailable, locked, the connection lost: `db.TRANSIENT_ERRORS`),
which is no fault of the message: `intake` rolls back the whole batch, quarantines
nothing and tries again later.

The steps decide; the writes are the modules': `dedupe.py` finds copies,
`tickets.py` creates, adds to and changes tickets (`record` calls it as an agent's
command or a timed job would), `notify.py` queues mail.  The events they return
collect in `Run.events` and are written in one INSERT when the message is done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from . import auth, dedupe, models, notifications, notify, sla, surveys, tickets
from .agentmail import agent, authenticate
from .attachments import AttachmentStore
from .clock import Clock, SystemClock
from .config import Config
from .models import Inbox, Ticket
from .parsers import MailClass, ParsedMessage
from .parsers.message import parse as parse_bytes
from .rules import Evaluation, RuleContext, RuleSet
from .tokens import clean_subject, token_format

log = logging.getLogger(__name__)

DEFAULT_QUEUE = "general"  # where a ticket goes when neither its mailbox nor a rule says


class Stop(Exception):
    """End the pipeline quietly with `outcome` (the message is committed as processed)."""

    def __init__(self, outcome: str, reason: str = "") -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


class Quarantine(Exception):
    """Park the message in quarantine with `reason` (not an error: a decision)."""


@dataclass
class Result:
    inbox_id: int
    message_id: str | None
    outcome: str
    ticket: int | None = None
    reason: str = ""
    step: str | None = None
    source: str | None = None
    latency: float | None = None  # seconds from receipt to this result
    queue: str | None = None  # the ticket's, after the rules
    priority: str | None = None

    def as_dict(self) -> dict:
        return {
            "message_id": self.message_id,
            "outcome": self.outcome,
            "ticket": self.ticket,
            "reason": self.reason or None,
        }


@dataclass
class Run:
    """What the steps know about one message so far."""

    row: Inbox
    parsed: ParsedMessage | None = None
    sender: str = ""
    no_ack: str = ""  # why no acknowledgement, when there must be none
    suppressed: str = ""  # why this is not a customer's message (auto-reply, our own mail)
    kind: str = "customer"
    ticket: Ticket | None = None
    is_new: bool = False
    linked_to: int | None = None
    evaluation: Evaluation | None = None
    extra_tickets: list[Ticket] = field(default_factory=list)
    outcome: str = ""
    reason: str = ""
    events: list[dict] = field(default_factory=list)
    reused_from: int | None = None  # the inbox row whose Message-ID this other message reuses
    # `authenticate`: "agent" (an active agent, proven), "forged" (an agent's From without
    # proof, or a signed reply address that does not verify) or "customer".
    verdict: str = "customer"
    agent: models.Agent | None = None  # the proven agent, when the verdict is "agent"
    signed: auth.Signed | None = None  # the signed reply address among the recipients

    @property
    def pm(self) -> ParsedMessage:
        """`parsed`, for the steps after `parse` (which always sets it)."""
        assert self.parsed is not None, "the parse step runs first"
        return self.parsed

    @property
    def evaluated(self) -> Evaluation:
        """`evaluation`, for the steps after `route` (which always sets it)."""
        assert self.evaluation is not None, "the route step runs first"
        return self.evaluation

    def note(self, text: str) -> None:
        """Add to the result's reason (several steps may have something to say)."""
        self.reason = f"{self.reason}; {text}" if self.reason else text

    def event(self, ticket: Ticket, actor: str, kind: str, detail: dict) -> None:
        """Note a ticket event; they are written in one statement when the message is done."""
        self.events.append(tickets.event(ticket, actor, kind, detail))


class Env:
    """What the steps need from outside: configuration, rules, templates, files, clock."""

    def __init__(
        self,
        config: Config,
        rules: RuleSet,
        clock: Clock | None = None,
        templates: notify.Templates | None = None,
    ) -> None:
        self.config = config
        self.rules = rules
        self.clock = clock or SystemClock()
        self.templates = templates or notify.Templates(config.paths.templates)
        self.attachments = AttachmentStore(config.paths.attachments)
        self.tokens = token_format(config.helpdesk.token)
        self.business_hours = config.business_hours()
        # Whether any address is marked as bounced: the worker asks once per batch, so a
        # customer's reply costs no DELETE of a mark that almost never exists.
        self.bounce_marks = True
        self._agents: list | None = None
        self._secret: bytes | None = None
        # In a worker batch: the notifications decided on, sent together at its end
        # (notifications.send); None: each is sent at once.
        self.deferred: list | None = None

    def new_batch(self) -> None:
        """What is read once per worker batch is read again: agents and bounce marks."""
        self.bounce_marks = models.any_bounced()
        self._agents = None

    def active_agents(self) -> list:
        """The active agents, read once per batch (a query per message would cost 7%)."""
        if self._agents is None:
            from . import agents

            self._agents = agents.listing()
        return self._agents

    def agent_secret(self) -> bytes:
        """The signing secret, read once (a file read per notification would cost)."""
        if self._secret is None:
            from . import auth

            self._secret = auth.secret(self.config)
        return self._secret


# --- the steps ---------------------------------------------------------------------------


def parse(run: Run, env: Env) -> None:
    if run.parsed is None:  # not parsed ahead by the worker
        run.parsed = parse_bytes(bytes(run.row.raw))
    pm = run.pm
    run.sender = pm.from_.email if pm.from_ else ""


def dedupe_step(run: Run, env: Env) -> None:
    """The same Message-ID with the same content (trace headers aside) is a `duplicate`;
    a Message-ID reused for other content makes a message of its own (dedupe.py)."""
    pm = run.pm
    run.row.message_id = pm.message_id
    run.row.dedupe_key, earlier, run.reused_from = dedupe.check(run.row, pm.message_id)
    if earlier:
        inbox_id, ticket, _ = earlier
        run.ticket = tickets.by_number(ticket) if ticket else None
        raise Stop("duplicate", f"same message as inbox #{inbox_id}")
    if run.reused_from:
        run.note(
            f"Message-ID {(pm.message_id or '')[:200]} reused: other content than inbox "
            f"#{run.reused_from}, so a message of its own"
        )


def guard(run: Run, env: Env) -> None:
    """Loop protection: never answer auto-replies, bounces, bulk mail or ourselves."""
    pm = run.pm
    loop = next((v for v in pm.headers.get("x-loop", ()) if env.config.is_ours(v.strip(" <>"))), None)
    if run.sender and env.config.is_ours(run.sender):
        run.suppressed = f"mail from our own address {run.sender}"
    elif loop is not None:  # notify marks all we send; this came back (a forward, a loop)
        run.suppressed = f"our own mail come back (X-Loop: {loop[:100]})"
    elif pm.mail_class is MailClass.AUTO_REPLY:
        run.suppressed = f"auto-reply ({pm.class_reason})"
        run.kind = "auto-reply"
    elif pm.mail_class is MailClass.BOUNCE:
        run.kind = "bounce"
    elif pm.mail_class is MailClass.BULK:
        run.no_ack = f"bulk mail ({pm.class_reason})"
    if not run.sender:
        run.no_ack = run.no_ack or "no sender address"
    if pm.envelope_sender == "":  # RFC 3834 section 2: never answer the null reverse-path
        run.no_ack = run.no_ack or "null envelope sender (Return-Path: <>)"
    if run.row.silent:
        run.no_ack = run.no_ack or "historic import"


def thread(run: Run, env: Env) -> None:
    pm = run.pm
    ids = pm.thread_ids
    if run.kind == "bounce":
        run.ticket, by_token = tickets.of_bounce(pm, env.tokens)
        if run.ticket is None:
            raise Stop(
                "bounce", "no ticket matches the bounced message (`mailticket inbox list --outcome bounce`)"
            )
        if by_token:
            run.note(f"bounce matched by the token of the returned subject, #{run.ticket.number}")
        return
    known: dict[str, int] | None = None

    def referenced() -> dict[str, int]:  # id -> ticket for the ids we have; looked up once, if needed
        nonlocal known
        if known is None:
            known = models.tickets_of_message_ids(ids)
        return known

    number = env.tokens.find(pm.subject)
    named = tickets.by_number(number) if number else None
    if named is not None:
        if tickets.may_write(
            named, run.sender, lambda: set(referenced().values()), agent=run.verdict == "agent"
        ):
            run.ticket = named
        else:
            # A stranger quoting a token opens a ticket of their own, linked to it.
            run.linked_to = named.number
            run.note(f"token #{named.number} from a stranger: new ticket linked to it")
            if tickets.names_our_mail(ids, env.config.helpdesk.domain, referenced()):
                run.no_ack = f"a reply to our mail from {run.sender}, who may not write to #{named.number}"
    if run.ticket is None and run.linked_to is None:
        run.ticket, _ = tickets.by_message_ids(ids, referenced())
        if run.ticket is None and ids and tickets.names_our_mail(ids, env.config.helpdesk.domain, {}):
            # Ours by its shape, yet unknown here: not a thread anyone may write to.
            run.no_ack = f"a reply to our mail from {run.sender}, which no ticket has"
    if run.ticket is not None and run.ticket.merged_into:
        merged, run.ticket = run.ticket.number, tickets.follow_merges(run.ticket)
        run.note(f"#{merged} was merged into #{run.ticket.number if run.ticket else '?'}")
    if run.ticket is not None and run.ticket.status == "closed":
        run.linked_to, run.ticket = run.ticket.number, None
        run.note(f"reply to closed ticket #{run.linked_to}: new ticket linked to it")
    if run.ticket is None:
        if run.suppressed:
            raise Stop("suppressed", run.suppressed)
        run.is_new = True


def rating(run: Run, env: Env) -> None:
    """A customer's rating of a survey (surveys.py): mail to a signed survey address, or a
    reply to a survey that starts with a rating.  Recorded on its ticket, the message kept
    there as the customer's; the pipeline ends here (`Stop`, outcome `rating`): no rules,
    no acknowledgement, no notification but a low rating's.

    A survey address that does not verify, names no ticket or a score off the scale rates
    nothing: logged, a `security` event on the ticket a forged one names, and the message
    goes on as ordinary mail."""
    if run.kind != "customer" or run.suppressed or not run.sender or run.verdict == "agent":
        return  # an agent's mail is the `agent` step's
    pm = run.pm
    recipients = [a.email for a in (*pm.to, *pm.cc)]
    if run.row.mailbox and "@" in run.row.mailbox:  # the envelope recipient
        recipients.append(run.row.mailbox)
    found = surveys.find(pm, recipients, env)
    if found is None:
        return
    if not found.ok:
        run.note(f"not a rating: {found.why}")
        log.warning("inbox #%s %s: not a rating: %s", run.row.id, (pm.message_id or "")[:200], found.why)
        named = tickets.by_number(found.forged) if found.forged else None
        if named is not None:
            detail = {"verdict": "forged", "sender": run.sender, "why": found.why, "inbox": run.row.id}
            run.event(named, "system", "security", detail)
        return
    t, now = found.ticket, env.clock.now()
    assert t is not None  # found.ok
    run.ticket, run.is_new, run.linked_to = t, False, None
    run.events += tickets.add_message(t, *message_columns(run, env, pm.new_text), actor=run.sender, now=now)
    run.events += surveys.record(
        t, found.score, found.comment, run.sender, found.via, now, env, thank=not run.row.silent
    )
    run.note(f"rating {found.score} of #{t.number} by {found.via}")
    raise Stop("rating", run.reason)


def rule_context(
    env: Env, ticket: Ticket | None, *, source: str, mailbox: str | None, queue: str | None
) -> RuleContext:
    """What the rules may know beyond the message: the ticket it replies to, where it came from."""
    return RuleContext(
        now=env.clock.now(),
        is_reply=ticket is not None,
        ticket_status=ticket.status if ticket else None,
        ticket_priority=ticket.priority if ticket else None,
        ticket_queue=ticket.queue if ticket else None,
        source=source,
        mailbox=mailbox,
        queue=queue or DEFAULT_QUEUE,
        business_hours=env.business_hours,
    )


def route(run: Run, env: Env) -> None:
    row = run.row
    context = rule_context(
        env, None if run.is_new else run.ticket, source=row.source, mailbox=row.mailbox, queue=row.queue
    )
    run.evaluation = evaluation = env.rules.evaluate(run.pm, context)
    if evaluation.decision.spam:
        names = ", ".join(h.rule for h in evaluation.hits)
        raise Quarantine(f"spam (rule {names})")


def record(run: Run, env: Env) -> None:
    """The ticket, the message, the events, through tickets.py's functions."""
    pm, now = run.pm, env.clock.now()
    decision = run.evaluated.decision
    parts = list(decision.split_parts) if run.is_new and len(decision.split_parts) > 1 else []
    if run.is_new:
        run.ticket = _new_ticket(run, env, part=parts[0] if parts else None)
        for part in parts[1:]:
            run.extra_tickets.append(_new_ticket(run, env, part=part, split_from=run.ticket))
        if run.extra_tickets:
            numbers = ", ".join(f"#{t.number}" for t in [run.ticket, *run.extra_tickets])
            run.note(f"split into {numbers}")
        run.outcome = "created"
        if run.reused_from:
            run.event(
                run.ticket,
                "system",
                "message-id-reused",
                {"message_id": pm.message_id, "inbox": run.reused_from},
            )
        return
    t = run.ticket
    assert t is not None  # not new: `thread` found it
    # The changes before the message: its move of `updated_at` then has nothing left to
    # write (one UPDATE of the ticket for a reply).
    reopen = tickets.REOPEN_ON_CUSTOMER_REPLY.get(t.status) if run.kind == "customer" else None
    changed = tickets.change(t, {"status": reopen} if reopen else {}, actor=run.sender, now=now)
    changed += _apply(run, t, now)
    run.events += tickets.add_message(
        t, *message_columns(run, env, pm.new_text), actor=run.sender or "unknown", now=now
    )
    if run.reused_from:
        run.event(t, "system", "message-id-reused", {"message_id": pm.message_id, "inbox": run.reused_from})
    if run.kind == "bounce":
        _mark_bounced(run, env, t)
    elif run.kind == "customer" and run.sender and env.bounce_marks and models.clear_bounced(run.sender):
        # A reply from an address whose mail bounced: it works again.
        run.event(t, "system", "bounce-cleared", {"address": run.sender})
    run.events += changed
    run.outcome = {"auto-reply": "suppressed", "bounce": "bounce"}.get(run.kind, "appended")
    run.reason = run.reason or run.suppressed or ""


def _apply(run: Run, t: Ticket, now: datetime) -> list[dict]:
    """The rules' decision on an existing ticket: each column it changes is an event by
    `rules`, beside an event for each rule that hit (`_hits`: why)."""
    names = ", ".join(f"rule {h.rule}" for h in run.evaluated.hits if h.changed) or None
    changes = run.evaluated.decision.ticket_changes(t)
    return _hits(run, t) + tickets.change(t, changes, actor="rules", now=now, why=names)


def _hits(run: Run, t: Ticket) -> list[dict]:
    """An event for each rule that hit and changed something (else it is not history)."""
    hits = run.evaluated.hits
    return [tickets.event(t, f"rule:{h.rule}", "rule", h.as_event()) for h in hits if h.changed]


def _mark_bounced(run: Run, env: Env, t: Ticket) -> None:
    """Recipients the DSN says failed for good get no more automatic mail (notify's
    `automatic_block`).  Only the ticket's own people: a bounce, or a forged one, must not
    silence an address that has nothing to do with the ticket."""
    people = {t.requester, *(t.cc or [])}
    for address, status in run.pm.bounce_failed:
        if address in people:
            env.bounce_marks = True
            models.mark_bounced(address, status, t.number, env.clock.now())
            run.event(t, "system", "bounced", {"address": address, "status": status})


def _new_ticket(run: Run, env: Env, part: str | None, split_from: Ticket | None = None) -> Ticket:
    pm, now, cfg = run.pm, env.clock.now(), env.config
    subject = env.tokens.strip(pm.subject)[: models.MAX_TICKET_SUBJECT] or "(no subject)"
    if part is not None:
        first = clean_subject(part.strip().splitlines()[0] if part.strip() else "")[:80]
        subject = f"{subject[: models.MAX_TICKET_SUBJECT - 82]}: {first}" if first else subject
    language = pm.language if pm.language in cfg.helpdesk.languages else cfg.helpdesk.language
    ours = cfg.is_ours
    cc = sorted({a.email for a in [*pm.to, *pm.cc] if a.email and not ours(a.email)} - {run.sender})
    values: dict[str, object] = dict(
        subject=subject,
        requester=run.sender or "unknown",
        requester_name=pm.from_.name if pm.from_ else "",
        cc=cc,
        language=language,
        queue=run.row.queue or DEFAULT_QUEUE,
        tags=[],
        fields={},
        linked_to=split_from.number if split_from else run.linked_to,
    )
    # The rules' decision goes into the one INSERT; the rules that hit say why.
    values.update(run.evaluated.decision.ticket_changes(Ticket(**values)))
    t, events = tickets.create(
        values,
        *message_columns(run, env, part if part is not None else pm.new_text),
        actor=run.sender or "unknown",
        now=now,
        detail={"source": run.row.source, "inbox": run.row.id},
        why="split" if split_from else run.reason,
        config=cfg,
    )
    run.events += events + _hits(run, t)
    return t


def message_columns(run: Run, env: Env, text: str) -> tuple[dict, list[dict]]:
    """The incoming message's columns and its attachments' (files saved), for tickets.py."""
    pm = run.pm
    message = dict(
        inbox=run.row.id,
        direction="in",
        kind=run.kind,
        message_id=pm.message_id or run.row.dedupe_key,
        from_addr=run.sender,
        from_name=pm.from_.name if pm.from_ else "",
        to=[a.email for a in pm.to],
        cc=[a.email for a in pm.cc],
        subject=pm.subject[: models.MAX_MESSAGE_SUBJECT],
        date=pm.date,
        text=text,
        body=pm.text,
    )
    attachments = [
        {
            "filename": a.filename,
            "content_type": a.content_type,
            "size": len(a.payload),
            "sha256": env.attachments.save(a.payload),
            "inline": a.inline,
            "content_id": a.content_id,
        }
        for a in pm.attachments
    ]
    return message, attachments


def first_response_promise(t: Ticket, env: Env, now: datetime) -> dict:
    """What the acknowledgement says of when we answer: `due`, the first response's due
    time in the customer's language and the helpdesk's timezone ("" when none), and
    `open_now`, whether the ticket's calendar is open now."""
    from .calendars import format_when

    cal = sla.terms(t, env.config).calendar
    due = t.due_first_response
    zone = env.config.helpdesk.timezone
    return {
        "due": format_when(due, t.language, zone) if due else "",
        "open_now": cal.is_open(now),
    }


def timers_step(run: Run, env: Env) -> None:
    """The SLA due times of the ticket this message changed (sla.refresh), before the
    acknowledgement.  A new ticket has them from its INSERT (tickets.create); a reply that
    changes none of what they follow from (sla.MATTERS) leaves them: most cost nothing here."""
    if run.ticket is None or run.is_new:
        return
    t = run.ticket
    if any(e["ticket"] == t.number and e["kind"] in sla.MATTERS for e in run.events):
        sla.refresh(t, env.config, env.clock.now(), pending=run.events)


def notify_step(run: Run, env: Env) -> None:
    """Tell the agents of a new ticket (and whom its rules' `notify:` names) or of a
    customer's reply (notifications.notify_agents); queue the acknowledgement of a new ticket.

    An agent's own mail is the `agent` step's; a historic import tells no one."""
    pm, cfg, now = run.pm, env.config, env.clock.now()
    tell = run.verdict != "agent" and not run.row.silent
    if not run.is_new:
        if tell and run.kind == "customer" and run.ticket is not None and run.outcome == "appended":
            run.events += notifications.notify_agents(
                run.ticket, why="customer-reply", text=pm.new_text, author=run.sender, now=now, env=env
            )
        return
    decision = run.evaluated.decision
    assert run.ticket is not None  # `record` created it
    for t in [run.ticket, *run.extra_tickets]:
        token = env.tokens.format(t.number)
        if tell:
            run.events += notifications.notify_agents(
                t,
                why="created",
                text=pm.new_text,
                author=run.sender,
                now=now,
                env=env,
                also=decision.notify,
                rules=tuple(h.rule for h in run.evaluated.hits),
            )
        if run.no_ack and not run.row.silent:
            run.event(t, "system", "ack-skipped", {"why": run.no_ack})
            if t is run.ticket:
                run.note(f"no acknowledgement: {run.no_ack}")
        if run.no_ack or run.suppressed or run.kind != "customer":
            continue
        if decision.ack is False:
            run.event(t, "system", "ack-skipped", {"why": "rule"})
            continue
        blocked = notify.automatic_block(run.sender, cfg.helpdesk, now)
        if blocked:
            run.event(t, "system", "ack-skipped", {"why": blocked})
            if t is run.ticket:
                run.note(f"acknowledgement withheld: {blocked}")
            continue
        msgid = notify.acknowledge(
            t,
            to=run.sender,
            kind=decision.template or "ack",
            token=token,
            parent=pm,
            helpdesk=cfg.helpdesk,
            templates=env.templates,
            now=now,
            **first_response_promise(t, env, now),
        )
        run.event(t, "system", "ack-queued", {"message_id": msgid})


Step = Callable[[Run, Env], None]

STEPS: tuple[tuple[str, Step], ...] = (
    ("parse", parse),
    ("dedupe", dedupe_step),
    ("guard", guard),
    ("authenticate", authenticate),
    ("thread", thread),
    ("rating", rating),
    ("agent", agent),
    ("route", route),
    ("record", record),
    ("timers", timers_step),
    ("notify", notify_step),
)


class StepFailed(Exception):
    """A step raised something unforeseen; `step` names it, the cause is chained."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"{step}: {type(cause).__name__}: {cause}")
        self.step = step
        self.cause = cause


class Pipeline:
    def __init__(self, env: Env, steps: Sequence[tuple[str, Step]] = STEPS) -> None:
        self.env = env
        self.steps = steps

    def parse_ahead(self, rows: list[Inbox]) -> dict[int, ParsedMessage]:
        """Parse rows before their transaction; a row that fails is parsed (and fails) again
        inside it, so its quarantine names the parse step."""
        out = {}
        for row in rows:
            try:
                out[row.id] = parse_bytes(bytes(row.raw))
            except Exception:  # noqa: BLE001 - reported when the step runs for real
                pass
        return out

    def run(
        self, row: Inbox, parsed: ParsedMessage | None = None, events: list[dict] | None = None
    ) -> Result:
        """Run every step on `row` (the caller holds the transaction).

        Returns the result for Stop and for a finished run; raises `Quarantine` or
        `StepFailed` for the caller to roll back and park the message.  With `events`,
        the run's ticket events are added to that list for the caller to write with its
        batch's (one INSERT per batch, not per message: a round trip each on PostgreSQL).
        """
        run = Run(row=row, parsed=parsed)
        step = ""
        try:
            for step, func in self.steps:  # noqa: B007 - `step` names the failing step below
                func(run, self.env)
        except Stop as stop:
            run.outcome, run.reason = stop.outcome, stop.reason
        except Quarantine as q:
            raise StepFailed(step, q) from q
        except Exception as exc:
            raise StepFailed(step, exc) from exc
        now = self.env.clock.now()
        done = dict(
            state="done",
            outcome=run.outcome,
            reason=run.reason or None,
            step=None,
            ticket=run.ticket.number if run.ticket is not None else None,
            processed_at=now,
            dedupe_key=row.dedupe_key,
            message_id=row.message_id,
        )
        try:  # the writes the steps left: inside the caller's guard like any step
            if events is None:
                tickets.save_events(run.events, now)
            else:
                events.extend({**e, "at": now} for e in run.events)
            models.update(Inbox, row.id, done)
        except Exception as exc:
            raise StepFailed("finish", exc) from exc
        for name, value in done.items():
            setattr(row, name, value)
        t = run.ticket
        return Result(
            row.id,
            run.parsed.message_id if run.parsed else None,
            run.outcome,
            row.ticket,
            run.reason,
            source=row.source,
            latency=(row.processed_at - row.received_at).total_seconds(),
            queue=t.queue if t is not None else None,
            priority=t.priority if t is not None else None,
        )
