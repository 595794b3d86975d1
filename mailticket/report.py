"""The figures a support lead runs the team on, over a period (`mailticket report`, issue 13).

Place in the flow: read-only, beside everything else.  `compute(config, since, until, by)`
returns one JSON-ready dict; the CLI prints it as a table, JSON or CSV, and
`report_html.render` draws it.  Nothing is written but a temporary table of this
connection, dropped at the end.

Definitions (docs/performance.md has the costs):

- A ticket belongs to the period by its `created_at` in [since, until).  Merged tickets
  (`merged_into` set) are left out everywhere: their mail lives on in another ticket.
- Groups (`by`): queue, priority, tier, agent (the assignee, "(none)" when unassigned),
  channel (`fields.channel` when phone, chat or walk-in, else email).
- `first_response`: from created_at to first_response_at; `resolution`: from created_at to
  resolved_at (closed_at when it was closed without being resolved) for the tickets whose
  status at `until` was resolved or closed.  `median` and `p90` in calendar seconds, exact
  and nearest-rank (the value at rank ceil(p * n / 100) of the sorted values: no
  interpolation); `business_median` and `business_p90` the same in the open seconds of
  the ticket's SLA calendar (`sla.terms`; pauses are not taken off).  None when no value.
- `resolution_rate`: share of the period's tickets whose status at `until` was resolved or
  closed (the last status event before `until`).  `first_contact_resolution_rate`: share
  of those resolved with at most one agent reply and never reopened.  `reopen_rate`: share
  of the period's tickets reopened (a status event from resolved or closed to open) before
  `until`.  Rates are None when there is no ticket to divide by.
- `backlog`: every ticket created before `until` (in the period or not) whose status at
  `until` was neither resolved nor closed; `age_median` is `until - created_at` (nearest-rank).
- `sla_compliance`: per timer (first_response, resolution), the share of the period's
  tickets with that timer (a budget above 0 in their SLA policy) that have no
  `sla-breached` event of it; a timer still running counts as kept.
- `escalations`: per tier reached, the `tier` changes up to it (to > from) before `until`.
- `csat`: `surveys` tickets sent a survey (a `survey` event), `responses` tickets rated (the
  newest `rating` event is the rating), `mean` score, `good_share` (share rated good),
  `response_rate` (responses / surveys).  Ratings and surveys count whenever they came:
  the survey of a ticket of the period is often answered after `until`.
- Lists, over the period's tickets: `low_rated` (rated not good; ticket, score, comment;
  at most LIST_MAX), `recurring_subjects` (subjects lower-cased and trimmed, two tickets
  or more, top 10), `top_requesters` and `top_units` (`fields.serial` / `fields.account`:
  the "perpetual lemon"), top 10 each.
- `series`, for the charts: tickets per day (the helpdesk's time zone), and per ISO week
  the ratings, the good ones and the breaches.

Memory: the tickets are read through one streaming cursor (server-side on PostgreSQL);
what is kept per ticket goes to a temporary table, and the percentiles come from SQL
window functions over it, so memory depends on the number of groups, days and weeks,
not on the number of tickets.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from . import db as db_mod
from . import models, sla
from .models import Ticket

BY = ("queue", "priority", "channel", "agent", "tier")
CHANNELS = ("phone", "chat", "walk-in")  # anything else came by email
TIMERS = ("first_response", "resolution")
DONE = ("resolved", "closed")
TOP = 10  # entries of recurring_subjects, top_requesters, top_units
LIST_MAX = 100  # low-rated tickets listed at most
# Rows per write into the temporary table: an executemany on SQLite, a COPY on PostgreSQL
# (a round trip each: bigger; a few hundred KB of text at most).
CHUNK = {True: 400, False: 10_000}
FETCH = 2000  # rows per round trip of the PostgreSQL server-side cursor
TEMP = "report_values"
CURSOR = "report_tickets"
METRICS = ("fr", "res", "bfr", "bres", "age")  # the temporary table's series


@dataclass
class _Group:
    tickets: int = 0
    resolved: int = 0
    fcr: int = 0
    reopened: int = 0
    backlog: int = 0
    with_timer: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIMERS, 0))
    breached: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIMERS, 0))
    escalations: dict[str, int] = field(default_factory=dict)
    surveys: int = 0
    responses: int = 0
    scored: int = 0
    score_sum: int = 0
    good: int = 0

    def add(self, other: _Group) -> None:
        """Count `other`'s tickets in these (the total is the sum of the groups)."""
        for name in ("tickets", "resolved", "fcr", "reopened", "backlog", "surveys", "responses", "scored"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.score_sum += other.score_sum
        self.good += other.good
        for mine, theirs in ((self.with_timer, other.with_timer), (self.breached, other.breached)):
            for timer, n in theirs.items():
                mine[timer] = mine.get(timer, 0) + n
        for tier, n in other.escalations.items():
            self.escalations[tier] = self.escalations.get(tier, 0) + n


def compute(config, since: datetime, until: datetime, by: str = "queue") -> dict:
    """The report over tickets created in [since, until) (aware datetimes), broken down by
    `by` (one of BY); see the module's docstring for every figure."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, not {by!r}")
    db = models.database_proxy.obj
    sqlite = db_mod.is_sqlite()
    zone = ZoneInfo(config.helpdesk.timezone)
    groups: dict[str, _Group] = {}
    total = _Group()
    days: dict[str, int] = {}
    weeks: dict[str, dict[str, int]] = {}
    low: list[dict] = []
    terms_cache: dict[tuple, sla.Terms] = {}
    with db.atomic():
        if not sqlite:
            # PostgreSQL compiles a query this large with JIT first: 0.7 s of the report's
            # 5 at 100,000 tickets, for a query it then runs once.
            db.execute_sql("SET LOCAL jit = off")
        db.execute_sql(f'CREATE TEMP TABLE "{TEMP}" ("grp" TEXT, "metric" TEXT, "v" DOUBLE PRECISION)')
        try:
            buffer: list[tuple] = []
            chunk = CHUNK[sqlite]
            for row in _stream(db, sqlite, since, until):
                key = _group_key(row, by)
                g = groups.get(key) or groups.setdefault(key, _Group())
                values = _take(row, config, since, until, terms_cache, (g,), days, weeks, low, zone)
                buffer += [(key, metric, v) for metric, v in values]
                if len(buffer) >= chunk:
                    _flush(db, sqlite, buffer)
            _flush(db, sqlite, buffer)
            for g in groups.values():
                total.add(g)
            ranks = _percentiles(db)
            lists = _lists(db, sqlite, since, until)
        finally:
            db.execute_sql(f'DROP TABLE IF EXISTS "{TEMP}"')
    _comments(low)
    out_groups = {k: _figures(groups[k], ranks, k) for k in sorted(groups)}
    return {
        "period": {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "by": by,
            "timezone": config.helpdesk.timezone,
        },
        "total": _figures(total, ranks, None),
        "groups": out_groups,
        "low_rated": sorted(low, key=lambda r: r["ticket"])[:LIST_MAX],
        **lists,
        "series": {
            "days": [{"day": d, "tickets": days[d]} for d in sorted(days)],
            "weeks": [{"week": w, **weeks[w]} for w in sorted(weeks)],
        },
    }


# --- the one pass over the tickets ---------------------------------------------------------


def _json(sqlite: bool, column: str, key: str) -> str:
    """A JSON text column's member as text, on either backend."""
    if sqlite:
        return f"json_extract({column}, '$.{key}')"
    return f"(CAST({column} AS json)->>'{key}')"


def _ts(sqlite: bool, when: datetime):
    """A parameter compared with a timestamp column (stored naive UTC; SQLite: as text)."""
    naive = when.astimezone(timezone.utc).replace(tzinfo=None)
    return naive.isoformat(" ") if sqlite else naive


_COLUMNS = (
    "number status priority queue tier assignee channel sla_policy created_at first_response_at "
    "resolved_at closed_at reopens fr_breached res_breached esc2 esc3 surveys status_at status_at_at "
    "rating score good replies"
).split()


def _stream(db, sqlite: bool, since: datetime, until: datetime) -> Iterator[dict]:
    """Every ticket that is in the period or may be in the backlog at `until`, with what its
    events and messages say, one dict at a time."""
    p = db.param

    def j(col: str, key: str) -> str:
        return _json(sqlite, col, key)

    def last(alias: str, column: str) -> str:
        """The event `a`.`column` names, by its key.  PostgreSQL would rather scan and hash
        every event for a plain join; LATERAL (kept apart by OFFSET 0) makes it a lookup a ticket."""
        if sqlite:
            return f'LEFT JOIN "event" {alias} ON {alias}."id" = a."{column}"'
        found = f'SELECT * FROM "event" x WHERE x."id" = a."{column}" OFFSET 0'
        return f"LEFT JOIN LATERAL ({found}) {alias} ON TRUE"

    # A ticket created before `since` is in the backlog at `until` only if its status then
    # was not done: its status now is not done, or it changed (updated_at) since `since`.
    chosen = (
        f't."merged_into" IS NULL AND t."created_at" < {p} AND (t."created_at" >= {p} '
        f"OR t.\"status\" NOT IN ('resolved', 'closed') OR t.\"updated_at\" >= {p})"
    )
    # In ticket order where it is free (SQLite reads the table so); PostgreSQL would sort the
    # joined rows for it, and nothing here needs an order (the lists are sorted after).
    order = 'ORDER BY t."number"' if sqlite else ""
    sql = f"""
SELECT t."number", t."status", t."priority", t."queue", t."tier", t."assignee",
       {j('t."fields"', "channel")}, t."sla_policy", t."created_at", t."first_response_at",
       t."resolved_at", t."closed_at",
       COALESCE(a."reopens", 0), COALESCE(a."fr_breached", 0), COALESCE(a."res_breached", 0),
       COALESCE(a."esc2", 0), COALESCE(a."esc3", 0), COALESCE(a."surveys", 0),
       {j('ls."detail"', "to")}, ls."at", lr."id", {j('lr."detail"', "score")}, {j('lr."detail"', "good")},
       COALESCE(m."replies", 0)
FROM "ticket" t
LEFT JOIN (
    SELECT e."ticket_id",
        SUM(CASE WHEN e."kind" = 'status' AND e."at" < {p} AND {j('e."detail"', "to")} = 'open'
                  AND {j('e."detail"', "from")} IN ('resolved', 'closed') THEN 1 ELSE 0 END) AS "reopens",
        SUM(CASE WHEN e."kind" = 'sla-breached' AND e."at" < {p}
                  AND {j('e."detail"', "timer")} = 'first_response' THEN 1 ELSE 0 END) AS "fr_breached",
        SUM(CASE WHEN e."kind" = 'sla-breached' AND e."at" < {p}
                  AND {j('e."detail"', "timer")} = 'resolution' THEN 1 ELSE 0 END) AS "res_breached",
        SUM(CASE WHEN e."kind" = 'tier' AND e."at" < {p} THEN (
                  CASE WHEN CAST({j('e."detail"', "to")} AS INTEGER) = 2
                   AND CAST({j('e."detail"', "from")} AS INTEGER) < 2 THEN 1 ELSE 0 END)
            ELSE 0 END) AS "esc2",
        SUM(CASE WHEN e."kind" = 'tier' AND e."at" < {p} THEN (
                  CASE WHEN CAST({j('e."detail"', "to")} AS INTEGER) = 3
                   AND CAST({j('e."detail"', "from")} AS INTEGER) < 3 THEN 1 ELSE 0 END)
            ELSE 0 END) AS "esc3",
        SUM(CASE WHEN e."kind" = 'survey' THEN 1 ELSE 0 END) AS "surveys",
        MAX(CASE WHEN e."kind" = 'status' AND e."at" < {p} THEN e."id" END) AS "last_status",
        MAX(CASE WHEN e."kind" = 'rating' THEN e."id" END) AS "last_rating"
    FROM "event" e
    WHERE e."kind" IN ('status', 'sla-breached', 'tier', 'survey', 'rating')
      AND e."ticket_id" IN (SELECT "number" FROM "ticket" t WHERE {chosen})
    GROUP BY e."ticket_id"
) a ON a."ticket_id" = t."number"
{last("ls", "last_status")}
{last("lr", "last_rating")}
LEFT JOIN (
    SELECT "ticket_id", COUNT(*) AS "replies" FROM "message" WHERE "kind" = 'agent-reply'
    GROUP BY "ticket_id"
) m ON m."ticket_id" = t."number"
WHERE {chosen}
{order}"""
    u, s = _ts(sqlite, until), _ts(sqlite, since)
    params = [u] * 6 + [u, s, s] * 2
    when = _when
    if sqlite:  # a SQLite cursor steps through the result as it is read
        batches: Iterator[list] = iter([db.execute_sql(sql, params)])
    else:
        # A server-side cursor (inside compute's transaction): FETCH rows at a time.
        db.execute_sql(f'DECLARE "{CURSOR}" NO SCROLL CURSOR FOR {sql}', params)
        batches = iter(lambda: db.execute_sql(f'FETCH {FETCH} FROM "{CURSOR}"').fetchall(), [])
    try:
        for batch in batches:
            for values in batch:
                row = dict(zip(_COLUMNS, values))
                # (closed_at and status_at_at, seldom needed, when `_take` needs them.)
                for name in ("created_at", "first_response_at", "resolved_at"):
                    row[name] = when(row[name])
                yield row
    finally:
        if not sqlite:
            db.execute_sql(f'CLOSE "{CURSOR}"')


def _comments(low: list[dict]) -> None:
    """The low-rated tickets' comments, in place of their rating event's id: one query."""
    ids = [r["comment"] for r in low]
    if not ids:
        return
    rows = models.Event.select(models.Event.id, models.Event.detail).where(models.Event.id.in_(ids))
    text = {e.id: (e.detail or {}).get("comment") for e in rows}
    for r in low:
        r["comment"] = text.get(r["comment"])


def _when(value) -> datetime | None:
    """A timestamp column's value as an aware UTC datetime (SQLite gives text, PostgreSQL a
    naive datetime): `datetime.fromisoformat` is five times quicker than peewee's formats."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc)


def _group_key(row: dict, by: str) -> str:
    if by == "channel":
        return row["channel"] if row["channel"] in CHANNELS else "email"
    if by == "agent":
        return row["assignee"] or "(none)"
    value = row[by]
    return "(none)" if value is None else str(value)


def _terms(row: dict, config, cache: dict) -> sla.Terms:
    key = (row["sla_policy"], row["queue"], row["priority"])
    found = cache.get(key)
    if found is None:
        probe = Ticket(sla_policy=row["sla_policy"], queue=row["queue"], priority=row["priority"])
        found = cache[key] = sla.terms(probe, config)
    return found


def _take(row, config, since, until, cache, into, days, weeks, low, zone) -> list[tuple[str, float]]:
    """Count one ticket in the total and its group; its values for the percentiles."""
    created: datetime = row["created_at"]
    terms = _terms(row, config, cache)
    cal = terms.calendar
    done_at_until = row["status_at"] in DONE
    values: list[tuple[str, float]] = []
    if not done_at_until:
        for g in into:
            g.backlog += 1
        values.append(("age", (until - created).total_seconds()))
    if created < since:
        return values  # only in the backlog
    local = created.astimezone(zone)
    day = local.date().isoformat()
    days[day] = days.get(day, 0) + 1
    week = _week(local.date())
    w = weeks.setdefault(week, {"ratings": 0, "good": 0, "breaches": 0})
    w["breaches"] += row["fr_breached"] + row["res_breached"]
    fr = row["first_response_at"]
    if fr is not None and fr < until:
        values += [("fr", (fr - created).total_seconds()), ("bfr", cal.between(created, fr))]
    if done_at_until:
        end = row["resolved_at"] or _when(row["closed_at"])
        if end is None or end >= until:
            end = _when(row["status_at_at"])
        assert end is not None  # done at `until`: a status event made it so
        values += [("res", (end - created).total_seconds()), ("bres", cal.between(created, end))]
    # The rating's members, read by the query (a JSON parse a ticket here would cost);
    # the comment only for a low one, of the few listed.
    rating = None
    if row["rating"] is not None:
        score = row["score"]
        rating = {
            "score": int(score) if score is not None else None,
            "good": row["good"] in (1, True, "true"),
        }
    if rating is not None:
        w["ratings"] += 1
        w["good"] += bool(rating.get("good"))
        if not rating.get("good") and len(low) < LIST_MAX:
            low.append({"ticket": row["number"], "score": rating.get("score"), "comment": row["rating"]})
    timed = ((("first_response", row["fr_breached"] > 0),) if terms.first_response > 0 else ()) + (
        (("resolution", row["res_breached"] > 0),) if terms.resolution > 0 else ()
    )
    for g in into:
        g.tickets += 1
        g.reopened += row["reopens"] > 0
        if done_at_until:
            g.resolved += 1
            g.fcr += row["replies"] <= 1 and row["reopens"] == 0
        for timer, breached in timed:
            g.with_timer[timer] += 1
            g.breached[timer] += breached
        for tier, n in (("2", row["esc2"]), ("3", row["esc3"])):
            if n:
                g.escalations[tier] = g.escalations.get(tier, 0) + n
        g.surveys += row["surveys"] > 0
        if rating is not None:
            g.responses += 1
            g.good += bool(rating.get("good"))
            if isinstance(rating.get("score"), int):
                g.scored += 1
                g.score_sum += rating["score"]
    return values


@functools.lru_cache(maxsize=1024)
def _week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def _flush(db, sqlite: bool, buffer: list[tuple]) -> None:
    if sqlite and buffer:  # sqlite3's executemany steps one prepared statement
        db.cursor().executemany(f'INSERT INTO "{TEMP}" ("grp", "metric", "v") VALUES (?, ?, ?)', buffer)
        buffer.clear()
    elif buffer:  # PostgreSQL: COPY, many times quicker than INSERTs of many rows
        names: dict[str, str] = {}
        text = "".join(
            f"{names.get(g) or names.setdefault(g, _copy_text(g))}\t{m}\t{v!r}\n" for g, m, v in buffer
        )
        db.cursor().copy_expert(f'COPY "{TEMP}" ("grp", "metric", "v") FROM STDIN', io.StringIO(text))
        buffer.clear()


def _copy_text(value: str) -> str:
    """A group's name as COPY's text format reads it (backslash, tab and newline escaped)."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _percentiles(db) -> dict[tuple[str | None, str, int], float]:
    """(group or None for the total, metric, 50 or 90) -> the nearest-rank percentile: the
    k-th smallest value, read through an index on the values (two sorts in all, then a
    short index walk per figure; window functions over the whole table cost twice that)."""
    if not db_mod.is_sqlite():
        # PostgreSQL's percentile_disc is the nearest rank: one sort of each set, in one query.
        sql = f"""
SELECT "grp", "metric", GROUPING("grp"), percentile_disc(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY "v")
FROM "{TEMP}" GROUP BY GROUPING SETS (("grp", "metric"), ("metric"))"""
        found: dict[tuple[str | None, str, int], float] = {}
        for grp, metric, total, (p50, p90) in db.execute_sql(sql).fetchall():
            key = None if total else grp
            found[(key, metric, 50)], found[(key, metric, 90)] = p50, p90
        return found
    p = db.param
    db.execute_sql(f'CREATE INDEX "{TEMP}_g" ON "{TEMP}" ("grp", "metric", "v")')
    db.execute_sql(f'CREATE INDEX "{TEMP}_m" ON "{TEMP}" ("metric", "v")')
    out: dict[tuple[str | None, str, int], float] = {}
    counts = db.execute_sql(
        f'SELECT "grp", "metric", COUNT(*) FROM "{TEMP}" GROUP BY "grp", "metric"'
    ).fetchall()
    totals: dict[str, int] = {}
    for grp, metric, n in counts:
        totals[metric] = totals.get(metric, 0) + n
        for q in (50, 90):
            sql = (
                f'SELECT "v" FROM "{TEMP}" WHERE "grp" = {p} AND "metric" = {p} '
                f'ORDER BY "v" LIMIT 1 OFFSET {p}'
            )
            out[(grp, metric, q)] = db.execute_sql(sql, [grp, metric, (n * q + 99) // 100 - 1]).fetchone()[0]
    for metric, n in totals.items():
        for q in (50, 90):
            sql = f'SELECT "v" FROM "{TEMP}" WHERE "metric" = {p} ORDER BY "v" LIMIT 1 OFFSET {p}'
            out[(None, metric, q)] = db.execute_sql(sql, [metric, (n * q + 99) // 100 - 1]).fetchone()[0]
    return out


def _lists(db, sqlite: bool, since: datetime, until: datetime) -> dict:
    p = db.param
    column = '"created_at"'
    if sqlite:
        # SQLite walks the created_at index even when the period holds every ticket (its
        # statistics know no ranges): when it reaches back to the first ticket, a scan it is.
        first = db.execute_sql('SELECT MIN("created_at") FROM "ticket"').fetchone()[0]
        if first is not None and _ts(sqlite, since) <= first:
            column = '+"created_at"'
    where = f'"merged_into" IS NULL AND {column} >= {p} AND {column} < {p}'
    period = [_ts(sqlite, since), _ts(sqlite, until)]

    def top(expr: str, minimum: int = 1) -> list[tuple[str, int]]:
        sql = (
            f'SELECT {expr} AS "k", COUNT(*) AS "n" FROM "ticket" WHERE {where} AND {expr} IS NOT NULL '
            f"GROUP BY {expr} HAVING COUNT(*) >= {minimum} ORDER BY COUNT(*) DESC, {expr} LIMIT {TOP}"
        )
        return [(k, n) for k, n in db.execute_sql(sql, period).fetchall()]

    units: list[dict] = []
    for name in ("serial", "account"):
        units += [{"field": name, "value": k, "tickets": n} for k, n in top(_json(sqlite, '"fields"', name))]
    units.sort(key=lambda u: (-int(u["tickets"]), u["field"], str(u["value"])))
    return {
        "recurring_subjects": [
            {"subject": k, "tickets": n} for k, n in top('LOWER(TRIM("subject"))', minimum=2)
        ],
        "top_requesters": [{"requester": k, "tickets": n} for k, n in top('"requester"')],
        "top_units": units[:TOP],
    }


# --- the figures of one group ---------------------------------------------------------------


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _figures(g: _Group, ranks: dict, key: str | None) -> dict:
    def times(calendar: str, business: str) -> dict:
        return {
            "median": ranks.get((key, calendar, 50)),
            "p90": ranks.get((key, calendar, 90)),
            "business_median": ranks.get((key, business, 50)),
            "business_p90": ranks.get((key, business, 90)),
        }

    return {
        "tickets": g.tickets,
        "first_response": times("fr", "bfr"),
        "resolution": times("res", "bres"),
        "resolved": g.resolved,
        "resolution_rate": _share(g.resolved, g.tickets),
        "first_contact_resolution_rate": _share(g.fcr, g.resolved),
        "reopen_rate": _share(g.reopened, g.tickets),
        "backlog": {"open": g.backlog, "age_median": ranks.get((key, "age", 50))},
        "sla_compliance": {t: _share(g.with_timer[t] - g.breached[t], g.with_timer[t]) for t in TIMERS},
        "escalations": dict(sorted(g.escalations.items())),
        "csat": {
            "surveys": g.surveys,
            "responses": g.responses,
            "response_rate": _share(g.responses, g.surveys),
            "mean": round(g.score_sum / g.scored, 2) if g.scored else None,
            "good_share": _share(g.good, g.responses),
        },
    }


def day_bounds(since: date, until: date, tz: str) -> tuple[datetime, datetime]:
    """[since 00:00, the day after until 00:00) in the time zone `tz`: the CLI's --since and
    --until name whole days, both included."""
    zone = ZoneInfo(tz)
    start = datetime.combine(since, datetime.min.time(), zone)
    end = datetime.combine(until + timedelta(days=1), datetime.min.time(), zone)
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)
