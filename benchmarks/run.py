"""Run every benchmark, one after the other, then a summary of every target, met or MISSED.

    .venv/bin/python benchmarks/run.py [--quick]

--quick uses smaller inputs (a few minutes in all); without it, the sizes the issues
name (10,000 messages for ingest and the IMAP backlog, 5,000 over SMTP, 100,000 open
tickets for the timed jobs' pass; --quick: 20,000).

Each benchmark prints its figures to the terminal as it goes, and its targets both as
`target ...` lines and as JSON lines to the file named in $BENCH_TARGETS (targets.py),
which the summary reads.  The exit status is 1 when a target was missed, a benchmark
failed (an exit status other than 0 or targets.MISSED: it died, maybe after some of
its targets) or one reported no target at all.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import targets

HERE = Path(__file__).resolve().parent


def run(cmd: list[str]) -> tuple[int, list[targets.Target]]:
    """Run one benchmark, its output streaming to ours; its exit status and targets."""
    with tempfile.TemporaryDirectory(prefix="bench-targets-") as tmp:
        path = Path(tmp) / "targets.jsonl"
        env = {**os.environ, targets.ENV: str(path)}
        code = subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], env=env).returncode
        return code, targets.read(path)


def summary(results: list[tuple[str, int, list[targets.Target]]]) -> bool:
    """Print the table of every target and the benchmarks that failed; True when all is well."""
    rows = [(t.bench, t.name, t.figure(t.value), f"{t.op} {t.figure(t.goal)}", t.result)
            for _, _, found in results for t in found]
    header = ("bench", "target", "value", "goal", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("\n=== summary")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    missed = sum(r[-1] != "met" for r in rows)
    failed = []
    for script, code, found in results:
        if code not in (0, targets.MISSED):
            failed.append(f"{script} failed (exit {code}) after {len(found)} targets")
        elif not found:
            failed.append(f"{script} reported no target")
    for line in failed:
        print(f"FAILED: {line}")
    print(f"{len(rows) - missed} of {len(rows)} targets met, {missed} MISSED"
          + (f"; {len(failed)} benchmarks failed" if failed else ""))
    return not missed and not failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller inputs")
    args = ap.parse_args()
    n_ingest, n_smtp, n_imap = (2000, 1000, 2000) if args.quick else (10000, 5000, 10000)
    n_tickets = 20000 if args.quick else 100000
    runs = [
        ["bench_rules.py"],
        ["bench_ingest.py", "--messages", str(n_ingest)],
        ["bench_agents.py", "--messages", str(n_ingest)],
        ["bench_smtp.py", "--messages", str(n_smtp)],
        ["bench_imap.py", "--messages", str(n_imap)],
        ["bench_daemon.py", "--smtp", str(n_smtp), "--imap", str(n_imap)],
        ["bench_daemons.py", "--smtp", str(n_smtp)],
        ["bench_timers.py", "--tickets", str(n_tickets)],
        ["bench_report.py", "--tickets", str(n_tickets)],
    ]
    results = []
    for cmd in runs:
        print(f"\n=== {' '.join(cmd)}", flush=True)
        results.append((cmd[0], *run(cmd)))
    sys.exit(0 if summary(results) else 1)


if __name__ == "__main__":
    main()
