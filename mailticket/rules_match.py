"""Match rule conditions against one message, fast: patterns, conditions, the rule index.

Part of the rules engine (`rules.py` loads, `rules_eval.py` decides).  Every condition
is compiled once at load time into an object with `test(view)`, which returns the
matched (condition, text) pairs or None, and `describe()` for `mailticket rules list`.

Speed, so that 1,000 rules cost well under a millisecond per message:
- each text pattern knows the literal strings any match must contain (read from the
  regex's parse tree), so the regex runs only where it can match;
- `Index` gathers those literals and the exact addresses and domains of every rule: one
  scan of the message (a trie regex over all the literals, dictionary look-ups for the
  addresses) gives the few rules that can match, and only those are tested, in order.
  Rules it cannot index (globs, headers, "not", ...) are always tested.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .parsers import ParsedMessage
    from .rules_eval import RuleContext, _Draft

try:  # private but stable since 3.11; without it we lose the prefilter, never correctness
    from re import _constants as _sre  # type: ignore[attr-defined]
    from re import _parser as _sre_parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    _sre = _sre_parser = None

TEXT_FIELDS = ("subject", "body", "new_text")
CLIP = 200  # captured text longer than this is cut in hits: enough to explain, not a copy

# A necessary condition of a rule, as index keys: ("text", field, folded, literal) or
# ("addr" | "dom", field, address or domain).  A rule matches only if one key is present.
Key = tuple
Trigger = frozenset[Key] | None

# --- the message as the conditions see it ----------------------------------------------

# Characters that `re.IGNORECASE` matches to an ASCII letter but str.lower() does not map
# to it (see the `re` docs on IGNORECASE): folding them keeps the prefilter exact.
_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


def fold(text: str) -> str:
    # translate() with a dict is slow per character; most mail is ASCII and needs none.
    return text.lower() if text.isascii() else text.translate(_FOLD).lower()


class View:
    """One message plus its context and the decision so far; derived text computed once."""

    __slots__ = ("_addresses", "_folded", "_text", "ctx", "draft", "msg")

    def __init__(self, msg: ParsedMessage, ctx: RuleContext, draft: _Draft) -> None:
        self.msg, self.ctx, self.draft = msg, ctx, draft
        self._text: dict[str, str] = {}
        self._folded: dict[str, str] = {}
        self._addresses: dict[str, list[tuple[str, str]]] = {}

    def text(self, name: str) -> str:
        t = self._text.get(name)
        if t is None:
            m = self.msg
            t = self._text[name] = (m.subject if name == "subject" else m.text if name == "body"
                                    else m.new_text) or ""
        return t

    def folded(self, name: str) -> str:
        t = self._folded.get(name)
        if t is None:
            t = self._folded[name] = fold(self.text(name))
        return t

    def addresses(self, name: str) -> list[tuple[str, str]]:
        """(address, domain) pairs, lower-cased, of from / to / cc / recipient (to and cc)."""
        got = self._addresses.get(name)
        if got is None:
            m = self.msg
            addrs = ([m.from_] if m.from_ else []) if name == "from" else m.to if name == "to" \
                else m.cc if name == "cc" else [*m.to, *m.cc]
            got = []
            for a in addrs:
                email = a.email.lower()
                got.append((email, email.rpartition("@")[2]))
            self._addresses[name] = got
        return got


# --- text patterns with their prefilter ------------------------------------------------


class Pattern:
    """A compiled regex, how to describe it, and the literals any match must contain."""

    __slots__ = ("folded", "how", "needles", "regex", "text")

    def __init__(self, how: str, text: str, regex: re.Pattern[str]) -> None:
        self.how, self.text, self.regex = how, text, regex  # how: contains | has word | matches
        self.folded = bool(regex.flags & re.IGNORECASE)
        self.needles = required_literals(regex)

    @property
    def desc(self) -> str:
        return f"{self.how} /{self.text}/" if self.how == "matches" else f"{self.how} {self.text!r}"

    def search(self, text: str, folded: str | None = None) -> str | None:
        """The matched text, or None.  `folded` is fold(text) when the caller has it."""
        if self.needles is not None:
            hay = (folded if folded is not None else fold(text)) if self.folded else text
            for n in self.needles:
                if n in hay:
                    break
            else:
                return None
        m = self.regex.search(text)
        return None if m is None else m.group(0)[:CLIP]


def required_literals(regex: re.Pattern[str]) -> tuple[str, ...] | None:
    """Strings of which every match contains at least one (folded when case-insensitive).

    None when no such strings could be told: the regex then always runs.
    """
    if _sre_parser is None:
        return None
    try:
        tree = _sre_parser.parse(regex.pattern, regex.flags)
    except Exception:  # noqa: BLE001 - a parser surprise only costs the prefilter
        return None
    folded = bool(regex.flags & re.IGNORECASE)
    best = _required(list(tree), folded)
    return tuple(sorted(best)) if best else None


def _score(req: frozenset[str] | None) -> tuple[int, int]:
    return (min(map(len, req)), -len(req)) if req else (0, 0)


def _literal(chars: list[str], folded: bool) -> frozenset[str] | None:
    s = "".join(chars)
    if folded:
        # Only ASCII letters fold predictably (see _FOLD): keep the longest ASCII run.
        s = max(re.split(r"[^\x00-\x7f]+", s), key=len).lower()
    return frozenset([s]) if len(s) >= 2 else None


def _required(seq: list, folded: bool) -> frozenset[str] | None:
    best: frozenset[str] | None = None
    run: list[str] = []

    def consider(req: frozenset[str] | None) -> None:
        nonlocal best
        if req and _score(req) > _score(best):
            best = req

    for op, av in [*seq, (None, None)]:
        if op is _sre.LITERAL:
            run.append(chr(av))
            continue
        if run:
            consider(_literal(run, folded))
            run = []
        if op is _sre.SUBPATTERN:
            _group, add, remove, sub = av
            if not (add or remove):  # a local flag change would change what folds
                consider(_required(list(sub), folded))
        elif op is _sre.BRANCH:
            alts = [_required(list(b), folded) for b in av[1]]
            if all(alts):
                consider(frozenset().union(*alts))  # type: ignore[arg-type]
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", None)):
            if av[0] >= 1:
                consider(_required(list(av[2]), folded))
        elif op is getattr(_sre, "ATOMIC_GROUP", None):
            consider(_required(list(av), folded))
    return best


# --- conditions ------------------------------------------------------------------------

Matched = list[tuple[str, str]]


class Condition(Protocol):
    def test(self, view: View) -> Matched | None: ...

    def describe(self) -> str: ...

    def trigger(self) -> Trigger: ...


class _Unindexed:
    """A condition the index cannot tell from the text or addresses: always tested."""

    def trigger(self) -> Trigger:
        return None


class AllOf:
    def __init__(self, items: list[Condition]) -> None:
        self.items = items

    def test(self, view: View) -> Matched | None:
        out: Matched = []
        for c in self.items:
            got = c.test(view)
            if got is None:
                return None
            out += got
        return out

    def describe(self) -> str:
        return " and ".join(c.describe() for c in self.items)

    def trigger(self) -> Trigger:
        return _best([c.trigger() for c in self.items])


class AnyOf(AllOf):
    def test(self, view: View) -> Matched | None:
        for c in self.items:
            got = c.test(view)
            if got is not None:
                return got
        return None

    def describe(self) -> str:
        return "(" + " or ".join(c.describe() for c in self.items) + ")"

    def trigger(self) -> Trigger:
        return _union([c.trigger() for c in self.items])


class Not(_Unindexed):
    def __init__(self, item: Condition) -> None:
        self.item = item

    def test(self, view: View) -> Matched | None:
        return None if self.item.test(view) is not None else [(self.describe(), "")]

    def describe(self) -> str:
        return f"not ({self.item.describe()})"


class TextCond:
    """subject / body / new_text: any of the patterns matches."""

    def __init__(self, name: str, patterns: list[Pattern]) -> None:
        self.name, self.patterns = name, patterns

    def test(self, view: View) -> Matched | None:
        name = self.name
        for p in self.patterns:
            got = p.search(view.text(name), view.folded(name) if p.folded else None)
            if got is not None:
                return [(f"{name} {p.desc}", got)]
        return None

    def describe(self) -> str:
        return _any_of(self.name, self.patterns)

    def trigger(self) -> Trigger:
        if any(p.needles is None for p in self.patterns):
            return None
        return frozenset(("text", self.name, p.folded, n) for p in self.patterns
                         for n in p.needles)  # type: ignore[union-attr]


def _has_glob(text: str) -> bool:
    return "*" in text or "?" in text or "[" in text


def _address_keys(kind: str, address: str, domain: str) -> list[str]:
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
        self.tables: dict[str, dict[str, str]] = {"addr": {}, "dom": {}, "suffix": {},
                                                  "local": {}}
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
                for key in _address_keys(kind, address, domain):
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
        return frozenset((kind, self.name, key) for kind, table in m.tables.items()
                         for key in table)


def _current(view: View, name: str) -> str | None:
    """The ticket's value as decided so far: an earlier rule's, else the ticket's own."""
    ctx, draft = view.ctx, view.draft
    if name == "status":
        return ctx.ticket_status
    if name == "priority":
        return draft.priority or ctx.ticket_priority
    if name == "queue":
        return draft.queue or ctx.ticket_queue or (None if ctx.is_reply else ctx.queue)
    value = view.msg.language if name == "language" else getattr(ctx, name)
    return value


class ValueCond(_Unindexed):
    """language, status, priority, queue, source, mailbox: the value is one of these."""

    def __init__(self, name: str, values: list[str]) -> None:
        self.name, self.shown = name, values
        self.values = frozenset(v.lower() for v in values)

    def test(self, view: View) -> Matched | None:
        value = _current(view, self.name)
        if value is not None and value.lower() in self.values:
            return [(self.describe(), value)]
        return None

    def describe(self) -> str:
        return f"{self.name} is " + " or ".join(self.shown)


class ReplyCond(_Unindexed):
    def __init__(self, want: bool) -> None:
        self.want = want

    def test(self, view: View) -> Matched | None:
        return [(self.describe(), "")] if view.ctx.is_reply == self.want else None

    def describe(self) -> str:
        return "is a reply" if self.want else "is not a reply"


class HoursCond(_Unindexed):
    def __init__(self, inside: bool) -> None:
        self.inside = inside

    def test(self, view: View) -> Matched | None:
        hours = view.ctx.business_hours
        is_open = True if hours is None else hours.is_open(view.ctx.now)
        return [(self.describe(), view.ctx.now.isoformat())] if is_open == self.inside else None

    def describe(self) -> str:
        return f"{'inside' if self.inside else 'outside'} business hours"


class HeaderCond(_Unindexed):
    """A header is present (True), absent (False), or one of its values matches."""

    def __init__(self, name: str, present: bool | None, patterns: list[Pattern]) -> None:
        self.name, self.present, self.patterns = name, present, patterns

    def test(self, view: View) -> Matched | None:
        values = view.msg.headers.get(self.name) or []
        if self.present is not None:
            return [(self.describe(), values[0] if values else "")] \
                if bool(values) == self.present else None
        for value in values:
            for p in self.patterns:
                got = p.search(value)
                if got is not None:
                    return [(f"header {self.name} {p.desc}", got)]
        return None

    def describe(self) -> str:
        if self.present is not None:
            return f"header {self.name} {'present' if self.present else 'absent'}"
        return _any_of(f"header {self.name}", self.patterns)


def _any_of(subject: str, patterns: list[Pattern]) -> str:
    """`subject has word 'a', 'b' or 'c'`: short enough for `rules list`."""
    groups: list[tuple[str, list[str]]] = []
    for p in patterns:
        shown = f"/{p.text}/" if p.how == "matches" else repr(p.text)
        if groups and groups[-1][0] == p.how:
            groups[-1][1].append(shown)
        else:
            groups.append((p.how, [shown]))
    parts = [f"{subject} {how} " + (f"{', '.join(xs[:-1])} or {xs[-1]}" if len(xs) > 1
                                     else xs[0]) for how, xs in groups]
    return parts[0] if len(patterns) == 1 else "(" + " or ".join(parts) + ")"


class AttachmentCond(_Unindexed):
    """An attachment (inline parts such as signature logos do not count) of a name or type."""

    def __init__(self, want: bool, names: list[str], types: list[str]) -> None:
        self.want, self.names, self.types = want, names, types
        self._names = [re.compile(fnmatch.translate(n.lower())) for n in names]
        self._types = [re.compile(fnmatch.translate(t.lower())) for t in types]

    def test(self, view: View) -> Matched | None:
        for a in view.msg.attachments:
            if a.inline:
                continue
            if self._names and not any(r.match(a.filename.lower()) for r in self._names):
                continue
            if self._types and not any(r.match(a.content_type.lower()) for r in self._types):
                continue
            return [(self.describe(), a.filename)] if self.want else None
        return None if self.want else [(self.describe(), "")]

    def describe(self) -> str:
        what = " and ".join(
            ([f"name {' or '.join(self.names)}"] if self.names else [])
            + ([f"type {' or '.join(self.types)}"] if self.types else [])
        )
        return ("has an attachment" if self.want else "has no attachment") + (
            f" with {what}" if what else "")


# --- the index -------------------------------------------------------------------------


def _best(triggers: list[Trigger]) -> Trigger:
    """For `all`: any child's trigger will do; the smallest one lets through the fewest."""
    known = [t for t in triggers if t is not None]
    return min(known, key=len) if known else None


def _union(triggers: list[Trigger]) -> Trigger:
    """For `any`: one child must match, so the union; unknown if one child is unknown."""
    if any(t is None for t in triggers):
        return None
    return frozenset().union(*triggers)  # type: ignore[arg-type]


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
                for key in _address_keys(kind, address, domain):
                    ids = table.get(key)
                    if ids:
                        found |= ids
        return sorted(found)
