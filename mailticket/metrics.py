"""Prometheus metrics and the loopback HTTP endpoint (`/healthz`, `/metrics`).

The only module that imports prometheus_client.  The daemon records into these
objects; the endpoint serves them on `[daemon] http` (127.0.0.1 by default: it is
for the local Prometheus agent and the service manager, not for the world).

Two kinds of figures.  The daemon's own (messages, deliveries, the outbox, restarts,
pipeline latency) are counted in this process as they happen.  The helpdesk's
(`HelpdeskCollector`: open tickets, SLA breaches and tickets at risk, first-response
and resolution times, ratings) are read from the database at each scrape, so that
every daemon on one database reports the same numbers and a restart loses nothing;
a dashboard takes `max without (instance)` of them, not the sum.  A scrape costs
three queries: the open tickets (by the status index), the tickets created in the
last HISTOGRAM_WINDOW, and the `sla-breached` and `rating` events.  When the
database fails, the helpdesk's figures are left out of that scrape (the daemon's
own are still served) and the failure is logged once, until it answers again.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from . import models, states
from .clock import Clock, SystemClock
from .db import reset_connection
from .models import Ticket

log = logging.getLogger(__name__)

OPEN_STATUSES = tuple(s for s in states.STATUSES if s not in ("resolved", "closed"))
SLA_TIMERS = ("first_response", "resolution")  # sla.TIMERS with a due time that can be breached
# A timer is "at risk" when it falls due within this window after the scrape (now < due
# <= now + 1 h): long enough for a lead to act, short enough to mean "now".
AT_RISK_WINDOW = timedelta(hours=1)
# The time histograms cover the tickets created in this window: recent enough to
# describe the team as it works now, small enough to read at each scrape.  A ticket
# counts in `resolution` once it is resolved (or closed), so the newest days fill in.
HISTOGRAM_WINDOW = timedelta(days=30)
DURATION_BUCKETS = (
    300,  # 5 min
    900,
    1800,
    3600,  # 1 h
    7200,
    14400,
    28800,
    86400,  # 1 day
    172800,
    345600,
    604800,  # 1 week
)


class Metrics:
    """The daemon's metrics and the helpdesk's (`HelpdeskCollector`, on the database that
    `db.open_database` bound; `clock` is its "now")."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.registry = CollectorRegistry()
        self.helpdesk = HelpdeskCollector(clock or SystemClock())
        self.registry.register(self.helpdesk)
        self.received = Counter(
            "mailticket_messages_total",
            "Messages processed, by source and outcome",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.tickets_created = Counter(
            "mailticket_tickets_created_total", "Tickets created", registry=self.registry
        )
        self.outbox_depth = Gauge(
            "mailticket_outbox_depth",
            "Outgoing messages not yet sent, by state",
            ["state"],
            registry=self.registry,
        )
        self.delivery_failures = Counter(
            "mailticket_delivery_failures_total",
            "Failed delivery attempts, by kind (retry, dead)",
            ["kind"],
            registry=self.registry,
        )
        self.deliveries = Counter("mailticket_deliveries_total", "Messages delivered", registry=self.registry)
        self.transport_up = Gauge(
            "mailticket_outbox_transport_up",
            "1 when the last delivery pass could use its transport (the smarthost answered), else 0",
            registry=self.registry,
        )
        self.restarts = Counter(
            "mailticket_process_restarts_total",
            "Child processes started again after they died",
            ["process"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mailticket_pipeline_seconds",
            "Time from receipt to commit of a processed message",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HttpEndpoint:
    """A tiny HTTP server in a thread: `/healthz` (JSON, 200 or 503) and `/metrics`."""

    def __init__(
        self, host: str, port: int, metrics: Metrics, health: Callable[[], tuple[bool, dict]]
    ) -> None:
        metrics_ref, health_ref = metrics, health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, ctype, code = metrics_ref.render(), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/healthz"):
                    try:
                        ok, detail = health_ref()
                    except Exception as exc:  # noqa: BLE001 - a health check that fails is a 503
                        ok, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
                    body = json.dumps({"ok": ok, **detail}).encode()
                    ctype, code = "application/json", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # quiet: one line per scrape is noise
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HelpdeskCollector:
    """The helpdesk's figures, read from the bound database at each scrape (the module's
    docstring says why).  `clock` gives "now" for the due times and the histograms' window.

    - `mailticket_tickets_open{status,queue,priority}`: tickets not resolved or closed;
    - `mailticket_sla_breached_tickets{timer}`: open tickets whose first-response (while
      unanswered) or resolution due time is past; `mailticket_sla_at_risk_tickets{timer}`:
      due within AT_RISK_WINDOW and not past (a paused timer has no due time);
    - `mailticket_sla_breaches_total{timer}`: the `sla-breached` events ever recorded;
    - `mailticket_first_response_seconds`, `mailticket_resolution_seconds`: histograms over
      the tickets created in HISTOGRAM_WINDOW: first_response_at, and resolved_at (closed_at
      for a ticket closed without being resolved; none for a merged one), minus created_at.
      Tickets leave the window, so buckets can go down: take `histogram_quantile` of the
      buckets themselves, not of their `rate`;
    - `mailticket_ratings_total{score}`: every `rating` event, a replaced rating included
      (each is a customer's answer, and a counter that only grows suits `increase`).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.failing = False  # the last scrape met a database error (logged once)

    def describe(self) -> list[Metric]:
        return _families(Figures())

    def collect(self) -> Iterator[Metric]:
        if models.database_proxy.obj is None:  # no database bound: nothing to read
            return
        try:
            figures = read_figures(self.clock.now())
        except Exception as exc:  # noqa: BLE001 - a scrape never fails for the database's sake
            if not self.failing:
                log.warning("metrics: cannot read the helpdesk's figures: %s", " ".join(str(exc).split()))
                self.failing = True
            return
        finally:
            reset_connection()  # each scrape runs in a thread of its own: leave no connection behind
        if self.failing:
            log.info("metrics: the helpdesk's figures can be read again")
            self.failing = False
        yield from _families(figures)


@dataclass
class Figures:
    """What one scrape read: open tickets by (status, queue, priority); SLA counts by
    timer; cumulative bucket counts, count and sum of each histogram; event counts."""

    open: dict[tuple[str, str, str], int] = field(default_factory=dict)
    breached: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SLA_TIMERS, 0))
    at_risk: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SLA_TIMERS, 0))
    first_response: list[float] = field(default_factory=lambda: [0.0] * (len(DURATION_BUCKETS) + 2))
    resolution: list[float] = field(default_factory=lambda: [0.0] * (len(DURATION_BUCKETS) + 2))
    breaches: dict[str, int] = field(default_factory=dict)
    ratings: dict[str, int] = field(default_factory=dict)


def _q(name: str) -> str:
    return f'"{name}"'


def read_figures(now: datetime) -> Figures:
    """The helpdesk's figures at `now`, in three queries (the module's docstring)."""
    db = models.database_proxy
    p = db.obj.param
    sqlite = isinstance(db.obj, models.SqliteDatabase)
    stamp = Ticket.created_at.db_value
    out = Figures()

    # 1. Open tickets with their SLA state, through the status index.  Past due is
    # `due <= now`, as the timed jobs (jobs.py) see a breach.
    unanswered = {"first_response": f" AND {_q('first_response_at')} IS NULL", "resolution": ""}
    sums, params = [], []
    for timer in SLA_TIMERS:
        due = _q(f"due_{timer}")
        sums.append(f"SUM(CASE WHEN {due} <= {p}{unanswered[timer]} THEN 1 ELSE 0 END)")
        sums.append(f"SUM(CASE WHEN {due} > {p} AND {due} <= {p}{unanswered[timer]} THEN 1 ELSE 0 END)")
        params += [stamp(now), stamp(now), stamp(now + AT_RISK_WINDOW)]
    statuses = ", ".join([p] * len(OPEN_STATUSES))
    rows = db.execute_sql(
        f'SELECT "status", "queue", "priority", COUNT(*), {", ".join(sums)} FROM "ticket" '
        f'WHERE "status" IN ({statuses}) GROUP BY "status", "queue", "priority"',
        [*params, *OPEN_STATUSES],
    ).fetchall()
    for status, queue, priority, n, *sla in rows:
        out.open[(status, queue, priority)] = n
        for i, timer in enumerate(SLA_TIMERS):
            out.breached[timer] += int(sla[2 * i] or 0)
            out.at_risk[timer] += int(sla[2 * i + 1] or 0)

    # 2. The time histograms over the window, bucketed in SQL.  julianday's doubles are
    # off in the tenth decimal: rounded to the millisecond, 300 s is 300, not 300.0000001
    # (which would miss the 5-minute bucket); PostgreSQL's intervals are exact.
    def seconds(a: str, b: str) -> str:
        if sqlite:
            return f"ROUND((julianday({a}) - julianday({b})) * 86400, 3)"
        return f"EXTRACT(EPOCH FROM ({a} - {b}))"

    created = _q("created_at")
    resolved = f"COALESCE({_q('resolved_at')}, {_q('closed_at')})"
    inner = (
        f"SELECT {seconds(_q('first_response_at'), created)} AS fr, "
        f'CASE WHEN "status" IN ({p}, {p}) AND "merged_into" IS NULL '
        f"THEN {seconds(resolved, created)} END AS res "
        f'FROM "ticket" WHERE {created} >= {p}'
    )
    cols = []
    for name in ("fr", "res"):
        cols += [f"SUM(CASE WHEN {name} <= {b} THEN 1 ELSE 0 END)" for b in DURATION_BUCKETS]
        cols += [f"COUNT({name})", f"SUM({name})"]
    # MATERIALIZED: a flattened subquery would compute each duration once per bucket.
    row = db.execute_sql(
        f"WITH t AS MATERIALIZED ({inner}) SELECT {', '.join(cols)} FROM t",
        ["resolved", "closed", stamp(now - HISTOGRAM_WINDOW)],
    ).fetchone()
    k = len(DURATION_BUCKETS) + 2
    out.first_response = [float(v or 0) for v in row[:k]]
    out.resolution = [float(v or 0) for v in row[k:]]

    # 3. Breaches by timer and ratings by score: one pass over the two kinds of events.
    key = "CASE WHEN \"kind\" = 'rating' THEN 'score' ELSE 'timer' END"
    if sqlite:
        value = f"CAST(json_extract(\"detail\", '$.' || {key}) AS TEXT)"
    else:
        value = f'CAST("detail" AS json) ->> {key}'
    # The kinds as literals: the partial index `event_counted` (schema v7) holds just these
    # rows, and a planner uses it only when the query names them as its predicate does.
    for kind, label, n in db.execute_sql(
        f'SELECT "kind", {value}, COUNT(*) FROM "event" WHERE {models.COUNTED_EVENTS} GROUP BY 1, 2'
    ).fetchall():
        counts = out.ratings if kind == "rating" else out.breaches
        label = "" if label is None else str(label)
        counts[label] = counts.get(label, 0) + n
    return out


def _families(f: Figures) -> list[Metric]:
    tickets = GaugeMetricFamily(
        "mailticket_tickets_open",
        "Tickets not resolved or closed, by status, queue and priority",
        labels=["status", "queue", "priority"],
    )
    for (status, queue, priority), n in sorted(f.open.items()):
        tickets.add_metric([status, queue, priority], n)
    breached = GaugeMetricFamily(
        "mailticket_sla_breached_tickets", "Open tickets past a due time, by SLA timer", labels=["timer"]
    )
    at_risk = GaugeMetricFamily(
        "mailticket_sla_at_risk_tickets",
        f"Open tickets due within {AT_RISK_WINDOW.total_seconds() / 3600:g} h and not past, by SLA timer",
        labels=["timer"],
    )
    for timer in SLA_TIMERS:
        breached.add_metric([timer], f.breached[timer])
        at_risk.add_metric([timer], f.at_risk[timer])
    breaches = CounterMetricFamily(
        "mailticket_sla_breaches_total",
        "SLA breaches recorded (sla-breached events), by timer",
        labels=["timer"],
    )
    for timer, n in sorted(f.breaches.items()):
        breaches.add_metric([timer], n)
    ratings = CounterMetricFamily(
        "mailticket_ratings_total",
        "Satisfaction ratings received (rating events), by score",
        labels=["score"],
    )
    for score, n in sorted(f.ratings.items()):
        ratings.add_metric([score], n)
    days = HISTOGRAM_WINDOW.days
    return [
        tickets,
        breached,
        at_risk,
        breaches,
        _histogram(
            "mailticket_first_response_seconds",
            f"Time to the first agent reply, tickets created in the last {days} days",
            f.first_response,
        ),
        _histogram(
            "mailticket_resolution_seconds",
            f"Time to resolution, tickets created in the last {days} days and resolved",
            f.resolution,
        ),
        ratings,
    ]


def _histogram(name: str, doc: str, values: list[float]) -> HistogramMetricFamily:
    *cumulative, count, total = values
    buckets = [(f"{float(b)}", c) for b, c in zip(DURATION_BUCKETS, cumulative)] + [("+Inf", count)]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)
