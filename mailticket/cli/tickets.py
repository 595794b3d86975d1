"""`ticket`: list and show tickets, and work them as an agent (reply, note, set, open)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from datetime import datetime

import click

from .. import actions, agents, tickets
from ..db import writing
from ..errors import MailticketError
from ..models import Agent, Ticket
from ..parsers import commands
from ..pipeline import Env
from .base import Ctx, at_time, emit_json, json_option, main, table

# --- tickets -----------------------------------------------------------------------------


@main.group()
def ticket() -> None:
    """List, show and work tickets: reply, note, set, open (as an agent)."""


@ticket.command("list")
@click.option("--status", help="Only tickets with this status.")
@click.option("--queue", help="Only tickets in this queue.")
@click.option("--requester", help="Only tickets of this customer address.")
@click.option("--limit", default=50, show_default=True, help="At most this many tickets, newest first.")
@click.option("--due", is_flag=True, help="Only tickets with a due time, soonest first.")
@click.option("--breached", is_flag=True, help="Only tickets past a due time (implies --due).")
@click.option(
    "--at", "at", metavar="ISO-TIME", help="With --breached: past due as of this time (default now)."
)
@json_option
@click.pass_obj
def ticket_list(obj: Ctx, status, queue, requester, limit, due, breached, at, as_json) -> None:
    """List tickets, newest first (with --due: what comes due, soonest first)."""
    app = obj.app(processing=False)
    now = at_time(at, app.clock.now())
    rows = tickets.listing(
        status=status,
        queue=queue,
        requester=requester,
        limit=limit,
        due=due or breached,
        breached_at=now if breached else None,
    )
    if as_json:
        emit_json([tickets.as_dict(t, full=False) for t in rows])
        return
    if due or breached:
        table(
            [
                [
                    f"#{t.number}",
                    t.status,
                    t.priority,
                    t.queue,
                    t.tier,
                    *(_due(d, now) for d in tickets.due_times(t)),
                    t.subject,
                ]
                for t in rows
            ],
            [
                "ticket",
                "status",
                "prio",
                "queue",
                "tier",
                "first response",
                "update",
                "resolution",
                "subject",
            ],
        )
        return
    table(
        [[f"#{t.number}", t.status, t.priority, t.queue, t.requester, t.subject] for t in rows],
        ["ticket", "status", "prio", "queue", "requester", "subject"],
    )


def _due(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    return when.strftime("%Y-%m-%d %H:%M") + (" LATE" if when <= now else "")


@ticket.command("show")
@click.argument("number", type=int)
@json_option
@click.pass_obj
def ticket_show(obj: Ctx, number: int, as_json: bool) -> None:
    """Show ticket NUMBER: its fields, messages (new text) and history."""
    obj.app(processing=False)
    t = tickets.by_number(number)
    if t is None:
        raise click.ClickException(f"no ticket #{number} (see `mailticket ticket list`)")
    data = tickets.as_dict(t)
    if as_json:
        emit_json(data)
        return
    click.echo(f"#{t.number} {t.subject}")
    for key in ("status", "priority", "queue", "tier", "requester", "assignee", "tags", "fields", "cc"):
        if data[key] not in (None, [], {}):
            click.echo(f"  {key:<10} {data[key]}")
    for name, when in data["due"].items():
        if when:
            click.echo(f"  {'due':<10} {name.replace('_', ' ')} {when}")
    if any(data["due"].values()):
        click.echo(f"  {'':<10} (how: `mailticket sla explain {t.number}`)")
    if data["previous_tickets"]:
        click.echo(f"  {'previous':<10} " + ", ".join(f"#{n}" for n in data["previous_tickets"]))
    for m in data["messages"]:
        click.echo(f"\n--- {m['date']}  {m['direction']} {m['kind']}  {m['from']}")
        click.echo(m["text"].rstrip() or "(no new text)")
        for a in m["attachments"]:
            click.echo(f"  [attachment] {a['filename']} ({a['content_type']}, {a['size']} bytes)")
    click.echo("\nhistory:")
    for e in data["events"]:
        click.echo(f"  {e['at']}  {e['actor']:<24} {e['kind']} {json.dumps(e['detail'], ensure_ascii=False)}")


as_option = click.option(
    "--as", "as_agent", required=True, metavar="AGENT", help="The active agent (address or name) who acts."
)
body_option = click.option(
    "--body",
    type=click.File("r", encoding="utf-8"),
    default="-",
    show_default=True,
    help="A file with the text, or - for standard input.",
)


@contextlib.contextmanager
def acting(obj: Ctx, who: str) -> Iterator[tuple[Agent, Env, datetime]]:
    """The agent `who` names, the pipeline's Env and now, inside one write transaction:
    an error (a ClickException too) rolls back everything the verb did."""
    app = obj.app()
    assert app.pipeline is not None  # opened for processing
    agent = agents.find(who)
    if agent is None:
        raise click.ClickException(f"{who} is not an active agent (see `mailticket agents list`)")
    try:
        with writing(), app.db.atomic():
            yield agent, app.pipeline.env, app.clock.now()
    except MailticketError as exc:
        raise click.ClickException(str(exc)) from None


def ticket_of(number: int) -> Ticket:
    t = tickets.by_number(number)
    if t is None:
        raise click.ClickException(f"no ticket #{number} (see `mailticket ticket list`)")
    return t


def read_body(body) -> str:
    text = body.read().strip()
    if not text:
        raise click.ClickException("the text is empty")
    return text


@ticket.command("reply")
@click.argument("number", type=int)
@as_option
@body_option
@json_option
@click.pass_obj
def ticket_reply(obj: Ctx, number: int, as_agent: str, body, as_json: bool) -> None:
    """Send the text to ticket NUMBER's customer (and CCs) from the helpdesk address."""
    text = read_body(body)
    with acting(obj, as_agent) as (agent, env, now):
        msgid = actions.reply(ticket_of(number), agent=agent, text=text, now=now, env=env)
    if as_json:
        emit_json({"ticket": number, "message_id": msgid})
    else:
        click.echo(f"#{number}: reply queued ({msgid})")


@ticket.command("note")
@click.argument("number", type=int)
@as_option
@body_option
@json_option
@click.pass_obj
def ticket_note(obj: Ctx, number: int, as_agent: str, body, as_json: bool) -> None:
    """Add an internal note to ticket NUMBER: never sent to the customer."""
    text = read_body(body)
    with acting(obj, as_agent) as (agent, env, now):
        actions.note(ticket_of(number), agent=agent, text=text, now=now, env=env)
    if as_json:
        emit_json({"ticket": number, "note": True})
    else:
        click.echo(f"#{number}: note added")


@ticket.command("set")
@click.argument("number", type=int)
@as_option
@click.option("--status", help="The new status (new, open, pending, on-hold, resolved, closed).")
@click.option("--priority", help="P1..P4, or a name (critical, normal, ...).")
@click.option("--assign", metavar="AGENT", help="Assign to this agent (address or name).")
@click.option("--tier", type=click.IntRange(1, 3), help="The support tier, 1 to 3.")
@click.option("--queue", help="Move to this queue.")
@click.option("--tag", "tags", multiple=True, metavar="WORD", help="Add a tag (repeatable).")
@click.option("--untag", "untags", multiple=True, metavar="WORD", help="Remove a tag (repeatable).")
@click.option("--field", "fields", multiple=True, metavar="KEY=VALUE", help="Set a field (repeatable).")
@click.option(
    "--update",
    metavar="INTERVAL",
    help="The customer's status updates: every 2d, 4h, 30m..., off, or now (one at once).",
)
@click.option(
    "--merge-into", type=int, metavar="N", help="Merge into ticket N: its messages and people move there."
)
@json_option
@click.pass_obj
def ticket_set(
    obj: Ctx,
    number: int,
    as_agent: str,
    as_json: bool,
    status,
    priority,
    assign,
    tier,
    queue,
    tags,
    untags,
    fields,
    update,
    merge_into,
) -> None:
    """Change ticket NUMBER as the agent would by mail (#status, #assign, ...): all or nothing."""
    values = {"status": status, "priority": priority, "assign": assign, "tier": tier, "queue": queue}
    lines = [f"#{name} {value}" for name, value in values.items() if value]
    lines += [f"#tag {w}" for w in tags] + [f"#untag {w}" for w in untags]
    for pair in fields:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.ClickException(f"--field {pair}: write KEY=VALUE")
        lines.append(f"#field {key} {value}")
    if update:
        lines.append(f"#update {update}")
    if merge_into:
        lines.append(f"#merge {merge_into}")  # last: the ticket is closed after it
    found, _ = commands.parse("\n".join(lines))
    if not found:
        raise click.ClickException("nothing to change: give --status, --priority, --assign, ... (see --help)")
    with acting(obj, as_agent) as (agent, env, now):
        outcomes = actions.apply(ticket_of(number), found, agent=agent, now=now, env=env)
        refused = [f"{o.command}: {o.detail}" for o in outcomes if not o.ok]
        if refused:
            raise click.ClickException("nothing changed; refused: " + "; ".join(refused))
    if as_json:
        emit_json({"ticket": number, "outcomes": [dataclasses.asdict(o) for o in outcomes]})
        return
    for o in outcomes:
        click.echo(f"#{number}: {o.command}: {o.detail}")


@ticket.command("open")
@click.option("--requester", required=True, metavar="EMAIL", help="The customer the ticket belongs to.")
@click.option("--name", default="", help="The customer's name.")
@click.option("--subject", required=True, help="The ticket's subject.")
@click.option(
    "--channel",
    type=click.Choice(actions.CHANNELS),
    default="phone",
    show_default=True,
    help="How the customer came to us.",
)
@body_option
@as_option
@json_option
@click.pass_obj
def ticket_open(
    obj: Ctx, requester: str, name: str, subject: str, channel: str, body, as_agent, as_json
) -> None:
    """Open a ticket for a customer (a call, a chat, a visit); they get the acknowledgement."""
    text = read_body(body)
    with acting(obj, as_agent) as (agent, env, now):
        t = actions.open_ticket(
            requester=requester,
            name=name,
            subject=subject,
            text=text,
            channel=channel,
            agent=agent,
            now=now,
            env=env,
        )
    if as_json:
        emit_json(tickets.as_dict(t, full=False))
    else:
        click.echo(f"#{t.number} opened for {t.requester}")
