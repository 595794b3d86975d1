"""Wire the parts together: configuration -> database -> rules, templates -> pipeline -> worker.

The CLI and the daemon both start here, so there is one way to build a working
mailticket from a config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import config as config_mod
from .clock import SystemClock
from .config import Config
from .db import open_database
from .intake import Worker
from .notify import Templates
from .pipeline import Env, Pipeline
from .rules import RuleSet, load_rules


@dataclass
class App:
    config: Config
    db: object
    clock: object
    rules: RuleSet
    pipeline: Pipeline
    worker: Worker

    def close(self) -> None:
        self.db.close()


def load_ruleset(config: Config) -> RuleSet:
    """The rules of `[paths] rules`; an absent folder means no rules (raise on broken ones)."""
    return load_rules(Path(config.paths.rules))


def open_app(config: Config, clock=None, *, batch: int | None = None) -> App:
    clock = clock or SystemClock()
    db = open_database(config.database.url)
    rules = load_ruleset(config)
    env = Env(config, rules, clock=clock, templates=Templates(config.paths.templates))
    pipeline = Pipeline(env)
    worker = Worker(pipeline, **({"batch": batch} if batch else {}))
    return App(config, db, clock, rules, pipeline, worker)


def load_config(path: str | None) -> Config:
    return config_mod.load(path)
