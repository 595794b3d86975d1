"""A rule's `then`: every action's parser, and how the actions change the decision.

Part of the rules engine: the loader (`load.py`) calls `parse_then` on each rule's
`then`; the evaluator (`evaluate.py`) calls `Actions.apply(decision, view)` for each
rule that matches and gets the next `Decision` (`decision.py`, never changed in place)
and one line per thing done, which the hit records.

A later rule overrides what an earlier one set; tags, fields and notifications add up;
`extract` fills fields from the text, `split` cuts one message into several tickets,
`spam` ends the evaluation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..states import PRIORITY_NAMES
from .decision import Decision
from .reader import PRIORITY_HELP, Reader, strings, suggest
from .text import TEXT_FIELDS
from .view import View

ACTIONS = (
    "queue",
    "priority",
    "tier",
    "assignee",
    "group",
    "sla",
    "tags",
    "fields",
    "extract",
    "template",
    "ack",
    "notify",
    "split",
    "spam",
    "stop",
)

# A numbered item: "1. ", "2) ", "(3) " at the start of a line.
_ITEM = re.compile(r"^[ \t]*(?:\d{1,2}[.)]|\(\d{1,2}\))[ \t]+", re.MULTILINE)


@dataclass(frozen=True)
class Split:
    """How to cut one message into several problems: a numbered list, or a separator."""

    separator: re.Pattern[str] | None = None  # None: numbered list items

    def parts(self, text: str) -> tuple[str, ...]:
        if self.separator is not None:
            parts = [p.strip() for p in self.separator.split(text)]
        else:
            parts = _numbered_items(text)
        parts = [p for p in parts if p]
        return tuple(parts) if len(parts) >= 2 else ()

    def describe(self) -> str:
        return "numbered" if self.separator is None else f"on /{self.separator.pattern}/"


def _numbered_items(text: str) -> list[str]:
    """The items of a numbered list; the greeting before and the signature after are left out.

    An item runs until the next item, or until a blank line that is not followed by an
    indented continuation line.
    """
    starts = [m for m in _ITEM.finditer(text)]
    items = []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        lines = text[m.end() : end].split("\n")
        keep = [lines[0]]
        for j, line in enumerate(lines[1:], 1):
            if not line.strip():
                rest = [x for x in lines[j + 1 :] if x.strip()]
                if not rest or not rest[0][:1].isspace():
                    break
            keep.append(line)
        items.append("\n".join(keep).strip())
    return items


@dataclass(frozen=True)
class Extract:
    """A regex with named groups; each group that matches sets the field of that name."""

    regex: re.Pattern[str]
    where: tuple[str, ...] = ("subject", "body")


def _added(before: tuple[str, ...], new: tuple[str, ...]) -> tuple[str, ...]:
    return (*before, *(x for x in new if x not in before))


@dataclass(frozen=True)
class Actions:
    set: dict[str, Any] = field(default_factory=dict)  # Decision fields a rule sets outright
    tags: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)
    extract: tuple[Extract, ...] = ()
    notify: tuple[str, ...] = ()
    split: Split | None = None
    spam: bool = False

    def apply(self, decision: Decision, view: View) -> tuple[Decision, list[str]]:
        """The decision after these actions, and what they did, one line each."""
        changes = dict(self.set)
        done = [
            f"{name}={str(value).lower() if isinstance(value, bool) else value}"
            for name, value in self.set.items()
        ]
        if self.tags:
            changes["tags"] = _added(decision.tags, self.tags)
            done.append(f"tags+={','.join(self.tags)}")
        if self.fields or self.extract:
            fields = changes["fields"] = {**decision.fields, **self.fields}
            done += [f"fields.{k}={v}" for k, v in self.fields.items()]
            for ex in self.extract:
                for where in ex.where:
                    m = ex.regex.search(view.text(where))
                    if m is None:
                        continue
                    for k, v in m.groupdict().items():
                        if v is not None and v.strip():
                            fields[k] = v.strip()
                            done.append(f"fields.{k}={v.strip()} (from {where})")
                    break
                else:
                    done.append(f"extract /{ex.regex.pattern}/: nothing found")
        if self.notify:
            changes["notify"] = _added(decision.notify, self.notify)
            done.append(f"notify+={','.join(self.notify)}")
        if self.split is not None:
            parts = self.split.parts(view.text("new_text") or view.text("body"))
            if parts:
                changes["split_parts"] = parts
            done.append(f"split {self.split.describe()}: {len(parts) or 'no'} parts")
        if self.spam:
            changes["spam"] = True
            done.append("spam: quarantine, no acknowledgement")
        return (replace(decision, **changes) if changes else decision), done

    def describe(self) -> str:
        out = [f"{k}={v}" for k, v in self.set.items()]
        out += [f"tags+={','.join(self.tags)}"] if self.tags else []
        out += [f"fields.{k}={v}" for k, v in self.fields.items()]
        out += [f"extract {','.join(e.regex.groupindex)}" for e in self.extract]
        out += [f"notify+={','.join(self.notify)}"] if self.notify else []
        out += [f"split {self.split.describe()}"] if self.split else []
        out += ["spam"] if self.spam else []
        return "; ".join(out) or "nothing"


# --- the parsers -----------------------------------------------------------------------


def parse_then(r: Reader, v: Any, parent: Any) -> tuple[Actions, bool]:
    """The actions of a rule's `then`, and whether it says `stop: true`."""
    if not isinstance(v, dict) or not v:
        r.bad(parent, "then", "then takes actions, e.g. `priority: P1`")
        return Actions(), False
    sets: dict[str, Any] = {}
    kw: dict[str, Any] = {}
    stop = False
    for k, val in v.items():
        k = str(k)
        if k in ("queue", "assignee", "group", "template", "sla"):
            got = strings(r, val, v, k)
            if got is not None and len(got) != 1:
                r.bad(v, k, f"{k} takes one value")
            elif got is not None:
                sets["sla_policy" if k == "sla" else k] = got[0]
        elif k == "priority":
            p = PRIORITY_NAMES.get(str(val).strip().lower()) if isinstance(val, str) else None
            if p is None:
                r.bad(v, k, f"unknown priority {val!r} ({PRIORITY_HELP})")
            sets[k] = p
        elif k == "tier":
            if isinstance(val, bool) or not isinstance(val, int) or not 1 <= val <= 3:
                r.bad(v, k, f"tier must be 1, 2 or 3, not {val!r}")
            sets[k] = val
        elif k in ("ack", "spam", "stop"):
            if not isinstance(val, bool):
                r.bad(v, k, f"{k} must be true or false, not {val!r}")
            elif k == "ack":
                sets[k] = val
            elif k == "spam":
                kw["spam"] = val
            else:
                stop = val
        elif k in ("tags", "notify"):
            got = strings(r, val, v, k)
            kw[k] = tuple(dict.fromkeys(got or ()))
        elif k == "fields":
            if not isinstance(val, dict) or not val:
                r.bad(v, k, "fields takes a mapping of name: value")
            else:
                kw[k] = {str(a): str(b) for a, b in val.items()}
        elif k == "extract":
            kw[k] = _parse_extract(r, val, v)
        elif k == "split":
            kw[k] = _parse_split(r, val, v)
        else:
            r.unknown(v, k, "action")
    return Actions(set=sets, **kw), stop


def _parse_extract(r: Reader, val: Any, parent: Any) -> tuple[Extract, ...]:
    """A regex with named groups, or a list of them; `{regex:, in: subject|body|new_text}`."""
    out = []
    for i, item in enumerate(val if isinstance(val, list) else [val]):
        node, at = (val, i) if isinstance(val, list) else (parent, "extract")
        where: Any = ("subject", "body")
        if isinstance(item, dict):
            for x in item:
                if x not in ("regex", "in"):
                    r.bad(item, x, f"unknown extract key {x!r} (regex or in)")
            if "in" in item:
                where = strings(r, item["in"], item, "in") or ()
                for w in where:
                    if w not in TEXT_FIELDS:
                        r.bad(
                            item,
                            "in",
                            f"extract in {w!r}: use subject, body or new_text{suggest(w, TEXT_FIELDS)}",
                        )
            node, at, item = item, "regex", item.get("regex")
        if not isinstance(item, str) or not item:
            r.bad(node, at, "extract takes a regex with named groups", key="extract")
            continue
        try:
            rx = re.compile(item, re.IGNORECASE | re.MULTILINE)
        except re.error as exc:
            r.bad(node, at, f"bad regex {item!r}: {exc.msg} at position {exc.pos}", key="regex")
            continue
        if not rx.groupindex:
            r.bad(
                node,
                at,
                f"regex {item!r} names no field: use a named group such as (?P<account>\\d+)",
                key="regex",
            )
            continue
        out.append(Extract(rx, tuple(where)))
    return tuple(out)


def _parse_split(r: Reader, val: Any, parent: Any) -> Split | None:
    if val == "numbered":
        return Split()
    if isinstance(val, dict) and set(val) == {"separator"} and isinstance(val["separator"], str):
        try:
            return Split(re.compile(val["separator"], re.MULTILINE))
        except re.error as exc:
            r.bad(
                val,
                "separator",
                f"bad regex {val['separator']!r}: {exc.msg} at position {exc.pos}",
                key="regex",
                value=True,
            )
            return None
    r.bad(parent, "split", "split is `numbered` or `{separator: REGEX}`")
    return None
