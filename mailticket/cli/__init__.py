"""The `mailticket` command tree (click): options in, a library call, a table or JSON out.

`base` holds the `main` group and what every command shares (`Ctx`, `--json`, tables);
the command modules register on `main` when imported here: `setup` (init, run), `mail`
(ingest, quarantine, inbox, outbox), `tickets` (ticket ...), `admin` (agents, rules), `timed` (tick, sla),
`oauth` (oauth login, oauth status: OAuth2 sign-in for the mailboxes).
The console script and `python -m mailticket.cli` both call `main`.
"""

from . import admin, mail, oauth, report, setup, tickets, timed  # noqa: F401 - importing registers their commands
from .base import Ctx, TryLater, emit_json, json_option, main, table
from .setup import SAMPLE_RULES

__all__ = ["SAMPLE_RULES", "Ctx", "TryLater", "emit_json", "json_option", "main", "table"]
