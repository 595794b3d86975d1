"""Decide from compiled rules: actions, the decision, the rules that hit, the rule set.

Where it sits: `rules.py` reads and validates `rules/*.yaml` into the `Rule`s below
(conditions from `rules_match.py`); the pipeline's route step calls
`RuleSet.evaluate(parsed, context)` for every message and gets an `Evaluation`: the
`Decision` (queue, priority, tier, ...) and the `Hit`s, one per rule that matched, with
the conditions that matched and the text they matched, so that "why is this ticket P1?"
always has an answer (the pipeline records each hit as an event).

Rules run in order; a later rule overrides what an earlier one set (tags, fields and
notifications add up); `stop` and `spam` end the evaluation.  Conditions on the ticket's
priority and queue see what earlier rules decided.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .rules_match import Condition, Index, View

if TYPE_CHECKING:
    from .parsers import ParsedMessage
    from .sla import BusinessHours

PRIORITIES = {
    "p1": "P1", "business-failure": "P1", "business failure": "P1",
    "p2": "P2", "critical": "P2",
    "p3": "P3", "normal": "P3",
    "p4": "P4", "planned": "P4",
}
STATUSES = ("new", "open", "pending", "on-hold", "resolved", "closed")
SOURCES = ("smtp", "lmtp", "imap", "ingest")


@dataclass(frozen=True, kw_only=True)
class RuleContext:
    """What the rules may know beyond the message itself."""

    now: datetime  # aware; from the injected clock, for business hours
    is_reply: bool = False
    ticket_status: str | None = None  # None for a new ticket
    ticket_priority: str | None = None
    ticket_queue: str | None = None
    source: str = "smtp"  # smtp | lmtp | imap | ingest
    mailbox: str | None = None  # the IMAP mailbox or SMTP recipient it came through
    queue: str | None = None  # that mailbox's default queue
    business_hours: BusinessHours | None = None  # None: always open


@dataclass(frozen=True)
class Decision:
    """What the rules decided; None (or empty) where no rule said anything."""

    queue: str | None = None
    priority: str | None = None
    tier: int | None = None
    assignee: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)
    template: str | None = None  # acknowledgement template kind, e.g. "ack-billing"
    ack: bool = True
    notify: tuple[str, ...] = ()  # addresses, or group names (no "@") for the caller to resolve
    split_parts: tuple[str, ...] = ()  # two or more: one ticket per part
    spam: bool = False


@dataclass
class Hit:
    """One rule that matched: where it is, why it matched and what it did."""

    rule: str
    file: str
    line: int
    matched: list[tuple[str, str]]  # (condition, the text it matched)
    actions: list[str]
    changed: bool = True  # False when its actions left the decision as it was


    def as_event(self) -> dict[str, Any]:
        return {
            "rule": self.rule, "file": self.file, "line": self.line,
            "matched": [{"condition": c, "text": t} for c, t in self.matched],
            "actions": list(self.actions),
        }


@dataclass
class Evaluation:
    decision: Decision
    hits: list[Hit]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self.decision)
        d["tags"], d["notify"], d["split_parts"] = list(d["tags"]), list(d["notify"]), list(
            d["split_parts"])
        return {"decision": d, "hits": [h.as_event() for h in self.hits]}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.as_dict(), indent=indent, ensure_ascii=False)

    def explain(self) -> str:
        """Human-readable: each rule that matched, why, what it did; then the result."""
        lines = []
        for h in self.hits:
            lines.append(f"{h.file}:{h.line}: rule {h.rule!r}")
            lines += [f"    because {c}" + (f": {t!r}" if t else "") for c, t in h.matched]
            lines += [f"    -> {a}" for a in h.actions]
        if not self.hits:
            lines.append("no rule matched")
        d = self.decision
        for name in ("queue", "priority", "tier", "assignee", "group", "template"):
            if getattr(d, name) is not None:
                lines.append(f"{name}: {getattr(d, name)}")
        lines += [f"tags: {', '.join(d.tags)}"] if d.tags else []
        lines += [f"field {k}: {v}" for k, v in d.fields.items()]
        lines += [f"notify: {', '.join(d.notify)}"] if d.notify else []
        lines += [f"split into {len(d.split_parts)} tickets"] if d.split_parts else []
        lines += ["acknowledgement: no"] if not d.ack else []
        lines += ["SPAM: quarantined"] if d.spam else []
        return "\n".join(lines)


# --- actions ---------------------------------------------------------------------------


@dataclass
class _Draft:
    """The decision while the rules run (mutable); `freeze` makes the `Decision`."""

    queue: str | None = None
    priority: str | None = None
    tier: int | None = None
    assignee: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    template: str | None = None
    ack: bool = True
    notify: list[str] = field(default_factory=list)
    split_parts: tuple[str, ...] = ()
    spam: bool = False

    def freeze(self) -> Decision:
        return Decision(
            queue=self.queue, priority=self.priority, tier=self.tier, assignee=self.assignee,
            group=self.group, tags=tuple(self.tags), fields=dict(self.fields),
            template=self.template, ack=self.ack and not self.spam, notify=tuple(self.notify),
            split_parts=self.split_parts, spam=self.spam,
        )


SCALARS = ("queue", "priority", "tier", "assignee", "group", "template", "ack")

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
        lines = text[m.end():end].split("\n")
        keep = [lines[0]]
        for j, line in enumerate(lines[1:], 1):
            if not line.strip():
                rest = [x for x in lines[j + 1:] if x.strip()]
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


@dataclass(frozen=True)
class Actions:
    set: dict[str, Any] = field(default_factory=dict)  # SCALARS present in the rule
    tags: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)
    extract: tuple[Extract, ...] = ()
    notify: tuple[str, ...] = ()
    split: Split | None = None
    spam: bool = False

    def apply(self, draft: _Draft, view: View) -> list[str]:
        done = []
        for name, value in self.set.items():
            setattr(draft, name, value)
            done.append(f"{name}={str(value).lower() if isinstance(value, bool) else value}")
        for tag in self.tags:
            if tag not in draft.tags:
                draft.tags.append(tag)
        done += [f"tags+={','.join(self.tags)}"] if self.tags else []
        for k, v in self.fields.items():
            draft.fields[k] = v
            done.append(f"fields.{k}={v}")
        for ex in self.extract:
            for where in ex.where:
                m = ex.regex.search(view.text(where))
                if m is None:
                    continue
                for k, v in m.groupdict().items():
                    if v is not None and v.strip():
                        draft.fields[k] = v.strip()
                        done.append(f"fields.{k}={v.strip()} (from {where})")
                break
            else:
                done.append(f"extract /{ex.regex.pattern}/: nothing found")
        for to in self.notify:
            if to not in draft.notify:
                draft.notify.append(to)
        done += [f"notify+={','.join(self.notify)}"] if self.notify else []
        if self.split is not None:
            parts = self.split.parts(view.text("new_text") or view.text("body"))
            if parts:
                draft.split_parts = parts
            done.append(f"split {self.split.describe()}: {len(parts) or 'no'} parts")
        if self.spam:
            draft.spam = True
            done.append("spam: quarantine, no acknowledgement")
        return done

    def describe(self) -> str:
        out = [f"{k}={v}" for k, v in self.set.items()]
        out += [f"tags+={','.join(self.tags)}"] if self.tags else []
        out += [f"fields.{k}={v}" for k, v in self.fields.items()]
        out += [f"extract {','.join(e.regex.groupindex)}" for e in self.extract]
        out += [f"notify+={','.join(self.notify)}"] if self.notify else []
        out += [f"split {self.split.describe()}"] if self.split else []
        out += ["spam"] if self.spam else []
        return "; ".join(out) or "nothing"


# --- rules -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    file: str
    line: int
    scope: frozenset[str]  # {"new"}, {"reply"} or both
    when: Condition | None  # None: always
    then: Actions
    stop: bool = False
    description: str = ""


class RuleSet:
    """The rules in evaluation order: files by name, rules in file order."""

    def __init__(self, rules: list[Rule] | tuple[Rule, ...] = (), path: str | None = None,
                 files: tuple[str, ...] = (), *, indexed: bool = True) -> None:
        """`indexed=False` tests every rule on every message: for tests and benchmarks."""
        self.rules = tuple(rules)
        self.path = path
        self.files = files
        self._scopes: dict[str, tuple[tuple[Rule, ...], Index]] = {}
        for scope in ("new", "reply"):
            in_scope = tuple(r for r in self.rules if scope in r.scope)
            self._scopes[scope] = (in_scope, Index([r.when for r in in_scope], enabled=indexed))

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self):
        return iter(self.rules)

    def evaluate(self, parsed: ParsedMessage, context: RuleContext) -> Evaluation:
        draft = _Draft()
        view = View(parsed, context, draft)
        hits = []
        rules, index = self._scopes["reply" if context.is_reply else "new"]
        for i in index.candidates(view):  # in order; the others cannot match
            rule = rules[i]
            matched = [] if rule.when is None else rule.when.test(view)
            if matched is None:
                continue
            before = repr(draft)
            actions = rule.then.apply(draft, view)
            hits.append(Hit(rule.name, rule.file, rule.line, matched, actions, repr(draft) != before))
            if rule.stop or draft.spam:  # spam ends evaluation: nothing else matters
                break
        return Evaluation(draft.freeze(), hits)

    def describe(self) -> list[dict[str, Any]]:
        """The rules in evaluation order, for `mailticket rules list`."""
        return [
            {
                "order": i, "name": r.name, "file": r.file, "line": r.line,
                "applies_to": "both" if len(r.scope) == 2 else next(iter(r.scope)),
                "when": r.when.describe() if r.when is not None else "always",
                "then": r.then.describe(), "stop": r.stop, "description": r.description,
            }
            for i, r in enumerate(self.rules, 1)
        ]
