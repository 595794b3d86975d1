"""The report as one self-contained HTML page with charts (`mailticket report --html FILE`).

Place in the flow: `render(report.compute(...))` -> a string; the CLI writes it to a file,
and the same string can be the body of a mail (the weekly `[report] mail_to` job): the
charts are PNG images inline (`data:` URIs), no script, no external file, so a mail
client shows it as a browser does.

The charts are drawn with matplotlib, imported here only, on its Agg (raster) backend
through `Figure` directly: no pyplot, so no global state and no display is needed.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from matplotlib.axes import Axes
from matplotlib.figure import Figure

WIDTH, HEIGHT, DPI = 7.5, 3.0, 100  # inches and dots per inch: 750 x 300 pixels


def render(data: dict) -> str:
    """The HTML page of a report (`report.compute`'s dict)."""
    period = data["period"]
    zone = ZoneInfo(period["timezone"])
    first = datetime.fromisoformat(period["since"]).astimezone(zone).date()
    last = (datetime.fromisoformat(period["until"]) - timedelta(microseconds=1)).astimezone(zone).date()
    title = f"Support report {first} to {last} by {period['by']}"
    charts = [
        ("Tickets per day", _volume(data)),
        ("Response and resolution times (median, hours)", _times(data)),
        ("SLA compliance (%)", _sla(data)),
        ("Customer satisfaction per week (share rated good, %)", _csat(data)),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}img{display:block;margin:0.5em 0 1.5em}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
        _table(data),
    ]
    for caption, png in charts:
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(
            f'<h2>{html.escape(caption)}</h2><img class="chart" alt="{html.escape(caption)}" src="{uri}">'
        )
    parts.append(_lists(data))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _rows(data: dict) -> list[tuple[str, dict]]:
    return [("total", data["total"]), *data["groups"].items()]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value / 3600:.1f} h"


def _table(data: dict) -> str:
    head = (
        "group",
        "tickets",
        "first response median",
        "p90",
        "resolution median",
        "p90",
        "resolved",
        "FCR",
        "reopened",
        "backlog",
        "SLA first response",
        "SLA resolution",
        "CSAT mean",
        "good",
    )
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for name, g in _rows(data):
        cells = (
            name,
            g["tickets"],
            _hours(g["first_response"]["median"]),
            _hours(g["first_response"]["p90"]),
            _hours(g["resolution"]["median"]),
            _hours(g["resolution"]["p90"]),
            _pct(g["resolution_rate"]),
            _pct(g["first_contact_resolution_rate"]),
            _pct(g["reopen_rate"]),
            g["backlog"]["open"],
            _pct(g["sla_compliance"]["first_response"]),
            _pct(g["sla_compliance"]["resolution"]),
            "-" if g["csat"]["mean"] is None else g["csat"]["mean"],
            _pct(g["csat"]["good_share"]),
        )
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _lists(data: dict) -> str:
    out = ["<h2>Low ratings</h2><ul>"]
    out += [
        f"<li>#{r['ticket']}: {html.escape(str(r['score']))} {html.escape(r['comment'] or '')}</li>"
        for r in data["low_rated"]
    ]
    out.append("</ul><h2>Recurring subjects</h2><ul>")
    out += [f"<li>{html.escape(r['subject'])}: {r['tickets']}</li>" for r in data["recurring_subjects"]]
    out.append("</ul><h2>Requesters and units with the most tickets</h2><ul>")
    out += [f"<li>{html.escape(r['requester'])}: {r['tickets']}</li>" for r in data["top_requesters"]]
    out += [
        f"<li>{html.escape(r['field'])} {html.escape(str(r['value']))}: {r['tickets']}</li>"
        for r in data["top_units"]
    ]
    out.append("</ul>")
    return "\n".join(out)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI)
    ax = fig.subplots()
    assert isinstance(ax, Axes)
    return fig, ax


def _empty(ax, values: list) -> bool:
    if not values:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return True
    return False


def _volume(data: dict) -> bytes:
    fig, ax = _figure()
    days = data["series"]["days"]
    if not _empty(ax, days):
        ax.bar([d["day"][5:] for d in days], [d["tickets"] for d in days], color="#4c72b0")
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.set_ylabel("tickets")
    return _png(fig)


def _bars(ax, names: list[str], series: list[tuple[str, list[float]]]) -> None:
    width = 0.8 / max(len(series), 1)
    for n, (label, values) in enumerate(series):
        ax.bar([i + n * width for i in range(len(names))], values, width, label=label)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(names))], names, fontsize=8)
    ax.legend(fontsize=8)


def _times(data: dict) -> bytes:
    fig, ax = _figure()
    rows = _rows(data)
    series = [
        (f"{label} {kind}", [(g[key][kind] or 0) / 3600 for _, g in rows])
        for key, label in (("first_response", "first response"), ("resolution", "resolution"))
        for kind in ("median", "business_median")
    ]
    _bars(ax, [name for name, _ in rows], series)
    ax.set_ylabel("hours")
    return _png(fig)


def _sla(data: dict) -> bytes:
    fig, ax = _figure()
    rows = _rows(data)
    series = [
        (timer.replace("_", " "), [(g["sla_compliance"][timer] or 0) * 100 for _, g in rows])
        for timer in ("first_response", "resolution")
    ]
    _bars(ax, [name for name, _ in rows], series)
    ax.set_ylim(0, 105)
    return _png(fig)


def _csat(data: dict) -> bytes:
    fig, ax = _figure()
    weeks = [w for w in data["series"]["weeks"] if w["ratings"]]
    if not _empty(ax, weeks):
        ax.plot([w["week"] for w in weeks], [100 * w["good"] / w["ratings"] for w in weeks], marker="o")
        ax.set_ylim(0, 105)
        ax.tick_params(axis="x", labelsize=8)
    return _png(fig)
