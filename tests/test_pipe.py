"""`mailticket ingest -` as an MTA's pipe transport runs it (docs/deploy.md): a subprocess.

Postfix defers a message on exit 75, bounces it as "user unknown" on 67, and puts the
command's output in the bounce or in its log: so exit 75 for anything before the
commit, 0 for anything after it, and never a traceback.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import psycopg2
import pytest
from conftest import PG_ADMIN_DSN
from mails import mail

from mailticket import envelope

POSTFIX_F = b"From MAILER-DAEMON  Mon Mar  2 10:00:00 2026\n"  # pipe(8) flag F, null sender


def pipe(helpdesk, raw: bytes, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `mailticket ingest - ARGS` as Postfix would, with the message on stdin (LF ends)."""
    return subprocess.run(
        [sys.executable, "-m", "mailticket.cli", "--config", str(helpdesk.config_path),
         "ingest", "-", *args],
        input=raw.replace(b"\r\n", b"\n"), capture_output=True, timeout=60, env=env)


def assert_one_line_at_most(proc: subprocess.CompletedProcess) -> None:
    out = proc.stdout + proc.stderr
    assert b"Traceback" not in out, out
    assert len(proc.stderr.splitlines()) <= 1, proc.stderr


def inbox(helpdesk) -> list:
    """The inbox rows, read as the daemon would."""
    from mailticket.db import open_database
    from mailticket.models import Inbox

    db = open_database(helpdesk.db_url)
    try:
        return list(Inbox.select().order_by(Inbox.id))
    finally:
        db.close()


def run_worker(helpdesk) -> list:
    """What the daemon's worker does with pending rows."""
    from mailticket.app import open_app
    from mailticket.config import load

    app = open_app(load(str(helpdesk.config_path)))
    try:
        return app.worker.run_pending()
    finally:
        app.close()


# --- the envelope sender -----------------------------------------------------------------


@pytest.mark.parametrize("given, stored", [
    (b"From MAILER-DAEMON  Mon Mar  2 10:00:00 2026\n", b"Return-Path: <>\n"),  # flag F
    (b"Return-Path: <>\n", b"Return-Path: <>\n"),  # flag R
    (b"Return-Path: <MAILER-DAEMON>\n", b"Return-Path: <>\n"),
    (b"Return-Path: MAILER-DAEMON\n", b"Return-Path: <>\n"),
    (b"From alice@customer.test  Mon Mar  2 10:00:00 2026\n", b"Return-Path: <alice@customer.test>\n"),
    (b'From "a b"@customer.test  Mon Mar  2 10:00:00 2026\n', b'Return-Path: <"a b"@customer.test>\n'),
    # flags FR: the MTA's Return-Path, once
    (b"From bob@customer.test  Mon Mar  2 10:00:00 2026\nReturn-Path: <bob@customer.test>\n",
     b"Return-Path: <bob@customer.test>\n"),
])
def test_envelope_sender_becomes_the_topmost_return_path(given, stored):
    body = b"From: Alice <alice@customer.test>\nSubject: hi\n\nhello\n"
    assert envelope.from_pipe(given + body) == stored + body


def test_envelope_keeps_crlf_and_leaves_a_message_without_envelope_alone():
    body = b"From: Alice <alice@customer.test>\r\nSubject: hi\r\n\r\nhello\r\n"
    assert envelope.from_pipe(b"From MAILER-DAEMON  Mon Mar  2 10:00:00 2026\r\n" + body) == (
        b"Return-Path: <>\r\n" + body)
    assert envelope.from_pipe(body) == body
    # In an mbox file MAILER-DAEMON is the placeholder Python's mailbox writes: not a sender.
    assert envelope.from_mbox(b"From MAILER-DAEMON Mon Mar  2 10:00:00 2026\n" + body) == body
    assert envelope.from_mbox(b"From - Mon Mar  2 10:00:00 2026\n" + body) == body


def test_postfix_flag_f_null_sender_is_stored_as_return_path_empty(helpdesk):
    proc = pipe(helpdesk, POSTFIX_F + mail(subject="Printer is broken"),
                "--recipient", "support@helpdesk.test")
    assert proc.returncode == 0, proc.stderr
    assert_one_line_at_most(proc)
    [row] = inbox(helpdesk)
    assert bytes(row.raw).startswith(b"Return-Path: <>\nFrom: Alice Customer <alice@customer.test>\n")
    assert row.outcome == "created" and helpdesk.outbox() == []  # RFC 3834 2: never answer <>


def test_postfix_flags_fr_real_sender_is_one_return_path(helpdesk):
    raw = (b"From alice@customer.test  Mon Mar  2 10:00:00 2026\n"
           b"Return-Path: <alice@customer.test>\n" + mail(subject="Help"))
    proc = pipe(helpdesk, raw, "--recipient", "support@helpdesk.test")
    assert proc.returncode == 0, proc.stderr
    [row] = inbox(helpdesk)
    stored = bytes(row.raw)
    assert stored.startswith(b"Return-Path: <alice@customer.test>\nFrom: Alice")
    assert stored.count(b"Return-Path:") == 1 and b"From alice" not in stored
    assert helpdesk.show(1)["requester"] == "alice@customer.test"
    assert [a["to"] for a in helpdesk.outbox()] == ["alice@customer.test"]


# --- the recipient -----------------------------------------------------------------------


def test_recipient_is_the_mailbox_and_postmaster_is_accepted(helpdesk):
    helpdesk.write_config("[smtp]\ndomains = [\"help.test\"]\n")
    # Postfix expands `--recipient=${recipient}` once per recipient of the delivery.
    assert pipe(helpdesk, mail(subject="one"), "--recipient=sales@help.test",
                "--recipient=support@helpdesk.test").returncode == 0
    assert pipe(helpdesk, mail(subject="two"), "--recipient", "postmaster@helpdesk.test").returncode == 0
    assert [r.mailbox for r in inbox(helpdesk)] == ["sales@help.test", "postmaster@helpdesk.test"]


def test_recipient_not_ours_is_67_in_one_line_and_nothing_is_stored(helpdesk):
    proc = pipe(helpdesk, mail(), "--recipient", "support@helpdesk.test",
                "--recipient", "someone@elsewhere.test")
    assert proc.returncode == 67, proc.stderr
    assert_one_line_at_most(proc)
    assert b"someone@elsewhere.test" in proc.stderr and b"not accepted" in proc.stderr
    assert proc.stdout == b""
    assert inbox(helpdesk) == []


# --- before the commit: 75 ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"])
def test_database_refusing_connections_is_75_in_one_line(helpdesk, pg_url):
    name = pg_url.rsplit("/", 1)[1]
    admin = psycopg2.connect(PG_ADMIN_DSN)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        proc = pipe(helpdesk, mail(), "--recipient", "support@helpdesk.test")
    finally:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()
    assert proc.returncode == 75, proc.stderr
    assert_one_line_at_most(proc)
    assert b"not currently accepting connections" in proc.stderr
    assert inbox(helpdesk) == []


@pytest.mark.parametrize("backend", ["sqlite"])
def test_writer_lock_file_unusable_is_75_in_one_line(helpdesk, tmp_path):
    # The incident: root had created the lock file beside the database, and the
    # mailticket user could not open it.  (Tests run as root: a folder in its place
    # cannot be opened for writing either.)
    assert helpdesk.cli("ticket", "list").exit_code == 0  # the database exists
    (tmp_path / "mailticket.db.writer-lock").mkdir()
    proc = pipe(helpdesk, mail(), "--recipient", "support@helpdesk.test")
    assert proc.returncode == 75, proc.stderr
    assert_one_line_at_most(proc)
    assert b"writer-lock" in proc.stderr and proc.stdout == b""
    (tmp_path / "mailticket.db.writer-lock").rmdir()
    assert inbox(helpdesk) == []


@pytest.mark.parametrize("backend", ["sqlite"])
def test_database_folder_unusable_is_75_in_one_line(helpdesk, tmp_path):
    (tmp_path / "var").write_text("a file where the database folder should be")
    helpdesk.db_url = f"sqlite:///{tmp_path / 'var' / 'mailticket.db'}"
    helpdesk.write_config()
    proc = pipe(helpdesk, mail(), "--recipient", "support@helpdesk.test")
    assert proc.returncode == 75, proc.stderr
    assert_one_line_at_most(proc)


def test_setup_errors_are_75_not_a_bounce(helpdesk, tmp_path):
    # Any other status would bounce every message until someone fixed the setup.
    proc = pipe(helpdesk, mail(), "--recipent=support@helpdesk.test")  # a typo in master.cf
    assert proc.returncode == 75 and b"--recipent" in proc.stderr
    assert_one_line_at_most(proc)
    helpdesk.rule_file("10-bad.yaml", "- name: bad\n  when: {nonsense: 1}\n")
    proc = pipe(helpdesk, mail(), "--recipient", "support@helpdesk.test")
    assert proc.returncode == 75, proc.stderr
    assert_one_line_at_most(proc)
    assert b"10-bad.yaml" in proc.stderr
    helpdesk.config_path = tmp_path / "missing.toml"
    proc = pipe(helpdesk, mail(), "--recipient", "support@helpdesk.test")
    assert proc.returncode == 75 and b"no configuration file" in proc.stderr
    assert_one_line_at_most(proc)


# --- after the commit: 0, and the message waits ------------------------------------------


@contextlib.contextmanager
def inbox_updates_refused(helpdesk, backend):
    """Every UPDATE of an inbox row fails as a busy lock does, until the block ends.

    The store (an INSERT) commits; the worker's transaction then fails outside any
    message's savepoint (its quarantine UPDATE fails too), as when the daemon held
    the lock past the busy timeout.  On PostgreSQL the error is the one a lock
    timeout raises (SQLSTATE 55P03).
    """
    from mailticket.db import open_database

    db = open_database(helpdesk.db_url)
    if backend == "sqlite":
        db.execute_sql("CREATE TRIGGER busy BEFORE UPDATE ON inbox "
                       "BEGIN SELECT RAISE(ABORT, 'database is locked'); END")
    else:
        db.execute_sql("CREATE FUNCTION busy() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
                       "'canceling statement due to lock timeout' USING ERRCODE = '55P03'; "
                       "END $$ LANGUAGE plpgsql")
        db.execute_sql("CREATE TRIGGER busy BEFORE UPDATE ON inbox "
                       "FOR EACH ROW EXECUTE FUNCTION busy()")
    try:
        yield
    finally:
        db.execute_sql("DROP TRIGGER busy" + ("" if backend == "sqlite" else " ON inbox"))
        if backend != "sqlite":
            db.execute_sql("DROP FUNCTION busy()")
        db.close()


def test_processing_that_cannot_commit_exits_0_and_leaves_the_message_pending(helpdesk, backend):
    with inbox_updates_refused(helpdesk, backend):
        proc = pipe(helpdesk, mail(subject="Printer on fire"), "--recipient", "support@helpdesk.test")
    assert proc.returncode == 0, proc.stderr  # 75 would make Postfix deliver it twice
    assert_one_line_at_most(proc)
    assert b"processing deferred" in proc.stderr
    [row] = inbox(helpdesk)
    assert row.state == "pending" and row.mailbox == "support@helpdesk.test"
    [res] = run_worker(helpdesk)  # the daemon's worker takes it later
    assert res.outcome == "created" and helpdesk.show(res.ticket)["subject"] == "Printer on fire"


def test_processing_that_raises_exits_0_and_quarantines_without_a_traceback(helpdesk):
    (helpdesk.root / "templates").mkdir()
    (helpdesk.root / "templates" / "ack.en.txt.j2").write_text(
        "Subject: {{ token }} {{ subject }}\n\n{{ 1 // 0 }}\n")  # an admin's broken template
    proc = pipe(helpdesk, mail(subject="Help"), "--recipient", "support@helpdesk.test")
    assert proc.returncode == 0, proc.stderr
    assert_one_line_at_most(proc)
    assert b"quarantined" in proc.stdout
    [row] = inbox(helpdesk)
    assert row.state == "quarantined" and "ZeroDivisionError" in row.reason
