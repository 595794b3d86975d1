"""What the rules decide: the `Decision`, the `Hit`s that made it, the `Evaluation`.

Part of the rules engine: `actions.py` builds a new `Decision` from the one before for
each rule that matches, `evaluate.py` returns the last one with the hits in an
`Evaluation`; the pipeline applies `Decision.ticket_changes(ticket)` to the ticket and
records each hit as an event, so that "why is this ticket P1?" always has an answer;
`mailticket rules test` prints `Evaluation.explain()` or `to_json()`.

The decision's fields are declared once, below, each with what it does to a ticket and
how `rules test` shows it; everything else iterates over `dataclasses.fields(Decision)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# What a field does to the ticket (`Decision.ticket_changes`); None: nothing.
SET = "set"  # replaces the ticket's value
ADD = "add"  # added to the ticket's list
MERGE = "merge"  # merged into the ticket's mapping

Show = Callable[[str, Any], list[str]]


def _plain(name: str, value: Any) -> list[str]:
    return [f"{name}: {value}"] if value is not None else []


def _joined(name: str, value: tuple[str, ...]) -> list[str]:
    return [f"{name}: {', '.join(value)}"] if value else []


def _field(default: Any, *, ticket: str | None = None, show: Show = _plain) -> Any:
    """A decision field: its default (a type makes a fresh one), ticket effect, display."""
    kw: dict[str, Any] = {"default_factory": default} if callable(default) else {"default": default}
    return field(**kw, metadata={"ticket": ticket, "show": show})


@dataclass(frozen=True)
class Decision:
    """What the rules decided; None (or empty) where no rule said anything."""

    queue: str | None = _field(None, ticket=SET)
    priority: str | None = _field(None, ticket=SET)
    tier: int | None = _field(None, ticket=SET)
    assignee: str | None = _field(None, ticket=SET)
    group: str | None = _field(None, ticket=SET)
    sla_policy: str | None = _field(None, ticket=SET, show=lambda _, v: [f"sla: {v}"] if v else [])
    template: str | None = _field(None)  # acknowledgement template kind, e.g. "ack-billing"
    tags: tuple[str, ...] = _field((), ticket=ADD, show=_joined)
    fields: dict[str, str] = _field(
        dict, ticket=MERGE, show=lambda _, v: [f"field {k}: {x}" for k, x in v.items()]
    )
    # Addresses, or group names (no "@") for the caller to resolve.
    notify: tuple[str, ...] = _field((), show=_joined)
    split_parts: tuple[str, ...] = _field(  # two or more: one ticket per part
        (), show=lambda _, v: [f"split into {len(v)} tickets"] if v else []
    )
    ack: bool = _field(True, show=lambda _, v: [] if v else ["acknowledgement: no"])
    spam: bool = _field(False, show=lambda _, v: ["SPAM: quarantined"] if v else [])

    def ticket_changes(self, ticket: Any) -> dict[str, Any]:
        """The columns of `ticket` this decision changes, with their new values.

        Set values replace the ticket's own (when given and different), tags add up
        (sorted), fields merge over the ticket's.
        """
        changes: dict[str, Any] = {}
        for f in fields(self):
            how, value = f.metadata["ticket"], getattr(self, f.name)
            if how is None or value is None or how != SET and not value:
                continue  # no rule said anything
            current = getattr(ticket, f.name)
            if how == SET and value != current:
                changes[f.name] = value
            elif how == ADD:
                merged = sorted(set(current or []) | set(value))
                if merged != (current or []):
                    changes[f.name] = merged
            elif how == MERGE:
                changes[f.name] = {**(current or {}), **value}
        return changes

    def as_dict(self) -> dict[str, Any]:
        """For JSON: lists for the tuples."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def explain(self) -> list[str]:
        """One line per field that says something, for `rules test`."""
        return [line for f in fields(self) for line in f.metadata["show"](f.name, getattr(self, f.name))]


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
            "rule": self.rule,
            "file": self.file,
            "line": self.line,
            "matched": [{"condition": c, "text": t} for c, t in self.matched],
            "actions": list(self.actions),
        }


@dataclass
class Evaluation:
    decision: Decision
    hits: list[Hit]

    def as_dict(self) -> dict[str, Any]:
        return {"decision": self.decision.as_dict(), "hits": [h.as_event() for h in self.hits]}

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
        return "\n".join(lines + self.decision.explain())
