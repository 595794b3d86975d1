"""`mailticket tick` and `mailticket sla explain`: the timed jobs by hand; why a due time is so."""

from __future__ import annotations

import click

from .. import jobs, sla, tickets
from ..db import writing
from .base import Ctx, at_time, emit_json, json_option, main


class _Rollback(Exception):
    """Raised inside a dry run's transaction so that nothing it did is kept."""


@main.command("tick")
@click.option("--at", "at", metavar="ISO-TIME", help="Run as of this time (default: now; no zone: UTC).")
@click.option("--dry-run", is_flag=True, help="Say what would be done; change and send nothing.")
@click.option("--limit", default=jobs.BATCH, show_default=True, help="At most this many tickets.")
@json_option
@click.pass_obj
def tick(obj: Ctx, at: str | None, dry_run: bool, limit: int, as_json: bool) -> None:
    """Run one pass of every timed job (SLA warnings and escalations, status updates,
    reminders, auto-resolve, closing) as of now or --at, and print what was done.

    The daemon runs the same every minute; a site may drive it from cron instead."""
    app = obj.app()
    assert app.pipeline is not None
    now = at_time(at, app.clock.now())
    actions: list[dict] = []
    try:
        with writing(), app.db.atomic():
            actions = jobs.tick(app.pipeline.env, now, limit=limit).actions
            if dry_run:
                raise _Rollback
    except _Rollback:
        pass
    if as_json:
        emit_json({"at": now.isoformat(), "dry_run": dry_run, "actions": actions})
        return
    verb = "would do" if dry_run else "did"
    click.echo(f"tick as of {now.isoformat()}: {verb} {len(actions)} action(s)")
    for a in actions:
        rest = ", ".join(f"{k} {v}" for k, v in a.items() if k not in ("ticket", "action"))
        click.echo(f"  #{a['ticket']}: {a['action']}" + (f" ({rest})" if rest else ""))


@main.group("sla")
def sla_group() -> None:
    """Service levels: how a ticket's due times were computed."""


@sla_group.command("explain")
@click.argument("number", type=int)
@click.option("--at", "at", metavar="ISO-TIME", help="As of this time (default: now).")
@json_option
@click.pass_obj
def explain(obj: Ctx, number: int, at: str | None, as_json: bool) -> None:
    """Why ticket NUMBER is due when it is: the policy, the calendar, the pauses, the
    closed days and holidays skipped."""
    app = obj.app(processing=False)
    t = tickets.by_number(number)
    if t is None:
        raise click.ClickException(f"no ticket #{number} (see `mailticket ticket list`)")
    data = sla.explain(t, app.config, at_time(at, app.clock.now()))
    if as_json:
        emit_json(data)
        return
    click.echo(f"#{number} {t.priority} {t.status}: policy {data['policy']} ({data['policy_source']})")
    click.echo(f"  calendar {data['calendar']}; warning at {data['warning_percent']}% left")
    for name, timer in data["timers"].items():
        due = timer["due"] or "-"
        flag = "  BREACHED" if timer["breached"] else ""
        click.echo(f"\n{name.replace('_', ' ')}: {timer['minutes']} min, due {due}{flag}")
        for line in timer["lines"]:
            click.echo(f"  {line}")
