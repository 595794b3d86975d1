"""The worker: runs the pipeline over pending inbox rows, oldest first.

Its place in the flow (docs/architecture.md section 1): after an edge stored a
message in the durable inbox (`inbox`), `InboxWorker.run_pending` takes the pending
rows in order and runs `pipeline.run` on each.  The daemon's worker process calls
it when an edge wakes it; `mailticket ingest` and `mailticket quarantine retry`
call it on the rows they just stored or requeued.

For speed the worker commits a batch of messages in one transaction, each inside
a savepoint of its own: a message whose pipeline raises is rolled back to its
savepoint alone and parked in quarantine with the step and the reason, and the
rest of the batch commits with it.  An error of the database rather than of the
message (unavailable, locked, a lock timeout, the connection lost: `TRANSIENT_ERRORS`),
in a step or in the commit, quarantines nothing: the whole batch rolls back, every
row of it is still `pending`, and `run_pending` raises StorageError for the caller
to wait and try again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from . import models, notifications
from .db import TRANSIENT_ERRORS, writing
from .errors import StorageError
from .inbox import one_line
from .models import Event, Inbox, SqliteDatabase, database_proxy
from .parsers import ParsedMessage
from .pipeline import Pipeline, Quarantine, Result, StepFailed

log = logging.getLogger(__name__)


class BatchWriteFailed(Exception):
    """The ticket events of a whole batch could not be written in one statement."""


BATCH = 100
PIPELINE_LOCK = 0x6D74_7077  # PostgreSQL advisory lock key of the pipeline's batches ("mtpw")


class InboxWorker:
    """Runs the pipeline over pending inbox rows, oldest first."""

    def __init__(self, pipeline: Pipeline, batch: int = BATCH, most: int | None = None) -> None:
        self.pipeline = pipeline
        self.batch = batch  # the first batch of each pass: what a burst of new mail waits for
        # While a backlog lasts (every batch full) each batch doubles, up to `most`: one
        # transaction for many rows drains a backlog faster, whereas fresh mail wants the
        # small first batch (it holds the SQLite writer lock the edges wait for).
        self.most = most or batch

    def run_pending(
        self, ids: list[int] | None = None, on_result: Callable[[Result], None] | None = None
    ) -> list[Result]:
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
                log.info(
                    "inbox %d %s: %s%s%s",
                    r.inbox_id,
                    r.message_id or "-",
                    r.outcome,
                    f" ticket #{r.ticket} (queue {r.queue}, {r.priority})" if r.ticket else "",
                    f": {r.reason}" if r.reason else "",
                )
            if on_result:
                for r in batch_results:
                    on_result(r)
        return results

    def _pending(self, ids: list[int] | None, after: int, size: int):
        query = Inbox.select().where((Inbox.state == "pending") & (Inbox.id > after))
        if ids is not None:
            query = query.where(Inbox.id.in_(ids))
        return query.order_by(Inbox.id).limit(size)

    def _run_batch(self, ids: list[int] | None, after: int, size: int) -> tuple[list[Result], int, bool]:
        """Take the next `size` pending rows and process them in one transaction.

        Returns the results, the last id taken, and whether the batch was full."""
        try:
            try:
                return self._process_batch(ids, after, size, defer=True)
            except BatchWriteFailed:
                # The batch's events could not be written together: undone; again with
                # each message writing its own, so that a fault stays that message's.
                return self._process_batch(ids, after, size, defer=False)
        except TRANSIENT_ERRORS as exc:
            raise StorageError(f"the database failed; the inbox rows stay pending: {one_line(exc)}") from exc

    def _process_batch(
        self, ids: list[int] | None, after: int, size: int, *, defer: bool
    ) -> tuple[list[Result], int, bool]:
        db = database_proxy
        pipeline = self.pipeline  # one pipeline per batch, even if a reload swaps it meanwhile
        out: list[Result] = []
        sqlite = isinstance(db.obj, SqliteDatabase)
        parsed: dict[int, ParsedMessage] = {}
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
        with writing(), db.atomic("IMMEDIATE") if sqlite else db.atomic():
            if sqlite:
                # Another process (an `ingest` beside the daemon) may have taken some.
                still = models.still_pending([r.id for r in rows])
                todo = [r for r in rows if r.id in still]
            else:
                # Several daemons on one PostgreSQL database: one batch at a time, in the
                # order the messages were stored, as with one daemon.  In parallel, a reply
                # stored just after the message it answers (a monitoring system's RECOVERY
                # after its PROBLEM) could be threaded by one worker while another still
                # holds the first message uncommitted, and open a ticket of its own.  The
                # lock is the transaction's: a daemon that dies lets go of it at once.
                # The pipeline's single worker is no limit for a helpdesk (hundreds of
                # messages a second); the edges and the outboxes still run in parallel.
                db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (PIPELINE_LOCK,))
                rows = todo = list(self._pending(ids, after, size).for_update("FOR UPDATE SKIP LOCKED"))
            env = pipeline.env
            env.new_batch()
            events: list[dict] = []  # the batch's ticket events, written once below
            # ... and its notifications, rendered and queued together (notifications.send).
            env.deferred = [] if defer else None
            written = intents = 0
            for row in todo:
                # A savepoint: a failure undoes this message only.  On PostgreSQL it is
                # never released: the commit releases them all, and a RELEASE would cost
                # one more round trip per message.  SQLite releases it at once (no round
                # trip): every open savepoint makes each later write keep more undo state.
                point = f'"m{row.id}"'
                db.execute_sql(f"SAVEPOINT {point}")
                try:
                    done = pipeline.run(row, parsed.get(row.id), events if defer else None)
                    if sqlite:
                        db.execute_sql(f"RELEASE SAVEPOINT {point}")
                    out.append(done)
                    written, intents = len(events), len(env.deferred or ())
                except StepFailed as failed:
                    if isinstance(failed.cause, TRANSIENT_ERRORS):
                        raise failed.cause from None  # not this message's fault: undo the batch
                    db.execute_sql(f"ROLLBACK TO SAVEPOINT {point}")
                    del events[written:]  # what this message added, if it failed after
                    if env.deferred is not None:
                        del env.deferred[intents:]
                    out.append(self._quarantine(row, failed))
            try:
                if env.deferred:
                    at = env.clock.now()
                    events += [{**e, "at": at} for e in notifications.send(env.deferred, env)]
                if events:
                    models.insert_many(Event, events)
            except TRANSIENT_ERRORS:
                raise
            except Exception as exc:
                log.warning(
                    "worker: the batch's events and notifications could not be written together "
                    "(%s); again one message at a time",
                    one_line(exc),
                )
                raise BatchWriteFailed(str(exc)) from exc
            finally:
                env.deferred = None
        return out, (rows[-1].id if rows else after), len(rows) == size

    def _quarantine(self, row: Inbox, failed: StepFailed) -> Result:
        if isinstance(failed.cause, Quarantine):
            reason = str(failed.cause)
        else:
            reason = f"{type(failed.cause).__name__}: {failed.cause}"
            log.error(
                "inbox %s %s: quarantined at step %s: %s",
                row.id,
                row.message_id or "-",
                failed.step,
                reason,
                exc_info=failed.cause,
            )
        Inbox.update(
            state="quarantined",
            step=failed.step,
            reason=reason[:2000],
            outcome="quarantined",
            attempts=Inbox.attempts + 1,
            processed_at=self.pipeline.env.clock.now(),
        ).where(Inbox.id == row.id).execute()
        return Result(row.id, row.message_id, "quarantined", None, reason, failed.step, source=row.source)
