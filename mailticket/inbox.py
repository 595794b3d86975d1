"""The durable inbox: a message's raw bytes are stored first, processed after.

Its place in the flow (docs/architecture.md section 1): every way in (SMTP, LMTP,
IMAP, `mailticket ingest`) calls `store_many` (the messages at hand, one commit; it
raises StorageError when they could not be committed) and only then answers 250,
flags the IMAP message or exits 0.  The rows wait here, `pending`, until the worker
(`worker.InboxWorker`) runs the pipeline on them; nothing is kept only in memory.
A message the pipeline could not process waits here too, `quarantined`, with the
step and the reason: `quarantined` and `get` show them, `requeue` puts them back to
pending.

The edges import this module and not the worker: storing a message needs the
database, not the pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from . import models
from .db import TRANSIENT_ERRORS, DatabaseError, writing
from .errors import StorageError
from .models import Inbox, SqliteDatabase, database_proxy

STORE_ROWS = 100  # inbox rows per INSERT (SQLite allows 32,766 parameters in a statement)


@dataclass(frozen=True)
class Incoming:
    raw: bytes
    source: str  # smtp, lmtp, imap, ingest
    mailbox: str | None = None
    queue: str | None = None
    silent: bool = False  # historic import: record, never acknowledge


def store_many(items: Iterable[Incoming], *, now) -> list[int]:
    """Commit messages in one transaction (all or none) and return their ids.

    Raises StorageError when they could not be committed: the caller must then not
    accept them (SMTP 451, IMAP leaves them unflagged, ingest exits 75).
    """
    db = database_proxy
    items = list(items)
    # The first store after an outage meets the connection the server closed (`writing`
    # drops it): once more on a new connection before the caller answers 451.  Not
    # inside the caller's transaction (IMAP), nor on SQLite, whose connection is never
    # lost: there a second try would only double a lock's wait.
    again = not isinstance(db.obj, SqliteDatabase) and not db.in_transaction()
    while True:
        try:
            with writing(), db.atomic():
                rows = [
                    dict(
                        received_at=now,
                        source=i.source,
                        mailbox=i.mailbox,
                        queue=i.queue,
                        raw=i.raw,
                        state="pending",
                        silent=i.silent,
                    )
                    for i in items
                ]
                # A few statements, not one per message (a round trip each on PostgreSQL).
                return [
                    key
                    for start in range(0, len(rows), STORE_ROWS)
                    for key in models.insert_many(Inbox, rows[start : start + STORE_ROWS], keys=True)
                ]
        except TRANSIENT_ERRORS as exc:
            if again:
                again = False
                continue
            raise StorageError(f"could not store the message: {one_line(exc)}") from exc
        except DatabaseError as exc:
            raise StorageError(f"could not store the message: {one_line(exc)}") from exc


def one_line(exc: BaseException) -> str:
    """A database error on one line (PostgreSQL's span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def quarantined(limit: int = 100) -> list[Inbox]:
    return list(
        Inbox.select(
            Inbox.id,
            Inbox.received_at,
            Inbox.source,
            Inbox.message_id,
            Inbox.step,
            Inbox.reason,
            Inbox.attempts,
        )
        .where(Inbox.state == "quarantined")
        .order_by(Inbox.id)
        .limit(limit)
    )


def get(inbox_id: int) -> Inbox | None:
    return Inbox.get_or_none(Inbox.id == inbox_id)


def requeue(ids: list[int] | None) -> list[int]:
    """Put quarantined rows (all, or `ids`) back to pending; return the ids moved."""
    query = Inbox.select(Inbox.id).where(Inbox.state == "quarantined")
    if ids:
        query = query.where(Inbox.id.in_(ids))
    moved = [r.id for r in query]
    if moved:
        Inbox.update(state="pending").where(Inbox.id.in_(moved)).execute()
    return moved
