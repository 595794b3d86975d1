"""Processing that must never stop: database outages, transient errors, crashed children,
a failed start, and a writer lock file owned by someone else.

The daemon runs as a real `mailticket run` subprocess (tests/test_daemon.py's
DaemonProc); a PostgreSQL outage is made for our test database alone
(ALLOW_CONNECTIONS false and its backends terminated, from the `postgres` database),
and always undone in a `finally`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2
import pytest
from conftest import PG_ADMIN_DSN, Helpdesk
from helpers import free_port, wait_for
from mails import mail
from test_daemon import DaemonProc, children, tickets_of

from mailticket import inbox, pipeline
from mailticket.app import open_app
from mailticket.config import load
from mailticket.errors import StorageError
from mailticket.models import Inbox, Ticket


def health(d: DaemonProc) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{d.http_port}/healthz", timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def acks(hd) -> list[str]:
    return [p.read_text() for p in (hd.root / "var" / "outgoing").glob("*.eml")]


@pytest.fixture
def daemon(helpdesk):
    d = DaemonProc(helpdesk)
    yield d
    d.stop(signal.SIGKILL)


# --- 1. a PostgreSQL outage ----------------------------------------------------------------


class Outage:
    """Connections to one database refused and its backends ended, until `end()`."""

    def __init__(self, url: str) -> None:
        self.name = url.rsplit("/", 1)[1]
        self.admin = psycopg2.connect(PG_ADMIN_DSN)
        self.admin.autocommit = True

    def begin(self) -> None:
        with self.admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (self.name,))

    def end(self) -> None:
        with self.admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')
        self.admin.close()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_every_process_reconnects_after_a_postgresql_outage(daemon, helpdesk):
    daemon.start()
    daemon.send(mail(subject="Before the outage"))
    wait_for(lambda: len(acks(helpdesk)) == 1, what="the first acknowledgement")
    outage = Outage(helpdesk.db_url)
    try:
        outage.begin()
        # /healthz tells the truth: the database is gone and neither child can work.
        status, body = wait_for(
            lambda: (h := health(daemon))[0] == 503
            and {"worker", "outbox", "database"} <= set(h[1]["problems"]) and h,
            timeout=20, what="/healthz to report the outage")
        assert body["ok"] is False and body["database"] is False and body["worker"] is False
        # A few seconds of refused connections: the children keep trying, with backoff.
        refused = "is not currently accepting connections"
        wait_for(lambda: all(f"{name}: could not" in line and refused in line
                             for name in ("worker", "outbox")
                             for line in [_last(daemon.log.read_text(), f"{name}: could not")]),
                 timeout=20, what="both children to meet refused connections")
    finally:
        outage.end()
    wait_for(lambda: health(daemon)[0] == 200, timeout=30, what="/healthz to recover")
    # The listener's store thread still holds a connection the server ended: the first
    # store after the outage reconnects and retries instead of answering 451.
    after = [f"After the outage {n}" for n in range(3)]
    for subject in after:
        daemon.send(mail(subject=subject))
    wait_for(lambda: len(acks(helpdesk)) == 4, timeout=30,
             what="the worker and the outbox to work again")
    assert {t["subject"] for t in tickets_of(helpdesk)} == {"Before the outage", *after}
    log = daemon.log.read_text()
    assert "worker: working again" in log and "outbox: working again" in log
    # Backoff: a handful of retries in the outage, not one a second until a restart.
    assert log.count("connection already closed") < 10
    assert daemon.stop() == 0


def _last(log: str, marker: str) -> str:
    return next((line for line in reversed(log.splitlines()) if marker in line), "")


# --- 2. transient errors are not the message's fault --------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_lock_timeout_in_a_step_leaves_the_message_pending_not_quarantined(helpdesk):
    app = open_app(load(helpdesk.config_path), batch=10)
    inbox.store_many([inbox.Incoming(mail(subject=s), "ingest") for s in ("a", "b")],
                      now=app.clock.now())
    app.db.execute_sql("SET lock_timeout = '200ms'")
    locker = psycopg2.connect(helpdesk.db_url)
    try:
        with locker.cursor() as cur:  # a long transaction holds the ticket table
            cur.execute("LOCK TABLE ticket IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StorageError, match="lock timeout"):
            app.worker.run_pending()
    finally:
        locker.rollback()
        locker.close()
    assert Inbox.select().where(Inbox.state == "quarantined").count() == 0
    assert Inbox.select().where(Inbox.state == "pending").count() == 2
    # Once the lock is gone the same rows are processed normally.
    assert [r.outcome for r in app.worker.run_pending()] == ["created", "created"]
    app.close()


def test_a_bad_final_write_quarantines_that_message_alone(helpdesk, monkeypatch):
    """An event that cannot be written (here: not JSON) is the message's fault: it is
    quarantined at the `finish` step and the rest of the batch commits."""
    real = pipeline.notify_step

    def unwritable(run, env):
        real(run, env)
        if run.parsed.subject == "poison":
            run.event(run.ticket, "system", "odd", {"value": object()})

    steps = tuple((n, unwritable if n == "notify" else f) for n, f in pipeline.STEPS)
    monkeypatch.setattr(pipeline.Pipeline.__init__, "__defaults__", (steps,))
    app = open_app(load(helpdesk.config_path), batch=50)
    inbox.store_many([inbox.Incoming(mail(subject=s), "ingest") for s in ("a", "poison", "b")],
                      now=app.clock.now())
    outcomes = [r.outcome for r in app.worker.run_pending()]
    assert outcomes == ["created", "quarantined", "created"]
    bad = Inbox.get(Inbox.state == "quarantined")
    assert bad.step == "finish" and "TypeError" in bad.reason
    assert Ticket.select().count() == 2
    app.close()


# --- 3. start-up failures and crashed children --------------------------------------------


def _run_daemon(hd, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailticket.cli", "--config", str(hd.config_path), "run"],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("which", ["smtp", "http"])
def test_a_port_in_use_stops_the_start_with_one_line(helpdesk, which):
    d = DaemonProc(helpdesk)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", d.smtp_port if which == "smtp" else d.http_port))
        taken.listen()
        res = _run_daemon(helpdesk)
    assert res.returncode != 0
    port = d.smtp_port if which == "smtp" else d.http_port
    assert f"127.0.0.1:{port}" in res.stderr
    assert "Traceback" not in res.stderr, res.stderr


def test_an_unreadable_certificate_stops_the_start_with_one_line(helpdesk):
    d = DaemonProc(helpdesk)
    cert = helpdesk.root / "missing-cert.pem"
    helpdesk.write_config(f"""
        [smtp]
        listen = "127.0.0.1:{d.smtp_port}"
        tls_cert = "{cert}"
        [daemon]
        http = "127.0.0.1:{d.http_port}"
    """)
    res = _run_daemon(helpdesk)
    assert res.returncode != 0
    assert str(cert) in res.stderr
    assert "Traceback" not in res.stderr, res.stderr


def test_a_killed_worker_is_restarted_and_mail_still_gets_processed(daemon, helpdesk):
    daemon.start()
    # The worker and the timers run at nice 0 (the outbox at 10): kill both.
    unniced = [pid for pid, nice in children(daemon.proc.pid).items() if nice == 0]
    assert len(unniced) == 2
    for pid in unniced:
        os.kill(int(pid), signal.SIGKILL)
    wait_for(lambda: "restarting the worker" in daemon.log.read_text(), what="the restart in the log")
    wait_for(lambda: "restarting the timers" in daemon.log.read_text(), what="the timers' restart in the log")
    wait_for(lambda: health(daemon)[0] == 200, timeout=30, what="the new worker to be ready")
    daemon.send(mail(subject="After the crash"))
    [t] = wait_for(lambda: tickets_of(helpdesk), what="the ticket")
    assert t["subject"] == "After the crash"
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


# --- 4. the writer lock file of another user -----------------------------------------------


NOBODY = 65534


def _ingest_as(uid: int, hd, raw: bytes, imports: tuple[str, ...] = ()) -> tuple[int, str, str, list]:
    """`mailticket ingest -` in a forked process that runs as `uid`: exit code, output,
    the exception it ended with (empty when it ended with its exit code), and the modules
    it had imported.  Forked, so that this process never holds the lock file open itself.

    The interpreter lives under /root, out of nobody's reach: `imports` (what a
    run as root loaded) are imported before the process drops root."""
    from click.testing import CliRunner

    from mailticket.cli import main

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run the command, report, never return to pytest
        try:
            os.close(read)
            for name in imports:
                with contextlib.suppress(Exception):
                    importlib.import_module(name)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            res = CliRunner().invoke(main, ["--config", str(hd.config_path), "ingest", "-"], input=raw)
            ended = res.exception
            exc = "" if ended is None or isinstance(ended, SystemExit) else repr(ended)
            os.write(write, json.dumps([res.exit_code, res.output, exc, sorted(sys.modules)]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return tuple(json.loads(data))


@pytest.fixture
def shared_helpdesk():
    """A helpdesk folder that nobody (the service user) can reach, on SQLite."""
    root = Path(tempfile.mkdtemp(prefix="mailticket-lock-"))
    root.chmod(0o755)
    hd = Helpdesk(root, f"sqlite:///{root / 'mailticket.db'}")
    yield hd
    subprocess.run(["rm", "-rf", str(root)], check=True)


def _give_to_nobody(root: Path, but: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path != but:
            os.chown(path, NOBODY, NOBODY)


def test_the_service_user_can_use_a_writer_lock_root_created(shared_helpdesk):
    hd = shared_helpdesk
    code, _, _, imports = _ingest_as(0, hd, mail(subject="Ingested by root"))  # makes the lock
    assert code == 0
    lock = hd.root / "mailticket.db.writer-lock"
    assert lock.stat().st_uid == 0
    _give_to_nobody(hd.root, but=lock)
    code, output, exc, _ = _ingest_as(NOBODY, hd, mail(subject="Piped by the MTA"), imports)
    assert (code, exc) == (0, ""), output
    assert len(tickets_of(hd)) == 2


def test_an_unreadable_writer_lock_is_a_temporary_failure_naming_it(shared_helpdesk):
    hd = shared_helpdesk
    code, _, _, imports = _ingest_as(0, hd, mail(subject="Ingested by root"))
    assert code == 0
    lock = hd.root / "mailticket.db.writer-lock"
    lock.chmod(0o600)  # as an older mailticket made it
    _give_to_nobody(hd.root, but=lock)
    code, output, exc, _ = _ingest_as(NOBODY, hd, mail(subject="Piped by the MTA"), imports)
    assert exc == ""
    assert code == 75
    assert str(lock) in output


# --- 5. the outbox's word on the smarthost, and its stale claims ---------------------------


def test_an_unreachable_smarthost_shows_in_healthz_and_metrics_without_a_503(daemon, helpdesk):
    closed = free_port()  # nothing listens there: connection refused
    daemon.configure(f"""
        [outgoing]
        transport = "smtp"
        host = "127.0.0.1"
        port = {closed}
    """)
    daemon.start()
    daemon.send(mail(subject="Ack stays in the outbox"))
    status, body = wait_for(lambda: (h := health(daemon))[1]["problems"].get("smarthost") and h,
                            what="/healthz to report the smarthost")
    assert status == 200 and body["ok"] is True  # the mail is safe in the outbox
    assert body["outbox"] is False and body["worker"] is True
    assert "mailticket_outbox_transport_up 0.0" in daemon.get("/metrics")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_claim_left_by_a_killed_outbox_goes_out_at_the_next_start(daemon, helpdesk):
    from mailticket.db import open_database
    from mailticket.models import Outbox

    helpdesk.ingest(mail(subject="Claimed, then killed"))  # queues the acknowledgement
    db = open_database(helpdesk.db_url)
    lease_ends = datetime.now(timezone.utc) + timedelta(minutes=10)
    leased = Outbox.update(state="sending", next_attempt_at=lease_ends)
    assert leased.execute() == 1
    db.close()
    daemon.start()
    [eml] = wait_for(lambda: acks(helpdesk), what="the acknowledgement, without waiting for the lease")
    assert "Claimed, then killed" in eml
    assert daemon.stop() == 0
