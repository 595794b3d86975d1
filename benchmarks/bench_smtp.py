"""SMTP listener benchmark: the mailticket listener against a fair sink that stores nothing.

    .venv/bin/python benchmarks/bench_smtp.py [--messages 5000] [--clients 16]
                                              [--db sqlite|postgresql] [--writers N]

Sends the messages of the ingest benchmark (bench_ingest.generate: threads, HTML,
some 100-150 KB attachments) from `--clients` concurrent clients, each keeping one
connection open, to:

  sink      aiosmtpd reading DATA in blocks like the listener (mailticket.smtp.BulkData)
            that answers 250 and stores nothing: the ceiling
  listener  mailticket.smtp storing every message in the durable inbox, 250 after commit

The sink reads DATA the listener's way because stock aiosmtpd reads it a line at a
time, which made the bare sink slower than the listener (1,146 against 1,585 msg/s):
with the same reader on both sides, listener/sink is what storing costs.

Each server runs in a child process of its own (the clients do not share its GIL),
and prints messages per second, p50/p99 latency from the end of DATA (the final
"." sent) to the reply and the server's CPU time per message, then listener/sink.
Target: listener >= 0.60 of the sink (one `target` line; exit status 3 if missed),
the bar of the ingest pipeline against its bare loop: storing (one insert of the raw
bytes, committed in groups of up to 64 before the 250) is less work than the
pipeline's parse, thread and route, so it should cost no more of its ceiling.

`run_clients(host, port, messages, clients)` can be imported to drive any server
(the daemon, for end-to-end figures); a conversation's messages go through one
client, in order.
"""

from __future__ import annotations

import argparse
import json
import mailbox
import os
import re
import resource
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from targets import Targets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RCPT = "support@helpdesk.test"
TARGET = 0.60  # listener / sink, messages per second


def load_messages(n: int) -> list[bytes]:
    """n messages of the ingest benchmark's mailbox, with CRLF line ends as on the wire."""
    sys.path.insert(0, str(HERE))
    from bench_ingest import mailbox_of

    box = mailbox.mbox(mailbox_of(n), create=False)
    try:
        return [re.sub(rb"\r?\n", b"\r\n", box.get_bytes(k)) for k in box.iterkeys()]
    finally:
        box.close()


_CONVERSATION = re.compile(rb"^Message-ID: <t(\d+)\.", re.MULTILINE | re.IGNORECASE)


def by_conversation(raws: Sequence[bytes], clients: int) -> list[list[bytes]]:
    """Each client's messages: a conversation's messages all go, in order, through one
    client, as a customer's reply comes after the message it answers."""
    shares: list[list[bytes]] = [[] for _ in range(clients)]
    for n, raw in enumerate(raws):
        match = _CONVERSATION.search(raw)
        shares[int(match.group(1)) % clients if match else n % clients].append(raw)
    return shares


def _client(host: str, port: int, raws: Sequence[bytes], ready: threading.Barrier,
            latencies: list[float], errors: list[BaseException]) -> None:
    try:
        with smtplib.SMTP(host, port, timeout=60) as s:
            s.ehlo("bench.client.test")
            ready.wait()
            for raw in raws:
                if s.mail("customer@example.test")[0] != 250 or s.rcpt(RCPT)[0] != 250:
                    raise RuntimeError("MAIL or RCPT refused")
                if s.docmd("DATA")[0] != 354:
                    raise RuntimeError("DATA refused")
                s.send(re.sub(rb"(?m)^\.", b"..", raw) + b".\r\n")  # RFC 5321 4.5.2
                start = time.perf_counter()  # the end of DATA
                code, reply = s.getreply()
                latencies.append(time.perf_counter() - start)
                if code != 250:
                    raise RuntimeError(f"DATA answered {code} {reply!r}")
    except BaseException as exc:  # noqa: BLE001 - reported by run_clients
        errors.append(exc)
        ready.abort()


def run_clients(host: str, port: int, messages: Sequence[bytes] | int,
                clients: int = 16) -> tuple[float, list[float]]:
    """Send `messages` (or that many generated ones) from `clients` kept-open connections.

    Returns (messages per second, latencies in seconds from the end of DATA to the 250).
    The clock starts once every client has connected and said EHLO.
    """
    raws = load_messages(messages) if isinstance(messages, int) else list(messages)
    latencies: list[float] = []
    errors: list[BaseException] = []
    ready = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=_client, args=(host, port, share, ready, latencies, errors))
               for share in by_conversation(raws, clients)]
    for t in threads:
        t.start()
    try:
        ready.wait(timeout=60)
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed, first: {errors[0]!r}")
    return len(raws) / elapsed, latencies


# --- the servers, each in a child process ---------------------------------------------

def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve_sink() -> None:
    import asyncio

    from aiosmtpd.smtp import SMTP

    sys.path.insert(0, str(ROOT))
    from mailticket.smtp import BulkData

    class FairSmtp(BulkData, SMTP):
        """aiosmtpd with the listener's DATA reader: the same cost to receive a message."""

    class Sink:
        async def handle_DATA(self, server, session, envelope) -> str:
            return "250 2.0.0 OK"

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(
        lambda: FairSmtp(Sink(), loop=loop, enable_SMTPUTF8=True, hostname="sink",
                         data_size_limit=25 * 1024 * 1024), "127.0.0.1", 0))
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    threading.Thread(target=loop.run_forever, daemon=True).start()
    cpu = cpu_seconds()
    sys.stdin.read()  # the parent closes stdin when the clients are done
    loop.call_soon_threadsafe(server.close)
    print(json.dumps({"stored": None, "cpu": cpu_seconds() - cpu}), flush=True)


def serve_listener(url: str, writers: int | None) -> None:
    sys.path.insert(0, str(ROOT))
    from mailticket import smtp
    from mailticket.clock import SystemClock
    from mailticket.config import from_dict
    from mailticket.db import open_database
    from mailticket.models import Inbox

    cfg = from_dict({"helpdesk": {"address": RCPT}, "database": {"url": url},
                     "smtp": {"listen": "127.0.0.1:0"}}, Path(tempfile.gettempdir()) / "x.toml")
    db = open_database(url)
    listener = smtp.start(cfg, SystemClock(), writers=writers)
    print("PORT", listener.port, flush=True)
    cpu = cpu_seconds()
    sys.stdin.read()
    listener.stop()
    cpu = cpu_seconds() - cpu
    print(json.dumps({"stored": Inbox.select().count(), "writers": listener.writers, "cpu": cpu}),
          flush=True)
    db.close()


def measure(kind: str, url: str, writers: int | None, raws: list[bytes],
            clients: int) -> tuple[float, list[float], dict]:
    cmd = [sys.executable, __file__, "--serve", kind, "--url", url]
    if writers:
        cmd += ["--writers", str(writers)]
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    line = child.stdout.readline()  # blocks until the server listens
    if not line.startswith("PORT "):
        child.kill()
        raise SystemExit(f"{kind} server did not start: {line!r}")
    try:
        rate, latencies = run_clients("127.0.0.1", int(line.split()[1]), raws, clients)
    finally:
        child.stdin.close()
        info = json.loads(child.stdout.readline() or "{}")
        child.wait(timeout=60)
    return rate, latencies, info


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--writers", type=int, help="store threads (default: the listener's own)")
    ap.add_argument("--serve", choices=["sink", "listener"], help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve == "sink":
        serve_sink()
        return 0
    if args.serve == "listener":
        serve_listener(args.url, args.writers)
        return 0

    raws = load_messages(args.messages)
    size = sum(map(len, raws)) / len(raws) / 1024
    print(f"SMTP benchmark: {len(raws)} messages (mean {size:.0f} KB), {args.clients} clients "
          f"with kept-open connections, {args.db}, {os.cpu_count()} cores")
    print(f"{'server':<10}{'msg/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/msg':>12}   note")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        drop = None
        if args.db == "sqlite":
            url = f"sqlite:///{tmp}/bench.db"
        else:
            sys.path.insert(0, str(HERE))
            from bench_ingest import fresh_pg

            url, drop = fresh_pg()
        try:
            for kind in ("sink", "listener"):
                rate, lat, info = measure(kind, url, args.writers, raws, args.clients)
                results[kind] = rate
                note = "" if info.get("stored") is None else (
                    f"{info['stored']} rows stored, {info['writers']} store threads")
                print(f"{kind:<10}{rate:>8.0f}{percentile(lat, 50) * 1000:>9.1f}"
                      f"{percentile(lat, 99) * 1000:>9.1f}{info['cpu'] * 1000 / len(raws):>12.2f}"
                      f"   {note}", flush=True)
                if kind == "listener" and info["stored"] != len(raws):
                    raise SystemExit(f"lost messages: {len(raws)} sent, {info['stored']} stored")
        finally:
            if drop:
                drop()
    print("sink: the listener's DATA reader, stores nothing; listener/sink is what storing costs")
    targets = Targets("smtp")
    targets.at_least(f"listener/sink {args.db}", results["listener"] / results["sink"], TARGET)
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
