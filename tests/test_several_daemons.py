"""Several `mailticket run` processes on one PostgreSQL database: exactly once.

Three real daemons share a new database (they migrate it together at start), an
outgoing folder and two IMAP mailboxes on the private Dovecot.  SMTP mail is spread
over the three (a fifth of it sent to two daemons at once, as a client that retries
elsewhere would), one daemon is killed with SIGKILL in the middle, and IMAP mail
arrives before and after the kill.  Then:

- every message that got a 250 is there once: one ticket, one acknowledgement;
- each mailbox is polled by one daemon at a time, and the dead daemon's is taken
  over within its lease (`[daemon] lease_seconds`);
- the timed jobs, run by all three every second, escalate each overdue ticket once;
- what the dead daemon's outbox had claimed is sent by another, once.

And on SQLite a second daemon on the same file is refused, naming the first.
"""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest
from conftest import Helpdesk, new_pg_database
from helpers import wait_for
from mails import mail
from test_daemon import DaemonProc

from mailticket import config, ingest
from mailticket.app import open_app
from mailticket.clock import FrozenClock

pytestmark = pytest.mark.slow

SMTP_MESSAGES = 150
TWICE = 30  # of which this many are sent to two daemons
IMAP_EACH = 15  # per mailbox, before the kill and again after it


@pytest.fixture
def fresh_pg():
    """A database of its own, empty: the three daemons migrate it at once."""
    with new_pg_database("mailticket_multi_") as url:
        yield url


class Peer(DaemonProc):
    def __init__(self, helpdesk, name: str, shared: str) -> None:
        self.name, self.shared = name, shared
        super().__init__(helpdesk)

    def configure(self, extra: str = "") -> None:
        self.hd.write_config(
            f"""
            [smtp]
            listen = "127.0.0.1:{self.smtp_port}"
            [daemon]
            http = "127.0.0.1:{self.http_port}"
            name = "{self.name}"
            lease_seconds = 3
            outbox_interval = 1
            tick_interval = 1
            drain_seconds = 10
            [sla]
            business_days = "mon-sun"
            business_hours = "00:00-24:00"
            first_response = {{ P3 = 1 }}
            [outgoing]
            folder = "{self.shared}"
        """
            + extra
        )

    def launch(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailticket.cli", "--config", str(self.hd.config_path), "run"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def health(self) -> dict:
        return json.loads(self._get_any("/healthz"))

    def _get_any(self, path: str) -> str:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.read().decode()
        except urllib.error.HTTPError as exc:  # 503 still carries the JSON
            return exc.read().decode()


def query(url: str, sql: str, *args) -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def imap_block(box, password_env: str) -> str:
    return f"""
        [[imap]]
        host = "{box.host}"
        port = {box.port}
        tls = "none"
        user = "{box.user}"
        password_env = "{password_env}"
        history_days = 0
        idle = true
    """


def test_three_daemons_on_one_postgresql_database_exactly_once(
    tmp_path, fresh_pg, dovecot_server, monkeypatch
):
    dovecot_server.start()
    box_a, box_b = dovecot_server.account(), dovecot_server.account()
    monkeypatch.setenv("TEST_IMAP_PASSWORD", box_a.password)
    monkeypatch.setenv("MAILTICKET_AGENT_SECRET", "s3cret-shared-by-the-daemons")
    shared = tmp_path / "outgoing"
    peers = []
    for n in (1, 2, 3):
        root = tmp_path / f"d{n}"
        root.mkdir()
        peer = Peer(Helpdesk(root, fresh_pg), f"d{n}", str(shared))
        peer.configure(imap_block(box_a, "TEST_IMAP_PASSWORD") + imap_block(box_b, "TEST_IMAP_PASSWORD"))
        peers.append(peer)
    try:
        for peer in peers:  # at once: they race to migrate the new database
            peer.launch()
        for peer in peers:
            wait_for(peer._healthy, 60, f"daemon {peer.name} (log: {peer.log})")

        # Each mailbox is held by exactly one daemon.
        def holders() -> dict[str, str]:
            rows = query(fresh_pg, "SELECT mailbox, holder FROM imapstate WHERE holder IS NOT NULL")
            return dict(rows) if len(rows) == 2 else {}

        held = wait_for(holders, 30, "both mailboxes to be taken")

        # /healthz says what the database says: every mailbox listed once, by its holder.
        def agreed() -> tuple[dict, dict] | None:  # the database unchanged while /healthz was read
            before = dict(query(fresh_pg, "SELECT mailbox, holder FROM imapstate"))
            claimed = {p.name: p.health()["holds"]["mailboxes"] for p in peers}
            after = dict(query(fresh_pg, "SELECT mailbox, holder FROM imapstate"))
            return (claimed, after) if before == after else None

        claimed, held = wait_for(agreed, 15, "a steady view of the leases")
        assert sorted(k for ks in claimed.values() for k in ks) == sorted(held)  # none held twice
        assert all(held[k] == name for name, ks in claimed.items() for k in ks)
        # The first connection imports what a mailbox holds silently (history_days = 0):
        # the mail of this test comes after both first imports are done.
        wait_for(
            lambda: (
                query(fresh_pg, "SELECT count(*) FROM imapstate WHERE uidvalidity IS NOT NULL")[0][0] == 2
            ),
            30,
            "both mailboxes' first import",
        )
        key_a = next(k for k in held if k.startswith(box_a.user + "@"))
        victim = next(p for p in peers if p.name == held[key_a])
        survivors = [p for p in peers if p is not victim]

        eve = ["eve@agents.test", "--name", "Eve", "--group", "tier2", "--tier", "2"]
        res = peers[0].hd.cli("agents", "add", *eve)
        assert res.exit_code == 0, res.output

        # Overdue tickets (processed ten minutes ago, first response due in one minute):
        # all three daemons' timers see them due every second.
        overdue = []
        past = datetime.now(timezone.utc) - timedelta(minutes=10)
        app = open_app(config.load(peers[0].hd.config_path), clock=FrozenClock(past))
        try:
            for i in range(5):
                path = tmp_path / f"overdue{i}.eml"
                path.write_bytes(mail(sender=f"late{i}@late.test", subject=f"Overdue {i}"))
                ingest.store_and_process(
                    app, (str(path),), batch=10, on_result=lambda r: overdue.append(r.ticket)
                )
        finally:
            app.close()
        assert all(overdue)

        box_a.append_many(
            mail(sender=f"imap-a{i}@box.test", subject=f"A before {i}") for i in range(IMAP_EACH)
        )
        box_b.append_many(
            mail(sender=f"imap-b{i}@box.test", subject=f"B before {i}") for i in range(IMAP_EACH)
        )

        # SMTP load over all three; the victim is killed halfway.
        raws = [
            (i, mail(sender=f"c{i}@d{i % 40}.test", subject=f"Load {i}", message_id=f"<load{i}@c.test>"))
            for i in range(SMTP_MESSAGES)
        ]
        accepted: set[int] = set()
        lock = threading.Lock()

        def send(item: tuple[int, bytes]) -> None:
            i, raw = item
            targets = [peers[i % 3]] + ([peers[(i + 1) % 3]] if i < TWICE else [])
            for peer in targets:
                try:
                    with smtplib.SMTP("127.0.0.1", peer.smtp_port, timeout=15) as s:
                        s.sendmail(f"c{i}@d{i % 40}.test", ["support@helpdesk.test"], raw)
                except (OSError, smtplib.SMTPException):
                    continue  # the dead daemon: no 250, no promise
                with lock:
                    accepted.add(i)

        with ThreadPoolExecutor(6) as pool:
            first, rest = raws[: SMTP_MESSAGES // 2], raws[SMTP_MESSAGES // 2 :]
            list(pool.map(send, first))
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(timeout=10)
            list(pool.map(send, rest))
        assert len(accepted) >= SMTP_MESSAGES * 2 // 3  # the survivors took theirs

        box_a.append_many(
            mail(sender=f"imap-a{i}@box.test", subject=f"A after {i}") for i in range(IMAP_EACH)
        )
        box_b.append_many(
            mail(sender=f"imap-b{i}@box.test", subject=f"B after {i}") for i in range(IMAP_EACH)
        )

        # The dead daemon's mailbox is taken over by a survivor.
        def taken_over() -> bool:
            rows = dict(query(fresh_pg, "SELECT mailbox, holder FROM imapstate"))
            return rows.get(key_a) in {p.name for p in survivors}

        wait_for(taken_over, 30, "a survivor to take the dead daemon's mailbox")
        assert any(key_a in p.health()["holds"]["mailboxes"] for p in survivors)

        # Everything accepted is there, and every ticket's acknowledgement went out.
        want_ids = {f"<load{i}@c.test>" for i in accepted}
        imap_subjects = {f"{b} {w} {i}" for b in "AB" for w in ("before", "after") for i in range(IMAP_EACH)}

        def all_in() -> bool:
            got = {
                r[0]
                for r in query(fresh_pg, "SELECT message_id FROM message WHERE message_id LIKE '<load%%'")
            }
            subjects = {r[0] for r in query(fresh_pg, "SELECT subject FROM ticket WHERE subject LIKE '_ %%'")}
            return want_ids <= got and imap_subjects <= subjects

        wait_for(all_in, 90, "every accepted message to become a ticket")

        def acks_sent() -> bool:
            pending = query(fresh_pg, "SELECT count(*) FROM outbox WHERE state <> 'sent'")[0][0]
            return pending == 0

        wait_for(acks_sent, 90, "the outbox to be sent (the dead daemon's claims after their lease)")

        # Once: one message row per Message-ID, one ticket each, one acknowledgement each.
        dup_messages = query(
            fresh_pg,
            "SELECT message_id, count(*) FROM message WHERE message_id LIKE '<load%%' "
            "GROUP BY message_id HAVING count(*) > 1",
        )
        assert dup_messages == []
        tickets = query(fresh_pg, "SELECT number, subject FROM ticket")
        subjects = [s for _, s in tickets]
        assert len(subjects) == len(set(subjects)), "a message made two tickets"
        acks = query(fresh_pg, "SELECT ticket, count(*) FROM outbox WHERE kind = 'ack' GROUP BY ticket")
        assert all(n == 1 for _, n in acks), [a for a in acks if a[1] != 1]
        load_tickets = {n for n, s in tickets if s.startswith(("Load ", "A ", "B "))}
        assert load_tickets <= {t for t, _ in acks}, "a ticket got no acknowledgement"
        files = list(shared.glob("*.eml"))
        sent = query(fresh_pg, "SELECT count(*) FROM outbox WHERE state = 'sent'")[0][0]
        assert len(files) == sent

        # The timed jobs: each overdue ticket breached and its customer told once, by
        # whichever daemon's pass took it.
        wait_for(
            lambda: (
                query(
                    fresh_pg,
                    "SELECT count(DISTINCT ticket_id) FROM event "
                    "WHERE kind = 'sla-breached' AND ticket_id = ANY(%s)",
                    list(overdue),
                )[0][0]
                == len(overdue)
            ),
            60,
            "every overdue ticket to be escalated",
        )
        breaches = query(
            fresh_pg,
            "SELECT ticket_id, count(*) FROM event WHERE kind = 'sla-breached' AND ticket_id = ANY(%s) "
            "GROUP BY ticket_id",
            list(overdue),
        )
        assert sorted(n for _, n in breaches) == [1] * len(overdue)
        updates = query(
            fresh_pg,
            "SELECT ticket, count(*) FROM outbox WHERE kind = 'update' AND ticket = ANY(%s) GROUP BY ticket",
            list(overdue),
        )
        assert sorted(n for _, n in updates) == [1] * len(overdue)
        escalations = query(
            fresh_pg,
            "SELECT ticket, count(*) FROM outbox WHERE kind = 'escalation' AND ticket = ANY(%s) "
            "GROUP BY ticket",
            list(overdue),
        )
        assert sorted(n for _, n in escalations) == [1] * len(overdue)
        for peer in survivors:
            assert peer.health()["daemon"] == peer.name
        for peer in survivors:
            assert peer.stop() == 0
    finally:
        for peer in peers:
            peer.stop(signal.SIGKILL)


def test_a_second_daemon_on_one_sqlite_file_is_refused(tmp_path):
    hd = Helpdesk(tmp_path, f"sqlite:///{tmp_path / 'mailticket.db'}")
    first = DaemonProc(hd)
    first.start()
    try:
        (tmp_path / "other").mkdir()
        second = Helpdesk(tmp_path / "other", hd.db_url)
        DaemonProc(second)  # its own free ports
        proc = subprocess.run(
            [sys.executable, "-m", "mailticket.cli", "--config", str(second.config_path), "run"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0
        assert "another mailticket daemon already runs on this SQLite database" in proc.stderr
        assert f"pid {first.proc.pid}" in proc.stderr
        assert "PostgreSQL" in proc.stderr
        assert first._healthy()  # the first one goes on
    finally:
        assert first.stop() == 0
    # Once it stopped, a daemon may start on the file again.
    again = DaemonProc(hd)
    again.start()
    assert again.stop() == 0
