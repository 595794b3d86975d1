"""Which daemon polls which IMAP mailbox: a lease on the mailbox's `ImapState` row.

With several daemons on one PostgreSQL database (docs/deploy.md, "Several daemons"),
every daemon runs a poller for every `[[imap]]` mailbox, and one at a time reads it.
A poller takes the mailbox's lease (`take`) before it connects and renews it while
it runs; one that cannot (another daemon holds it) waits and tries again.  A daemon
that dies (SIGKILL, a lost machine, a cut network) stops renewing, and after
`[daemon] lease_seconds` another daemon takes the mailbox over; one that stops
cleanly gives its leases back (`release`) so that another takes them at once.

Why a lease row rather than a PostgreSQL advisory lock: a session lock lives on a
connection that may die on its own (a restarted server, a network blip) while the
poller goes on, and nothing ties it to the commits.  The lease is *fenced*: the
poller's commit (its messages and the mailbox's last UID) only counts where
`holder` is still this daemon (`ImapPoller._save_state`), so a daemon that stalled
past its lease and wakes up after another took over cannot move the mailbox's state
under it; its batch rolls back and nothing is flagged.  The same code serves SQLite,
where one daemon holds every lease.

Times come from the database server on PostgreSQL (`CURRENT_TIMESTAMP`), so daemons
on machines whose clocks disagree still agree on when a lease ran out.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from .clock import Clock
from .db import is_sqlite, writing
from .errors import MailticketError
from .models import ImapState, database_proxy


class LeaseLost(MailticketError):
    """Another daemon holds the mailbox now: what this one was storing is undone."""


def daemon_name(configured: str) -> str:
    """`[daemon] name`, or HOST:PID: how leases and /healthz name this daemon."""
    return configured or f"{socket.gethostname()}:{os.getpid()}"


def now(clock: Clock) -> datetime:
    """The time leases are measured in: the database server's on PostgreSQL."""
    if is_sqlite():
        return clock.now()
    value = database_proxy.execute_sql("SELECT CURRENT_TIMESTAMP").fetchone()[0]
    return value


@dataclass(frozen=True)
class Lease:
    mailbox: str
    holder: str | None
    until: datetime | None


def take(mailbox: str, holder: str, seconds: int, clock: Clock) -> bool:
    """Take or renew the lease on `mailbox` for `holder`; False when another daemon holds
    it and its lease has not run out."""
    with writing(), database_proxy.atomic():
        at = now(clock)
        until = at + timedelta(seconds=seconds)
        free = ImapState.holder.is_null() | (ImapState.holder == holder) | (ImapState.lease_until < at)
        got = (
            ImapState.update(holder=holder, lease_until=until)
            .where((ImapState.mailbox == mailbox) & free)
            .execute()
        )
        if got:
            return True
        # A mailbox seen for the first time has no row yet: whoever inserts it holds it.
        ImapState.insert(
            mailbox=mailbox, uidvalidity=None, last_uid=0, holder=holder, lease_until=until
        ).on_conflict_ignore().execute()
        return ImapState.get(ImapState.mailbox == mailbox).holder == holder


def release(mailbox: str, holder: str) -> None:
    """Give the lease back (a clean stop): another daemon takes the mailbox at once."""
    with writing():
        ImapState.update(holder=None, lease_until=None).where(
            (ImapState.mailbox == mailbox) & (ImapState.holder == holder)
        ).execute()


def release_all() -> int:
    """Every lease given back (a daemon alone on its database, at start); how many."""
    with writing():
        held = ImapState.holder.is_null(False)
        return ImapState.update(holder=None, lease_until=None).where(held).execute()


def leases(mailboxes: list[str]) -> dict[str, Lease]:
    """The leases of these mailboxes as the database has them (for /healthz)."""
    rows = ImapState.select(ImapState.mailbox, ImapState.holder, ImapState.lease_until).where(
        ImapState.mailbox.in_(mailboxes)
    )
    return {r.mailbox: Lease(r.mailbox, r.holder, r.lease_until) for r in rows}
