"""The database from a URL, its pragmas, and the schema versions with their migrations.

`open_database(url)` gives a connected peewee database (SQLite with WAL, or
PostgreSQL) bound to the models' proxy, migrated to the current schema.  Changing
backend is changing the URL (peewee's playhouse/db_url does the mapping and fails
clearly when a driver is missing).

Schema versions are explicit: `MIGRATIONS[n]` takes a database at version n to
n + 1.  Version 0 is an empty database; a new release appends functions, never
edits old ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import peewee
from playhouse.db_url import connect

from . import models
from .errors import ConfigError, StorageError

log = logging.getLogger(__name__)

# SQLite: WAL lets readers (the CLI) work while the daemon writes; synchronous=NORMAL
# is durable across a process crash in WAL mode (docs/performance.md: 1,100 commits/s vs 250/s
# with a rollback journal); busy_timeout turns a short lock into a wait, not an error.
SQLITE_PRAGMAS = (
    ("journal_mode", "wal"),
    ("synchronous", "normal"),
    ("foreign_keys", 1),
    ("busy_timeout", 5000),
)

# Errors that mean "could not store now, try again later" rather than a bug.
OperationalError = peewee.OperationalError
DatabaseError = peewee.DatabaseError
IntegrityError = peewee.IntegrityError
Database = peewee.Database  # for annotations elsewhere: peewee is imported here and in models only

# Errors of the database, not of the data: unavailable, locked, a lock timeout, the
# connection lost.  Whoever meets one rolls back, waits and tries again (after
# `reset_connection`); they never make a message bad mail.
TRANSIENT_ERRORS = (peewee.OperationalError, peewee.InterfaceError)


def open_database(url: str, *, migrate: bool = True) -> peewee.Database:
    """Connect to `url`, bind the models, and bring the schema up to date."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = peewee.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS)
    else:
        try:
            db = connect(url)
        except (ImportError, RuntimeError, peewee.ImproperlyConfigured) as exc:
            raise StorageError(f"cannot use {redact(url)}: {exc}") from None
    try:
        db.connect(reuse_if_open=True)
    except peewee.ImproperlyConfigured as exc:
        # peewee looks for the driver only when it connects.  psycopg2 is the extra
        # `postgres`, so that a SQLite helpdesk installs without a compiled driver.
        # Not a StorageError: waiting will not install it.
        problem = str(exc)
        if isinstance(db, peewee.PostgresqlDatabase):
            problem = "the PostgreSQL driver (psycopg2) is not installed: pip install 'mailticket[postgres]'"
        raise ConfigError(f"[database] url = {redact(url)}: {problem}") from None
    except peewee.OperationalError as exc:
        raise StorageError(f"cannot connect to the database {redact(url)}: {exc}") from None
    models.database_proxy.initialize(db)
    if migrate:
        migrate_schema(db)
    return db


_writer = threading.local()  # this thread's lock file and how deep it holds it
WRITER_LOCK_POLL = (0.0002, 0.002)  # first and longest wait between two tries, seconds


@contextlib.contextmanager
def writing() -> Iterator[None]:
    """Hold the SQLite database's writer lock for a write transaction (re-entrant).

    SQLite lets one connection write at a time, and a connection that finds the lock
    taken polls for it with sleeps that grow to 100 ms: under load a client's 250 waits
    for a sleep, not for the other writer.  The daemon's writers (the listener, the IMAP
    pollers, the worker and the outbox, in three processes) take this lock on a file
    beside the database first, trying again at most 2 ms apart, so the next writer
    starts almost as soon as the last one commits.  Past the busy timeout it raises
    OperationalError, as a locked SQLite does (SMTP answers 451).  Anything else (the
    CLI) still works: it meets SQLite's own lock and waits as before.  On PostgreSQL,
    which has row locks, there is no lock to take.

    Every write of the daemon goes through here, so here a write that failed for the
    database's sake drops the connection (`reset_connection`): the next one connects
    afresh, whichever process or thread it is in.
    """
    if getattr(_writer, "depth", 0):  # nested: the outermost holds the lock
        _writer.depth += 1
        try:
            yield
        finally:
            _writer.depth -= 1
        return
    db = models.database_proxy.obj
    path = getattr(db, "database", "") if is_sqlite() else ""
    fd = _lock_file(path) if path and path != ":memory:" else None
    if fd is not None:
        busy_ms = dict(SQLITE_PRAGMAS)["busy_timeout"]  # read here: tests shorten it
        assert isinstance(busy_ms, int)
        _take(fd, busy_ms / 1000)
    _writer.depth = 1
    try:
        yield
    except TRANSIENT_ERRORS:
        reset_connection()
        raise
    finally:
        _writer.depth = 0
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _lock_file(path: str) -> int:
    """This thread's descriptor of `path.writer-lock`, opened once.

    The file is world-readable and may be opened read-only (flock needs no write
    access): when root made it (`mailticket ingest` run by an admin), the service user
    can still take the lock.  A file that cannot be opened at all is a StorageError
    naming it, so the edges answer 451 and `ingest` exits 75.
    """
    if getattr(_writer, "path", None) == path:
        return _writer.fd
    if getattr(_writer, "fd", None) is not None:
        os.close(_writer.fd)
        _writer.fd = _writer.path = None
    lock = f"{path}.writer-lock"
    try:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:  # another user's file, readable to us
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot open the writer lock {lock}: {exc.strerror}") from None
    _writer.fd, _writer.path = fd, path
    return fd


def _take(fd: int, timeout: float) -> None:
    wait, longest = WRITER_LOCK_POLL
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise OperationalError("database is locked (the writer lock)") from None
            time.sleep(wait)  # the kernel has no timed flock
            wait = min(wait * 2, longest)


def reset_connection() -> None:
    """Drop this thread's connection after a transient error: the next query connects again.

    peewee keeps a connection that the server closed (an outage, a restart, an admin's
    pg_terminate_backend) as if it were open, and every later query fails with
    "connection already closed" until it is closed and opened anew.  Inside a
    transaction nothing is dropped: the caller's rollback comes first, and the
    outermost `writing` (or the caller's loop) calls this again after it.
    """
    db = models.database_proxy.obj
    if db is None or db.in_transaction():
        return
    with contextlib.suppress(Exception):  # it is broken already: forgetting it is all we want
        db.close()


def check() -> str | None:
    """Ask the database a trivial question on a connection of this thread, then close it.

    None when it answered, else why not, on one line (for /healthz: each request runs
    in a thread of its own, which must not leave a connection behind).
    """
    db = models.database_proxy
    try:
        db.execute_sql("SELECT 1")
        return None
    except (*TRANSIENT_ERRORS, DatabaseError) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    finally:
        reset_connection()


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def is_sqlite() -> bool:
    """Is the bound database SQLite (one writer at a time) rather than PostgreSQL?"""
    return isinstance(models.database_proxy.obj, peewee.SqliteDatabase)


def _v1(db: peewee.Database) -> None:
    db.create_tables(models.ALL_MODELS)


def _v2(db: peewee.Database) -> None:
    """Outbox.to_domain (the per-domain automatic-mail limit), its indexes, and the
    Bounced table.  A database made by a newer `_v1` (which creates the current models)
    has them already: every part is skipped when present."""
    from playhouse.migrate import SchemaMigrator, migrate

    if "to_domain" not in {c.name for c in db.get_columns("outbox")}:
        migrate(SchemaMigrator.from_database(db).add_column("outbox", "to_domain", models.Outbox.to_domain))
        # The domain of recent rows, so that the limit holds across the upgrade.
        at = "instr(to_addr, '@')" if isinstance(db, peewee.SqliteDatabase) else "strpos(to_addr, '@')"
        db.execute_sql(f"UPDATE outbox SET to_domain = lower(substr(to_addr, {at} + 1)) WHERE {at} > 0")
    db.create_tables([models.Outbox, models.Bounced], safe=True)  # missing tables and indexes


def _v3(db: peewee.Database) -> None:
    """Agent.groups and Agent.language (issue 11: groups, tiers, notifications in the
    agent's language).  Skipped where a newer `_v1` made them already."""
    from playhouse.migrate import SchemaMigrator, migrate

    present = {c.name for c in db.get_columns("agent")}
    migrator = SchemaMigrator.from_database(db)
    migrate(
        *(
            migrator.add_column("agent", name, field)
            for name, field in (("groups", models.Agent.groups), ("language", models.Agent.language))
            if name not in present
        )
    )


def _v4(db: peewee.Database) -> None:
    """Outbox.attachments (issue 11: the files an agent adds go to the customer too).
    Skipped where a newer `_v1` made it already."""
    from playhouse.migrate import SchemaMigrator, migrate

    if "attachments" not in {c.name for c in db.get_columns("outbox")}:
        migrate(
            SchemaMigrator.from_database(db).add_column("outbox", "attachments", models.Outbox.attachments)
        )


def _v5(db: peewee.Database) -> None:
    """AutoCount (the automatic-mail limits count per five-minute slot instead of walking
    the outbox), filled from the last hour's outbox; the outbox indexes those counts used
    go; Ticket.merged_into (`#merge`)."""
    from playhouse.migrate import SchemaMigrator, migrate

    db.create_tables([models.AutoCount], safe=True)
    if "merged_into" not in {c.name for c in db.get_columns("ticket")}:
        migrate(
            SchemaMigrator.from_database(db).add_column("ticket", "merged_into", models.Ticket.merged_into)
        )
    for name in ("outbox_to_domain_created_at", "outbox_created_at_automatic"):
        db.execute_sql(f'DROP INDEX IF EXISTS "{name}"')
    since = models.Outbox._meta.fields["created_at"].db_value(datetime.now(timezone.utc) - timedelta(hours=1))
    rows = models.Outbox.select(models.Outbox.to_addr, models.Outbox.kind, models.Outbox.created_at).where(
        models.Outbox.automatic & (models.Outbox.created_at >= since)
    )
    from .notify import limit_scopes

    for row in rows:
        models.count_automatic(dict.fromkeys(limit_scopes(row.to_addr, row.kind), 1), row.created_at)


def _v6(db: peewee.Database) -> None:
    """The timed side's Ticket columns (issue 12): sla_policy, update_every, sla_state,
    next_check (indexed).  Skipped where a newer `_v1` made them already."""
    from playhouse.migrate import SchemaMigrator, migrate

    present = {c.name for c in db.get_columns("ticket")}
    migrator = SchemaMigrator.from_database(db)
    t = models.Ticket
    columns = (
        ("sla_policy", t.sla_policy),
        ("update_every", t.update_every),
        ("sla_state", t.sla_state),
        ("next_check", t.next_check),
    )
    migrate(*(migrator.add_column("ticket", name, f) for name, f in columns if name not in present))
    if "ticket_next_check" not in {i.name for i in db.get_indexes("ticket")}:
        migrate(migrator.add_index("ticket", ("next_check",), False))


def _v7(db: peewee.Database) -> None:
    """Job: the helpdesk-wide timed jobs' state (issue 13: the report mailed to the admins);
    a partial index of the events /metrics counts, and one of tickets by creation (the
    report's period, the histograms' window)."""
    db.create_tables([models.Job], safe=True)
    db.execute_sql(
        f'CREATE INDEX IF NOT EXISTS "event_counted" ON "event" ("kind") WHERE {models.COUNTED_EVENTS}'
    )
    db.execute_sql('CREATE INDEX IF NOT EXISTS "ticket_created_at" ON "ticket" ("created_at")')


def _v8(db: peewee.Database) -> None:
    """DedupeKey (issue 14: exactly once with several daemons, by a unique key rather than a
    lookup), filled with the key of every message processed so far (the first row of each);
    ImapState.holder and lease_until (one daemon polls a mailbox at a time, leases.py)."""
    from playhouse.migrate import SchemaMigrator, migrate

    db.create_tables([models.DedupeKey], safe=True)
    present = {c.name for c in db.get_columns("imapstate")}
    migrator = SchemaMigrator.from_database(db)
    state = models.ImapState
    columns = (("holder", state.holder), ("lease_until", state.lease_until))
    migrate(*(migrator.add_column("imapstate", name, f) for name, f in columns if name not in present))
    db.execute_sql('DROP INDEX IF EXISTS "inbox_dedupe_key"')  # DedupeKey is the lookup now
    db.execute_sql(
        'INSERT INTO "dedupekey" ("key", "inbox") SELECT "dedupe_key", MIN("id") FROM "inbox" '
        'WHERE "state" = \'done\' AND "dedupe_key" IS NOT NULL '
        'AND ("outcome" IS NULL OR "outcome" <> \'duplicate\') GROUP BY "dedupe_key" '
        'ON CONFLICT ("key") DO NOTHING'
    )


MIGRATIONS: list[Callable[[peewee.Database], None]] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8]
SCHEMA_VERSION = len(MIGRATIONS)
MIGRATION_LOCK = 0x6D74_6D69  # PostgreSQL advisory lock key held while migrating ("mtmi")


def schema_version(db: peewee.Database) -> int:
    if not db.table_exists(models.SchemaVersion._meta.table_name):
        return 0
    row = models.SchemaVersion.select().order_by(models.SchemaVersion.version.desc()).first()
    return row.version if row else 0


def migrate_schema(db: peewee.Database) -> int:
    """Apply every migration the database has not had yet; return the version now."""
    with db.atomic():
        if isinstance(db, peewee.PostgresqlDatabase):
            # Several daemons started at once on a new database: one migrates, the others
            # wait here and find it done (CREATE TABLE is not safe to race).
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        db.create_tables([models.SchemaVersion])
        current = schema_version(db)
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"the database has schema version {current}, newer than this mailticket "
                f"({SCHEMA_VERSION}): upgrade mailticket"
            )
        for version in range(current, SCHEMA_VERSION):
            log.info("migrating database schema %d -> %d", version, version + 1)
            MIGRATIONS[version](db)
            models.SchemaVersion.create(version=version + 1)
    return SCHEMA_VERSION
