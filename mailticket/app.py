"""Wire the parts together: configuration -> database -> rules, templates -> pipeline -> worker.

The CLI and the daemon both start here, so there is one way to build a working
mailticket from a config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import config as config_mod
from .clock import Clock, SystemClock
from .config import Config
from .db import Database, open_database
from .errors import RulesError
from .notify import Templates
from .pipeline import Env, Pipeline
from .rules import Problem, RuleSet, load_rules
from .worker import InboxWorker


@dataclass
class App:
    config: Config
    db: Database
    clock: Clock
    rules: RuleSet | None  # None when opened for reading only
    pipeline: Pipeline | None
    worker: InboxWorker | None

    def close(self) -> None:
        self.db.close()


def load_ruleset(config: Config) -> RuleSet:
    """The rules of `[paths] rules`; an absent folder means no rules.

    Raises RulesError on broken rules, and on a rule whose `template:` does not exist,
    so the daemon refuses to start (or keeps the last good set on a reload).
    """
    ruleset = load_rules(Path(config.paths.rules))
    problems = missing_templates(ruleset, config)
    if problems:
        raise RulesError(problems)
    return ruleset


def missing_templates(ruleset: RuleSet, config: Config) -> list[Problem]:
    """A rule's `template: X` needs `X.<language>.txt.j2` in the site or shipped templates."""
    have = set(Templates(config.paths.templates).names())
    language = config.helpdesk.language
    return [
        Problem(
            rule.file,
            rule.line,
            "template",
            f"no template {name}.{language}.txt.j2 (in [paths] templates or the shipped ones)",
            rule.name,
        )
        for rule in ruleset.rules
        if (name := rule.then.set.get("template")) and f"{name}.{language}.txt.j2" not in have
    ]


def open_app(
    config: Config, clock: Clock | None = None, *, batch: int | None = None, processing: bool = True
) -> App:
    """The database, and with `processing` the rules, templates, pipeline and worker.

    Commands that only read (ticket list, outbox list, ...) open without processing, so
    that a broken rule file never stops an admin from looking at tickets.
    """
    clock = clock or SystemClock()
    db = open_database(config.database.url)
    if not processing:
        return App(config, db, clock, None, None, None)
    try:
        rules = load_ruleset(config)
    except Exception:
        db.close()
        raise
    env = Env(config, rules, clock=clock, templates=Templates(config.paths.templates))
    pipeline = Pipeline(env)
    worker = InboxWorker(pipeline, **({"batch": batch} if batch else {}))
    return App(config, db, clock, rules, pipeline, worker)


def load_config(path: str | None) -> Config:
    return config_mod.load(path)
