"""Address conditions: `from`, `to`, `cc` and `recipient`, parsed and matched.

Part of the rules engine: `conditions.py` hands these keys of a rule's `when` to
`parse_addresses`; the `AddressCond` it builds is tested against a `View` (`view.py`),
and `index.py` looks its exact addresses, domains and simple globs up through
`address_keys`, so that 1,000 address rules cost a few dictionary look-ups.

Items are addresses, domains, globs and `{list: NAME}` (a file of them, read by the
loader), in any mix.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from .reader import Reader
from .view import Matched, Trigger, View

ADDRESS_FIELDS = ("from", "to", "cc", "recipient")


def _has_glob(text: str) -> bool:
    return "*" in text or "?" in text or "[" in text


def address_keys(kind: str, address: str, domain: str) -> list[str]:
    """What an address is looked up by in the table of `kind`."""
    if kind == "addr":
        return [address]
    if kind == "dom":
        return [domain]
    if kind == "local":
        return [address.rpartition("@")[0]]
    # "suffix": ".b.c" and ".c" for "a.b.c", as `*.b.c` and `*.c` would match it
    return [domain[i:] for i, ch in enumerate(domain) if ch == "."]


class AddressMatcher:
    """Addresses, domains and globs, with the label each came with ("in list vip").

    The common globs become look-ups: `*@example.com` is the domain, `*.example.com` a
    domain suffix, `billing@*` a local part.  Only the other globs are regexes
    (translated once), and only they keep a rule out of the index.
    """

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, str]] = {"addr": {}, "dom": {}, "suffix": {}, "local": {}}
        self.globs: list[tuple[str, re.Pattern[str], bool]] = []
        self.labels: list[str] = []

    def add(self, pattern: str, label: str) -> None:
        p = pattern.strip().lower()
        is_domain = "@" not in p or p.startswith("@")
        p = p.removeprefix("@")
        local, _, dom = ("*", "@", p) if is_domain else p.rpartition("@")
        if not _has_glob(p):
            kind, key = ("dom", p) if is_domain else ("addr", p)
        elif local == "*" and not _has_glob(dom):
            kind, key = "dom", dom
        elif local == "*" and dom.startswith("*.") and not _has_glob(dom[2:]):
            kind, key = "suffix", dom[1:]
        elif dom == "*" and not _has_glob(local):
            kind, key = "local", local
        else:
            kind, key = "glob", p
        if kind == "glob":
            self.globs.append((label, re.compile(fnmatch.translate(p)), is_domain))
        else:
            self.tables[kind].setdefault(key, label)
        if label not in self.labels:
            self.labels.append(label)

    def match(self, address: str, domain: str) -> str | None:
        for kind, table in self.tables.items():
            if table:
                for key in address_keys(kind, address, domain):
                    label = table.get(key)
                    if label is not None:
                        return label
        for glob_label, rx, is_domain in self.globs:
            if rx.match(domain if is_domain else address):
                return glob_label
        return None


class AddressCond:
    def __init__(self, name: str, matcher: AddressMatcher) -> None:
        self.name, self.matcher = name, matcher

    def test(self, view: View) -> Matched | None:
        for address, domain in view.addresses(self.name):
            label = self.matcher.match(address, domain)
            if label is not None:
                return [(f"{self.name} {label}", address)]
        return None

    def describe(self) -> str:
        labels = self.matcher.labels
        text = f"{self.name} " + " or ".join(labels)
        return f"({text})" if len(labels) > 1 else text

    def trigger(self) -> Trigger:
        m = self.matcher
        if m.globs:
            return None
        return frozenset((kind, self.name, key) for kind, table in m.tables.items() for key in table)


def parse_addresses(r: Reader, k: str, v: Any, m: Any) -> AddressCond | None:
    """Addresses, domains, globs, and `{list: NAME}` items, in any mix."""
    matcher, ok = AddressMatcher(), True
    items = v if isinstance(v, list) else [v]
    for i, item in enumerate(items):
        node, at = (v, i) if isinstance(v, list) else (m, k)
        if isinstance(item, dict):
            if set(item) != {"list"} or not isinstance(item["list"], str):
                r.bad(node, at, "an address list is written {list: NAME}", key=k)
                ok = False
                continue
            entries = r.list_file(item["list"], node, at, k)
            if entries is None:
                ok = False
                continue
            for e in entries:
                matcher.add(e, f"in list {item['list']}")
        elif isinstance(item, str) and item.strip() and " " not in item.strip():
            s = item.strip().lower()
            kind = "matches" if any(c in s for c in "*?[") else "is" if "@" in s.lstrip("@") else "domain"
            matcher.add(s, f"{kind} {s.lstrip('@') if kind == 'domain' else s}")
        else:
            r.bad(node, at, f"expected an address, a domain or {{list: NAME}}, not {item!r}", key=k)
            ok = False
    return AddressCond(k, matcher) if ok else None
