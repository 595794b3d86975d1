"""Load and validate the admins' rules (`rules/*.yaml`) into a `RuleSet`.

Where it sits: the daemon and the CLI call `load_rules(path)` at start (broken rules:
`RulesError`, the daemon refuses to start; on SIGHUP `daemon.reload` loads them again
with the configuration and keeps the last good set when the new one is broken), and the
pipeline's route step calls `RuleSet.evaluate(parsed, context)` (see `rules_eval.py`;
conditions and the index that keeps 1,000 rules fast are in `rules_match.py`).
`mailticket rules check` prints `check_rules(path)`; `rules list` prints `describe()`.

Files are read in name order, rules in file order; a file is a YAML list of rules:

    - name: outage                 # unique; events and `rules test` name it
      applies_to: new              # new (default) | reply | both
      when:                        # conditions, all must hold; all/any/not combine them
        subject: {words: [outage, panne, storing]}
      then:                        # actions; a later rule overrides an earlier one's values
        priority: P1
        tags: [outage]
      stop: true                   # no further rule is evaluated

`rules/README.md` lists every condition and action.  Validation collects every problem
(file, line, key, and a "did you mean" for typos) before raising.  This is the only
module that imports ruamel.yaml: its round-trip loader keeps the line numbers.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import YAMLError

from .errors import RulesError
from .rules_eval import (
    PRIORITIES,
    SOURCES,
    STATUSES,
    Actions,
    Decision,
    Evaluation,
    Extract,
    Hit,
    Rule,
    RuleContext,
    RuleSet,
    Split,
)
from .rules_match import (
    TEXT_FIELDS,
    AddressCond,
    AddressMatcher,
    AllOf,
    AnyOf,
    AttachmentCond,
    Condition,
    HeaderCond,
    HoursCond,
    Not,
    Pattern,
    ReplyCond,
    TextCond,
    ValueCond,
)

__all__ = [
    "Decision", "Evaluation", "Hit", "Problem", "Rule", "RuleContext", "RuleSet",
    "check_rules", "load_rules",
]

log = logging.getLogger(__name__)

RULE_KEYS = ("name", "description", "applies_to", "when", "then", "stop")
ADDRESS_FIELDS = ("from", "to", "cc", "recipient")
CONDITIONS = (*ADDRESS_FIELDS, *TEXT_FIELDS, "header", "attachment", "language", "reply",
              "status", "priority", "queue", "source", "mailbox", "business_hours",
              "all", "any", "not")
ACTIONS = ("queue", "priority", "tier", "assignee", "group", "tags", "fields", "extract",
           "template", "ack", "notify", "split", "spam", "stop")
SCOPES = {"new": frozenset({"new"}), "reply": frozenset({"reply"}),
          "both": frozenset({"new", "reply"})}


@dataclass(frozen=True)
class Problem:
    """One thing wrong in the rules, with where it is."""

    file: str
    line: int | None
    key: str | None
    message: str
    rule: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: rule \"{self.rule}\": {self.message}" if self.rule \
            else f"{where}: {self.message}"


def load_rules(path: str | Path) -> RuleSet:
    """The rules in `path` (a folder of *.yaml, or one file); a missing folder means no rules.

    Raises `RulesError` with every problem found.
    """
    rules, problems = _Loader(Path(path)).load()
    if problems:
        raise RulesError(problems)
    return rules


def check_rules(path: str | Path) -> list[Problem]:
    """Every problem in the rules at `path` (empty: all good)."""
    return _Loader(Path(path)).load()[1]


# --- the loader ------------------------------------------------------------------------


def _line(node: Any, at: Any = None, *, value: bool = False) -> int | None:
    """1-based line of `node` (a ruamel map or list), of its key or item `at`, or its value."""
    lc = getattr(node, "lc", None)
    if lc is None:
        return None
    try:
        if at is None:
            return lc.line + 1
        if isinstance(node, list):
            return lc.item(at)[0] + 1
        return (lc.value(at) if value else lc.key(at))[0] + 1
    except (KeyError, IndexError, TypeError, AttributeError):
        return lc.line + 1


def _suggest(key: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Loader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []
        self.lists: dict[Path, list[str] | None] = {}
        self.file = str(root)
        self.rule: str | None = None

    def bad(self, node: Any, at: Any, message: str, *, key: str | None = None,
            value: bool = False) -> None:
        key = key if key is not None else (at if isinstance(at, str) else None)
        self.problems.append(Problem(self.file, _line(node, at, value=value), key, message,
                                     self.rule))

    def load(self) -> tuple[RuleSet, list[Problem]]:
        root = self.root
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml")
                           and p.is_file() and not p.name.startswith("."))
        else:
            files = []
        rules: list[Rule] = []
        seen: dict[str, str] = {}  # name -> where it was first defined
        for path in files:
            self.file, self.rule = str(path), None
            for name, rule, node in self.load_file(path):
                if name in seen:
                    self.rule = name
                    self.bad(node, "name", f"duplicate rule name (first at {seen[name]})",
                             value=True)
                    continue
                seen[name] = f"{self.file}:{_line(node)}"
                if rule is not None:
                    rules.append(rule)
        # Files in load order, each top to bottom (a YAML error is found before the rest).
        self.problems.sort(key=lambda p: (p.file, p.line or 0))
        return RuleSet(rules, str(root), tuple(map(str, files))), self.problems

    def load_file(self, path: Path) -> list[tuple[str, Rule | None, Any]]:
        """(name, rule or None when it has problems, its YAML node) for each named rule."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.append(Problem(self.file, None, None, f"cannot read: {exc}"))
            return []
        yaml = YAML(typ="rt")
        try:
            data = yaml.load(text)
        except DuplicateKeyError as exc:
            # Report it, then read on with duplicates allowed to find the file's other problems.
            self.yaml_problem(exc)
            yaml = YAML(typ="rt")
            yaml.allow_duplicate_keys = True
            data = yaml.load(text)
        except YAMLError as exc:
            self.yaml_problem(exc)
            return []
        if data is None:
            return []
        if not isinstance(data, list):
            self.bad(data, None, "a rules file is a list of rules, each starting with '- name:'")
            return []
        out: list[tuple[str, Rule | None, Any]] = []
        for i, item in enumerate(data):
            self.rule = None
            if not isinstance(item, dict):
                self.bad(data, i, "a rule is a mapping with name, when and then")
                continue
            rule = self.rule_(item)
            if self.rule is not None:
                out.append((self.rule, rule, item))
        return out

    def yaml_problem(self, exc: YAMLError) -> None:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        start = getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        # "while constructing a mapping" says nothing more to an admin than "duplicate key".
        context = "" if isinstance(exc, DuplicateKeyError) else getattr(exc, "context", None) or ""
        if context and start is not None and mark is not None and start.line != mark.line:
            context += f" (from line {start.line + 1})"
        self.problems.append(Problem(
            self.file, mark.line + 1 if mark else None, None,
            "YAML syntax error: " + (f"{context}, " if context else "") + str(problem)))

    def rule_(self, m: dict) -> Rule | None:
        before = len(self.problems)
        name = m.get("name")
        self.rule = name.strip() if isinstance(name, str) and name.strip() else None
        if self.rule is None:
            self.bad(m, "name" if "name" in m else None, "every rule needs a name", key="name")
        for k in m:
            if k not in RULE_KEYS:
                hint = (" (a condition: put it under 'when')" if k in CONDITIONS else
                        " (an action: put it under 'then')" if k in ACTIONS else
                        _suggest(str(k), RULE_KEYS))
                self.bad(m, k, f"unknown key {k!r}{hint}", key=str(k))
        applies = m.get("applies_to", "new")
        if applies not in SCOPES:
            self.bad(m, "applies_to", f"applies_to must be new, reply or both, not {applies!r}")
        stop = m.get("stop", False)
        if not isinstance(stop, bool):
            self.bad(m, "stop", f"stop must be true or false, not {stop!r}")
        when = self.when_(m["when"], m, "when") if "when" in m else None
        then, then_stop = self.then_(m["then"], m) if "then" in m else (Actions(), False)
        if "then" not in m and stop is not True:
            self.bad(m, None, "the rule does nothing: give it 'then' or 'stop: true'", key="then")
        if len(self.problems) > before or self.rule is None:
            return None
        return Rule(self.rule, self.file, _line(m) or 0, SCOPES[applies], when, then,
                    stop is True or then_stop, str(m.get("description") or ""))

    # --- conditions ---

    def when_(self, v: Any, parent: Any, at: Any) -> Condition | None:
        if isinstance(v, dict):
            return self.cond_map(v, parent, at)
        if isinstance(v, list) and v:
            items = [self.when_(x, v, i) for i, x in enumerate(v)]
            return AllOf(items) if all(items) else None  # type: ignore[arg-type]
        self.bad(parent, at, "expected conditions, e.g. `subject: outage` (or a list of them)",
                 key=at if isinstance(at, str) else "when")
        return None

    def cond_map(self, m: dict, parent: Any, at: Any) -> Condition | None:
        if not m:
            self.bad(parent, at, "no conditions given", key=at if isinstance(at, str) else None)
            return None
        items = [self.cond(str(k), v, m) for k, v in m.items()]
        if not all(items):
            return None
        return items[0] if len(items) == 1 else AllOf(items)  # type: ignore[arg-type]

    def cond(self, k: str, v: Any, m: dict) -> Condition | None:
        if k in ("all", "any"):
            if not isinstance(v, list) or not v:
                self.bad(m, k, f"'{k}' takes a list of conditions")
                return None
            items = [self.when_(x, v, i) for i, x in enumerate(v)]
            if not all(items):
                return None
            return (AllOf if k == "all" else AnyOf)(items)  # type: ignore[arg-type]
        if k == "not":
            item = self.when_(v, m, k)
            return Not(item) if item is not None else None
        if k in ADDRESS_FIELDS:
            matcher = self.addresses(v, m, k)
            return AddressCond(k, matcher) if matcher else None
        if k in TEXT_FIELDS:
            pats = self.patterns(v, m, k, multiline=k != "subject")
            return TextCond(k, pats) if pats else None
        if k == "header":
            return self.header(v, m)
        if k == "attachment":
            return self.attachment(v, m)
        if k == "reply":
            if not isinstance(v, bool):
                self.bad(m, k, "reply must be true or false")
                return None
            return ReplyCond(v)
        if k == "business_hours":
            if v not in ("inside", "outside"):
                self.bad(m, k, f"business_hours must be inside or outside, not {v!r}")
                return None
            return HoursCond(v == "inside")
        if k in ("language", "status", "priority", "queue", "source", "mailbox"):
            values = self.strings(v, m, k)
            if values is None:
                return None
            allowed = {"status": STATUSES, "source": SOURCES}.get(k)
            out: list[str] = []
            for s in values:
                s = PRIORITIES.get(s.lower(), s) if k == "priority" else s
                if k == "priority" and s not in PRIORITIES.values():
                    self.bad(m, k, f"unknown priority {s!r} ({_PRIORITY_HELP})")
                elif allowed and s.lower() not in allowed:
                    self.bad(m, k, f"unknown {k} {s!r} (one of {', '.join(allowed)})"
                             f"{_suggest(s.lower(), allowed)}")
                out.append(s)
            return ValueCond(k, out)
        hint = (f" ('{k}' is an action: put it under 'then')" if k in ACTIONS
                else _suggest(k, CONDITIONS))
        self.bad(m, k, f"unknown condition {k!r}{hint}")
        return None

    def strings(self, v: Any, m: Any, k: Any) -> list[str] | None:
        """A text or a list of texts (numbers are taken as text)."""
        items = v if isinstance(v, list) else [v]
        if not items or any(isinstance(x, bool) or not isinstance(x, (str, int, float))
                            or not str(x).strip() for x in items):
            self.bad(m, k, "expected a text or a list of texts", key=str(k))
            return None
        return [str(x).strip() for x in items]

    def patterns(self, v: Any, m: Any, k: Any, *, multiline: bool) -> list[Pattern] | None:
        """`text`, `[texts]` (contains any) or `{contains|words|regex: ..., case_sensitive}`."""
        spec = v if isinstance(v, dict) else {"contains": v}
        unknown = [x for x in spec if x not in ("contains", "words", "regex", "case_sensitive")]
        for x in unknown:
            self.bad(spec, x, f"unknown text test {x!r} (contains, words, regex or "
                     f"case_sensitive){_suggest(str(x), ('contains', 'words', 'regex'))}")
        case = spec.get("case_sensitive", False)
        if not isinstance(case, bool):
            self.bad(spec, "case_sensitive", "case_sensitive must be true or false")
        flags = (0 if case is True else re.IGNORECASE) | (re.MULTILINE if multiline else 0)
        out: list[Pattern] = []
        ok = not unknown
        for how in ("contains", "words", "regex"):
            if how not in spec:
                continue
            node = spec if isinstance(v, dict) else m
            at = how if isinstance(v, dict) else k
            texts = self.strings(spec[how], node, at)
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
                        self.bad(seq if in_list else node, i if in_list else at,
                                 f"bad regex {s!r}: {exc.msg} at position {exc.pos}",
                                 key="regex", value=not in_list)
                        ok = False
                        continue
                    out.append(Pattern("matches", s, rx))
                elif how == "words":  # lookarounds, not \b: "C++" and "#42" are words too
                    out.append(Pattern("has word", s,
                                       re.compile(rf"(?<!\w){re.escape(s)}(?!\w)", flags)))
                else:
                    out.append(Pattern("contains", s, re.compile(re.escape(s), flags)))
        if ok and not out:
            self.bad(m, k, "give contains, words or regex", key=str(k))
        return out if ok and out else None

    def addresses(self, v: Any, m: Any, k: str) -> AddressMatcher | None:
        """Addresses, domains, globs, and `{list: NAME}` items, in any mix."""
        matcher, ok = AddressMatcher(), True
        items = v if isinstance(v, list) else [v]
        for i, item in enumerate(items):
            node, at = (v, i) if isinstance(v, list) else (m, k)
            if isinstance(item, dict):
                if set(item) != {"list"} or not isinstance(item["list"], str):
                    self.bad(node, at, "an address list is written {list: NAME}", key=k)
                    ok = False
                    continue
                entries = self.list_file(item["list"], node, at, k)
                if entries is None:
                    ok = False
                    continue
                for e in entries:
                    matcher.add(e, f"in list {item['list']}")
            elif isinstance(item, str) and item.strip() and " " not in item.strip():
                s = item.strip().lower()
                kind = "matches" if any(c in s for c in "*?[") else \
                    "is" if "@" in s.lstrip("@") else "domain"
                matcher.add(s, f"{kind} {s.lstrip('@') if kind == 'domain' else s}")
            else:
                self.bad(node, at, f"expected an address, a domain or {{list: NAME}}, "
                         f"not {item!r}", key=k)
                ok = False
        return matcher if ok else None

    def list_file(self, name: str, node: Any, at: Any, k: str) -> list[str] | None:
        """`vip` is lists/vip.txt; a name with a slash or .txt is relative to the rules."""
        base = self.root.parent if self.root.is_file() else self.root
        path = base / name if ("/" in name or name.endswith(".txt")) else \
            base / "lists" / f"{name}.txt"
        if path not in self.lists:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                self.bad(node, at, f"list {name!r}: cannot read {path}: "
                         f"{exc.strerror if isinstance(exc, OSError) else exc}", key=k)
                return None
            entries = []
            for n, line in enumerate(lines, 1):
                entry = line.split("#", 1)[0].strip()
                if " " in entry or "\t" in entry:
                    self.problems.append(Problem(str(path), n, None,
                                                 f"one address or domain a line, not {entry!r}"))
                elif entry:
                    entries.append(entry)
            self.lists[path] = entries
        return self.lists[path]

    def header(self, v: Any, m: Any) -> Condition | None:
        if not isinstance(v, dict) or not v:
            self.bad(m, "header", "header takes a mapping: `header: {X-Spam-Flag: 'yes'}`")
            return None
        items: list[HeaderCond] = []
        for name, spec in v.items():
            if isinstance(spec, bool):
                items.append(HeaderCond(str(name).lower(), spec, []))
                continue
            pats = self.patterns(spec, v, name, multiline=False)
            if pats is None:
                return None
            items.append(HeaderCond(str(name).lower(), None, pats))
        return items[0] if len(items) == 1 else AllOf(items)  # type: ignore[arg-type]

    def attachment(self, v: Any, m: Any) -> Condition | None:
        """true/false; a name glob or a type (has a slash); a list: any; {name:, type:}."""
        if isinstance(v, bool):
            return AttachmentCond(v, [], [])
        if isinstance(v, dict):
            unknown = [x for x in v if x not in ("name", "type")]
            for x in unknown:
                self.bad(v, x, f"unknown attachment test {x!r} (name or type)"
                         f"{_suggest(str(x), ('name', 'type'))}")
            names = self.strings(v["name"], v, "name") if "name" in v else []
            types = self.strings(v["type"], v, "type") if "type" in v else []
            if unknown or names is None or types is None or not (names or types):
                if not unknown and names is not None and types is not None:
                    self.bad(m, "attachment", "give a name, a type, or both")
                return None
            return AttachmentCond(True, names, types)
        values = self.strings(v, m, "attachment")
        if values is None:
            return None
        items = [AttachmentCond(True, [], [s]) if "/" in s else AttachmentCond(True, [s], [])
                 for s in values]
        return items[0] if len(items) == 1 else AnyOf(items)  # type: ignore[arg-type]

    # --- actions ---

    def then_(self, v: Any, parent: Any) -> tuple[Actions, bool]:
        if not isinstance(v, dict) or not v:
            self.bad(parent, "then", "then takes actions, e.g. `priority: P1`")
            return Actions(), False
        sets: dict[str, Any] = {}
        kw: dict[str, Any] = {}
        stop = False
        for k, val in v.items():
            k = str(k)
            if k in ("queue", "assignee", "group", "template"):
                got = self.strings(val, v, k)
                if got is not None and len(got) != 1:
                    self.bad(v, k, f"{k} takes one value")
                elif got is not None:
                    sets[k] = got[0]
            elif k == "priority":
                p = PRIORITIES.get(str(val).strip().lower()) if isinstance(val, str) else None
                if p is None:
                    self.bad(v, k, f"unknown priority {val!r} ({_PRIORITY_HELP})")
                sets[k] = p
            elif k == "tier":
                if isinstance(val, bool) or not isinstance(val, int) or not 1 <= val <= 3:
                    self.bad(v, k, f"tier must be 1, 2 or 3, not {val!r}")
                sets[k] = val
            elif k in ("ack", "spam", "stop"):
                if not isinstance(val, bool):
                    self.bad(v, k, f"{k} must be true or false, not {val!r}")
                elif k == "ack":
                    sets[k] = val
                elif k == "spam":
                    kw["spam"] = val
                else:
                    stop = val
            elif k in ("tags", "notify"):
                got = self.strings(val, v, k)
                kw[k] = tuple(dict.fromkeys(got or ()))
            elif k == "fields":
                if not isinstance(val, dict) or not val:
                    self.bad(v, k, "fields takes a mapping of name: value")
                else:
                    kw[k] = {str(a): str(b) for a, b in val.items()}
            elif k == "extract":
                kw[k] = self.extract(val, v)
            elif k == "split":
                kw[k] = self.split(val, v)
            else:
                hint = (f" ('{k}' is a condition: put it under 'when')" if k in CONDITIONS
                        else _suggest(k, ACTIONS))
                self.bad(v, k, f"unknown action {k!r}{hint}")
        return Actions(set=sets, **kw), stop

    def extract(self, val: Any, parent: Any) -> tuple[Extract, ...]:
        """A regex with named groups, or a list of them; `{regex:, in: subject|body|new_text}`."""
        out = []
        for i, item in enumerate(val if isinstance(val, list) else [val]):
            node, at = (val, i) if isinstance(val, list) else (parent, "extract")
            where: Any = ("subject", "body")
            if isinstance(item, dict):
                for x in item:
                    if x not in ("regex", "in"):
                        self.bad(item, x, f"unknown extract key {x!r} (regex or in)")
                if "in" in item:
                    where = self.strings(item["in"], item, "in") or ()
                    for w in where:
                        if w not in TEXT_FIELDS:
                            self.bad(item, "in", f"extract in {w!r}: use subject, body or "
                                     f"new_text{_suggest(w, TEXT_FIELDS)}")
                node, at, item = item, "regex", item.get("regex")
            if not isinstance(item, str) or not item:
                self.bad(node, at, "extract takes a regex with named groups", key="extract")
                continue
            try:
                rx = re.compile(item, re.IGNORECASE | re.MULTILINE)
            except re.error as exc:
                self.bad(node, at, f"bad regex {item!r}: {exc.msg} at position {exc.pos}",
                         key="regex")
                continue
            if not rx.groupindex:
                self.bad(node, at, f"regex {item!r} names no field: use a named group such as "
                         "(?P<account>\\d+)", key="regex")
                continue
            out.append(Extract(rx, tuple(where)))
        return tuple(out)

    def split(self, val: Any, parent: Any) -> Split | None:
        if val == "numbered":
            return Split()
        if isinstance(val, dict) and set(val) == {"separator"} and isinstance(
                val["separator"], str):
            try:
                return Split(re.compile(val["separator"], re.MULTILINE))
            except re.error as exc:
                self.bad(val, "separator", f"bad regex {val['separator']!r}: {exc.msg} at "
                         f"position {exc.pos}", key="regex", value=True)
                return None
        self.bad(parent, "split", "split is `numbered` or `{separator: REGEX}`")
        return None


_PRIORITY_HELP = "P1 business-failure, P2 critical, P3 normal or P4 planned"
