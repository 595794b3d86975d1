"""The helpdesk's figures at /metrics (metrics.HelpdeskCollector) and the Grafana dashboard.

A database with tickets in known states (inserted directly, times around a frozen
"now"), the real HTTP endpoint on a loopback port, and exact values for every figure,
on SQLite and on PostgreSQL.  The dashboard's expressions may only name metrics that
the endpoint exposes.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mailticket import models
from mailticket.clock import FrozenClock
from mailticket.db import open_database
from mailticket.metrics import HttpEndpoint, Metrics
from mailticket.models import Event, Ticket

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana-dashboard.json"
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
HELPDESK = (
    "mailticket_tickets_open",
    "mailticket_sla_breached_tickets",
    "mailticket_sla_at_risk_tickets",
    "mailticket_sla_breaches_total",
    "mailticket_first_response_seconds",
    "mailticket_resolution_seconds",
    "mailticket_ratings_total",
)


@pytest.fixture
def database(db_url):
    db = open_database(db_url)
    yield db
    db.close()


@pytest.fixture
def endpoint(database):
    metrics = Metrics(FrozenClock(NOW))
    http = HttpEndpoint("127.0.0.1", 0, metrics, lambda: (True, {}))
    http.start()
    yield http
    http.stop()


def scrape(http: HttpEndpoint) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{http.port}/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """`name{labels} value` lines -> {(name, {(label, value), ...}): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def of(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def helpdesk_only(found: dict) -> dict:
    return {k: v for k, v in found.items() if k[0].startswith(HELPDESK)}


def family(found: dict, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in found.items() if n == name}


def ticket(created: timedelta, status: str, queue: str = "general", priority: str = "P3", **times) -> int:
    """A ticket created `created` before NOW; `times` are offsets: first_response_at,
    resolved_at and closed_at after its creation, due_* from NOW."""
    at = NOW - created
    values = {"subject": "s", "requester": "a@customer.test", "status": status, "queue": queue}
    values |= {"priority": priority, "created_at": at, "updated_at": at}
    for name, offset in times.items():
        if isinstance(offset, timedelta):
            offset = (NOW if name.startswith("due_") else at) + offset
        values[name] = offset
    return models.insert(Ticket, values)


def event(number: int, kind: str, **detail) -> dict:
    return {"ticket": number, "at": NOW, "actor": "system", "kind": kind, "detail": detail}


def known_history() -> None:
    """Open tickets, SLA states and times chosen so that every figure has one answer."""
    t1 = ticket(10 * timedelta(minutes=1), "new", due_first_response=30 * timedelta(minutes=1))
    t2 = ticket(
        2 * HOUR, "open", first_response_at=timedelta(seconds=300), due_resolution=-timedelta(minutes=1)
    )
    t3 = ticket(3 * HOUR, "open", "billing", "P1", due_first_response=-HOUR, due_resolution=HOUR)
    t4 = ticket(DAY, "pending", "billing", "P2", first_response_at=timedelta(seconds=901))  # paused: no due
    t5 = ticket(5 * DAY, "on-hold", first_response_at=HOUR, due_resolution=timedelta(0))  # due now: past
    t6 = ticket(
        2 * DAY, "resolved", first_response_at=2 * HOUR, resolved_at=DAY, due_first_response=-DAY
    )  # a stale due time of a resolved ticket counts nowhere
    t7 = ticket(
        10 * DAY, "closed", "billing", "P1", first_response_at=timedelta(seconds=1800), closed_at=5 * DAY
    )
    t8 = ticket(3 * DAY, "closed", closed_at=HOUR, merged_into=t6)  # merged: no resolution time
    t9 = ticket(31 * DAY, "resolved", first_response_at=timedelta(seconds=100), resolved_at=HOUR)  # too old
    # Answered (its stale first-response due time is no breach), outside the window.
    ticket(40 * DAY, "open", first_response_at=HOUR, due_first_response=-30 * DAY, due_resolution=2 * HOUR)
    events = [
        event(t2, "sla-breached", timer="first_response", due="x"),
        event(t2, "sla-breached", timer="resolution", due="x"),
        event(t3, "sla-breached", timer="first_response", due="x"),
        event(t5, "sla-breached", timer="resolution", due="x"),
        event(t6, "rating", score=5),
        event(t7, "rating", score=2, comment="slow"),
        event(t7, "rating", score=4),  # replaces the 2: both were answers
        event(t9, "rating", score=5),
        event(t4, "rating", score="good"),
        event(t1, "status", **{"from": "new", "to": "open"}),  # not counted
        event(t8, "sla-warning", timer="resolution"),  # not counted
    ]
    models.insert_many(Event, events)


def test_every_figure_of_a_known_helpdesk_at_a_real_scrape(endpoint):
    known_history()
    found = samples(scrape(endpoint))

    assert family(found, "mailticket_tickets_open") == {
        frozenset({("status", "new"), ("queue", "general"), ("priority", "P3")}): 1,
        frozenset({("status", "open"), ("queue", "general"), ("priority", "P3")}): 2,
        frozenset({("status", "open"), ("queue", "billing"), ("priority", "P1")}): 1,
        frozenset({("status", "pending"), ("queue", "billing"), ("priority", "P2")}): 1,
        frozenset({("status", "on-hold"), ("queue", "general"), ("priority", "P3")}): 1,
    }
    assert of(found, "mailticket_sla_breached_tickets", timer="first_response") == 1  # t3
    assert of(found, "mailticket_sla_breached_tickets", timer="resolution") == 2  # t2, t5 (due now)
    assert of(found, "mailticket_sla_at_risk_tickets", timer="first_response") == 1  # t1
    assert of(found, "mailticket_sla_at_risk_tickets", timer="resolution") == 1  # t3 (due in exactly 1 h)
    assert family(found, "mailticket_sla_breaches_total") == {
        frozenset({("timer", "first_response")}): 2,
        frozenset({("timer", "resolution")}): 2,
    }
    assert family(found, "mailticket_ratings_total") == {
        frozenset({("score", "2")}): 1,
        frozenset({("score", "4")}): 1,
        frozenset({("score", "5")}): 2,
        frozenset({("score", "good")}): 1,
    }

    # First responses in the window: 300, 901, 3600, 7200, 1800 s.
    first = {
        "300.0": 1, "900.0": 1, "1800.0": 3, "3600.0": 4, "7200.0": 5, "14400.0": 5, "28800.0": 5,
        "86400.0": 5, "172800.0": 5, "345600.0": 5, "604800.0": 5, "+Inf": 5,
    }  # fmt: skip
    for le, n in first.items():
        assert of(found, "mailticket_first_response_seconds_bucket", le=le) == n, le
    assert of(found, "mailticket_first_response_seconds_count") == 5
    assert of(found, "mailticket_first_response_seconds_sum") == 13801
    # Resolutions in the window: t6 after a day, t7 closed after five (t8 merged, t9 too old).
    resolution = {"28800.0": 0, "86400.0": 1, "345600.0": 1, "604800.0": 2, "+Inf": 2}
    for le, n in resolution.items():
        assert of(found, "mailticket_resolution_seconds_bucket", le=le) == n, le
    assert of(found, "mailticket_resolution_seconds_count") == 2
    assert of(found, "mailticket_resolution_seconds_sum") == 86400 + 5 * 86400

    # The daemon's own metrics are served beside them.
    assert of(found, "mailticket_deliveries_total") == 0


def test_an_empty_helpdesk_shows_zeros_not_gaps(endpoint):
    found = samples(scrape(endpoint))
    assert family(found, "mailticket_tickets_open") == {}
    for timer in ("first_response", "resolution"):
        assert of(found, "mailticket_sla_breached_tickets", timer=timer) == 0
        assert of(found, "mailticket_sla_at_risk_tickets", timer=timer) == 0
    for name in ("first_response", "resolution"):
        assert of(found, f"mailticket_{name}_seconds_bucket", le="+Inf") == 0
        assert of(found, f"mailticket_{name}_seconds_sum") == 0


def test_the_figures_follow_the_database_not_the_process(database):
    """Two daemons on one database report the same; a new one (a restart) loses nothing."""
    known_history()
    one, two = (helpdesk_only(samples(Metrics(FrozenClock(NOW)).render().decode())) for _ in range(2))
    assert one == two and len(one) == 2 * 14 + 5 + 2 * 2 + 2 + 4
    ticket(timedelta(minutes=1), "new")
    after = samples(Metrics(FrozenClock(NOW)).render().decode())
    assert of(after, "mailticket_tickets_open", status="new", queue="general", priority="P3") == 2


def test_a_database_error_leaves_the_figures_out_and_is_logged_once(endpoint, database, caplog):
    known_history()
    database.execute_sql('ALTER TABLE "event" RENAME TO "event_away"')
    try:
        with caplog.at_level(logging.INFO, logger="mailticket.metrics"):
            first, second = scrape(endpoint), scrape(endpoint)
        for text in (first, second):
            assert "mailticket_tickets_open" not in text and "mailticket_ratings_total" not in text
            assert "mailticket_deliveries_total 0.0" in text  # the daemon's own are still there
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "cannot read the helpdesk's figures" in warnings[0].getMessage()
    finally:
        database.execute_sql('ALTER TABLE "event_away" RENAME TO "event"')
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mailticket.metrics"):
        found = samples(scrape(endpoint))
    assert of(found, "mailticket_ratings_total", score="5") == 2
    assert [r.getMessage() for r in caplog.records] == ["metrics: the helpdesk's figures can be read again"]


def test_the_daemon_serves_the_helpdesk_figures(helpdesk):
    """`mailticket run` reads them from its database (the real process, its own clock)."""
    from mails import mail
    from test_daemon import DaemonProc

    [result] = helpdesk.ingest(mail(subject="Printer on fire"))
    assert result["outcome"] == "created"
    daemon = DaemonProc(helpdesk)
    try:
        daemon.start()
        found = samples(daemon.get("/metrics"))
        assert daemon.stop() == 0
    finally:
        daemon.stop(signal.SIGKILL)  # never leave it running, whatever failed
    assert of(found, "mailticket_tickets_open", status="new", queue="general", priority="P3") == 1
    assert of(found, "mailticket_first_response_seconds_count") == 0


def _exprs(panels: list[dict]) -> list[str]:
    out = []
    for panel in panels:
        out += [t["expr"] for t in panel.get("targets", [])]
        out += _exprs(panel.get("panels", []))  # collapsed rows hold their panels
    return out


def exposed_names(text: str) -> set[str]:
    """The series names a scrape exposes, from its `# TYPE` lines (a labelled counter that
    has counted nothing yet has no sample, but is there)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\w+) (\w+)$", text, re.M):
        names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else {name}
    return names


def test_the_dashboard_only_names_metrics_that_metrics_exposes(endpoint):
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert any(i.get("name") == "DS_PROMETHEUS" for i in dashboard["__inputs"])
    exposed = exposed_names(scrape(endpoint))
    exprs = _exprs(dashboard["panels"])
    assert len(exprs) >= 10
    named = set()
    for expr in exprs:
        names = set(re.findall(r"\bmailticket_\w+", expr))
        assert names, expr
        assert names <= exposed, f"{expr}: {sorted(names - exposed)} not at /metrics"
        named |= names
    helpdesk = {
        "mailticket_tickets_open",
        "mailticket_sla_breached_tickets",
        "mailticket_sla_at_risk_tickets",
        "mailticket_sla_breaches_total",
        "mailticket_first_response_seconds_bucket",
        "mailticket_resolution_seconds_bucket",
        "mailticket_ratings_total",
    }
    assert helpdesk <= named
    for panel in dashboard["panels"]:
        assert panel.get("datasource", {}).get("uid") in (None, "${DS_PROMETHEUS}"), panel["title"]
