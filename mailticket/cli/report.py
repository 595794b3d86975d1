"""`mailticket report`: the period's figures as a table, JSON, CSV or an HTML page with charts."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from .. import report
from .base import Ctx, emit_json, json_option, main, table

CSV_COLUMNS = (
    "tickets",
    "first_response.median",
    "first_response.p90",
    "first_response.business_median",
    "first_response.business_p90",
    "resolution.median",
    "resolution.p90",
    "resolution.business_median",
    "resolution.business_p90",
    "resolved",
    "resolution_rate",
    "first_contact_resolution_rate",
    "reopen_rate",
    "backlog.open",
    "backlog.age_median",
    "sla_compliance.first_response",
    "sla_compliance.resolution",
    "escalations.2",
    "escalations.3",
    "csat.surveys",
    "csat.responses",
    "csat.response_rate",
    "csat.mean",
    "csat.good_share",
)


@main.command("report")
@click.option(
    "--since", type=click.DateTime(["%Y-%m-%d"]), help="First day (default: 6 days before --until)."
)
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day, included (default: today).")
@click.option("--by", type=click.Choice(report.BY), default="queue", show_default=True, help="Groups.")
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="CSV: one row per group, the total first.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Write an HTML page with charts.")
@click.pass_obj
def report_command(
    obj: Ctx,
    since: datetime | None,
    until: datetime | None,
    by: str,
    as_json: bool,
    as_csv: bool,
    html_file: str | None,
) -> None:
    """The figures of the tickets created from --since to --until (whole days in the
    helpdesk's time zone), in total and per --by group: first-response and resolution
    times (median, p90; calendar and business time), resolution, first-contact resolution
    and reopen rates, backlog, SLA compliance, escalations, satisfaction; low-rated tickets,
    recurring subjects, the requesters and units with the most tickets."""
    app = obj.app(processing=False)
    tz = app.config.helpdesk.timezone
    last: date = until.date() if until else app.clock.now().astimezone(ZoneInfo(tz)).date()
    first: date = since.date() if since else last - timedelta(days=6)
    if first > last:
        raise click.ClickException(f"--since {first} is after --until {last}")
    start, end = report.day_bounds(first, last, tz)
    data = report.compute(app.config, start, end, by)
    if html_file:
        from .. import report_html  # matplotlib: half a second, only for --html

        Path(html_file).write_text(report_html.render(data), encoding="utf-8")
    if as_json:
        emit_json(data)
    elif as_csv:
        click.echo(to_csv(data), nl=False)
    elif not html_file:
        show(data, first, last)
    else:
        click.echo(f"wrote {html_file}")


def _get(group: dict, dotted: str):
    value: object = group
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def to_csv(data: dict) -> str:
    """One row per group (the total first, its group `total`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", *CSV_COLUMNS])
    rows = [("total", data["total"]), *data["groups"].items()]
    for name, g in rows:
        writer.writerow([name, *("" if (v := _get(g, c)) is None else v for c in CSV_COLUMNS)])
    return out.getvalue()


def duration(seconds: float | None) -> str:
    """Seconds as `45m`, `3h05m`, `2d04h`; `-` for none."""
    if seconds is None:
        return "-"
    minutes = int(round(seconds / 60))
    if minutes < 60:
        return f"{minutes}m"
    if minutes < 24 * 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    hours = minutes // 60
    return f"{hours // 24}d{hours % 24:02d}h"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def show(data: dict, first: date, last: date) -> None:
    by = data["period"]["by"]
    click.echo(f"Tickets created {first} to {last}, by {by}\n")
    rows = []
    for name, g in [("total", data["total"]), *data["groups"].items()]:
        fr, res, csat = g["first_response"], g["resolution"], g["csat"]
        rows.append(
            [
                name,
                g["tickets"],
                f"{duration(fr['median'])}/{duration(fr['p90'])}",
                f"{duration(fr['business_median'])}/{duration(fr['business_p90'])}",
                f"{duration(res['median'])}/{duration(res['p90'])}",
                f"{duration(res['business_median'])}/{duration(res['business_p90'])}",
                _pct(g["resolution_rate"]),
                _pct(g["first_contact_resolution_rate"]),
                _pct(g["reopen_rate"]),
                f"{g['backlog']['open']} ({duration(g['backlog']['age_median'])})",
                f"{_pct(g['sla_compliance']['first_response'])}/{_pct(g['sla_compliance']['resolution'])}",
                " ".join(f"t{t}:{n}" for t, n in g["escalations"].items()) or "-",
                f"{csat['responses']}/{csat['surveys']} {'-' if csat['mean'] is None else csat['mean']} "
                f"{_pct(csat['good_share'])}",
            ]
        )
    headers = [
        by,
        "tickets",
        "1st resp med/p90",
        "(business)",
        "resolution med/p90",
        "(business)",
        "resolved",
        "FCR",
        "reopened",
        "backlog (age)",
        "SLA 1st/res",
        "escalated",
        "CSAT rated/surveyed mean good",
    ]
    table(rows, headers)
    if data["low_rated"]:
        click.echo("\nLow ratings:")
        for r in data["low_rated"]:
            click.echo(f"  #{r['ticket']} {r['score']}: {r['comment'] or ''}".rstrip())
    if data["recurring_subjects"]:
        click.echo("\nRecurring subjects:")
        for r in data["recurring_subjects"]:
            click.echo(f"  {r['tickets']:>5}  {r['subject']}")
    if data["top_requesters"]:
        click.echo("\nTop requesters:")
        for r in data["top_requesters"]:
            click.echo(f"  {r['tickets']:>5}  {r['requester']}")
    if data["top_units"]:
        click.echo("\nTop units:")
        for r in data["top_units"]:
            click.echo(f"  {r['tickets']:>5}  {r['field']} {r['value']}")
