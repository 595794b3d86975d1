"""`mailticket run` as a real process: SMTP in, tickets and acknowledgements out, signals.

The daemon is started as a subprocess on free loopback ports; tests talk to it
with smtplib and read its HTTP endpoint and database.  Waiting is always on a
condition with a deadline.
"""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port, wait_for
from mails import mail, msgid


class DaemonProc:
    def __init__(self, helpdesk, extra: str = "") -> None:
        self.hd = helpdesk
        self.smtp_port = free_port()
        self.http_port = free_port()
        self.configure(extra)
        self.proc: subprocess.Popen | None = None
        self.log = helpdesk.root / "daemon.log"

    def configure(self, extra: str = "") -> None:
        self.hd.write_config(f"""
            [smtp]
            listen = "127.0.0.1:{self.smtp_port}"
            [daemon]
            http = "127.0.0.1:{self.http_port}"
            outbox_interval = 1
            drain_seconds = 10
        """ + extra)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailticket.cli", "--config", str(self.hd.config_path), "run"],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        wait_for(self._healthy, 30, f"the daemon to start (log: {self.log})")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as r:
                return json.load(r)["ok"]
        except OSError:
            return False

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
            return r.read().decode()

    def send(self, raw: bytes, rcpt: str = "support@helpdesk.test") -> None:
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=10) as s:
            s.sendmail("alice@customer.test", [rcpt], raw)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            return self.proc.wait(timeout=30)
        return self.proc.returncode if self.proc else 0


@pytest.fixture
def daemon(helpdesk):
    d = DaemonProc(helpdesk)
    yield d
    d.stop(signal.SIGKILL)


def tickets_of(hd) -> list[dict]:
    return json.loads(hd.cli("ticket", "list", "--json", "--limit", "100000").output)


def test_smtp_to_ticket_to_acknowledgement_file(daemon, helpdesk):
    daemon.start()
    daemon.send(mail(subject="Printer on fire"))
    wait_for(lambda: tickets_of(helpdesk), what="the ticket")
    out = helpdesk.root / "var" / "outgoing"
    [eml] = wait_for(lambda: list(out.glob("*.eml")), what="the acknowledgement file")
    assert "Subject: [#1] Printer on fire" in eml.read_text()
    metrics = daemon.get("/metrics")
    assert 'mailticket_messages_total{outcome="created",source="smtp"} 1.0' in metrics
    assert "mailticket_tickets_created_total 1.0" in metrics
    assert daemon.stop() == 0


def test_imap_mail_becomes_a_ticket_and_is_flagged(daemon, helpdesk, dovecot, monkeypatch):
    monkeypatch.setenv("TEST_IMAP_PASSWORD", dovecot.password)
    daemon.configure(f"""
        [[imap]]
        host = "{dovecot.host}"
        port = {dovecot.port}
        tls = "none"
        user = "{dovecot.user}"
        password_env = "TEST_IMAP_PASSWORD"
        queue = "imap-queue"
        history_days = 0
    """)
    daemon.start()
    dovecot.append(mail(subject="Sent to the IMAP box"))
    [t] = wait_for(lambda: tickets_of(helpdesk), what="the IMAP ticket")
    assert t["subject"] == "Sent to the IMAP box" and t["queue"] == "imap-queue"
    with dovecot.client("INBOX") as c:
        assert wait_for(lambda: c.search(["SEEN"]), what="the message flagged \\Seen")
    assert 'source="imap"' in daemon.get("/metrics")
    assert daemon.stop() == 0


def test_unknown_recipient_is_refused(daemon):
    daemon.start()
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        daemon.send(mail(), rcpt="someone@elsewhere.test")


def test_sighup_reloads_rules_and_keeps_the_last_good_set(daemon, helpdesk):
    daemon.start()
    helpdesk.rule_file("10-billing.yaml", """
        - name: billing
          when: {subject: {contains: invoice}}
          then: {queue: billing}
    """)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in daemon.log.read_text(), what="the reload")
    helpdesk.rule_file("10-billing.yaml", "- name: broken\n  when: {subjekt: x}\n  then: {queue: q}\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "keeping the last good set" in daemon.log.read_text(), what="the refused reload")
    daemon.send(mail(subject="Question about my invoice"))
    [t] = wait_for(lambda: tickets_of(helpdesk), what="the ticket")
    assert t["queue"] == "billing"


def test_sigterm_finishes_in_flight_and_exits_zero(daemon, helpdesk):
    daemon.start()
    for n in range(20):
        daemon.send(mail(subject=f"burst {n}"))
    assert daemon.stop() == 0
    assert len(tickets_of(helpdesk)) == 20
    # The outbox process went last: every acknowledgement the worker queued was sent
    # (5 of them: the per-address limit on automatic mail).
    assert [r["state"] for r in helpdesk.outbox()] == ["sent"] * 5
    assert len(list((helpdesk.root / "var" / "outgoing").glob("*.eml"))) == 5


def children(pid: int) -> dict[str, int]:
    """The daemon's worker and outbox processes: their niceness by pid."""
    out = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        stat = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
            out[child] = int(stat[16])  # field 19 of stat: nice
    return out


def test_outbox_process_yields_the_cpu_and_takes_a_new_folder_on_sighup(daemon, helpdesk):
    daemon.start()
    health = json.loads(daemon.get("/healthz"))
    assert health["ok"] and health["outbox"] and health["worker"]
    assert sorted(children(daemon.proc.pid).values()) == [0, 0, 10]  # worker, timers, outbox
    daemon.send(mail(subject="First"))
    wait_for(lambda: list((helpdesk.root / "var" / "outgoing").glob("*.eml")), what="the first ack")
    moved = helpdesk.root / "moved-outgoing"
    text = helpdesk.config_path.read_text()
    helpdesk.config_path.write_text(text + f'\n[outgoing]\nfolder = "{moved}"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in daemon.log.read_text(), what="the reload")
    daemon.send(mail(subject="Second"))
    [eml] = wait_for(lambda: list(moved.glob("*.eml")), what="the second ack in the new folder")
    assert "Second" in eml.read_text()
    assert daemon.stop() == 0


def test_refuses_to_start_on_broken_rules(helpdesk):
    helpdesk.rule_file("10-x.yaml", "- name: x\n  when: {subject: {regex: '('}}\n  then: {queue: q}\n")
    res = helpdesk.cli("run")
    assert res.exit_code != 0
    assert "10-x.yaml" in res.output


@pytest.mark.slow
def test_sigkill_while_clients_send_loses_nothing_that_got_250(daemon, helpdesk):
    daemon.start()
    accepted: list[str] = []
    unanswered: list[bytes] = []
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 200:
            raw = mail(subject=f"client {n} message {i}")
            i += 1
            try:
                with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=5) as s:
                    s.sendmail("alice@customer.test", ["support@helpdesk.test"], raw)
                accepted.append(msgid(raw))
            except (OSError, smtplib.SMTPException):
                unanswered.append(raw)
                return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(accepted) >= 40, what="some accepted messages")
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    daemon.start()
    # The worker drains what was stored before the kill.
    wait_for(lambda: _inbox_pending(helpdesk) == 0, what="the inbox to drain")
    stored = _message_ids(helpdesk)
    missing = [m for m in accepted if m not in stored]
    assert not missing, f"{len(missing)} messages got 250 but are not stored"
    # A client that got no answer resends: never a duplicate ticket.
    before = len(tickets_of(helpdesk))
    for raw in unanswered:
        daemon.send(raw)
    resent_new = [m for m in (msgid(r) for r in unanswered) if m not in stored]
    wait_for(lambda: _inbox_pending(helpdesk) == 0, what="the resends to be processed")
    assert len(tickets_of(helpdesk)) == before + len(resent_new)


def _inbox_pending(hd) -> int:
    from mailticket.db import open_database
    from mailticket.models import Inbox

    db = open_database(hd.db_url)
    try:
        return Inbox.select().where(Inbox.state == "pending").count()
    finally:
        db.close()


def _message_ids(hd) -> set[str]:
    from mailticket.db import open_database
    from mailticket.models import Message

    db = open_database(hd.db_url)
    try:
        return {m.message_id for m in Message.select(Message.message_id).where(Message.direction == "in")}
    finally:
        db.close()
