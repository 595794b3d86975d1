"""The literal index: which rules can match a message, found in one scan of it.

Part of the rules engine: `RuleSet` (`evaluate.py`) builds one `Index` per scope from
its rules' conditions, and asks it for `candidates(view)` before testing any rule.

Speed, so that 1,000 rules cost well under a millisecond per message: every condition
says through `trigger()` (`view.py`) which literals or addresses a message must contain
for it to hold.  The index gathers them: one scan of the message (a trie regex over all
the literals of a field, dictionary look-ups for the addresses, see
`addresses.address_keys`) gives the few rules that can match, and only those are
tested, in order.  Rules it cannot index (globs, headers, "not", ...) are always tested.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .addresses import address_keys
from .view import Condition, View


def _trie_regex(literals: Sequence[str]) -> re.Pattern[str]:
    """One regex that matches, at a position, the longest of `literals` that starts there.

    Shared prefixes are factored (a trie), so the regex engine branches on one
    character at a time instead of trying every literal at every position.
    """
    root: dict = {}
    for lit in literals:
        node = root
        for ch in lit:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict) -> str:
        alts = [re.escape(ch) + build(sub) for ch, sub in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        # A literal ends here: the longer ones are optional, tried first (greedy).
        return f"(?:{body})?" if "" in node else body

    return re.compile(build(root))


class _Scanner:
    """All the literals of one text field (folded or not), and the rules that need each."""

    def __init__(self, rules_by_literal: dict[str, set[int]]) -> None:
        self.regex = _trie_regex(sorted(rules_by_literal))
        # A match is the longest literal at its position; every literal that is a prefix
        # of it starts there too, so each match stands for the rules of all its prefixes.
        self.rules: dict[str, frozenset[int]] = {}
        for lit in rules_by_literal:
            ids: set[int] = set()
            for k in range(1, len(lit) + 1):
                ids |= rules_by_literal.get(lit[:k], set())
            self.rules[lit] = frozenset(ids)

    def scan(self, hay: str, out: set[int]) -> None:
        search, pos = self.regex.search, 0
        while (m := search(hay, pos)) is not None:
            out |= self.rules[m.group()]
            pos = m.start() + 1  # literals may overlap: look again one character on


class Index:
    """Which of `conditions` (one per rule, in order; None: always) can match a message."""

    def __init__(self, conditions: Sequence[Condition | None], *, enabled: bool = True) -> None:
        self.always: list[int] = []
        text: dict[tuple[str, bool], dict[str, set[int]]] = {}
        self.exact: dict[tuple[str, str], dict[str, set[int]]] = {}
        for i, cond in enumerate(conditions):
            trigger = None if cond is None or not enabled else cond.trigger()
            if not trigger:
                self.always.append(i)
                continue
            for kind, name, *rest in trigger:
                if kind == "text":
                    folded, lit = rest
                    text.setdefault((name, folded), {}).setdefault(lit, set()).add(i)
                else:
                    self.exact.setdefault((kind, name), {}).setdefault(rest[0], set()).add(i)
        self.scanners: dict[tuple[str, bool], _Scanner] = {}
        for key, lits in text.items():
            try:
                self.scanners[key] = _Scanner(lits)
            except (re.error, RecursionError):  # absurdly deep literals: test those rules always
                self.always += sorted(set().union(*lits.values()))
        self.always = sorted(set(self.always))
        self.indexed = len(conditions) - len(self.always)

    def candidates(self, view: View) -> list[int]:
        found: set[int] = set(self.always)
        for (name, folded), scanner in self.scanners.items():
            scanner.scan(view.folded(name) if folded else view.text(name), found)
        for (kind, name), table in self.exact.items():
            for address, domain in view.addresses(name):
                for key in address_keys(kind, address, domain):
                    ids = table.get(key)
                    if ids:
                        found |= ids
        return sorted(found)
