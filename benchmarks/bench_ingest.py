"""Ingest benchmark: the whole pipeline against a bare parse-and-insert loop (the ceiling).

    .venv/bin/python benchmarks/bench_ingest.py [--messages 10000] [--db sqlite|postgresql|both]

Generates a mailbox of realistic messages (threads: a new message and replies with
quoted history; plain, HTML, some with a 100-200 KB attachment), then measures,
each in a fresh process so peak memory is its own:

  ceiling   mail-parser parse + one peewee INSERT + commit per message (no pipeline)
  pipeline  `mailticket ingest` on the same mailbox: store, parse, dedupe, guard,
            thread, route (sample rules), record, queue the acknowledgement

and prints messages per second, peak RSS, and pipeline/ceiling.  Target (issue 2):
pipeline >= 0.60 of the ceiling measured in the same run, on each backend (checked:
one `target` line each, exit 3 if missed), and peak memory that does not grow with
the number of messages (compare --messages 2000 with 10000 by eye).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from targets import Targets

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
TARGET = 0.60  # pipeline / ceiling, on each backend
PG_ADMIN = os.environ.get("MAILTICKET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

WORDS = ("printer invoice login password error server outage network account order delivery "
         "refund screen broken update install license backup email phone slow crash report "
         "please help urgent thanks regards customer support system access").split()


def sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


GENERATION = 2  # in the file name: a change to the messages makes a new file


def generate(n: int, path: Path, seed: int = 7) -> Path:
    """An mbox of n messages: threads of one new message and 0-4 replies."""
    rng = random.Random(seed)
    attachment = bytes(rng.getrandbits(8) for _ in range(150_000))
    with path.open("wb") as fh:
        count = thread = 0
        while count < n:
            thread += 1
            customer = f"customer{rng.randrange(2000)}@example{rng.randrange(50)}.test"
            subject = sentence(rng, 5)[:-1]
            ids: list[str] = []
            body = "\n\n".join(sentence(rng) for _ in range(rng.randint(2, 6)))
            for reply in range(min(rng.randint(0, 4) + 1, n - count)):
                msg = EmailMessage(policy=SMTP)
                msg["From"] = f"Customer {thread} <{customer}>"
                msg["To"] = "support@helpdesk.test"
                # Replies thread by In-Reply-To/References.  No "[#n]" token: the ticket numbers
                # depend on the order the messages are processed in, which differs between
                # `ingest` and 16 SMTP clients, and a token naming another customer's ticket
                # makes a new ticket (the same messages would not be the same work).
                msg["Subject"] = f"Re: {subject}" if reply else subject
                msg["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
                mid = f"<t{thread}.r{reply}.{seed}@mail.test>"
                msg["Message-ID"] = mid
                if ids:
                    msg["In-Reply-To"] = ids[-1]
                    msg["References"] = " ".join(ids)
                text = "\n\n".join(sentence(rng) for _ in range(rng.randint(1, 4)))
                if reply:
                    quoted = "\n".join("> " + line for line in body.splitlines())
                    text += ("\n\nOn Mon, 2 Mar 2026 at 10:00, Support <support@helpdesk.test> wrote:\n"
                             f"{quoted}\n")
                text += "\n-- \nCustomer\nACME Corp\n"
                msg.set_content(text)
                kind = rng.random()
                if kind < 0.3:
                    paragraphs = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
                    html = f"<html><body>{paragraphs}</body></html>"
                    msg.add_alternative(html, subtype="html")
                elif kind < 0.4:
                    msg.add_attachment(attachment[: rng.randint(100_000, 150_000)], maintype="application",
                                       subtype="pdf", filename="report.pdf")
                fh.write(b"From bench@localhost Mon Mar  2 10:00:00 2026\n")
                data = msg.as_bytes().replace(b"\r\n", b"\n")
                fh.write(data.replace(b"\nFrom ", b"\n>From ") + b"\n")
                ids.append(mid)
                count += 1
    return path


def mailbox_of(n: int) -> Path:
    """The benchmark mailbox of n messages, generated on first use."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"bench-{n}-g{GENERATION}.mbox"
    if not path.exists():
        print(f"generating {n} messages into {path} ...", flush=True)
        generate(n, path)
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_ceiling(mbox: str, url: str) -> dict:
    """mail-parser + peewee, one insert and one commit per message."""
    import mailbox

    import mailparser
    import peewee

    if url.startswith("sqlite:///"):
        db = peewee.SqliteDatabase(url[10:], pragmas={"journal_mode": "wal", "synchronous": "normal"})
    else:
        from playhouse.db_url import connect

        db = connect(url)

    class Row(peewee.Model):
        message_id = peewee.TextField(index=True)
        sender = peewee.TextField()
        subject = peewee.TextField()
        body = peewee.TextField()
        raw = peewee.BlobField()

        class Meta:
            database = db

    db.create_tables([Row])
    box = mailbox.mbox(mbox, create=False)
    raws = [box.get_bytes(k) for k in box.iterkeys()]
    start = time.perf_counter()
    for raw in raws:
        m = mailparser.parse_from_bytes(raw)
        with db.atomic():
            Row.create(message_id=m.message_id or "", sender=str(m.from_), subject=m.subject or "",
                       body=m.text_plain[0] if m.text_plain else "", raw=raw)
    elapsed = time.perf_counter() - start
    return {"messages": len(raws), "seconds": elapsed, "rss_mb": peak_rss_mb()}


def child_pipeline(mbox: str, url: str, workdir: str) -> dict:
    """`mailticket ingest` in this process (the CLI's own code path)."""
    from click.testing import CliRunner

    from mailticket.cli import main

    cfg = Path(workdir) / "mailticket.toml"
    cfg.write_text(
        f'[helpdesk]\naddress = "support@helpdesk.test"\nauto_reply_limit = 1000\nauto_reply_limit_domain = 100000\nauto_reply_limit_total = 100000\n'
        f'[database]\nurl = "{url}"\n[paths]\nrules = "{ROOT / "rules"}"\n'
    )
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["--config", str(cfg), "ingest", mbox], catch_exceptions=False)
    elapsed = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(result.output)
    return {"seconds": elapsed, "rss_mb": peak_rss_mb(), "summary": result.output.strip().splitlines()[-1]}


def fresh_pg() -> tuple[str, callable]:
    import psycopg2

    name = "mailticket_bench_" + secrets.token_hex(4)
    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()

    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name, drop


def run_child(kind: str, mbox: Path, backend: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        drop = None
        if backend == "sqlite":
            url = f"sqlite:///{tmp}/bench.db"
        else:
            url, drop = fresh_pg()
        try:
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, "--mbox", str(mbox), "--url", url,
                 "--workdir", tmp],
                capture_output=True, text=True, check=True,
            ).stdout
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"{kind} on {backend} failed:\n{exc.stderr[-3000:]}") from None
        finally:
            if drop:
                drop()
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--mbox", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        fn = child_ceiling if args.child == "ceiling" else child_pipeline
        res = fn(args.mbox, args.url) if args.child == "ceiling" else fn(args.mbox, args.url, args.workdir)
        print(json.dumps(res))
        return 0
    targets = Targets("ingest")
    mbox = mailbox_of(args.messages)
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    print(f"ingest benchmark: {args.messages} messages, {os.cpu_count()} cores")
    print(f"{'backend':<11}{'run':<10}{'msg/s':>9}{'seconds':>9}{'peak RSS MB':>13}")
    for backend in backends:
        ceiling = run_child("ceiling", mbox, backend)
        pipeline = run_child("pipeline", mbox, backend)
        c_rate = args.messages / ceiling["seconds"]
        p_rate = args.messages / pipeline["seconds"]
        print(f"{backend:<11}{'ceiling':<10}{c_rate:>9.0f}{ceiling['seconds']:>9.1f}{ceiling['rss_mb']:>13.0f}")
        print(f"{backend:<11}{'pipeline':<10}{p_rate:>9.0f}{pipeline['seconds']:>9.1f}{pipeline['rss_mb']:>13.0f}"
              f"   ({pipeline['summary']})")
        targets.at_least(f"pipeline/ceiling {backend}", p_rate / c_rate, TARGET)
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
