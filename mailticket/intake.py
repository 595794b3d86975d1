"""The durable inbox: store a message's raw bytes first, process it after.

Every way in (SMTP, LMTP, IMAP, `mailticket ingest`) calls `store_many` (the
messages at hand, one commit; it raises StorageError when they could not be
committed) and only then answers 250, flags the IMAP message or exits 0.  The
`Worker` takes pending rows in order and runs the pipeline on each.

For speed the worker commits a batch of messages in one transaction, each inside
a savepoint of its own: a message whose pipeline raises is rolled back to its
savepoint alone and parked in quarantine with the step and the reason, and the
rest of the batch commits with it.  An error of the database rather than of the
message (unavailable, locked, a lock timeout, the connection lost: `TRANSIENT_ERRORS`),
in a step or in the commit, quarantines nothing: the whole batch rolls back, every
row of it is still `pending`, and `run_pending` raises StorageError for the caller
to wait and try again.  Nothing is kept only in memory.  `requeue` puts quarantined
rows back to pending.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import models
from .db import TRANSIENT_ERRORS, DatabaseError, writing
from .errors import StorageError
from .models import Inbox, SqliteDatabase, database_proxy
from .pipeline import Pipeline, Quarantine, Result, StepFailed

log = logging.getLogger(__name__)

BATCH = 100
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
                rows = [dict(received_at=now, source=i.source, mailbox=i.mailbox, queue=i.queue,
                             raw=i.raw, state="pending", silent=i.silent) for i in items]
                # A few statements, not one per message (a round trip each on PostgreSQL).
                return [key for start in range(0, len(rows), STORE_ROWS)
                        for key in models.insert_many(Inbox, rows[start:start + STORE_ROWS],
                                                      keys=True)]
        except TRANSIENT_ERRORS as exc:
            if again:
                again = False
                continue
            raise StorageError(f"could not store the message: {_line(exc)}") from exc
        except DatabaseError as exc:
            raise StorageError(f"could not store the message: {_line(exc)}") from exc


def _line(exc: BaseException) -> str:
    """A database error on one line (PostgreSQL's span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class Worker:
    """Runs the pipeline over pending inbox rows, oldest first."""

    def __init__(self, pipeline: Pipeline, batch: int = BATCH, most: int | None = None) -> None:
        self.pipeline = pipeline
        self.batch = batch  # the first batch of each pass: what a burst of new mail waits for
        # While a backlog lasts (every batch full) each batch doubles, up to `most`: one
        # transaction for many rows drains a backlog faster, whereas fresh mail wants the
        # small first batch (it holds the SQLite writer lock the edges wait for).
        self.most = most or batch

    def run_pending(self, ids: list[int] | None = None,
                    on_result: Callable[[Result], None] | None = None) -> list[Result]:
        """Process pending rows (only `ids`, when given) until none is left.

        Raises StorageError when the database failed (the rows of the failed batch stay
        pending; those of earlier batches are committed): wait, and call it again.
        """
        results: list[Result] = []
        last_id, full, size = 0, True, self.batch
        while full:  # a batch that was not full took every row that was pending
            batch_results, next_id, full = self._run_batch(ids, last_id, size)
            if next_id == last_id:
                break
            last_id, size = next_id, min(size * 2, max(self.most, self.batch))
            results.extend(batch_results)
            for r in batch_results:  # committed: the story of each message, one line
                log.info("inbox %d %s: %s%s%s", r.inbox_id, r.message_id or "-", r.outcome,
                         f" ticket #{r.ticket} (queue {r.queue}, {r.priority})" if r.ticket else "",
                         f": {r.reason}" if r.reason else "")
            if on_result:
                for r in batch_results:
                    on_result(r)
        return results

    def _pending(self, ids: list[int] | None, after: int, size: int):
        query = Inbox.select().where((Inbox.state == "pending") & (Inbox.id > after))
        if ids is not None:
            query = query.where(Inbox.id.in_(ids))
        return query.order_by(Inbox.id).limit(size)

    def _run_batch(self, ids: list[int] | None, after: int, size: int
                   ) -> tuple[list[Result], int, bool]:
        """Take the next `size` pending rows and process them in one transaction.

        Returns the results, the last id taken, and whether the batch was full."""
        try:
            return self._process_batch(ids, after, size)
        except TRANSIENT_ERRORS as exc:
            raise StorageError(f"the database failed; the inbox rows stay pending: {_line(exc)}"
                               ) from exc

    def _process_batch(self, ids: list[int] | None, after: int, size: int
                       ) -> tuple[list[Result], int, bool]:
        db = database_proxy
        pipeline = self.pipeline  # one pipeline per batch, even if a reload swaps it meanwhile
        out: list[Result] = []
        sqlite = isinstance(db.obj, SqliteDatabase)
        parsed: dict[int, object] = {}
        if sqlite:
            # SQLite has one write lock for the whole database, and the edges need it for
            # every message they accept: parse (the costliest step, pure CPU) before
            # taking it, so the lock is held for the database work alone.
            rows = list(self._pending(ids, after, size))
            if not rows:
                return out, after, False
            parsed = pipeline.parse_ahead(rows)
        # SQLite: take the write lock up front.  A transaction that reads first and writes
        # later cannot wait for a lock another connection took meanwhile (in WAL mode it
        # fails at once with "database is locked"), whatever the busy timeout.
        with writing(), (db.atomic("IMMEDIATE") if sqlite else db.atomic()):
            if sqlite:
                # Another process (an `ingest` beside the daemon) may have taken some.
                still = models.still_pending([r.id for r in rows])
                todo = [r for r in rows if r.id in still]
            else:
                # Several daemons on one PostgreSQL database: each takes rows no other
                # holds, so a message is processed once.
                rows = todo = list(self._pending(ids, after, size).for_update("FOR UPDATE SKIP LOCKED"))
            for row in todo:
                # A savepoint: a failure undoes this message only.  It is never released:
                # the commit releases them all, and a RELEASE would cost PostgreSQL one
                # more round trip per message.
                point = f'"m{row.id}"'
                db.execute_sql(f"SAVEPOINT {point}")
                try:
                    out.append(pipeline.run(row, parsed.get(row.id)))
                except StepFailed as failed:
                    if isinstance(failed.cause, TRANSIENT_ERRORS):
                        raise failed.cause from None  # not this message's fault: undo the batch
                    db.execute_sql(f"ROLLBACK TO SAVEPOINT {point}")
                    out.append(self._quarantine(row, failed))
        return out, (rows[-1].id if rows else after), len(rows) == size

    def _quarantine(self, row: Inbox, failed: StepFailed) -> Result:
        if isinstance(failed.cause, Quarantine):
            reason = str(failed.cause)
        else:
            reason = f"{type(failed.cause).__name__}: {failed.cause}"
            log.error("inbox %s %s: quarantined at step %s: %s", row.id, row.message_id or "-",
                      failed.step, reason, exc_info=failed.cause)
        Inbox.update(
            state="quarantined", step=failed.step, reason=reason[:2000], outcome="quarantined",
            attempts=Inbox.attempts + 1, processed_at=self.pipeline.env.clock.now(),
        ).where(Inbox.id == row.id).execute()
        return Result(row.id, row.message_id, "quarantined", None, reason, failed.step,
                      source=row.source)


def quarantined(limit: int = 100) -> list[Inbox]:
    return list(
        Inbox.select(Inbox.id, Inbox.received_at, Inbox.source, Inbox.message_id, Inbox.step,
                     Inbox.reason, Inbox.attempts)
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
