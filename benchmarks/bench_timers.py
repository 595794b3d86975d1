"""Timers benchmark: one pass of the timed jobs over 100,000 open tickets, 1% of them due.

    .venv/bin/python benchmarks/bench_timers.py [--tickets 100000] [--db sqlite|postgresql|both] [--profile]

For each backend, in a fresh database (`open_database` migrates it) and fresh processes:

  setup   (not timed as the pass) N open P3 tickets in the queue `general`, each with a
          distinct requester, its customer's message (in), an agent's reply (out, the
          first response) and its events (created, status new -> open), inserted in
          bulk (`models.insert_many`).  Every hundredth ticket is due: created two days
          before the pass, answered 30 minutes later, so its daily update (P3: 1440
          minutes) is 23.5 hours late and its `next_check` is in the past; the others
          were created 1 to 21 hours before, their `next_check` (the next update) still
          ahead.  Each due ticket has exactly one thing to do, its status `update`: the
          first response is met, the resolution (72 hours) and its warning (at 80%) are
          still ahead, so no breach or escalation is part of this figure.  The calendar
          is 24/7 (`[sla] business_days = "mon-sun"`, 00:00-24:00) and the automatic-mail
          limits are high, so that nothing is held back.  The setup checks on a due and a
          waiting ticket that `sla.refresh` would leave their due times as written, and
          on PostgreSQL runs ANALYZE, as autovacuum soon does on a live server.
  pass    a new process does what `mailticket tick --limit L` does: `open_app` with
          processing, then one `jobs.tick(env, now, limit=L)` inside `writing()` and
          `app.db.atomic()` (commit included in the time).  L = max(1000, due tickets),
          not the CLI's default of 200 (`jobs.BATCH`), so that one pass handles them all.
  empty   then, in the same process, a second pass at the same time: nothing is due any
          more, so it is the index lookup alone (plus the AutoCount prune every pass does).

Prints the seconds of each, tickets handled, actions by kind and outbox rows written.
Targets (issue 12): the pass under 1 second on each backend; the empty pass under
50 ms (our own bound for "tiny": it reads no ticket).  With --profile the pass runs
under cProfile and the functions with the most cumulative and own time are printed; its
figures are then inflated by the profiler and no target is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bench_ingest
from targets import Targets

ROOT = bench_ingest.ROOT
NOW = datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc)  # a Wednesday; the pass runs as of this time
TARGET_S = 1.0  # the pass, seconds (issue 12)
EMPTY_MS = 50.0  # the pass with nothing due, milliseconds
LIMIT = 1000  # tickets per pass in this benchmark (the CLI's --limit; its default is jobs.BATCH)
EVERY = 100  # one ticket in EVERY is due
CHUNK = 500  # rows per INSERT: 500 tickets are ~15,000 parameters, below both backends' limits
HD = "support@helpdesk.test"
DAY, HOUR, MINUTE = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)


def write_config(workdir: str, url: str) -> Path:
    cfg = Path(workdir) / "mailticket.toml"
    cfg.write_text(
        f'[helpdesk]\naddress = "{HD}"\nauto_reply_limit_domain = 1000000\nauto_reply_limit_total = 1000000\n'
        f'[database]\nurl = "{url}"\n[paths]\nrules = "{ROOT / "rules"}"\n'
        f'[sla]\nbusiness_days = "mon-sun"\nbusiness_hours = "00:00-24:00"\n'
    )
    return cfg


def ticket_times(i: int, rng: random.Random) -> tuple[datetime, bool]:
    """When ticket i was created, and whether it is due at NOW."""
    if i % EVERY == 0:
        return NOW - 2 * DAY - (i // EVERY % 60) * MINUTE, True
    return NOW - HOUR - rng.randrange(20 * 60) * MINUTE, False


def ticket_row(i: int, created: datetime) -> dict:
    """Ticket i as the pipeline and an agent's first reply leave it, with the due times
    sla.refresh computes for it on a 24/7 calendar (checked in `child_setup`)."""
    answered = created + 30 * MINUTE
    warn_resolution = created + 4320 * MINUTE * 80 // 100  # [sla] warning = 20% left
    return dict(
        subject=f"Printer {i} does not print",
        status="open",
        priority="P3",
        queue="general",
        requester=f"customer{i}@example{i % 1000}.test",
        requester_name=f"Customer {i}",
        created_at=created,
        updated_at=answered,
        first_response_at=answered,
        due_first_response=None,  # met
        due_next_update=answered + 1440 * MINUTE,  # from the last mail the customer got
        due_resolution=created + 4320 * MINUTE,
        next_check=min(answered + 1440 * MINUTE, warn_resolution),
    )


def child_setup(url: str, n: int, cfg_path: str) -> dict:
    """The database of n tickets (see the module's docstring); its counts and seconds."""
    from mailticket import sla
    from mailticket.config import load
    from mailticket.db import open_database
    from mailticket.models import Event, Message, Ticket, insert_many

    start = time.perf_counter()
    db = open_database(url)
    rng = random.Random(12)
    due = 0
    for base in range(0, n, CHUNK):
        times = [ticket_times(i, rng) for i in range(base, min(base + CHUNK, n))]
        rows = [ticket_row(base + k, created) for k, (created, _) in enumerate(times)]
        due += sum(is_due for _, is_due in times)
        with db.atomic():
            numbers = insert_many(Ticket, rows, keys=True)
            messages, events = [], []
            for number, row in zip(numbers, rows):
                agent = f"agent{number % 7}@helpdesk.test"
                common = dict(ticket=number, subject=row["subject"])
                messages.append(
                    dict(
                        common,
                        direction="in",
                        kind="customer",
                        message_id=f"<c{number}@mail.test>",
                        from_addr=row["requester"],
                        to=[HD],
                        text="It does not print.",
                        body="It does not print.",
                        date=row["created_at"],
                        created_at=row["created_at"],
                    )
                )
                messages.append(
                    dict(
                        common,
                        direction="out",
                        kind="agent-reply",
                        message_id=f"<r{number}@helpdesk.test>",
                        from_addr=HD,
                        to=[row["requester"]],
                        text="We are on it.",
                        body="We are on it.",
                        date=row["first_response_at"],
                        created_at=row["first_response_at"],
                    )
                )
                events.append(
                    dict(
                        ticket=number,
                        at=row["created_at"],
                        actor=row["requester"],
                        kind="created",
                        detail={"source": "ingest"},
                    )
                )
                events.append(
                    dict(
                        ticket=number,
                        at=row["first_response_at"],
                        actor=agent,
                        kind="status",
                        detail={"from": "new", "to": "open"},
                    )
                )
            insert_many(Message, messages)
            insert_many(Event, events)
    if not url.startswith("sqlite:"):
        # What autovacuum does within a minute of a bulk load on a live server; without the
        # statistics PostgreSQL scans the whole table for the due tickets (15-20 ms here).
        db.execute_sql("ANALYZE")
    seconds = time.perf_counter() - start
    cfg = load(cfg_path)
    for number in (1, 2):  # ticket 1 (i = 0) is due, ticket 2 is not
        moved = sla.refresh(Ticket.get_by_id(number), cfg, NOW)
        if moved:
            raise SystemExit(f"ticket {number}: sla.refresh moves {moved}: the setup is not what it says")
    db.close()
    return {"tickets": n, "due": due, "seconds": seconds}


def child_pass(cfg_path: str, limit: int, profile: bool) -> dict:
    """What `mailticket tick --limit` does, timed; then a pass with nothing left due."""
    from mailticket import jobs
    from mailticket.app import open_app
    from mailticket.clock import FrozenClock
    from mailticket.config import load
    from mailticket.db import writing
    from mailticket.models import Outbox

    start = time.perf_counter()
    app = open_app(load(cfg_path), clock=FrozenClock(NOW))
    opened = time.perf_counter() - start
    assert app.pipeline is not None
    env = app.pipeline.env
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    with writing(), app.db.atomic():
        done = jobs.tick(env, NOW, limit=limit)
    seconds = time.perf_counter() - start
    report = ""
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(35)
        stats.sort_stats("tottime").print_stats(12)
        report = out.getvalue()
    start = time.perf_counter()
    with writing(), app.db.atomic():
        empty = jobs.tick(env, NOW, limit=limit)
    empty_seconds = time.perf_counter() - start
    kinds: dict[str, int] = {}
    for action in done.actions:
        kinds[action["action"]] = kinds.get(action["action"], 0) + 1
    outbox: dict[str, int] = {}
    for row in Outbox.select(Outbox.kind):
        outbox[row.kind] = outbox.get(row.kind, 0) + 1
    app.close()
    return {
        "open_seconds": opened,
        "seconds": seconds,
        "handled": len({a["ticket"] for a in done.actions}),
        "actions": kinds,
        "outbox": outbox,
        "empty_seconds": empty_seconds,
        "empty_actions": len(empty.actions),
        "profile": report,
    }


def run_child(args: list[str]) -> dict:
    try:
        out = subprocess.run(
            [sys.executable, __file__, *args], capture_output=True, text=True, check=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{exc.stderr[-3000:]}") from None
    return json.loads(out.strip().splitlines()[-1])


def run_backend(backend: str, n: int, profile: bool) -> tuple[dict, dict, int]:
    """Setup and pass on a fresh database of `backend`; their results and the limit used."""
    with tempfile.TemporaryDirectory() as tmp:
        drop = None
        if backend == "sqlite":
            url = f"sqlite:///{tmp}/bench.db"
        else:
            url, drop = bench_ingest.fresh_pg()
        try:
            cfg = write_config(tmp, url)
            setup = run_child(["--child", "setup", "--url", url, "--config", str(cfg), "--tickets", str(n)])
            limit = max(LIMIT, setup["due"])
            args = ["--child", "pass", "--config", str(cfg), "--limit", str(limit)]
            result = run_child(args + (["--profile"] if profile else []))
        finally:
            if drop:
                drop()
    return setup, result, limit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tickets", type=int, default=100_000)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--profile", action="store_true", help="run the pass under cProfile; check no target")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        if args.child == "setup":
            print(json.dumps(child_setup(args.url, args.tickets, args.config)))
        else:
            print(json.dumps(child_pass(args.config, args.limit, args.profile)))
        return 0
    targets = Targets("timers")
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    size = f"{args.tickets:,}"
    print(
        f"timers benchmark: {size} open tickets, 1 in {EVERY} due (an update each), as of "
        f"{NOW.isoformat()}, {os.cpu_count()} cores"
    )
    for backend in backends:
        setup, res, limit = run_backend(backend, args.tickets, args.profile)
        print(
            f"{backend}: setup {setup['seconds']:.1f} s ({setup['tickets']:,} tickets, "
            f"{setup['due']:,} due); open_app {res['open_seconds']:.2f} s"
        )
        print(
            f"{backend}: pass (--limit {limit}) {res['seconds']:.3f} s: {res['handled']:,} tickets handled, "
            f"actions {json.dumps(res['actions'], sort_keys=True)}, "
            f"outbox rows {json.dumps(res['outbox'], sort_keys=True)}"
            + (" (under cProfile)" if args.profile else "")
        )
        print(f"{backend}: empty pass {res['empty_seconds'] * 1000:.1f} ms, {res['empty_actions']} actions")
        if res["handled"] != setup["due"] or res["empty_actions"]:  # else it measured something else
            raise SystemExit(
                f"{setup['due']} tickets due, {res['handled']} handled and "
                f"{res['empty_actions']} actions in the empty pass: not what the benchmark says"
            )
        if args.profile:
            print(res["profile"])
            continue
        targets.below(f"pass over {size} ({100 // EVERY}% due) {backend}", res["seconds"], TARGET_S, " s")
        targets.below(
            f"empty pass over {size} {backend}", res["empty_seconds"] * 1000, EMPTY_MS, " ms", digits=1
        )
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
