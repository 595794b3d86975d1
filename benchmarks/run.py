"""Run every benchmark, one after the other, each printing its figures and ratios.

    .venv/bin/python benchmarks/run.py [--quick]

--quick uses smaller inputs (a few minutes in all); without it, the sizes the issues
name (10,000 messages for ingest and the IMAP backlog, 5,000 over SMTP).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller inputs")
    args = ap.parse_args()
    n_ingest, n_smtp, n_imap = (2000, 1000, 2000) if args.quick else (10000, 5000, 10000)
    runs = [
        ["bench_rules.py"],
        ["bench_ingest.py", "--messages", str(n_ingest)],
        ["bench_smtp.py", "--messages", str(n_smtp)],
        ["bench_imap.py", "--messages", str(n_imap)],
        ["bench_daemon.py", "--smtp", str(n_smtp), "--imap", str(n_imap)],
    ]
    failed = 0
    for cmd in runs:
        print(f"\n=== {' '.join(cmd)}", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]]).returncode != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
