"""The peewee models: what mailticket stores (docs/architecture.md).

    Inbox        the durable inbox: every received message, raw, before any work;
                 its state is pending, done or quarantined (with the step and reason)
    Ticket       one customer issue: status, priority, queue, tier, people, due times
    Message      one email on a ticket, in or out, with its new text and full text
    Attachment   a file of a message, stored content-addressed on disk
    Event        every change to a ticket: who, when, what (the history agents read)
    Outbox       outgoing mail and its delivery state
    Agent        a person who works tickets
    ImapState    per-mailbox UIDVALIDITY and last UID
    Bounced      addresses whose mail bounced permanently: no automatic mail to them
    SchemaVersion

Models bind to `database_proxy`; `db.open_database` initialises it from a URL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timezone

import peewee

database_proxy = peewee.DatabaseProxy()
_UTC = timezone.utc

# Subjects stored: a ticket's title, and a message's copy of its header (RFC 5322 2.1.1's
# line length); a 1 MB subject line is hostile, not a title.
MAX_TICKET_SUBJECT = 255
MAX_MESSAGE_SUBJECT = 998


class _Clean(peewee.Field):
    """Strings are stored the same on every backend: without NUL (PostgreSQL refuses it in
    text, SQLite keeps it) and, in a CharField, cut to its length (PostgreSQL's varchar
    refuses a longer value, SQLite keeps it).  Hostile mail puts NUL in any header."""

    def db_value(self, value):
        if value.__class__ is not str:  # None, bytes, numbers: peewee's own conversion
            return super().db_value(value)
        if "\x00" in value:
            value = value.replace("\x00", "")
        max_length = getattr(self, "max_length", None)  # a CharField's; a TextField has none
        if max_length and len(value) > max_length:
            value = value[:max_length]
        return value


class CharField(_Clean, peewee.CharField):
    pass


class TextField(_Clean, peewee.TextField):
    pass


class JSONField(peewee.TextField):
    """A JSON value in a text column: portable across SQLite and PostgreSQL."""

    def db_value(self, value):
        return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class UTCDateTimeField(peewee.DateTimeField):
    """Timestamps are stored naive in UTC and come back aware, the same on every backend."""

    def db_value(self, value):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(_UTC).replace(tzinfo=None)
        return super().db_value(value)

    def python_value(self, value):
        value = super().python_value(value)
        if value is not None and hasattr(value, "tzinfo") and value.tzinfo is None:
            value = value.replace(tzinfo=_UTC)
        return value


class BaseModel(peewee.Model):
    # Each model names its `id = peewee.AutoField()`, the primary key peewee would add
    # implicitly, so that type checkers know `Model.id`.

    class Meta:
        database = database_proxy


class SchemaVersion(BaseModel):
    id = peewee.AutoField()
    version = peewee.IntegerField()
    applied_at = peewee.DateTimeField(constraints=[peewee.SQL("DEFAULT CURRENT_TIMESTAMP")])


class Inbox(BaseModel):
    id = peewee.AutoField()
    received_at = UTCDateTimeField(index=True)
    source = CharField(max_length=16)  # smtp, lmtp, imap, ingest
    mailbox = CharField(null=True)  # the IMAP mailbox or SMTP recipient it came by
    queue = CharField(null=True)  # the source's default queue, handed to the rules
    raw = peewee.BlobField()  # type: ignore[assignment]  # the column shadows Model.raw(sql)
    state = CharField(max_length=16, default="pending", index=True)
    # Message-ID, or a hash of the bytes when there is none: what `dedupe` compares.
    dedupe_key = CharField(null=True)  # claimed in DedupeKey (schema v8), which is its index
    message_id = TextField(null=True)
    outcome = CharField(max_length=16, null=True)
    ticket = peewee.IntegerField(null=True)
    step = CharField(max_length=32, null=True)  # where processing failed
    reason = TextField(null=True)
    attempts = peewee.IntegerField(default=0)
    processed_at = UTCDateTimeField(null=True)
    silent = peewee.BooleanField(default=False)  # historic import: record, never acknowledge


class Ticket(BaseModel):
    number = peewee.AutoField()
    subject = TextField()
    status = CharField(max_length=16, default="new", index=True)
    priority = CharField(max_length=4, default="P3")
    queue = CharField(default="general", index=True)
    tier = peewee.IntegerField(default=1)
    assignee = CharField(null=True)
    group = CharField(null=True)
    requester = CharField(index=True)  # lower-case address
    requester_name = CharField(default="")
    cc = JSONField(default=list)
    tags = JSONField(default=list)
    fields = JSONField(default=dict)
    language = CharField(max_length=8, default="en")
    linked_to = peewee.IntegerField(null=True)  # the ticket this one was opened from
    merged_into = peewee.IntegerField(null=True)  # `#merge`: its mail goes there now (schema v5)
    created_at = UTCDateTimeField()
    updated_at = UTCDateTimeField()
    first_response_at = UTCDateTimeField(null=True)
    resolved_at = UTCDateTimeField(null=True)
    closed_at = UTCDateTimeField(null=True)
    due_first_response = UTCDateTimeField(null=True)
    due_next_update = UTCDateTimeField(null=True)
    due_resolution = UTCDateTimeField(null=True)
    # The timed side (sla.py, jobs.py; schema v6): a rule's or agent's SLA policy, the
    # update interval set by `#update` (minutes; 0 off), what was sent for which due
    # time (so each warning, escalation and reminder goes once), and when the jobs
    # next have something to do for this ticket.
    sla_policy = CharField(null=True)
    update_every = peewee.IntegerField(null=True)
    sla_state = JSONField(default=dict)
    next_check = UTCDateTimeField(null=True, index=True)
    # Backrefs, set by Message.ticket and Event.ticket; declared for type checkers.
    messages: peewee.ModelSelect[Message]
    events: peewee.ModelSelect[Event]


class Message(BaseModel):
    id = peewee.AutoField()
    ticket = peewee.ForeignKeyField(Ticket, backref="messages", on_delete="CASCADE", index=True)
    inbox = peewee.ForeignKeyField(Inbox, null=True, backref="messages")
    direction = CharField(max_length=3)  # in | out
    # customer, agent-reply, note, system, auto-reply, bounce
    kind = CharField(max_length=16)
    message_id = TextField(index=True)
    from_addr = CharField(default="")
    from_name = CharField(default="")
    to = JSONField(default=list)
    cc = JSONField(default=list)
    subject = TextField(default="")
    date = UTCDateTimeField(null=True)
    text = TextField(default="")  # new text: without quoted history and signature
    body = TextField(default="")  # the whole readable text
    created_at = UTCDateTimeField()
    attachments: peewee.ModelSelect[Attachment]  # backref of Attachment.message


class Attachment(BaseModel):
    id = peewee.AutoField()
    message = peewee.ForeignKeyField(Message, backref="attachments", on_delete="CASCADE")
    filename = CharField()
    content_type = CharField()
    size = peewee.IntegerField()
    sha256 = CharField(max_length=64, index=True)
    inline = peewee.BooleanField(default=False)
    content_id = CharField(null=True)


class Event(BaseModel):
    id = peewee.AutoField()
    ticket = peewee.ForeignKeyField(Ticket, backref="events", on_delete="CASCADE", index=True)
    at = UTCDateTimeField()
    actor = CharField()  # an address, "system", or "rule:NAME"
    kind = CharField(max_length=32)
    detail = JSONField(default=dict)


class Outbox(BaseModel):
    id = peewee.AutoField()
    ticket = peewee.IntegerField(null=True, index=True)
    kind = CharField(max_length=16)  # ack, reply, update, escalation, ...
    automatic = peewee.BooleanField(default=True)  # counts towards the per-address limit
    mail_from = CharField()
    to_addr = CharField()
    to_domain = CharField(null=True)  # to_addr's domain, for the per-domain limit (schema v2)
    subject = TextField()
    body = TextField()
    # Message-ID, In-Reply-To, References, Auto-Submitted, Thread-Index, ...
    headers = JSONField(default=dict)
    # Files that go with the text: [{filename, content_type, sha256}] in the attachment
    # store, or NULL for a text-only message (schema v4).
    attachments = JSONField(null=True)
    message_id = TextField()
    state = CharField(max_length=8, default="queued", index=True)
    attempts = peewee.IntegerField(default=0)
    next_attempt_at = UTCDateTimeField(null=True)
    last_error = TextField(null=True)
    created_at = UTCDateTimeField()
    sent_at = UTCDateTimeField(null=True)

    class Meta:
        # An address's mail, newest last (`outbox list --to`; the limits count in AutoCount).
        indexes = ((("to_addr", "created_at"), False),)


class Agent(BaseModel):
    """A person who works tickets (`agents.py`); removing one keeps the row (active False),
    so that the history still names them."""

    id = peewee.AutoField()
    email = CharField(unique=True)  # lower-case
    name = CharField(default="")
    tier = peewee.IntegerField(default=1)
    active = peewee.BooleanField(default=True)
    groups = JSONField(default=list)  # group names, sorted (schema v3)
    language = CharField(max_length=16, default="")  # for notifications; "" = the helpdesk's (schema v3)


class ImapState(BaseModel):
    id = peewee.AutoField()
    mailbox = CharField(unique=True)  # user@host/folder
    uidvalidity = peewee.BigIntegerField(null=True)
    last_uid = peewee.BigIntegerField(default=0)
    # The daemon polling it and until when (leases.py; schema v8): one poller at a time.
    holder = CharField(null=True)
    lease_until = UTCDateTimeField(null=True)


class Bounced(BaseModel):
    """An address our mail to bounced permanently (a 5.x.x DSN): automatic mail to it
    stops until it writes to us again (schema v2)."""

    id = peewee.AutoField()
    address = CharField(unique=True)  # lower-case
    status = CharField(max_length=16)  # the DSN's Status, e.g. 5.1.1
    ticket = peewee.IntegerField(null=True)  # where the bounce was recorded
    at = UTCDateTimeField()


class AutoCount(BaseModel):
    """How many automatic mails went to a scope in a five-minute slot: the automatic-mail
    limits read at most twelve rows a scope, whatever the outbox holds (schema v5).
    Scopes: `a:ADDRESS`, `d:DOMAIN` and `*` (everyone)."""

    scope = CharField()
    slot = peewee.IntegerField()  # Unix time // SLOT_SECONDS
    n = peewee.IntegerField(default=0)

    class Meta:
        primary_key = peewee.CompositeKey("scope", "slot")


# The events /metrics counts (metrics.py), few among all: a partial index holds just them.
COUNTED_EVENTS = "\"kind\" IN ('sla-breached', 'rating')"


class Job(BaseModel):
    """A timed job of the whole helpdesk (not of a ticket), such as the report mailed to
    the admins: when it is next due, when it last ran (schema v7).  Like the tickets'
    jobs, a pass takes its row FOR UPDATE SKIP LOCKED, so a second daemon skips it."""

    name = CharField(primary_key=True)
    next_at = UTCDateTimeField()
    last_at = UTCDateTimeField(null=True)


class DedupeKey(BaseModel):
    """Which inbox row a dedupe key (a Message-ID, or `sha256:` of the content) belongs to
    (schema v8).  Its primary key makes "one message, one ticket" a constraint of the
    database rather than a read-then-write: two daemons processing two copies of one
    message at once both INSERT the key, and the second waits for the first's commit
    and finds it taken (dedupe.py)."""

    key = CharField(primary_key=True)
    inbox = peewee.IntegerField()


ALL_MODELS = [
    Inbox,
    Ticket,
    Message,
    Attachment,
    Event,
    Outbox,
    Agent,
    ImapState,
    Bounced,
    AutoCount,
    Job,
    DedupeKey,
]

# Re-exported so that callers outside db.py/models.py never import peewee themselves.
fn = peewee.fn
SqliteDatabase = peewee.SqliteDatabase


# --- compiled statements for the pipeline's hot path -------------------------------------
#
# Building a query with peewee costs about ten times running it (docs/performance.md: 1,800
# indexed lookups/s through the ORM, 18,000/s through sqlite3).  The pipeline runs a
# dozen statements a message, so its few hot ones are compiled once per database
# and column set here and executed with parameters; values still go through each
# field's own `db_value`, so they are stored exactly as the ORM stores them.

_compiled: dict[tuple, str] = {}


def _sql(key: tuple, build) -> str:
    db = database_proxy.obj
    full = (type(db), *key)
    sql = _compiled.get(full)
    if sql is None:
        sql = _compiled[full] = build(db.param)
    return sql


def raw(model: type[BaseModel], key: tuple, build: Callable[[str], str], params: list):
    """`model.raw(...)`, its SQL built once per backend by `build(placeholder)`: on the hot
    path peewee's query builder costs more than the query (rows convert as usual)."""
    return model.raw(_sql(("raw", model.__name__, *key), build), *params)


def _q(name: str) -> str:
    return f'"{name}"'


def _pk_column(meta: peewee.Metadata) -> str:
    pk = meta.primary_key
    assert pk is not False  # every model has a single-column primary key
    return pk.column_name


def _with_defaults(model: type[BaseModel], values: dict) -> dict:
    """`values` plus each unnamed field's Python-side default, as `Model.create` would."""
    out = dict(values)
    for f in model._meta.sorted_fields:
        if f.name not in out and f is not model._meta.primary_key and f.default is not None:
            out[f.name] = f.default() if callable(f.default) else f.default
    return out


def insert(model: type[BaseModel], values: dict) -> int:
    """INSERT one row (defaults filled in as `Model.create` would); return its primary key."""
    values = _with_defaults(model, values)
    meta = model._meta
    fields = [meta.fields[name] for name in values]

    def build(param: str) -> str:
        cols = ", ".join(_q(f.column_name) for f in fields)
        marks = ", ".join([param] * len(fields))
        return f"INSERT INTO {_q(meta.table_name)} ({cols}) VALUES ({marks}) RETURNING {_q(_pk_column(meta))}"

    sql = _sql(("insert", model, tuple(values)), build)
    params = [f.db_value(v) for f, v in zip(fields, values.values())]
    return database_proxy.execute_sql(sql, params).fetchone()[0]


def insert_many(model: type[BaseModel], rows: list[dict], *, keys: bool = False) -> list[int]:
    """INSERT rows that share the same columns, in one statement; with `keys`, return their
    primary keys in the order of `rows` (both backends number rows in the order given, so
    the keys sorted are that order)."""
    if not rows:
        return []
    rows = [_with_defaults(model, row) for row in rows]
    meta = model._meta
    names = tuple(rows[0])
    fields = [meta.fields[name] for name in names]

    def build(param: str) -> str:
        cols = ", ".join(_q(f.column_name) for f in fields)
        one = "(" + ", ".join([param] * len(fields)) + ")"
        returning = f" RETURNING {_q(_pk_column(meta))}" if keys else ""
        return (
            f"INSERT INTO {_q(meta.table_name)} ({cols}) VALUES " + ", ".join([one] * len(rows)) + returning
        )

    sql = _sql(("insert_many", model, names, len(rows), keys), build)
    params = [f.db_value(row[f.name]) for row in rows for f in fields]
    cursor = database_proxy.execute_sql(sql, params)
    return sorted(r[0] for r in cursor.fetchall()) if keys else []


def update(model: type[BaseModel], pk: int, values: dict) -> None:
    """UPDATE the given columns of one row by primary key."""
    if not values:
        return
    meta = model._meta
    fields = [meta.fields[name] for name in values]

    def build(param: str) -> str:
        sets = ", ".join(f"{_q(f.column_name)} = {param}" for f in fields)
        return f"UPDATE {_q(meta.table_name)} SET {sets} WHERE {_q(_pk_column(meta))} = {param}"

    sql = _sql(("update", model, tuple(values)), build)
    database_proxy.execute_sql(sql, [f.db_value(v) for f, v in zip(fields, values.values())] + [pk])


def claim_dedupe_key(key: str, inbox: int) -> int | None:
    """Make `key` inbox row `inbox`'s; None when it now is (or already was), else the row
    that holds it.  On PostgreSQL the INSERT waits while another transaction holds the same
    key uncommitted, and sees the outcome: the one message processed once either way."""
    insert = _sql(
        ("dedupe-claim",),
        lambda p: (
            f'INSERT INTO "dedupekey" ("key", "inbox") VALUES ({p}, {p}) ON CONFLICT ("key") DO NOTHING'
        ),
    )
    if database_proxy.execute_sql(insert, [key, inbox]).rowcount == 1:
        return None
    sql = _sql(("dedupe-holder",), lambda p: f'SELECT "inbox" FROM "dedupekey" WHERE "key" = {p}')
    row = database_proxy.execute_sql(sql, [key]).fetchone()
    holder = row[0] if row else None
    return None if holder == inbox else holder


def inbox_brief(inbox: int) -> tuple[int, int | None, str] | None:
    """(id, ticket, state) of one inbox row."""
    sql = _sql(("inbox-brief",), lambda p: f'SELECT "id", "ticket", "state" FROM "inbox" WHERE "id" = {p}')
    return database_proxy.execute_sql(sql, [inbox]).fetchone()


def still_pending(ids: list[int]) -> set[int]:
    """Which of these inbox rows are still pending."""
    if not ids:
        return set()
    sql = _sql(
        ("pending", len(ids)),
        lambda p: (
            f'SELECT "id" FROM "inbox" WHERE "state" = {p} AND "id" IN (' + ", ".join([p] * len(ids)) + ")"
        ),
    )
    return {r[0] for r in database_proxy.execute_sql(sql, ["pending", *ids]).fetchall()}


def tickets_of_message_ids(ids: list[str]) -> dict[str, int]:
    """Message-ID -> ticket number for the ids we know (in or out)."""
    ids = ids[:50]
    if not ids:
        return {}
    sql = _sql(
        ("by_mid", len(ids)),
        lambda p: (
            'SELECT "message_id", "ticket_id" FROM "message" '
            'WHERE "message_id" IN (' + ", ".join([p] * len(ids)) + ")"
        ),
    )
    return dict(database_proxy.execute_sql(sql, ids).fetchall())


def is_active_agent(address: str) -> bool:
    sql = _sql(("agent",), lambda p: f'SELECT 1 FROM "agent" WHERE "email" = {p} AND "active" = {p}')
    return database_proxy.execute_sql(sql, [address, True]).fetchone() is not None


SLOT_SECONDS = 300  # AutoCount's slots; a limit's hour is the current slot and the eleven before
SLOTS_PER_HOUR = 3600 // SLOT_SECONDS


def slot_of(at) -> int:
    return int(at.timestamp()) // SLOT_SECONDS


def count_automatic(counts: dict[str, int], at) -> None:
    """So many more automatic mails to each scope now (inside the caller's transaction)."""
    slot = slot_of(at)
    sql = _sql(
        ("auto_count", len(counts)),
        lambda p: (
            'INSERT INTO "autocount" ("scope", "slot", "n") VALUES '
            + ", ".join([f"({p}, {p}, {p})"] * len(counts))
            + ' ON CONFLICT ("scope", "slot") DO UPDATE SET "n" = "autocount"."n" + EXCLUDED."n"'
        ),
    )
    database_proxy.execute_sql(sql, [v for scope, n in counts.items() for v in (scope, slot, n)])


def prune_automatic_counts(at) -> int:
    """Forget the slots that no limit reads any more (older than two hours); how many."""
    sql = _sql(("auto_prune",), lambda p: f'DELETE FROM "autocount" WHERE "slot" < {p}')
    return database_proxy.execute_sql(sql, [slot_of(at) - 2 * SLOTS_PER_HOUR]).rowcount


STATE_CHUNK = 400  # scopes or addresses per statement (SQLite's limits on a statement)


def automatic_mail_state(scopes: list[str], addresses: list[str], at) -> tuple[list[int], list[str | None]]:
    """How many automatic mails each of `scopes` had in the hour up to `at` (AutoCount: at
    most twelve rows a scope), and the bounce status each of `addresses` is marked with,
    or None.  One round trip for up to STATE_CHUNK of each (the usual case: one)."""
    since = slot_of(at) - SLOTS_PER_HOUR
    counts: dict[str, int] = {}
    marks: dict[str, str] = {}
    for n in range(0, max(len(scopes), len(addresses)), STATE_CHUNK):
        some, who = scopes[n : n + STATE_CHUNK], addresses[n : n + STATE_CHUNK]

        def build(p: str, k: int = len(some), m: int = len(who)) -> str:
            parts = []
            if k:
                parts.append(
                    f'SELECT "scope", CAST(SUM("n") AS TEXT) FROM "autocount" '
                    f'WHERE "scope" IN ({", ".join([p] * k)}) AND "slot" > {p} GROUP BY "scope"'
                )
            if m:
                parts.append(
                    f'SELECT {p} || "address", MIN("status") FROM "bounced" '
                    f'WHERE "address" IN ({", ".join([p] * m)}) GROUP BY "address"'
                )
            return " UNION ALL ".join(parts)

        params = ([*some, since] if some else []) + (["@", *who] if who else [])
        rows = database_proxy.execute_sql(_sql(("auto_state", len(some), len(who)), build), params).fetchall()
        for key, value in rows:
            if key.startswith("@"):  # a bounce mark (no scope starts so: they are a:, d:, *)
                marks[key[1:]] = value
            else:
                counts[key] = int(value)
    return [counts.get(s, 0) for s in scopes], [marks.get(a) for a in addresses]


def mark_bounced(address: str, status: str, ticket: int | None, at) -> None:
    """Mark `address` as bounced (again: the newest status and ticket win)."""
    Bounced.insert(address=address, status=status, ticket=ticket, at=at).on_conflict(
        conflict_target=[Bounced.address],
        update={Bounced.status: status, Bounced.ticket: ticket, Bounced.at: at},
    ).execute()


def any_bounced() -> bool:
    """Is any address marked as bounced?"""
    sql = _sql(("any_bounced",), lambda p: 'SELECT EXISTS (SELECT 1 FROM "bounced")')
    return bool(database_proxy.execute_sql(sql).fetchone()[0])


def clear_bounced(address: str) -> bool:
    """Remove the bounce mark of `address`; whether there was one."""
    sql = _sql(("unbounce",), lambda p: f'DELETE FROM "bounced" WHERE "address" = {p}')
    return database_proxy.execute_sql(sql, [address]).rowcount > 0


def outgoing_message_ids(ids: list[str]) -> set[str]:
    """Which of these Message-IDs are of mail we sent (stored as outgoing messages)."""
    ids = ids[:50]
    if not ids:
        return set()
    sql = _sql(
        ("out_mid", len(ids)),
        lambda p: (
            'SELECT "message_id" FROM "message" WHERE '
            f'"direction" = {p} AND "message_id" IN (' + ", ".join([p] * len(ids)) + ")"
        ),
    )
    return {r[0] for r in database_proxy.execute_sql(sql, ["out", *ids]).fetchall()}


def inbox_listing(outcome: str | None = None, unmatched: bool = False, limit: int = 100) -> list[Inbox]:
    """Processed inbox rows, newest first: all, or those of one outcome (`bounce`, ...);
    with `unmatched`, only those that went to no ticket."""
    query = (
        Inbox.select(
            Inbox.id,
            Inbox.received_at,
            Inbox.source,
            Inbox.message_id,
            Inbox.outcome,
            Inbox.ticket,
            Inbox.reason,
        )
        .where(Inbox.state == "done")
        .order_by(Inbox.id.desc())
        .limit(limit)
    )
    if outcome:
        query = query.where(Inbox.outcome == outcome)
    if unmatched:
        query = query.where(Inbox.ticket.is_null())
    return list(query)


def get(model: type[BaseModel], pk: int):
    """One row by primary key as a model instance, or None."""
    meta = model._meta
    fields = meta.sorted_fields

    def build(param: str) -> str:
        cols = ", ".join(_q(f.column_name) for f in fields)
        return f"SELECT {cols} FROM {_q(meta.table_name)} WHERE {_q(_pk_column(meta))} = {param}"

    row = database_proxy.execute_sql(_sql(("get", model), build), [pk]).fetchone()
    if row is None:
        return None
    return model(**{f.name: f.python_value(v) for f, v in zip(fields, row)})
