"""Rules in order, and their evaluation into a decision plus the rules that hit.

Part of the rules engine: the loader (`load.py`) builds the `Rule`s and the `RuleSet`;
the pipeline's route step (and `mailticket rules test`) calls
`RuleSet.evaluate(parsed, context)` for every message and gets an `Evaluation`
(`decision.py`): the `Decision` and one `Hit` per rule that matched, with the
conditions that matched and the text they matched.

Rules run in order, but only those the literal index (`index.py`) lets through are
tested: the others cannot match.  A later rule overrides what an earlier one set
(`actions.py`); `stop` and `spam` end the evaluation.  Conditions on the ticket's
priority and queue see what earlier rules decided: the `View` carries the decision so
far (`View.so_far`), replaced after each rule that matches.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .actions import Actions
from .decision import Decision, Evaluation, Hit
from .index import Index
from .view import Condition, RuleContext, View

if TYPE_CHECKING:
    from ..parsers import ParsedMessage


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

    def __init__(
        self,
        rules: list[Rule] | tuple[Rule, ...] = (),
        path: str | None = None,
        files: tuple[str, ...] = (),
        *,
        indexed: bool = True,
    ) -> None:
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
        decision = Decision()
        view = View(parsed, context, decision)
        hits = []
        rules, index = self._scopes["reply" if context.is_reply else "new"]
        for i in index.candidates(view):  # in order; the others cannot match
            rule = rules[i]
            matched = [] if rule.when is None else rule.when.test(view)
            if matched is None:
                continue
            after, actions = rule.then.apply(decision, view)
            hits.append(Hit(rule.name, rule.file, rule.line, matched, actions, after != decision))
            view.so_far = decision = after
            if rule.stop or decision.spam:  # spam ends evaluation: nothing else matters
                break
        if decision.spam:  # quarantined: never acknowledged
            decision = replace(decision, ack=False)
        return Evaluation(decision, hits)

    def describe(self) -> list[dict[str, Any]]:
        """The rules in evaluation order, for `mailticket rules list`."""
        return [
            {
                "order": i,
                "name": r.name,
                "file": r.file,
                "line": r.line,
                "applies_to": "both" if len(r.scope) == 2 else next(iter(r.scope)),
                "when": r.when.describe() if r.when is not None else "always",
                "then": r.then.describe(),
                "stop": r.stop,
                "description": r.description,
            }
            for i, r in enumerate(self.rules, 1)
        ]
