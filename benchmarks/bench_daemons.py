"""Several `mailticket run` processes on one PostgreSQL database: SMTP in, tickets out.

    .venv/bin/python benchmarks/bench_daemons.py [--smtp 5000] [--daemons 1,2,3] [--clients 16]

For each count of daemons, a new PostgreSQL database, that many daemons on it (each
its own SMTP port), and the same messages sent by `--clients` kept-open connections
spread evenly over the daemons (bench_smtp.run_clients).  The rate is messages /
time from the first message sent to the last ticket committed, as in bench_daemon;
"acks" is until the last acknowledgement is sent.  Each run also checks exactly
once: the same tickets and messages as with one daemon, one acknowledgement each.

Targets (issue 14): with two and three daemons, at least 0.80 of one daemon's rate
on this machine.  The daemons share the machine's cores with each other and with the
clients, so more daemons cannot be faster here; what the ratio measures is what the
coordination costs (row locks, SKIP LOCKED claims, the dedupe key's unique index),
and that it stays small.  One `target` line each; exit status 3 when one is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "tests")]

import bench_ingest  # noqa: E402
import bench_smtp  # noqa: E402
from bench_daemon import Daemon, count, processed, unsent, wait_until  # noqa: E402
from targets import Targets  # noqa: E402

TARGET_RATIO = 0.80


def run(n_daemons: int, raws: list[bytes], clients: int) -> dict:
    url, drop = bench_ingest.fresh_pg()
    try:
        with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
            daemons = []
            for i in range(n_daemons):
                work = Path(tmp) / f"d{i}"
                work.mkdir()
                daemons.append(stack.enter_context(Daemon(work, url, extra=f'name = "bench-{i}"\n')))
            # Whole conversations to each daemon, in order: a reply sent to another daemon
            # before its first message is processed would (rightly) open a ticket of its own.
            shares = bench_smtp.by_conversation(raws, n_daemons)
            per = max(1, clients // n_daemons)
            results: list[tuple[float, list[float]]] = []
            began = time.perf_counter()
            threads = [
                threading.Thread(
                    target=lambda d=d, share=share: results.append(
                        bench_smtp.run_clients("127.0.0.1", d.smtp_port, share, per)
                    )
                )
                for d, share in zip(daemons, shares)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if len(results) != n_daemons:
                raise SystemExit("a client group failed")
            done = wait_until(lambda: processed(url) >= len(raws), f"{len(raws)} messages processed")
            wait_until(lambda: unsent(url) == 0, "every acknowledgement sent")
            acked = time.perf_counter()
            latencies = [x for _, lat in results for x in lat]
            check = {
                "tickets": count(url, "SELECT COUNT(*) FROM ticket"),
                "messages": count(url, "SELECT COUNT(*) FROM message"),
                "acks": count(url, "SELECT COUNT(*) FROM outbox WHERE kind = 'ack'"),
                "acks_per_ticket_max": count(
                    url, "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM outbox "
                    "WHERE kind = 'ack' GROUP BY ticket) AS per"
                ),
            }
        return {
            "rate": len(raws) / (done - began),
            "acks_rate": len(raws) / (acked - began),
            "p99_ms": bench_smtp.percentile(latencies, 99) * 1e3,
            **check,
        }
    finally:
        drop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smtp", type=int, default=5000, help="messages sent over SMTP")
    ap.add_argument("--daemons", default="1,2,3", help="counts of daemons to run, comma-separated")
    ap.add_argument("--clients", type=int, default=16, help="SMTP connections in all, spread evenly")
    args = ap.parse_args()
    counts = [int(x) for x in args.daemons.split(",")]
    raws = bench_smtp.load_messages(args.smtp)
    print(f"several daemons on PostgreSQL: {args.smtp} SMTP messages from {args.clients} clients, "
          f"{os.cpu_count()} cores")
    targets = Targets("daemons")
    base: dict = {}
    for n in counts:
        r = run(n, raws, args.clients)
        base = base or r
        print(f"  {n} daemon{'s' if n > 1 else ' '}  tickets done {r['rate']:6.0f} msg/s = "
              f"{r['rate'] / base['rate']:.2f} of one; acks sent {r['acks_rate']:6.0f} msg/s; "
              f"250 p99 {r['p99_ms']:5.1f} ms; {r['tickets']} tickets, {r['acks']} acks "
              f"(at most {r['acks_per_ticket_max']} per ticket)")
        # The same mail makes the same tickets and messages whichever daemons took it.
        same = all(r[k] == base[k] for k in ("tickets", "messages"))
        if not same or r["acks"] != r["tickets"] or r["acks_per_ticket_max"] != 1:
            raise SystemExit(f"not exactly once with {n} daemons: {r} (one daemon: {base})")
        if n > 1:
            targets.at_least(f"{n} daemons / 1 postgresql", r["rate"] / base["rate"], TARGET_RATIO)
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
