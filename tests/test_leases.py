"""The pieces that keep several daemons on one database exactly-once, one by one.

- An IMAP mailbox's lease (leases.py): one poller holds it; another takes it over
  once it runs out; the stalled holder's commit is fenced off (its batch undone,
  nothing flagged), and a poller stopped cleanly hands the mailbox over at once.
- The dedupe key's unique row: a second transaction claiming the same key waits for
  the first and finds it taken (PostgreSQL's row locks, not a lookup).
- The pipeline's batches: one worker at a time across daemons (an advisory lock).
- Migrating a database of schema 7: the keys of the messages processed so far.
- /healthz: a mailbox whose login fails is shown failing, the daemon still ok.

On SQLite and PostgreSQL where both apply.  Lease expiry is made, not waited for:
the test moves `lease_until` into the past, as a daemon that stalled would find it.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import pytest
from helpers import wait_for
from mails import mail
from test_daemon import DaemonProc
from test_several_daemons import imap_block

from mailticket import models
from mailticket.clock import SystemClock
from mailticket.config import Imap
from mailticket.db import open_database
from mailticket.imap import ImapPoller, mailbox_key
from mailticket.leases import LeaseLost
from mailticket.models import DedupeKey, ImapState, Inbox

PASSWORD_ENV = "TEST_LEASE_IMAP_PASSWORD"


@pytest.fixture
def db(db_url):
    database = open_database(db_url)
    yield database
    database.close()


@pytest.fixture
def box(dovecot, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, dovecot.password)
    return dovecot


def poller(box, holder: str, lease: int = 3) -> ImapPoller:
    cfg = Imap(
        host=box.host, port=box.port, tls="none", user=box.user, password_env=PASSWORD_ENV, history_days=0
    )
    p = ImapPoller(cfg, SystemClock(), holder=holder, lease_seconds=lease)
    p.backoff_min, p.backoff_max = 0.05, 0.2
    return p


def mails(n: int, prefix: str) -> list[bytes]:
    return [mail(subject=f"{prefix} {i}", message_id=f"<{prefix}{i}@customer.test>") for i in range(n)]


def stored() -> list[str]:
    return [
        r.message_id or bytes(r.raw).split(b"Message-ID: ")[1].split(b"\r\n")[0].decode()
        for r in Inbox.select().order_by(Inbox.id)
    ]


def run_out(key: str) -> None:
    """The holder stalled: its lease ran out a second ago."""
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    ImapState.update(lease_until=past).where(ImapState.mailbox == key).execute()


def test_one_poller_holds_a_mailbox_and_a_stalled_one_is_fenced_off(box, db):
    a, b = poller(box, "daemon-a"), poller(box, "daemon-b")
    try:
        assert a._keep_lease(force=True) and not b._keep_lease(force=True)
        assert ImapState.get(ImapState.mailbox == a.key).holder == "daemon-a"
        box.append_many(mails(2, "first"))
        assert a.poll_once() == 2
        assert a._keep_lease(force=True)  # renewing keeps it
        assert not b._keep_lease(force=True)

        run_out(a.key)  # daemon-a stalled past its lease
        assert b._keep_lease(force=True) and b.holding
        box.append_many(mails(2, "second"))
        with pytest.raises(LeaseLost, match="another daemon took the mailbox over"):
            a.poll_once()  # it wakes up and fetches: its commit is refused
        assert len(stored()) == 2 and len(box.unseen()) == 2  # undone, nothing flagged
        assert not a.holding
        assert b.poll_once() == 2  # the new holder takes what the old one could not
        assert sorted(stored()) == sorted(
            f"<{p}{i}@customer.test>" for p in ("first", "second") for i in range(2)
        )
        assert box.unseen() == []
        assert not a._keep_lease(force=True)  # and it cannot take it back while b renews
    finally:
        a.close()
        b.close()


def test_a_stopped_poller_hands_its_mailbox_over_at_once(box, db):
    a, b = poller(box, "daemon-a", lease=30), poller(box, "daemon-b", lease=3)
    stop_a, stop_b = threading.Event(), threading.Event()
    ta = threading.Thread(target=a.run, args=(stop_a,))
    ta.start()
    wait_for(lambda: a.holding, 10, "daemon-a to take the mailbox")
    tb = threading.Thread(target=b.run, args=(stop_b,))
    tb.start()
    try:
        box.append_many(mails(3, "early"))
        wait_for(lambda: len(stored()) == 3, 10, "daemon-a to store the mail")
        assert not b.holding
        stop_a.set()  # SIGTERM: daemon-a gives the lease back, 30 s before it would run out
        ta.join(10)
        assert ImapState.get(ImapState.mailbox == a.key).holder in (None, "daemon-b")
        wait_for(lambda: b.holding, 5, "daemon-b to take the mailbox at once")
        box.append_many(mails(3, "late"))
        wait_for(lambda: len(stored()) == 6, 10, "daemon-b to store the later mail")
        assert len(set(stored())) == 6
    finally:
        stop_a.set()
        stop_b.set()
        ta.join(10)
        tb.join(10)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_second_claim_of_a_dedupe_key_waits_and_finds_it_taken(db):
    first_claimed, first_may_commit, second_done = threading.Event(), threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def first() -> None:
        with db.atomic():
            outcome["first"] = models.claim_dedupe_key("<same@customer.test>", 101)
            first_claimed.set()
            first_may_commit.wait(10)
        db.close()

    def second() -> None:
        first_claimed.wait(10)
        with db.atomic():
            outcome["second"] = models.claim_dedupe_key("<same@customer.test>", 202)
        second_done.set()
        db.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    first_claimed.wait(10)
    # The second INSERT waits on the first transaction's uncommitted key ...
    assert not second_done.wait(0.5)
    first_may_commit.set()
    for t in threads:
        t.join(10)
    # ... and then finds it taken: a duplicate of inbox 101, not a ticket of its own.
    assert outcome == {"first": None, "second": 101}
    assert [(k.key, k.inbox) for k in DedupeKey.select()] == [("<same@customer.test>", 101)]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_the_pipeline_takes_one_batch_at_a_time_across_daemons(helpdesk):
    """Another daemon's worker in the middle of a batch (its advisory lock held): this
    worker waits for it rather than threading a reply against uncommitted mail."""
    import psycopg2

    from mailticket import config
    from mailticket.app import open_app
    from mailticket.inbox import Incoming, store_many
    from mailticket.worker import PIPELINE_LOCK, InboxWorker

    app = open_app(config.load(helpdesk.config_path))
    try:
        store_many([Incoming(mail(subject="Waits its turn"), "smtp")], now=datetime.now(timezone.utc))
        other = psycopg2.connect(helpdesk.db_url)
        cur = other.cursor()
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (PIPELINE_LOCK,))  # held until rollback
        results: list = []
        t = threading.Thread(target=lambda: results.extend(InboxWorker(app.pipeline).run_pending()))
        t.start()
        t.join(0.5)
        assert t.is_alive() and not results  # waiting for the other batch
        other.rollback()  # the other worker's batch ends
        t.join(20)
        assert [r.outcome for r in results] == ["created"]
        other.close()
    finally:
        app.close()


def test_schema_7_database_gets_the_keys_of_what_it_processed(helpdesk):
    from playhouse.migrate import SchemaMigrator, migrate

    from mailticket.db import SCHEMA_VERSION, schema_version
    from mailticket.models import SchemaVersion

    [first] = helpdesk.ingest(mail(subject="Before the upgrade", message_id="<old@customer.test>"))
    assert first["outcome"] == "created"
    db = open_database(helpdesk.db_url)
    # What a release of schema 7 left: no DedupeKey table, no lease columns.
    migrator = SchemaMigrator.from_database(db)
    migrate(migrator.drop_column("imapstate", "holder"), migrator.drop_column("imapstate", "lease_until"))
    db.drop_tables([DedupeKey])
    SchemaVersion.delete().where(SchemaVersion.version > 7).execute()
    db.close()
    db = open_database(helpdesk.db_url)
    try:
        assert schema_version(db) == SCHEMA_VERSION
        [row] = Inbox.select().where(Inbox.message_id == "<old@customer.test>")
        assert [(k.key, k.inbox) for k in DedupeKey.select()] == [("<old@customer.test>", row.id)]
        assert {"holder", "lease_until"} <= {c.name for c in db.get_columns("imapstate")}
    finally:
        db.close()
    [again] = helpdesk.ingest(mail(subject="Before the upgrade", message_id="<old@customer.test>"))
    assert (again["outcome"], again["ticket"]) == ("duplicate", first["ticket"])


def test_healthz_shows_a_failing_mailbox_and_stays_ok(helpdesk, dovecot, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    d = DaemonProc(helpdesk)
    d.configure(imap_block(dovecot, PASSWORD_ENV))
    key = mailbox_key(Imap(host=dovecot.host, port=dovecot.port, user=dovecot.user))
    try:
        d.start()

        def failing() -> dict | None:
            health = json.loads(d.get("/healthz"))
            return health if health["mailboxes"][key]["problem"] else None

        health = wait_for(failing, 30, "the mailbox to show its failure")
        assert health["ok"] is True  # SMTP still takes mail: 200
        assert health["daemon"] and health["holds"]["mailboxes"] == [key]
        assert "authentication failed" in health["mailboxes"][key]["problem"].lower()
        assert health["problems"][f"imap {key}"] == health["mailboxes"][key]["problem"]
        assert health["jobs"]["timers"]["running"] is True
    finally:
        d.stop()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_daemon_alone_on_sqlite_takes_back_a_killed_runs_leases_at_once(helpdesk, dovecot, monkeypatch):
    """A daemon killed with SIGKILL left its mailbox's lease (as HOST:PID) with a long time
    to run; on SQLite the next daemon is alone (one_daemon) and takes it at start."""
    monkeypatch.setenv(PASSWORD_ENV, dovecot.password)
    key = mailbox_key(Imap(host=dovecot.host, port=dovecot.port, user=dovecot.user))
    db = open_database(helpdesk.db_url)
    ImapState.insert(
        mailbox=key,
        uidvalidity=None,
        last_uid=0,
        holder="ghost:4242",
        lease_until=datetime.now(timezone.utc) + timedelta(hours=1),
    ).execute()
    db.close()
    d = DaemonProc(helpdesk)
    d.configure(imap_block(dovecot, PASSWORD_ENV))
    try:
        d.start()
        dovecot.append(mail(subject="Straight after the restart"))
        wait_for(lambda: dovecot.unseen() == [], 20, "the mail taken without waiting for the old lease")
        health = json.loads(d.get("/healthz"))
        assert health["holds"]["mailboxes"] == [key]
    finally:
        d.stop()
