"""What an agent does to a ticket, whoever asks: reply, note, commands, open, confirm.

Place in the flow (docs/architecture.md section 5, "one way to change a ticket, whoever
asks"): the pipeline's `agent` step calls these for an authenticated agent's mail, and
the CLI's `ticket reply|note|set|open` for an admin or a script.  Both get the same
history: every change goes through `tickets.change`, `tickets.add_message` or
`tickets.create`, and every event names the agent.

Each function writes its events itself (`tickets.save_events`) and queues its mail in
the outbox; none commits: the caller holds the transaction.  `env` is the pipeline's
`Env` (config, templates, tokens): anything with those attributes.

A reply goes to the customer from the helpdesk's address, never the agent's (their
address stays private, and the customer's answer comes back to the helpdesk), with
the token, threaded to the customer's last message.  A note is never sent to the
customer.  A command that is malformed, unknown or not permitted is refused with the
reason, never silently dropped: `confirm` tells the agent.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import agents, jobs, models, notifications, notify, sla, states, surveys, tickets
from .errors import TicketError
from .models import Agent, Ticket
from .parsers import commands
from .parsers.commands import Command, validate

if TYPE_CHECKING:
    from .pipeline import Env

log = logging.getLogger(__name__)

CHANNELS = ("email", "phone", "chat", "walk-in")  # how a ticket that an agent opened came in


@dataclass(frozen=True)
class Outcome:
    """One command's result: `command` as the agent wrote it, done or refused and why."""

    command: str
    ok: bool
    detail: str


# --- commands ----------------------------------------------------------------------------


def apply(
    ticket: Ticket,
    commands: list[Command],
    *,
    agent: Agent,
    now: datetime,
    env: Env,
    with_reply: bool = False,
) -> list[Outcome]:
    """Apply each command to `ticket` in order as `agent`; one Outcome per command.

    `#status resolved` sends the customer the `resolution` mail (how to reopen), unless
    `with_reply`: the agent's own text, relayed by the caller, is then the closing word.

    A refused command changes nothing; the others still apply (each line is a request
    of its own, as a person would read them).  `#note` is the caller's (it decides what
    the text is) and is reported as done.
    """
    outcomes, events = [], []
    for cmd in commands:
        why = validate(cmd)
        if why is None:
            try:
                detail, done = _command(ticket, cmd, agent=agent, now=now, env=env, with_reply=with_reply)
            except TicketError as exc:
                detail, done = str(exc), []
                why = detail
            events += done
        outcomes.append(Outcome(cmd.line, why is None, why or detail))
    tickets.save_events(events, now)
    sla.refresh(ticket, env.config, now)
    return outcomes


def _command(
    ticket: Ticket, cmd: Command, *, agent: Agent, now: datetime, env: Env, with_reply: bool = False
) -> tuple[str, list[dict]]:
    """Apply one well-formed command: what was done, and its events.  Raises TicketError
    (with the reason for the agent) when it cannot be done."""
    name, args, actor = cmd.name, cmd.args, agent.email

    def change(values: dict) -> tuple[str, list[dict]]:
        done = tickets.change(ticket, values, actor=actor, now=now, why=f"#{name}")
        shown = ", ".join(f"{k} {v}" for k, v in values.items() if not isinstance(v, (list, dict)))
        return (shown or name) if done else f"unchanged ({shown or name})", done

    if name == "status":
        detail, done = change({"status": args[0].lower()})
        if done and ticket.status == "resolved" and not with_reply:
            # (With a reply, the agent's words close it and `resolved` asks for the rating after them.)
            told = jobs.Pass(env, now, [ticket])
            done += jobs.tell_resolved(told, ticket, agent_name=agent.name or agent.email)
            done += surveys.maybe_send(told, ticket)
            told.flush()
        return detail, done
    if name == "priority":
        return change({"priority": states.priority(" ".join(args))})
    if name == "tier":
        return change({"tier": int(args[0])})
    if name == "queue":
        return change({"queue": args[0]})
    if name in ("tag", "untag"):
        current = list(ticket.tags or [])
        words = [w.lower() for w in args]
        tags = sorted(set(current) | set(words)) if name == "tag" else [t for t in current if t not in words]
        detail, done = change({"tags": tags})
        return f"tags {', '.join(tags) or '(none)'}", done
    if name == "field":
        detail, done = change({"fields": {**(ticket.fields or {}), args[0]: args[1]}})
        return f"field {args[0]} = {args[1]}", done
    if name in ("cc", "uncc"):
        address = args[0].lower()
        cc = list(ticket.cc or [])
        if name == "cc":
            if env.config.is_ours(address):
                raise TicketError(f"{address} is the helpdesk's own address")
            new = sorted({*cc, address})
        elif address not in cc:
            raise TicketError(f"{address} is not a CC of this ticket")
        else:
            new = [a for a in cc if a != address]
        models.update(Ticket, ticket.number, {"cc": new, "updated_at": now})
        ticket.cc, ticket.updated_at = new, now
        return f"cc {', '.join(new) or '(none)'}", [
            tickets.event(ticket, actor, "cc", {"from": cc, "to": new})
        ]
    if name in ("assign", "take"):
        target = agent if name == "take" else agents.find(args[0])
        if target is None:
            raise TicketError(f"no active agent {args[0]!r} (an address, or a name only one agent has)")
        return _assign(ticket, target, actor=actor, now=now, env=env)
    if name == "escalate":
        tier = (ticket.tier or 1) + 1
        if tier > env.config.sla.tiers:
            raise TicketError(f"tier {ticket.tier} is the last one")
        told = jobs.Pass(env, now, [ticket])
        escalated = jobs.escalate(ticket, told, actor=actor, reason=f"#escalate by {agent.name or actor}")
        told.flush()
        if escalated is None:
            raise TicketError(f"no group of tier {tier} agents to escalate to")
        return f"tier {tier}, group {ticket.group}", escalated
    if name == "link":
        number = int(args[0])
        if number == ticket.number or tickets.by_number(number) is None:
            raise TicketError(f"no other ticket #{number}")
        models.update(Ticket, ticket.number, {"linked_to": number, "updated_at": now})
        ticket.linked_to, ticket.updated_at = number, now
        return f"linked to #{number}", [
            tickets.event(ticket, actor, "linked", {"to": number, "why": "#link"})
        ]
    if name == "merge":
        into = tickets.by_number(int(args[0]))
        if into is None:
            raise TicketError(f"no ticket #{args[0]}")
        return f"merged into #{into.number}", tickets.merge(ticket, into, actor=actor, now=now)
    if name == "update":
        if args[0].lower() == "now":
            told = jobs.Pass(env, now, [ticket])
            done = jobs.send_update(ticket, told)
            told.flush()
            if not any(e["kind"] == "update" for e in done):
                raise TicketError("the update was withheld: " + done[0]["detail"].get("why", ""))
            return "update sent to the customer", done
        minutes = commands.update_minutes(args[0])
        detail, done = change({"update_every": minutes})
        return ("no more updates" if minutes == 0 else f"an update every {args[0]}"), done
    return "the text is a note", []  # note: the caller stores it


def _assign(ticket: Ticket, target: Agent, *, actor: str, now: datetime, env: Env) -> tuple[str, list[dict]]:
    done = tickets.change(ticket, {"assignee": target.email}, actor=actor, now=now)
    if done:
        done += _notify(ticket, why="assigned", text="", author=actor, now=now, env=env)
        return f"assigned to {target.name} <{target.email}>", done
    return f"unchanged (assigned to {target.email})", done


def _notify(
    ticket: Ticket, *, why: str, text: str, author: str | None, now: datetime, env: Env
) -> list[dict]:
    """The agents' notification of `why` (notifications.py), never to `author`; its events."""
    return notifications.notify_agents(ticket, why=why, text=text, author=author, now=now, env=env)


# --- replies, notes, confirmations -------------------------------------------------------


def reply(
    ticket: Ticket, *, agent: Agent, text: str, attachments: Iterable[dict] = (), now: datetime, env: Env
) -> str:
    """Send `text` to the ticket's requester and CCs from the helpdesk; the Message-ID.

    Threaded to the customer's last message (In-Reply-To/References, Thread-Index for
    Outlook); stored as an `agent-reply`; the first one stamps `first_response_at`.
    Not automatic mail: a person wrote it, so the automatic-mail limits do not apply.
    `attachments` are Attachment columns (saved files): kept in the history and sent
    to the customer with the text.
    """
    attachments = list(attachments)
    files = [{k: a[k] for k in ("filename", "content_type", "sha256")} for a in attachments]
    hd = env.config.helpdesk
    token = env.tokens.format(ticket.number)
    parent = tickets.last_customer_message_id(ticket)
    msgid = notify.make_msgid(hd.domain)
    rendered = notify.Rendered(f"Re: {token} {ticket.subject}"[: notify.MAX_SUBJECT], text.rstrip() + "\n")
    people = [ticket.requester, *(ticket.cc or [])]
    headers = {
        "From": email.utils.formataddr((hd.name, hd.address)),
        **notify.reply_headers(parent, [], None, ticket.subject, now, automatic=False),
    }
    if ticket.cc:
        headers["Cc"] = ", ".join(ticket.cc)
    rows = [  # one row per recipient: the outbox sends each row to its `to`
        notify.outbox_row(
            kind="reply",
            ticket=ticket.number,
            mail_from=hd.address,
            to=to,
            rendered=rendered,
            headers={**headers, **({"To": ticket.requester} if to != ticket.requester else {})},
            message_id=msgid,
            now=now,
            automatic=False,
            attachments=files,
        )
        for to in people
    ]
    notify.queue_rows(rows, now)
    message = _message(agent, "out", "agent-reply", msgid, rendered.subject, text, to=[ticket.requester])
    message["cc"] = list(ticket.cc or [])
    events = tickets.add_message(ticket, message, attachments, actor=agent.email, now=now)
    if ticket.first_response_at is None:
        # A timestamp, not an attribute an agent sets: no `change`, an event of its own.
        models.update(Ticket, ticket.number, {"first_response_at": now})
        ticket.first_response_at = now
        events.append(tickets.event(ticket, agent.email, "first-response", {"at": now.isoformat()}))
    events.append(tickets.event(ticket, agent.email, "reply", {"message_id": msgid, "to": people}))
    tickets.save_events(events, now)
    sla.refresh(ticket, env.config, now, sent=now)
    return msgid


def resolved(ticket: Ticket, *, now: datetime, env: Env) -> None:
    """After an agent's reply that resolved `ticket` (`#status resolved` with text): the
    satisfaction survey, which follows the agent's words."""
    told = jobs.Pass(env, now, [ticket])
    events = surveys.maybe_send(told, ticket)
    told.flush()
    tickets.save_events(events, now)


def note(
    ticket: Ticket, *, agent: Agent, text: str, attachments: Iterable[dict] = (), now: datetime, env: Env
) -> None:
    """Keep `text` as an internal note on `ticket`: never sent to the customer; the
    other agents on the ticket are notified."""
    msgid = notify.make_msgid(env.config.helpdesk.domain)
    message = _message(agent, "in", "note", msgid, ticket.subject, text, to=[])
    events = tickets.add_message(ticket, message, attachments, actor=agent.email, now=now)
    events.append(tickets.event(ticket, agent.email, "note", {"message_id": msgid}))
    events += _notify(ticket, why="note", text=text, author=agent.email, now=now, env=env)
    tickets.save_events(events, now)


def confirm(ticket: Ticket, *, agent: Agent, outcomes: list[Outcome], now: datetime, env: Env) -> str:
    """One short reply to `agent` listing each command as done or refused; its Message-ID.

    Not counted as automatic mail (it answers a person's request), but marked
    auto-replied (RFC 3834) so that no responder answers it.
    """
    hd = env.config.helpdesk
    rendered = env.templates.render(
        "confirmation",
        agent.language or hd.language,
        hd.language,
        token=env.tokens.format(ticket.number),
        subject=ticket.subject,
        name=agent.name,
        helpdesk=hd.name,
        outcomes=outcomes,
    )
    msgid = notify.make_msgid(hd.domain)
    headers = {
        "From": email.utils.formataddr((hd.name, hd.address)),
        "Auto-Submitted": "auto-replied",
        "X-Auto-Response-Suppress": "All",
    }
    notify.queue(
        kind="confirmation",
        ticket=ticket.number,
        mail_from=hd.address,
        to=agent.email,
        rendered=rendered,
        headers=headers,
        message_id=msgid,
        now=now,
        automatic=False,
    )
    done = [o.command for o in outcomes if o.ok]
    refused = [o.command for o in outcomes if not o.ok]
    detail = {"done": done, "refused": refused, "message_id": msgid}
    tickets.save_events([tickets.event(ticket, agent.email, "commands", detail)], now)
    return msgid


# --- opening a ticket for a customer -----------------------------------------------------


@dataclass(frozen=True)
class _NoParent:
    """What `notify.acknowledge` reads of the customer's message, when there is none
    to answer (a phone call, or a forward whose original we do not have as a message)."""

    message_id: str | None = None
    references: tuple[str, ...] = ()

    def header(self, name: str) -> str | None:
        return None


def open_ticket(
    *,
    requester: str,
    name: str,
    subject: str,
    text: str,
    channel: str,
    agent: Agent,
    attachments: Iterable[dict] = (),
    now: datetime,
    env: Env,
    message_id: str | None = None,
) -> Ticket:
    """A ticket for `requester`, opened by `agent` (a forward, a phone call, a chat);
    `fields["channel"]` says how it came.  The customer gets the acknowledgement as for
    mail-born tickets, within the automatic-mail limits.  Raises TicketError for an
    unknown channel, a malformed address or one of the helpdesk's own."""
    cfg, requester = env.config, requester.strip().strip("<>").lower()
    if channel not in CHANNELS:
        raise TicketError(f"unknown channel {channel!r} (one of {', '.join(CHANNELS)})")
    local, _, domain = requester.rpartition("@")
    if not local or "." not in domain:
        raise TicketError(f"{requester!r} is not an email address")
    if cfg.is_ours(requester):
        raise TicketError(f"{requester} is the helpdesk's own address")
    subject = " ".join(subject.split())[: models.MAX_TICKET_SUBJECT] or "(no subject)"
    values = dict(
        subject=subject,
        requester=requester,
        requester_name=name,
        cc=[],
        language=cfg.helpdesk.language,
        queue="general",
        tags=[],
        fields={"channel": channel},
    )
    msgid = message_id or notify.make_msgid(cfg.helpdesk.domain)
    message = _message(agent, "in", "customer", msgid, subject, text, to=[cfg.helpdesk.address])
    message.update(from_addr=requester, from_name=name)
    ticket, events = tickets.create(
        values,
        message,
        attachments,
        actor=agent.email,
        now=now,
        detail={"source": channel, "by": agent.email},
        config=cfg,
    )
    events.append(tickets.event(ticket, agent.email, "opened", {"channel": channel, "for": requester}))
    blocked = notify.automatic_block(requester, cfg.helpdesk, now)
    if blocked:
        events.append(tickets.event(ticket, "system", "ack-skipped", {"why": blocked}))
    else:
        ack = notify.acknowledge(
            ticket,
            to=requester,
            kind="ack",
            token=env.tokens.format(ticket.number),
            parent=_NoParent(),
            helpdesk=cfg.helpdesk,
            templates=env.templates,
            now=now,
        )
        events.append(tickets.event(ticket, "system", "ack-queued", {"message_id": ack}))
    events += _notify(ticket, why="created", text=text, author=agent.email, now=now, env=env)
    tickets.save_events(events, now)
    return ticket


def _message(agent: Agent, direction: str, kind: str, msgid: str, subject: str, text: str, **kw: Any) -> dict:
    """A Message row's columns for `tickets.add_message`, written by `agent`."""
    return dict(
        direction=direction,
        kind=kind,
        message_id=msgid,
        from_addr=agent.email,
        from_name=agent.name,
        subject=subject[: models.MAX_MESSAGE_SUBJECT],
        text=text,
        body=text,
        **kw,
    )
