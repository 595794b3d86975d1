"""IMAP backlog benchmark: `ImapPoller.poll_once()` against a bare imapclient fetch loop.

    .venv/bin/python benchmarks/bench_imap.py [--messages 2000]   # --messages 10000: ~1 min

Starts a private Dovecot (tests/dovecot.py; run as root, like the tests), appends N
realistic messages (a few KB of text, some HTML, one in 25 with a 100 KB
attachment), then measures, each in a fresh process so that peak memory is its own:

  fetch    imapclient UID FETCH BODY.PEEK[] in batches of 500, storing nothing (what
           the server and the socket give; for information)
  bare     the same fetch, plus the least a poller must do: insert the raw bytes into
           a SQLite table (WAL, synchronous=NORMAL) and commit per batch, then flag
           the batch \\Seen (the ceiling)
  poller   ImapPoller.poll_once() draining the backlog into a SQLite inbox (fetch,
           commit with the last UID per batch, flag \\Seen)

and prints messages per second, MB/s, peak RSS and poller/bare.  Target: poller >=
0.60 of bare, the bar of every edge and pipeline against its bare loop (bench_ingest,
bench_smtp).  The fetch alone runs several times faster than anything that stores
(SQLite's commit is the cost), so poller/fetch says little; it is printed, not
judged (one `target` line; exit 3 if missed).
Peak RSS should not grow with --messages (the poller holds one batch at a time).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the private Dovecot of the tests
sys.path.insert(0, str(ROOT))

from targets import Targets  # noqa: E402

TARGET = 0.60  # poller / bare, messages per second

_VOCABULARY = ("printer invoice login password error server outage network account order "
               "delivery refund screen broken update install license backup email phone slow "
               "crash report please help urgent thanks regards customer support system access")
WORDS = _VOCABULARY.split()


def sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def messages(n: int, seed: int = 11):
    """n realistic messages: plain or plain+HTML, 2-6 KB of text, 1 in 25 with 100 KB attached."""
    rng = random.Random(seed)
    attachment = bytes(rng.getrandbits(8) for _ in range(100_000))
    for i in range(n):
        msg = EmailMessage(policy=SMTP)
        msg["From"] = f"Customer {i} <customer{rng.randrange(2000)}@example{rng.randrange(50)}.test>"
        msg["To"] = "support@helpdesk.test"
        msg["Subject"] = sentence(rng, 5)[:-1]
        msg["Message-ID"] = f"<bench{i}.{seed}@example.test>"
        msg["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
        paragraphs = [sentence(rng, 40) for _ in range(rng.randint(3, 12))]
        msg.set_content("Hello,\n\n" + "\n\n".join(paragraphs) + "\n\nRegards\n")
        if i % 3 == 0:
            html = "".join(f"<p>{p}</p>" for p in paragraphs)
            msg.add_alternative(f"<html><body>{html}</body></html>", subtype="html")
        if i % 25 == 0:
            msg.add_attachment(attachment, maintype="application", subtype="pdf",
                               filename="invoice.pdf")
        yield msg.as_bytes()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def bare(host: str, port: int, user: str, password: str, batch: int, db_path: str = "") -> dict:
    """The fetch loop; with `db_path`, storing each batch and flagging it too."""
    import sqlite3

    from imapclient import IMAPClient

    store = None
    if db_path:
        store = sqlite3.connect(db_path)
        store.execute("PRAGMA journal_mode=wal")
        store.execute("PRAGMA synchronous=normal")
        store.execute("CREATE TABLE inbox (id INTEGER PRIMARY KEY, raw BLOB)")
    with IMAPClient(host, port, ssl=False, timeout=60) as c:
        c.login(user, password)
        c.select_folder("INBOX", readonly=store is None)
        uids = sorted(c.search(["ALL"]))
        for start in range(0, len(uids), batch):  # warm-up: the poller runs on warm caches too
            c.fetch(uids[start:start + batch], ["BODY.PEEK[]"])
        began = time.perf_counter()
        count = size = 0
        for start in range(0, len(uids), batch):
            chunk = uids[start:start + batch]
            got = c.fetch(chunk, ["BODY.PEEK[]"])
            count += len(got)
            size += sum(len(v[b"BODY[]"]) for v in got.values())
            if store is not None:
                with store:
                    store.executemany("INSERT INTO inbox (raw) VALUES (?)",
                                      [(v[b"BODY[]"],) for v in got.values()])
                c.add_flags(chunk, [b"\\Seen"], silent=True)
        seconds = time.perf_counter() - began
    if store is not None:
        store.close()
    return {"messages": count, "bytes": size, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def poller(host: str, port: int, user: str, password: str, db_path: str) -> dict:
    import os

    from mailticket.clock import SystemClock
    from mailticket.config import Imap
    from mailticket.db import open_database
    from mailticket.imap import ImapPoller
    from mailticket.models import Inbox, fn

    os.environ["MAILTICKET_BENCH_IMAP_PASSWORD"] = password
    db = open_database(f"sqlite:///{db_path}")
    cfg = Imap(host=host, port=port, tls="none", user=user,
               password_env="MAILTICKET_BENCH_IMAP_PASSWORD")
    p = ImapPoller(cfg, SystemClock())
    began = time.perf_counter()
    count = p.poll_once()
    seconds = time.perf_counter() - began
    p.close()
    size = Inbox.select(fn.SUM(fn.LENGTH(Inbox.raw))).scalar() or 0
    db.close()
    return {"messages": count, "bytes": size, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def run_phase(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"phase {args[1]} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=500, help="bare loop's UID FETCH batch")
    ap.add_argument("--phase", choices=["fetch", "bare", "poller"], help=argparse.SUPPRESS)
    ap.add_argument("--server", help=argparse.SUPPRESS)  # host:port:user:password
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.phase:
        host, port, user, password = args.server.split(":", 3)
        if args.phase in ("fetch", "bare"):
            result = bare(host, int(port), user, password, args.batch,
                          args.db if args.phase == "bare" else "")
        else:
            result = poller(host, int(port), user, password, args.db)
        print(json.dumps(result))
        return 0

    from dovecot import Dovecot

    with Dovecot() as server, tempfile.TemporaryDirectory(prefix="bench-imap-") as tmp:
        box = server.account("bench@example.test")
        began = time.perf_counter()
        box.append_many(messages(args.messages))
        appended = time.perf_counter() - began
        print(f"appended {args.messages} messages to a private Dovecot in {appended:.1f} s")
        spec = ["--server", f"{box.host}:{box.port}:{box.user}:{box.password}"]
        fetch = run_phase(["--phase", "fetch", "--batch", str(args.batch), *spec])
        base = run_phase(["--phase", "bare", "--batch", str(args.batch),
                          "--db", str(Path(tmp) / "bare.db"), *spec])
        mine = run_phase(["--phase", "poller", "--db", str(Path(tmp) / "bench.db"), *spec])

    assert fetch["messages"] == base["messages"] == mine["messages"] == args.messages
    print(f"\n{'':<10}{'messages':>10}{'msg/s':>10}{'MB/s':>8}{'peak RSS':>11}")
    for name, r in (("fetch", fetch), ("bare", base), ("poller", mine)):
        rate = r["messages"] / r["seconds"]
        mbs = r["bytes"] / r["seconds"] / 1e6
        print(f"{name:<10}{r['messages']:>10}{rate:>10.0f}{mbs:>8.1f}{r['peak_rss_mb']:>8.0f} MB")
    ratio = (mine["messages"] / mine["seconds"]) / (base["messages"] / base["seconds"])
    print(f"\nfetch: UID FETCH in batches of {args.batch}, stores nothing; bare: the same, "
          "storing and flagging each batch; poller: fetch, commit + last UID per batch of "
          "200, flag \\Seen")
    print(f"poller/fetch = {(mine['messages'] / mine['seconds']) / (fetch['messages'] / fetch['seconds']):.2f}"
          " (for information)")
    targets = Targets("imap")
    targets.at_least("poller/bare sqlite", ratio, TARGET)
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
