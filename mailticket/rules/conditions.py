"""A rule's `when`: every condition's parser, and the conditions that are not text or addresses.

Part of the rules engine: the loader (`load.py`) calls `parse_when` on each rule's
`when`; the result is one `Condition` (`view.py`), tested by the evaluator
(`evaluate.py`) against a `View` and described by `mailticket rules list`.  Text
conditions live in `text.py`, address conditions in `addresses.py`; the rest are here,
each class beside its parser: all/any/not, language/status/priority/queue/source/
mailbox, reply, business_hours and attachment.

Conditions on the ticket's priority and queue see what earlier rules decided, through
`View.so_far`: they never see the evaluator.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from ..states import PRIORITIES, PRIORITY_NAMES, STATUSES
from .addresses import ADDRESS_FIELDS, parse_addresses
from .reader import PRIORITY_HELP, Reader, strings, suggest
from .text import TEXT_FIELDS, parse_header, parse_text
from .view import SOURCES, Condition, Matched, Trigger, Unindexed, View

VALUE_FIELDS = ("language", "status", "priority", "queue", "source", "mailbox")
CONDITIONS = (
    *ADDRESS_FIELDS,
    *TEXT_FIELDS,
    "header",
    "attachment",
    "language",
    "reply",
    "status",
    "priority",
    "queue",
    "source",
    "mailbox",
    "business_hours",
    "all",
    "any",
    "not",
)


# --- all / any / not, and the `when` they are written in ------------------------------


def _best(triggers: list[Trigger]) -> Trigger:
    """For `all`: any child's trigger will do; the smallest one lets through the fewest."""
    known = [t for t in triggers if t is not None]
    return min(known, key=len) if known else None


def _union(triggers: list[Trigger]) -> Trigger:
    """For `any`: one child must match, so the union; unknown if one child is unknown."""
    if any(t is None for t in triggers):
        return None
    return frozenset().union(*triggers)  # type: ignore[arg-type]


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


class Not(Unindexed):
    def __init__(self, item: Condition) -> None:
        self.item = item

    def test(self, view: View) -> Matched | None:
        return None if self.item.test(view) is not None else [(self.describe(), "")]

    def describe(self) -> str:
        return f"not ({self.item.describe()})"


def _all(items: list[Condition]) -> Condition:
    return items[0] if len(items) == 1 else AllOf(items)


def parse_when(r: Reader, v: Any, parent: Any, at: Any) -> Condition | None:
    """A mapping of conditions (all must hold), or a list of such mappings (all of them)."""
    if isinstance(v, dict):
        return _parse_map(r, v, parent, at)
    if isinstance(v, list) and v:
        items = [parse_when(r, x, v, i) for i, x in enumerate(v)]
        return AllOf(items) if all(items) else None  # type: ignore[arg-type]
    r.bad(
        parent,
        at,
        "expected conditions, e.g. `subject: outage` (or a list of them)",
        key=at if isinstance(at, str) else "when",
    )
    return None


def _parse_map(r: Reader, m: dict, parent: Any, at: Any) -> Condition | None:
    if not m:
        r.bad(parent, at, "no conditions given", key=at if isinstance(at, str) else None)
        return None
    items = [parse_condition(r, str(k), v, m) for k, v in m.items()]
    if not all(items):
        return None
    return _all(items)  # type: ignore[arg-type]


def parse_condition(r: Reader, k: str, v: Any, m: dict) -> Condition | None:
    """The condition `k: v` of the mapping `m`; None when it has problems (reported)."""
    if k in ("all", "any"):
        if not isinstance(v, list) or not v:
            r.bad(m, k, f"'{k}' takes a list of conditions")
            return None
        items = [parse_when(r, x, v, i) for i, x in enumerate(v)]
        if not all(items):
            return None
        return (AllOf if k == "all" else AnyOf)(items)  # type: ignore[arg-type]
    if k == "not":
        item = parse_when(r, v, m, k)
        return Not(item) if item is not None else None
    if k in ADDRESS_FIELDS:
        return parse_addresses(r, k, v, m)
    if k in TEXT_FIELDS:
        return parse_text(r, k, v, m)
    if k == "header":
        headers = parse_header(r, v, m)
        return _all(headers) if headers else None
    if k == "attachment":
        return _parse_attachment(r, v, m)
    if k == "reply":
        if not isinstance(v, bool):
            r.bad(m, k, "reply must be true or false")
            return None
        return ReplyCond(v)
    if k == "business_hours":
        if v not in ("inside", "outside"):
            r.bad(m, k, f"business_hours must be inside or outside, not {v!r}")
            return None
        return HoursCond(v == "inside")
    if k in VALUE_FIELDS:
        return _parse_value(r, k, v, m)
    r.unknown(m, k, "condition")
    return None


# --- language, status, priority, queue, source, mailbox --------------------------------


def _current(view: View, name: str) -> str | None:
    """The ticket's value as decided so far: an earlier rule's, else the ticket's own."""
    ctx, so_far = view.ctx, view.so_far
    if name == "status":
        return ctx.ticket_status
    if name == "priority":
        return so_far.priority or ctx.ticket_priority
    if name == "queue":
        return so_far.queue or ctx.ticket_queue or (None if ctx.is_reply else ctx.queue)
    value = view.msg.language if name == "language" else getattr(ctx, name)
    return value


class ValueCond(Unindexed):
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


def _parse_value(r: Reader, k: str, v: Any, m: dict) -> ValueCond | None:
    values = strings(r, v, m, k)
    if values is None:
        return None
    allowed = {"status": STATUSES, "source": SOURCES}.get(k)
    out: list[str] = []
    for s in values:
        s = PRIORITY_NAMES.get(s.lower(), s) if k == "priority" else s
        if k == "priority" and s not in PRIORITIES:
            r.bad(m, k, f"unknown priority {s!r} ({PRIORITY_HELP})")
        elif allowed and s.lower() not in allowed:
            r.bad(m, k, f"unknown {k} {s!r} (one of {', '.join(allowed)}){suggest(s.lower(), allowed)}")
        out.append(s)
    return ValueCond(k, out)


# --- reply, business_hours -------------------------------------------------------------


class ReplyCond(Unindexed):
    def __init__(self, want: bool) -> None:
        self.want = want

    def test(self, view: View) -> Matched | None:
        return [(self.describe(), "")] if view.ctx.is_reply == self.want else None

    def describe(self) -> str:
        return "is a reply" if self.want else "is not a reply"


class HoursCond(Unindexed):
    def __init__(self, inside: bool) -> None:
        self.inside = inside

    def test(self, view: View) -> Matched | None:
        hours = view.ctx.business_hours
        is_open = True if hours is None else hours.is_open(view.ctx.now)
        return [(self.describe(), view.ctx.now.isoformat())] if is_open == self.inside else None

    def describe(self) -> str:
        return f"{'inside' if self.inside else 'outside'} business hours"


# --- attachment ------------------------------------------------------------------------


class AttachmentCond(Unindexed):
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
        return ("has an attachment" if self.want else "has no attachment") + (f" with {what}" if what else "")


def _parse_attachment(r: Reader, v: Any, m: Any) -> Condition | None:
    """true/false; a name glob or a type (has a slash); a list: any; {name:, type:}."""
    if isinstance(v, bool):
        return AttachmentCond(v, [], [])
    if isinstance(v, dict):
        unknown = [x for x in v if x not in ("name", "type")]
        for x in unknown:
            r.bad(v, x, f"unknown attachment test {x!r} (name or type){suggest(str(x), ('name', 'type'))}")
        names = strings(r, v["name"], v, "name") if "name" in v else []
        types = strings(r, v["type"], v, "type") if "type" in v else []
        if unknown or names is None or types is None or not (names or types):
            if not unknown and names is not None and types is not None:
                r.bad(m, "attachment", "give a name, a type, or both")
            return None
        return AttachmentCond(True, names, types)
    values = strings(r, v, m, "attachment")
    if values is None:
        return None
    items: list[Condition] = [
        AttachmentCond(True, [], [s]) if "/" in s else AttachmentCond(True, [s], []) for s in values
    ]
    return items[0] if len(items) == 1 else AnyOf(items)
