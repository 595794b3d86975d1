"""Rule evaluation time per message with 10, 100 and 1,000 generated rules.

    .venv/bin/python benchmarks/bench_rules.py [--messages N] [--json]

A third of the rules test addresses and domains, a third subject keywords, a third
body regexes, like a helpdesk that has grown for years.  The messages are a realistic
mix: short and long bodies, replies with quoted history, French and Dutch, a few that
match some rules.  Targets: under 1 ms per message at 1,000 rules, growing no faster
than linearly (the ratio 1,000 / 100 rules under 12: linear is 10, with a little slack
for noise); one `target` line each, exit status 3 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from targets import Targets

from mailticket.parsers import Address, Attachment, ParsedMessage
from mailticket.rules import RuleContext, RuleSet, load_rules

SIZES = (10, 100, 1000)
TARGET_US = 1000.0  # per message at the largest size
TARGET_GROWTH = 12.0  # largest / the size before it (x10 rules): linear is x10
WORDS = ("printer", "invoice", "password", "vpn", "laptop", "screen", "network", "mailbox",
         "license", "backup", "server", "phone", "badge", "scanner", "update", "account",
         "imprimante", "facture", "wachtwoord", "storing", "panne", "réseau", "netwerk")
LOREM = ("we noticed that since this morning the {w} does not work as expected and the team "
         "cannot continue; could you please have a look at it as soon as possible. ")


def rule_yaml(i: int, rng: random.Random) -> str:
    """Rule i: addresses/domains, subject keywords or body regexes, in turn."""
    kind = i % 3
    if kind == 0:
        when = (f"from: ['user{i}@customer{i}.test', 'customer{i + 1}.test', "
                f"'*@dept{i}.example{i}.test']")
    elif kind == 1:
        word = f"{rng.choice(WORDS)}{i}"
        when = f"subject: {{words: [{word}, 'ticket-{i}']}}"
    else:
        when = (f"body: {{regex: '\\b(order|commande|bestelling)\\s*#?\\s*{10000 + i}\\b|"
                f"serial\\s*[:#]?\\s*SN{i:05d}'}}")
    return (f"- name: rule-{i}\n  when: {{{when}}}\n"
            f"  then: {{tags: [t{i}], priority: P{1 + i % 4}}}\n")


def build(size: int, folder: Path) -> RuleSet:
    rng = random.Random(size)
    folder.mkdir(parents=True, exist_ok=True)
    per_file = 100
    for start in range(0, size, per_file):
        text = "".join(rule_yaml(i, rng) for i in range(start, min(size, start + per_file)))
        (folder / f"{start // per_file:03d}-generated.yaml").write_text(text)
    return load_rules(folder)


def messages(n: int) -> list[ParsedMessage]:
    rng = random.Random(42)
    out = []
    for k in range(n):
        w = rng.choice(WORDS)
        body = LOREM.format(w=w) * rng.choice((1, 3, 8, 20))  # ~200 B to ~4 KB
        if k % 7 == 0:  # a few hit a body regex or an address rule
            body += f"\nMy order #{10000 + rng.randrange(0, 1000)} is late.\n"
        new_text = body
        if k % 3 == 0:  # replies carry quoted history
            body = "Any news?\n\nOn Monday you wrote:\n" + "".join(
                f"> {line}\n" for line in body.splitlines())
            new_text = "Any news?"
        domain = f"customer{rng.randrange(0, 1500)}.test" if k % 5 == 0 else "mail.example.org"
        out.append(ParsedMessage(
            message_id=f"<{k}@bench>", subject=f"{w.capitalize()} problem {k}",
            from_=Address("Someone", f"user{k}@{domain}"),
            to=[Address("", "support@helpdesk.test")],
            cc=[Address("", f"boss{k}@{domain}")] if k % 4 == 0 else [],
            headers={"x-mailer": ["Outlook 16"]}, text=body, new_text=new_text,
            attachments=[Attachment("a.pdf", "application/pdf", b"")] if k % 6 == 0 else [],
            language=rng.choice(("en", "fr", "nl")),
        ))
    return out


def measure(rules: RuleSet, msgs: list[ParsedMessage], context: RuleContext) -> float:
    """Best of 5 runs over all messages, in microseconds per message."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for m in msgs:
            rules.evaluate(m, context)
        best = min(best, time.perf_counter() - t0)
    return best / len(msgs) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    msgs = messages(args.messages)
    context = RuleContext(now=datetime(2026, 3, 2, 10, 0, tzinfo=UTC), source="smtp")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            t0 = time.perf_counter()
            rules = build(size, Path(tmp) / str(size))
            load_ms = (time.perf_counter() - t0) * 1e3
            hits = sum(len(rules.evaluate(m, context).hits) for m in msgs)
            # The same rules tested one by one: what the index saves.
            plain = RuleSet(rules.rules, indexed=False)
            results[size] = {"us_per_message": measure(rules, msgs, context),
                             "us_without_index": measure(plain, msgs[:100], context),
                             "load_ms": load_ms, "hits": hits}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"rule evaluation, {len(msgs)} messages, best of 5")
        prev = None
        for size, r in results.items():
            ratio = f"  x{r['us_per_message'] / prev:.1f} for x10 rules" if prev else ""
            print(f"{size:>6} rules: {r['us_per_message']:8.1f} us/message  "
                  f"(without the index {r['us_without_index']:.0f} us; load "
                  f"{r['load_ms']:.0f} ms; {r['hits']} hits){ratio}")
            prev = r["us_per_message"]
    top = results[SIZES[-1]]["us_per_message"]
    targets = Targets("rules", sys.stderr if args.json else None)  # --json: stdout is JSON
    targets.below(f"us/message at {SIZES[-1]} rules", top, TARGET_US, " us", digits=1)
    targets.below(f"growth {SIZES[-1]}/{SIZES[-2]} rules", top / results[SIZES[-2]]["us_per_message"],
                  TARGET_GROWTH, digits=1)
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
