"""The rules engine: `rules/*.yaml` in, a decision and the rules that hit out.

Where it sits: the daemon, the CLI and `app.py` call `load_rules` / `check_rules`; the
pipeline's route step calls `RuleSet.evaluate(parsed, RuleContext(...))` and applies the
`Decision` it returns.  What the rest of the code uses is re-exported here.

The modules, each importing only those above it:

    view.py        RuleContext, the View a condition reads, what a condition is
    reader.py      what the parsers of conditions and actions get from the loader
    text.py        subject / body / new_text / header conditions and their patterns
    addresses.py   from / to / cc / recipient conditions and address lists
    conditions.py  `when`: every condition's parser; all/any/not and the other conditions
    index.py       the literal index that keeps 1,000 rules fast
    decision.py    Decision (its fields declared once), Hit, Evaluation
    actions.py     `then`: every action's parser, and how actions change the decision
    evaluate.py    Rule and RuleSet: the rules in order, evaluated
    load.py        reading and validating the YAML (the only module that imports ruamel.yaml)
"""

from .decision import Decision, Evaluation, Hit
from .evaluate import Rule, RuleSet
from .load import Problem, check_rules, load_rules
from .view import RuleContext

__all__ = [
    "Decision",
    "Evaluation",
    "Hit",
    "Problem",
    "Rule",
    "RuleContext",
    "RuleSet",
    "check_rules",
    "load_rules",
]
