"""Load and validate the admins' rules (`rules/*.yaml`) into a `RuleSet`.

Where it sits: the daemon and the CLI call `load_rules(path)` at start (broken rules:
`RulesError`, the daemon refuses to start; on SIGHUP `daemon.reload` loads them again
with the configuration and keeps the last good set when the new one is broken).
`mailticket rules check` prints `check_rules(path)`; `rules list` prints
`RuleSet.describe()`.  This module reads the files and each rule's shape; the
conditions under `when` are parsed by `conditions.py` (text and addresses by `text.py`
and `addresses.py`), the actions under `then` by `actions.py`, each beside the code that
runs it, and they report problems through this loader (the `Reader` of `reader.py`).

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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import YAMLError

from ..errors import RulesError
from .actions import ACTIONS, Actions, parse_then
from .conditions import CONDITIONS, parse_when
from .evaluate import Rule, RuleSet
from .reader import suggest

RULE_KEYS = ("name", "description", "applies_to", "when", "then", "stop")
SCOPES = {"new": frozenset({"new"}), "reply": frozenset({"reply"}), "both": frozenset({"new", "reply"})}


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
        return f'{where}: rule "{self.rule}": {self.message}' if self.rule else f"{where}: {self.message}"


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


class _Loader:
    """Reads one rules folder (or file), collecting every problem; the parsers' `Reader`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []
        self.lists: dict[Path, list[str] | None] = {}
        self.file = str(root)
        self.rule: str | None = None

    # --- the Reader the condition and action parsers report to ---

    def bad(self, node: Any, at: Any, message: str, *, key: str | None = None, value: bool = False) -> None:
        key = key if key is not None else (at if isinstance(at, str) else None)
        self.problems.append(Problem(self.file, _line(node, at, value=value), key, message, self.rule))

    def unknown(self, node: Any, key: str, kind: str) -> None:
        if kind == "condition":
            hint = (
                f" ('{key}' is an action: put it under 'then')"
                if key in ACTIONS
                else suggest(key, CONDITIONS)
            )
        else:
            hint = (
                f" ('{key}' is a condition: put it under 'when')"
                if key in CONDITIONS
                else suggest(key, ACTIONS)
            )
        self.bad(node, key, f"unknown {kind} {key!r}{hint}")

    def list_file(self, name: str, node: Any, at: Any, key: str) -> list[str] | None:
        """`vip` is lists/vip.txt; a name with a slash or .txt is relative to the rules."""
        base = self.root.parent if self.root.is_file() else self.root
        path = base / name if ("/" in name or name.endswith(".txt")) else base / "lists" / f"{name}.txt"
        if path not in self.lists:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                self.bad(
                    node,
                    at,
                    f"list {name!r}: cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}",
                    key=key,
                )
                return None
            entries = []
            for n, line in enumerate(lines, 1):
                entry = line.split("#", 1)[0].strip()
                if " " in entry or "\t" in entry:
                    self.problems.append(
                        Problem(str(path), n, None, f"one address or domain a line, not {entry!r}")
                    )
                elif entry:
                    entries.append(entry)
            self.lists[path] = entries
        return self.lists[path]

    # --- files and rules ---

    def load(self) -> tuple[RuleSet, list[Problem]]:
        root = self.root
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = sorted(
                p
                for p in root.iterdir()
                if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith(".")
            )
        else:
            files = []
        rules: list[Rule] = []
        seen: dict[str, str] = {}  # name -> where it was first defined
        for path in files:
            self.file, self.rule = str(path), None
            for name, rule, node in self.load_file(path):
                if name in seen:
                    self.rule = name
                    self.bad(node, "name", f"duplicate rule name (first at {seen[name]})", value=True)
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
        self.problems.append(
            Problem(
                self.file,
                mark.line + 1 if mark else None,
                None,
                "YAML syntax error: " + (f"{context}, " if context else "") + str(problem),
            )
        )

    def rule_(self, m: dict) -> Rule | None:
        before = len(self.problems)
        name = m.get("name")
        self.rule = name.strip() if isinstance(name, str) and name.strip() else None
        if self.rule is None:
            self.bad(m, "name" if "name" in m else None, "every rule needs a name", key="name")
        for k in m:
            if k not in RULE_KEYS:
                hint = (
                    " (a condition: put it under 'when')"
                    if k in CONDITIONS
                    else " (an action: put it under 'then')"
                    if k in ACTIONS
                    else suggest(str(k), RULE_KEYS)
                )
                self.bad(m, k, f"unknown key {k!r}{hint}", key=str(k))
        applies = m.get("applies_to", "new")
        if applies not in SCOPES:
            self.bad(m, "applies_to", f"applies_to must be new, reply or both, not {applies!r}")
        stop = m.get("stop", False)
        if not isinstance(stop, bool):
            self.bad(m, "stop", f"stop must be true or false, not {stop!r}")
        when = parse_when(self, m["when"], m, "when") if "when" in m else None
        then, then_stop = parse_then(self, m["then"], m) if "then" in m else (Actions(), False)
        if "then" not in m and stop is not True:
            self.bad(m, None, "the rule does nothing: give it 'then' or 'stop: true'", key="then")
        if len(self.problems) > before or self.rule is None:
            return None
        return Rule(
            self.rule,
            self.file,
            _line(m) or 0,
            SCOPES[applies],
            when,
            then,
            stop is True or then_stop,
            str(m.get("description") or ""),
        )
