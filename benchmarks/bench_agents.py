"""Agent benchmark: the ingest mailbox with three agents at work, against plain ingest.

    .venv/bin/python benchmarks/bench_agents.py [--messages 10000] [--db sqlite|postgresql|both]

The ingest benchmark's mailbox (bench_ingest.py), with a third of the replies rewritten
as an agent's reply: From one of three agents, To the helpdesk's reply address signed
for that agent and ticket (`auth.reply_address`), as an agent's mail client sends it
back.  Each run in a fresh process, on the same messages:

  ceiling   bench_ingest's bare loop: mail-parser parse + one INSERT + commit per message
  plain     bench_ingest's pipeline (`mailticket ingest`), no agents configured: the
            agents' mail is ordinary mail from unknown senders
  agents    the same with three agents (groups `general` and `billing`, so every ticket
            notifies its queue's group) and `[agents] secret_file`: the agent side at
            work (authenticate, relay each reply to the customer, notify the agents)

Prints messages per second and each run's ratio to the ceiling.  Target (issue 11):
the agent side may cost at most a quarter of today's rate, i.e. agents >= 0.75 x
plain in the same run, on each backend (one `target` line each, exit 3 if missed).
"""

from __future__ import annotations

import argparse
import json
import mailbox
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from email import message_from_bytes
from email.policy import compat32
from pathlib import Path

import bench_ingest
from targets import Targets

ROOT = bench_ingest.ROOT
TARGET = 0.75  # agents / plain, on each backend
HD = "support@helpdesk.test"
SECRET = "bench-agents-secret"
EXPIRES = datetime(2100, 1, 1, tzinfo=timezone.utc)  # the mailbox is cached: signatures must last
AGENTS = (  # address, name, groups: every queue the sample rules use has members
    ("alice@agents.test", "Alice Agent", ("general",)),
    ("bob@agents.test", "Bob Agent", ("general", "billing")),
    ("carol@agents.test", "Carol Agent", ("billing",)),
)
GENERATION = 1  # in the file name: a change to the rewriting makes a new file


def agent_mailbox(n: int) -> tuple[Path, int]:
    """bench_ingest's mailbox of n messages with every third reply an agent's (signed);
    the path and how many replies are the agents'."""
    sys.path.insert(0, str(ROOT))
    from mailticket import auth

    base = bench_ingest.mailbox_of(n)
    path = bench_ingest.OUT / f"bench-agents-{n}-g{bench_ingest.GENERATION}.{GENERATION}.mbox"
    count_path = path.with_suffix(".count")
    if path.exists() and count_path.exists():
        return path, int(count_path.read_text())
    print(f"rewriting a third of the replies of {base} as agents' into {path} ...", flush=True)
    ticket = replies = agent_replies = 0
    with path.open("wb") as fh:
        box = mailbox.mbox(base, create=False)  # opened once: each open scans the whole file
        for raw in (box.get_bytes(k) for k in box.iterkeys()):
            msg = message_from_bytes(raw, policy=compat32)
            if msg["In-Reply-To"] is None:
                ticket += 1  # ingest creates the tickets in mailbox order: thread k is ticket k
            else:
                replies += 1
                if replies % 3 == 0:
                    address, name, _ = AGENTS[ticket % len(AGENTS)]
                    del msg["From"], msg["To"]
                    msg["From"] = f"{name} <{address}>"
                    msg["To"] = auth.reply_address(HD, ticket=ticket, agent=address, purpose="reply",
                                                   expires=EXPIRES, secret=SECRET.encode())
                    agent_replies += 1
            data = msg.as_bytes(policy=compat32.clone(linesep="\n"))
            fh.write(b"From bench@localhost Mon Mar  2 10:00:00 2026\n")
            fh.write(data.replace(b"\nFrom ", b"\n>From ") + b"\n")
    count_path.write_text(str(agent_replies))
    return path, agent_replies


def child_agents(mbox: str, url: str, workdir: str) -> dict:
    """`mailticket ingest` with three agents and a signing secret (set up before the clock)."""
    from click.testing import CliRunner

    from mailticket.cli import main

    cfg = Path(workdir) / "mailticket.toml"
    secret = Path(workdir) / "agent-secret"
    secret.write_text(SECRET + "\n")
    cfg.write_text(
        f'[helpdesk]\naddress = "{HD}"\nauto_reply_limit = 1000\nauto_reply_limit_domain = 100000\n'
        f'auto_reply_limit_total = 100000\n[database]\nurl = "{url}"\n[paths]\nrules = "{ROOT / "rules"}"\n'
        f'[agents]\nsecret_file = "{secret}"\nnotification_limit = 100000\n'
    )
    runner = CliRunner()
    for address, name, groups in AGENTS:  # `agents add` is `mailticket.agents.add`
        args = ["--config", str(cfg), "agents", "add", address, "--name", name]
        result = runner.invoke(main, args + [a for g in groups for a in ("--group", g)])
        if result.exit_code != 0:
            raise SystemExit(result.output)
    start = time.perf_counter()
    result = runner.invoke(main, ["--config", str(cfg), "ingest", "--json", mbox], catch_exceptions=False)
    elapsed = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(result.output)
    outcomes: dict[str, int] = {}
    for line in result.output.splitlines():
        if line.startswith("{"):
            outcome = json.loads(line)["outcome"]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    rows = runner.invoke(main, ["--config", str(cfg), "outbox", "list", "--json", "--limit", "1000000"]).output
    kinds: dict[str, int] = {}
    for row in json.loads(rows or "[]"):
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    return {"seconds": elapsed, "outcomes": outcomes, "outbox": kinds}


CHILDREN = {"ceiling": bench_ingest.child_ceiling, "plain": bench_ingest.child_pipeline, "agents": child_agents}


def run_child(kind: str, mbox: Path, backend: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        drop = None
        if backend == "sqlite":
            url = f"sqlite:///{tmp}/bench.db"
        else:
            url, drop = bench_ingest.fresh_pg()
        try:
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, "--mbox", str(mbox), "--url", url, "--workdir", tmp],
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
        fn = CHILDREN[args.child]
        res = fn(args.mbox, args.url) if args.child == "ceiling" else fn(args.mbox, args.url, args.workdir)
        print(json.dumps(res))
        return 0
    targets = Targets("agents")
    mbox, agent_replies = agent_mailbox(args.messages)
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    print(f"agents benchmark: {args.messages} messages ({agent_replies} agents' replies, signed), "
          f"{os.cpu_count()} cores")
    print(f"{'backend':<11}{'run':<9}{'msg/s':>9}{'seconds':>9}{'/ceiling':>10}")
    for backend in backends:
        runs = {kind: run_child(kind, mbox, backend) for kind in ("ceiling", "plain", "agents")}
        rates = {kind: args.messages / res["seconds"] for kind, res in runs.items()}
        for kind, res in runs.items():
            print(f"{backend:<11}{kind:<9}{rates[kind]:>9.0f}{res['seconds']:>9.1f}"
                  f"{rates[kind] / rates['ceiling']:>10.2f}")
        agents = runs["agents"]
        print(f"{'':<11}agents outcomes {json.dumps(agents['outcomes'], sort_keys=True)}; "
              f"outbox {json.dumps(agents['outbox'], sort_keys=True)}")
        if agents["outcomes"].get("agent-reply", 0) != agent_replies:  # else it measured something else
            raise SystemExit(f"{agent_replies} agents' replies, "
                             f"{agents['outcomes'].get('agent-reply', 0)} relayed: the mailbox is not what it says")
        targets.at_least(f"agents/plain {backend}", rates["agents"] / rates["plain"], TARGET)
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
