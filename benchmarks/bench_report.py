"""Report benchmark: `report.compute` over 100,000 tickets and 1,000,000 events.

    .venv/bin/python benchmarks/bench_report.py [--tickets 100000] [--db sqlite|postgresql|both]

For each backend, in a fresh database and fresh processes:

  setup    (not timed) N tickets created over ten weeks, bulk-inserted (`models.insert_many`),
           each with ten events (created, status new -> open, first-response, reply,
           message, status open -> resolved, survey, rating, sla-warning, and either an
           sla-breached or a tier change 1 -> 2), and one agent reply (message); one in
           five still open.  Queues, priorities, assignees and channels vary.  PostgreSQL
           is ANALYZEd afterwards, as autovacuum soon does.
  compute  a new process opens the database and runs `report.compute(config, since, until,
           "queue")` over the ten weeks, timed, under tracemalloc (its peak: what Python
           allocated during the call; the temporary table lives in the database).
  memory   the same compute over a database of N / 10 tickets: the peak should not grow
           with the tickets (it holds groups, days and weeks, not rows).

Targets (issue 13): compute under 5 s on each backend; the peak for N no more than twice
the peak for N / 10.
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
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bench_ingest
from targets import Targets

ROOT = bench_ingest.ROOT
START = datetime(2026, 1, 5, 0, 0, tzinfo=timezone.utc)  # a Monday
WEEKS = 10
TARGET_S = 5.0
CHUNK = 400  # rows per INSERT (events: 5 columns, 2,000 parameters)
QUEUES = ("general", "billing", "hardware", "network")
CHANNELS = ("phone", "chat", "walk-in", None, None, None)


def write_config(workdir: str, url: str) -> Path:
    cfg = Path(workdir) / "mailticket.toml"
    cfg.write_text(
        f'[helpdesk]\naddress = "support@helpdesk.test"\n[database]\nurl = "{url}"\n'
        f'[paths]\nrules = "{ROOT / "rules"}"\n'
    )
    return cfg


def child_setup(url: str, n: int) -> dict:
    from mailticket.db import open_database
    from mailticket.models import Event, Message, Ticket, insert_many

    begin = time.perf_counter()
    db = open_database(url)
    rng = random.Random(13)
    span = WEEKS * 7 * 24 * 3600
    events_n = 0
    for base in range(0, n, CHUNK):
        rows = []
        for i in range(base, min(base + CHUNK, n)):
            created = START + timedelta(seconds=rng.randrange(span - 7 * 24 * 3600))
            answered = created + timedelta(minutes=rng.randrange(10, 600))
            done = i % 5 != 0
            resolved = answered + timedelta(minutes=rng.randrange(30, 5000))
            channel = CHANNELS[i % len(CHANNELS)]
            rows.append(
                dict(
                    subject=f"Printer {i % 5000} does not print",
                    status="resolved" if done else "open",
                    priority=f"P{1 + i % 4}",
                    queue=QUEUES[i % len(QUEUES)],
                    tier=1 + (i % 7 == 0),
                    assignee=f"agent{i % 20}@helpdesk.test",
                    requester=f"customer{i % 20000}@example.test",
                    fields={"channel": channel, "serial": f"SN{i % 3000}"} if channel else {},
                    created_at=created,
                    updated_at=resolved if done else answered,
                    first_response_at=answered,
                    resolved_at=resolved if done else None,
                )
            )
        with db.atomic():
            numbers = insert_many(Ticket, rows, keys=True)
            events, messages = [], []
            for number, row in zip(numbers, rows):
                c, a = row["created_at"], row["first_response_at"]
                r = row["resolved_at"] or a + timedelta(hours=1)
                agent = row["assignee"]
                last = (
                    ("sla-breached", {"timer": "first_response", "due": a.isoformat()})
                    if number % 2
                    else ("tier", {"from": 1, "to": 2})
                )
                score = 1 + number % 5
                for at, kind, detail in (
                    (c, "created", {"source": "smtp"}),
                    (a, "status", {"from": "new", "to": "open"}),
                    (a, "first-response", {"at": a.isoformat()}),
                    (a, "reply", {"message_id": f"<r{number}@x>", "to": [row["requester"]]}),
                    (a, "message", {"kind": "agent-reply"}),
                    (r, "status", {"from": "open", "to": "resolved"})
                    if row["resolved_at"]
                    else (r, "note", {"message_id": f"<n{number}@x>"}),
                    (r, "survey", {"to": row["requester"], "message_id": f"<s{number}@x>"}),
                    (r, "rating", {"score": score, "scale": "1-5", "good": score >= 4, "comment": "ok"}),
                    (a, "sla-warning", {"timer": "resolution", "due": r.isoformat(), "breached": False}),
                    (a, *last),
                ):
                    events.append(dict(ticket=number, at=at, actor=agent, kind=kind, detail=detail))
                messages.append(
                    dict(
                        ticket=number,
                        direction="out",
                        kind="agent-reply",
                        message_id=f"<r{number}@x>",
                        from_addr="support@helpdesk.test",
                        subject=row["subject"],
                        text="On it.",
                        body="On it.",
                        created_at=a,
                    )
                )
            for k in range(0, len(events), CHUNK):
                insert_many(Event, events[k : k + CHUNK])
            insert_many(Message, messages)
            events_n += len(events)
    if not url.startswith("sqlite:"):
        db.execute_sql("ANALYZE")
    db.close()
    return {"tickets": n, "events": events_n, "seconds": time.perf_counter() - begin}


def child_compute(cfg_path: str) -> dict:
    from mailticket import report
    from mailticket.app import open_app
    from mailticket.config import load

    app = open_app(load(cfg_path), processing=False)
    until = START + timedelta(weeks=WEEKS)
    tracemalloc.start()
    begin = time.perf_counter()
    data = report.compute(app.config, START, until, "queue")
    seconds = time.perf_counter() - begin
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    begin = time.perf_counter()
    report.compute(app.config, START, until, "queue")
    untraced = time.perf_counter() - begin
    app.close()
    return {
        "seconds": untraced,
        "traced_seconds": seconds,
        "peak_mb": peak / 1e6,
        "tickets": data["total"]["tickets"],
        "groups": len(data["groups"]),
        "backlog": data["total"]["backlog"]["open"],
        "fr_median": data["total"]["first_response"]["median"],
    }


def run_child(args: list[str]) -> dict:
    try:
        out = subprocess.run(
            [sys.executable, __file__, *args], capture_output=True, text=True, check=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{exc.stderr[-3000:]}") from None
    return json.loads(out.strip().splitlines()[-1])


def run_backend(backend: str, n: int) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        drop = None
        if backend == "sqlite":
            url = f"sqlite:///{tmp}/bench.db"
        else:
            url, drop = bench_ingest.fresh_pg()
        try:
            cfg = write_config(tmp, url)
            setup = run_child(["--child", "setup", "--url", url, "--tickets", str(n)])
            result = run_child(["--child", "compute", "--config", str(cfg)])
        finally:
            if drop:
                drop()
    return setup, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tickets", type=int, default=100_000)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        if args.child == "setup":
            print(json.dumps(child_setup(args.url, args.tickets)))
        else:
            print(json.dumps(child_compute(args.config)))
        return 0
    targets = Targets("report")
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    small = max(args.tickets // 10, 1)
    cores = os.cpu_count()
    print(f"report benchmark: {args.tickets:,} tickets (and {small:,}), ten events each, {cores} cores")
    for backend in backends:
        peaks = {}
        for n in (small, args.tickets):
            setup, res = run_backend(backend, n)
            peaks[n] = res["peak_mb"]
            print(
                f"{backend} {n:,}: setup {setup['seconds']:.1f} s ({setup['events']:,} events); compute "
                f"{res['seconds']:.2f} s ({res['traced_seconds']:.2f} s under tracemalloc), peak "
                f"{res['peak_mb']:.2f} MB; {res['tickets']:,} tickets, {res['groups']} groups, "
                f"backlog {res['backlog']:,}",
                flush=True,
            )
            if res["tickets"] != n:
                raise SystemExit(f"{n} tickets inserted, {res['tickets']} in the report")
        size = f"{args.tickets:,}"
        targets.below(f"compute over {size} tickets {backend}", res["seconds"], TARGET_S, " s")
        targets.below(
            f"peak memory {size} / {small:,} tickets {backend}", peaks[args.tickets] / peaks[small], 2.0, "x"
        )
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
