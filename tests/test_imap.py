"""The IMAP poller against a real, private Dovecot (tests/dovecot.py).

Every test has a user (an empty INBOX) of its own on one shared server and a
SQLite inbox in tmp_path; what is checked is what matters to a helpdesk: Inbox
rows (by Message-ID: nothing lost, nothing twice) and the flags and folders the
server shows afterwards.  Faults are injected through `ImapPoller._connect`, the
one seam for the network client.  Waiting is always on a condition with a deadline.
"""

from __future__ import annotations

import email
import logging
import ssl
import threading
from collections import Counter
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from helpers import wait_for
from mails import mail

from mailticket.clock import SystemClock
from mailticket.config import Imap
from mailticket.db import open_database
from mailticket.errors import StorageError
from mailticket.imap import ImapPoller, mailbox_key
from mailticket.models import ImapState, Inbox

PASSWORD_ENV = "MAILTICKET_TEST_IMAP_PASSWORD"


@pytest.fixture
def db(tmp_path):
    database = open_database(f"sqlite:///{tmp_path / 'mailticket.db'}")
    yield database
    database.close()


@pytest.fixture
def box(dovecot, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, dovecot.password)
    return dovecot


def config(box, **kw) -> Imap:
    kw.setdefault("password_env", PASSWORD_ENV)
    return Imap(host=box.host, port=box.port, tls="none", user=box.user, **kw)


class Spy:
    """Wraps the poller's IMAPClient: runs `before[name](*args)` before a call, hides capabilities."""

    def __init__(self, client, before: dict, hide: tuple[str, ...] = ()) -> None:
        self._client, self._before, self._hide = client, before, hide

    def has_capability(self, capability: str) -> bool:
        return capability not in self._hide and self._client.has_capability(capability)

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        hook = self._before.get(name)
        if hook is None:
            return attr

        def call(*args, **kwargs):
            hook(*args, **kwargs)
            return attr(*args, **kwargs)

        return call


def poller(box, *, on_stored=None, before=None, hide=(), batch=200, **cfg) -> ImapPoller:
    p = ImapPoller(config(box, **cfg), SystemClock(), on_stored, batch=batch)
    p.backoff_min, p.backoff_max = 0.05, 0.5
    if before or hide:
        connect = p._connect
        p._connect = lambda: Spy(connect(), before or {}, hide)  # type: ignore[method-assign]
    return p


@contextmanager
def running(p: ImapPoller):
    """`p.run(stop)` in a thread; on leaving, stop it and check that it ends promptly."""
    stop = threading.Event()
    thread = threading.Thread(target=p.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the poller did not stop within 10 s"


def rows() -> list[tuple[str, bool]]:
    """(Message-ID, silent) of every Inbox row, in order."""
    return [(email.message_from_bytes(bytes(r.raw))["Message-ID"], r.silent)
            for r in Inbox.select().order_by(Inbox.id)]


def message_ids() -> list[str]:
    return [m for m, _ in rows()]


def state(box, folder: str = "INBOX") -> ImapState | None:
    return ImapState.get_or_none(ImapState.mailbox == mailbox_key(config(box, folder=folder)))


def mails(n: int, prefix: str = "m") -> list[bytes]:
    return [mail(subject=f"{prefix} {i}", message_id=f"<{prefix}{i}@customer.test>")
            for i in range(n)]


def test_poll_stores_then_flags_seen(box, db):
    box.append_many(mails(3))
    got: list[list[int]] = []
    p = poller(box, on_stored=got.append, queue="billing")
    assert p.poll_once() == 3
    assert message_ids() == [f"<m{i}@customer.test>" for i in range(3)]
    row = Inbox.get()
    assert (row.source, row.queue, row.mailbox, row.silent) == (
        "imap", "billing", mailbox_key(p.cfg), False)
    assert got == [[r.id for r in Inbox.select().order_by(Inbox.id)]]
    assert box.unseen() == []
    st = state(box)
    assert (st.uidvalidity, st.last_uid) == (box.uidvalidity(), 3)

    assert p.poll_once() == 0  # nothing new: nothing fetched twice
    box.append(mail(message_id="<later@customer.test>"))
    assert p.poll_once() == 1
    assert message_ids()[-1] == "<later@customer.test>" and len(rows()) == 4
    p.close()


def test_seen_only_after_commit(box, db):
    p = poller(box)
    assert p.poll_once() == 0  # connected, state saved
    box.append_many(mails(2))
    # The inbox INSERTs succeed but the ImapState update fails: the one transaction
    # must roll both back, and the server must not hear that we have the messages.
    db.execute_sql("ALTER TABLE imapstate RENAME TO imapstate_away")
    with pytest.raises(StorageError):
        p.poll_once()
    db.execute_sql("ALTER TABLE imapstate_away RENAME TO imapstate")
    assert rows() == []
    assert box.unseen() == [1, 2]
    assert state(box).last_uid == 0

    db.execute_sql("ALTER TABLE inbox RENAME TO inbox_away")  # now the store itself fails
    with pytest.raises(StorageError):
        p.poll_once()
    db.execute_sql("ALTER TABLE inbox_away RENAME TO inbox")
    assert box.unseen() == [1, 2]

    assert p.poll_once() == 2  # the database is back: fetched again, then flagged
    assert sorted(message_ids()) == ["<m0@customer.test>", "<m1@customer.test>"]
    assert box.unseen() == []
    p.close()


@pytest.mark.parametrize("move", [True, False], ids=["MOVE", "COPY+EXPUNGE"])
def test_moved_to_processed_folder(box, db, move):
    box.append_many(mails(3))
    p = poller(box, processed_folder="Done", hide=() if move else ("MOVE",))
    assert p.poll_once() == 3
    assert box.uids("INBOX") == []  # nothing left behind, not even \Deleted copies
    assert len(box.uids("Done")) == 3
    box.append(mail(message_id="<x@customer.test>"))
    assert p.poll_once() == 1
    assert box.uids("INBOX") == [] and len(box.uids("Done")) == 4
    assert len(rows()) == 4
    p.close()


def test_idle_picks_up_new_mail(box, db):
    idling = threading.Event()
    stored = threading.Event()
    # An hour between polls: only IDLE can bring the message in within the test.
    p = poller(box, idle=True, poll_interval=3600, before={"idle": lambda: idling.set()},
               on_stored=lambda ids: stored.set())
    with running(p):
        wait_for(idling.is_set, 10, "the poller to enter IDLE")
        box.append(mail(message_id="<idle@customer.test>"))
        wait_for(stored.is_set, 10, "IDLE to bring the new message in")
        assert message_ids() == ["<idle@customer.test>"]
        wait_for(lambda: box.unseen() == [], 10, "the message to be flagged \\Seen")


def test_idle_survives_server_restart(box, db):
    idles = Counter()
    p = poller(box, idle=True, poll_interval=3600,
               before={"idle": lambda: idles.update(["idle"])})
    with running(p):
        wait_for(lambda: idles["idle"] == 1, 10, "the poller to enter IDLE")
        box.restart()  # the server drops the idling connection
        wait_for(lambda: idles["idle"] == 2, 10, "the poller to reconnect and IDLE again")
        box.append(mail(message_id="<after-restart@customer.test>"))
        wait_for(lambda: len(rows()) == 1, 10, "IDLE to bring the new message in")
    assert message_ids() == ["<after-restart@customer.test>"]


def test_polling_without_idle(box, db):
    p = poller(box, idle=False, poll_interval=1, before={"idle": pytest.fail})
    with running(p):
        wait_for(lambda: state(box) is not None, 10, "the first poll")
        box.append(mail(message_id="<poll@customer.test>"))
        wait_for(lambda: len(rows()) == 1, 10, "the next poll to store the message")
    assert message_ids() == ["<poll@customer.test>"]


def _restart_once(box, at: int, what: str):
    """A hook: restart Dovecot (dropping our connection) before the `at`-th `what` call."""
    calls = Counter()

    def hook(*args, **kwargs):
        if what == "fetch" and "BODY.PEEK[]" not in args[1]:
            return
        calls[what] += 1
        if calls[what] == at:
            box.restart()

    return hook


@pytest.mark.parametrize("what", ["fetch", "add_flags"],
                         ids=["before-commit", "after-commit-before-flag"])
def test_server_restart_mid_backlog(box, db, what, caplog):
    box.append_many(mails(500))
    # fetch: the 3rd batch was never stored, so it is fetched again after reconnecting;
    # add_flags: the 2nd batch is stored but unflagged, and is flagged after reconnecting.
    p = poller(box, batch=100, before={what: _restart_once(box, 3 if what == "fetch" else 2,
                                                            what)})
    with running(p):
        wait_for(lambda: len(rows()) >= 500 and box.unseen() == [], 30,
                 "the whole backlog to be stored and flagged")
    ids = Counter(message_ids())
    assert len(ids) == 500 and max(ids.values()) == 1  # nothing lost, nothing twice
    assert state(box).last_uid == 500
    failures = [r for r in caplog.records if r.name == "mailticket.imap" and r.levelname == "WARNING"]
    assert len(failures) >= 1 and all("retrying" in r.getMessage() for r in failures)


def test_uidvalidity_change_starts_over(box, db):
    old = box.recreate_folder("Support")
    box.append_many(mails(2, "old"), folder="Support")
    p = poller(box, folder="Support")
    assert p.poll_once() == 2
    p.close()
    # The folder is recreated: its UIDs start at 1 again, below our last UID (2).
    new = box.recreate_folder("Support")
    assert new != old
    box.append(mail(message_id="<new@customer.test>"), folder="Support")
    assert p.poll_once() == 1
    assert message_ids()[-1] == "<new@customer.test>"
    st = state(box, "Support")
    assert (st.uidvalidity, st.last_uid) == (new, 1)
    p.close()


def test_large_backlog_in_batches(box, db):
    box.append_many(mails(1000))
    saved: list[tuple[int, int]] = []
    fetched: list[int] = []
    p = poller(box, batch=200,
               on_stored=lambda ids: saved.append((len(ids), state(box).last_uid)),
               before={"fetch": lambda uids, items: fetched.append(len(uids))})
    assert p.poll_once() == 1000
    # After every batch, the last UID was already committed with its messages.
    assert saved == [(200, 200), (200, 400), (200, 600), (200, 800), (200, 1000)]
    assert max(fetched) == 200
    assert len(set(message_ids())) == 1000 and box.unseen() == []
    p.close()


def test_stop_between_batches_resumes_later(box, db):
    box.append_many(mails(300))
    stop = threading.Event()
    first = poller(box, batch=100, on_stored=lambda ids: stop.set())
    first.run(stop)  # returns after the first batch: it stops between batches
    assert len(rows()) == 100 and state(box).last_uid == 100
    assert box.unseen() == list(range(101, 301))
    again = poller(box, batch=100)  # as after a daemon restart: resumes at UID 101
    assert again.poll_once() == 200
    ids = Counter(message_ids())
    assert len(ids) == 300 and max(ids.values()) == 1 and box.unseen() == []
    again.close()


def test_batches_are_bounded_in_bytes(box, db):
    big = b"x" * 40_000
    box.append_many([mail(message_id=f"<b{i}@customer.test>",
                          attachments=[("a.bin", "application/octet-stream", big)])
                     for i in range(10)])
    bodies: list[int] = []
    p = ImapPoller(config(box), SystemClock(), batch=200, batch_bytes=150_000)
    connect = p._connect
    p._connect = lambda: Spy(connect(), {  # type: ignore[method-assign]
        "fetch": lambda uids, items: bodies.append(len(uids)) if "BODY.PEEK[]" in items else None})
    assert p.poll_once() == 10
    assert sum(bodies) == 10 and max(bodies) <= 3  # ~55 KB each: at most 3 per 150 KB
    p.close()


@pytest.mark.parametrize("history", ["import", "skip"])
def test_history_on_first_connection(box, db, history):
    old = datetime.now(UTC) - timedelta(days=30)
    box.append_many(mails(3, "old"), when=old)
    box.append_many(mails(2, "new"))
    p = poller(box, history=history, history_days=7)
    assert p.poll_once() == (5 if history == "import" else 2)
    if history == "import":
        assert rows() == [(f"<old{i}@customer.test>", True) for i in range(3)] + [
            (f"<new{i}@customer.test>", False) for i in range(2)]
        assert box.unseen() == []
    else:
        assert rows() == [(f"<new{i}@customer.test>", False) for i in range(2)]
        assert box.unseen() == [1, 2, 3]  # skipped: left alone, but counted past
    assert state(box).last_uid == 5
    # Once the mailbox is connected, even old-dated mail is new mail.
    box.append(mail(message_id="<late@customer.test>"), when=old)
    assert p.poll_once() == 1
    assert rows()[-1] == ("<late@customer.test>", False)
    p.close()


def test_interrupted_first_import_stays_silent(box, db):
    old = datetime.now(UTC) - timedelta(days=30)
    box.append_many(mails(5, "old"), when=old)
    fetches = Counter()

    def drop_on_second_body_fetch(uids, items):
        if "BODY.PEEK[]" in items:
            fetches["body"] += 1
            if fetches["body"] == 2:
                raise ConnectionResetError("connection dropped (injected)")

    first = poller(box, batch=2, before={"fetch": drop_on_second_body_fetch})
    with pytest.raises(ConnectionResetError):
        first.poll_once()
    st = state(box)
    assert (st.uidvalidity, st.last_uid) == (None, 2)  # NULL: the first import is not done
    again = poller(box, batch=2)  # as after a daemon restart
    assert again.poll_once() == 3
    assert [silent for _, silent in rows()] == [True] * 5
    assert state(box).uidvalidity == box.uidvalidity()
    again.close()


def test_password_from_file_and_never_logged(box, db, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # imapclient's protocol log too: it must redact LOGIN
    secret = tmp_path / "imap-password"
    secret.write_text("wrong-password\n")
    box.append(mail(message_id="<pw@customer.test>"))
    p = poller(box, password_env="", password_file=str(secret))
    p.backoff_min = 0.5  # time to fix the file before the next attempt

    def failures() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "mailticket.imap" and r.levelname == "WARNING"]

    with running(p):
        wait_for(failures, 10, "a failed login, logged")
        secret.write_text(box.password + "\n")  # fixed: read again on the next attempt
        wait_for(lambda: len(rows()) == 1, 20, "the poller to log in and store the message")
    assert "LoginError" in failures()[0] and "retrying" in failures()[0]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert box.password not in text and "wrong-password" not in text


@pytest.mark.parametrize("mode", ["tls", "starttls"])
def test_tls_and_starttls(dovecot_tls, db, monkeypatch, mode):
    box = dovecot_tls.account()
    monkeypatch.setenv(PASSWORD_ENV, box.password)
    box.append(mail(message_id=f"<{mode}@customer.test>"))
    port = dovecot_tls.tls_port if mode == "tls" else box.port
    cfg = Imap(host=box.host, port=port, tls=mode, user=box.user, password_env=PASSWORD_ENV)
    context = ssl.create_default_context(cafile=str(dovecot_tls.cafile))
    p = ImapPoller(cfg, SystemClock(), ssl_context=context)
    assert p.poll_once() == 1
    assert message_ids() == [f"<{mode}@customer.test>"]
    p.close()
    # Without trusting the self-signed certificate, nothing is read in clear.
    with pytest.raises(ssl.SSLCertVerificationError):
        ImapPoller(cfg, SystemClock()).poll_once()
