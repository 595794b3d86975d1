"""Text conditions: `subject`, `body`, `new_text` and `header`, parsed and matched.

Part of the rules engine: `conditions.py` hands these keys of a rule's `when` to
`parse_text` and `parse_header`; the `TextCond`s they build are tested against a `View`
(`view.py`), and their `trigger()`s feed the literal index (`index.py`).  Actions'
`extract` reads the same `TEXT_FIELDS`.

`text`, `[texts]` (contains any) or `{contains|words|regex: ..., case_sensitive}`.
Speed: each `Pattern` knows the literal strings any match must contain (read from the
regex's parse tree), so the regex runs only where it can match, and the index can skip
the rule altogether when none of them is in the message.
"""

from __future__ import annotations

import re
from typing import Any

from .reader import Reader, strings, suggest
from .view import Condition, Matched, Trigger, Unindexed, View, fold

try:  # private but stable since 3.11; without it we lose the prefilter, never correctness
    from re import _constants as _sre  # type: ignore[attr-defined]
    from re import _parser as _sre_parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    _sre = _sre_parser = None

TEXT_FIELDS = ("subject", "body", "new_text")
CLIP = 200  # captured text longer than this is cut in hits: enough to explain, not a copy


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
        # Only ASCII letters fold predictably (see view._FOLD): keep the longest ASCII run.
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


def parse_patterns(r: Reader, v: Any, m: Any, k: Any, *, multiline: bool) -> list[Pattern] | None:
    """`text`, `[texts]` (contains any) or `{contains|words|regex: ..., case_sensitive}`."""
    spec = v if isinstance(v, dict) else {"contains": v}
    unknown = [x for x in spec if x not in ("contains", "words", "regex", "case_sensitive")]
    for x in unknown:
        r.bad(
            spec,
            x,
            f"unknown text test {x!r} (contains, words, regex or "
            f"case_sensitive){suggest(str(x), ('contains', 'words', 'regex'))}",
        )
    case = spec.get("case_sensitive", False)
    if not isinstance(case, bool):
        r.bad(spec, "case_sensitive", "case_sensitive must be true or false")
    flags = (0 if case is True else re.IGNORECASE) | (re.MULTILINE if multiline else 0)
    out: list[Pattern] = []
    ok = not unknown
    for how in ("contains", "words", "regex"):
        if how not in spec:
            continue
        node = spec if isinstance(v, dict) else m
        at = how if isinstance(v, dict) else k
        texts = strings(r, spec[how], node, at)
        if texts is None:
            ok = False
            continue
        for i, s in enumerate(texts):
            if how == "regex":
                try:
                    rx = re.compile(s, flags)
                except re.error as exc:
                    seq = spec[how]
                    in_list = isinstance(seq, list)
                    r.bad(
                        seq if in_list else node,
                        i if in_list else at,
                        f"bad regex {s!r}: {exc.msg} at position {exc.pos}",
                        key="regex",
                        value=not in_list,
                    )
                    ok = False
                    continue
                out.append(Pattern("matches", s, rx))
            elif how == "words":  # lookarounds, not \b: "C++" and "#42" are words too
                out.append(Pattern("has word", s, re.compile(rf"(?<!\w){re.escape(s)}(?!\w)", flags)))
            else:
                out.append(Pattern("contains", s, re.compile(re.escape(s), flags)))
    if ok and not out:
        r.bad(m, k, "give contains, words or regex", key=str(k))
    return out if ok and out else None


def _any_of(subject: str, patterns: list[Pattern]) -> str:
    """`subject has word 'a', 'b' or 'c'`: short enough for `rules list`."""
    groups: list[tuple[str, list[str]]] = []
    for p in patterns:
        shown = f"/{p.text}/" if p.how == "matches" else repr(p.text)
        if groups and groups[-1][0] == p.how:
            groups[-1][1].append(shown)
        else:
            groups.append((p.how, [shown]))
    parts = [
        f"{subject} {how} " + (f"{', '.join(xs[:-1])} or {xs[-1]}" if len(xs) > 1 else xs[0])
        for how, xs in groups
    ]
    return parts[0] if len(patterns) == 1 else "(" + " or ".join(parts) + ")"


# --- subject / body / new_text ---------------------------------------------------------


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
        return frozenset(("text", self.name, p.folded, n) for p in self.patterns for n in p.needles)  # type: ignore[union-attr]


def parse_text(r: Reader, k: str, v: Any, m: Any) -> TextCond | None:
    pats = parse_patterns(r, v, m, k, multiline=k != "subject")
    return TextCond(k, pats) if pats else None


# --- header ----------------------------------------------------------------------------


class HeaderCond(Unindexed):
    """A header is present (True), absent (False), or one of its values matches."""

    def __init__(self, name: str, present: bool | None, patterns: list[Pattern]) -> None:
        self.name, self.present, self.patterns = name, present, patterns

    def test(self, view: View) -> Matched | None:
        values = view.msg.headers.get(self.name) or []
        if self.present is not None:
            return [(self.describe(), values[0] if values else "")] if bool(values) == self.present else None
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


def parse_header(r: Reader, v: Any, m: Any) -> list[Condition] | None:
    """`header: {X-Spam-Flag: 'yes', List-Id: true}`: one condition per header, all must hold."""
    if not isinstance(v, dict) or not v:
        r.bad(m, "header", "header takes a mapping: `header: {X-Spam-Flag: 'yes'}`")
        return None
    items: list[Condition] = []
    for name, spec in v.items():
        if isinstance(spec, bool):
            items.append(HeaderCond(str(name).lower(), spec, []))
            continue
        pats = parse_patterns(r, spec, v, name, multiline=False)
        if pats is None:
            return None
        items.append(HeaderCond(str(name).lower(), None, pats))
    return items
