"""docs/deploy.md's recipes, followed as written: a real Postfix in front of mailticket.

Each test starts a private Postfix (tests/postfix.py) configured from the Postfix
blocks of docs/deploy.md, sends mail to its smtpd on loopback with smtplib as an
outside server would, and looks at what mailticket made of it.  mailticket runs as
the doc's service user (`nobody` stands in for `mailticket`) from a venv built from
/usr/bin/python3, in a folder whose `var/` that user owns: the doc's setup steps.
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess

import pytest
from helpers import free_port, wait_for
from mails import mail
from postfix import DEPLOY_MD, SERVICE_USER, documented
from test_daemon import DaemonProc
from test_pipe import inbox

from mailticket import config as config_mod

COMMON = "The domain and its recipients"
LMTP = "Over LMTP"
PIPE = "Through a pipe"
SUPPORT = "support@example.com"
SENDER = "alice@customer.test"

# With `pytest -n`, every Postfix test runs in one worker: one private Postfix at a time.
pytestmark = pytest.mark.xdist_group("postfix")


class ServiceDaemon(DaemonProc):
    """`mailticket run` as the service user from its venv, with the doc's [smtp] block."""

    def __init__(self, helpdesk, venv) -> None:
        self.venv = venv
        self.lmtp_port = free_port()
        super().__init__(helpdesk)

    def configure(self, extra: str = "") -> None:
        smtp = documented(LMTP)["/srv/mailticket/mailticket.toml"]
        self.hd.write_config(
            smtp.replace("127.0.0.1:2424", f"127.0.0.1:{self.lmtp_port}") + f"""
[daemon]
http = "127.0.0.1:{self.http_port}"
outbox_interval = 1
drain_seconds = 10
""", address=SUPPORT)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.venv / "bin" / "mailticket"), "--config", str(self.hd.config_path), "run"],
                stdout=subprocess.DEVNULL, stderr=log, user=SERVICE_USER)
        try:
            wait_for(self._healthy, 30, "the daemon to start")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log.read_text()}") from None


@pytest.fixture
def service_daemon(service_helpdesk, service_venv_path):
    d = ServiceDaemon(service_helpdesk, service_venv_path)
    yield d
    d.stop(signal.SIGKILL)


def send(server, raw: bytes, rcpt: str = SUPPORT) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        s.sendmail(SENDER, [rcpt], raw)


def test_lmtp_recipe_delivers_to_the_daemon_which_acknowledges(postfix, service_daemon, service_helpdesk):
    service_daemon.start()  # first: Postfix would otherwise defer the mail
    server = postfix((COMMON, LMTP), {"127.0.0.1:2424": f"127.0.0.1:{service_daemon.lmtp_port}"})
    send(server, mail(to=SUPPORT, subject="Printer on fire"))
    relay = server.delivered(SUPPORT)
    assert relay.endswith(f":{service_daemon.lmtp_port}"), relay  # by LMTP to the daemon
    out = service_helpdesk.root / "var" / "outgoing"
    [eml] = wait_for(lambda: list(out.glob("*.eml")), 30, "the acknowledgement")
    ack = eml.read_text()
    assert "Subject: [#1] Printer on fire" in ack and f"To: {SENDER}" in ack
    server.wait_empty()
    assert service_daemon.stop() == 0
    ticket = service_helpdesk.show(1)
    assert ticket["subject"] == "Printer on fire" and ticket["requester"] == SENDER


def test_pipe_recipe_runs_ingest_as_the_service_user_and_queues_the_ack(
        postfix, service_helpdesk, service_venv_path):
    server = postfix((COMMON, PIPE), {
        "/srv/mailticket/.venv": str(service_venv_path),
        "/srv/mailticket/mailticket.toml": str(service_helpdesk.config_path),
        "user=mailticket": f"user={SERVICE_USER}",
    })
    send(server, mail(to=SUPPORT, subject="Screen is blank"))
    assert server.delivered(SUPPORT) == "mailticket"  # the pipe service; exit 0
    server.wait_empty()
    [row] = inbox(service_helpdesk)
    assert row.mailbox == SUPPORT  # --recipient=${recipient}
    assert bytes(row.raw).startswith(f"Return-Path: <{SENDER}>\n".encode())  # flags=FR, once
    assert bytes(row.raw).count(b"Return-Path:") == 1
    db = service_helpdesk.root / "var" / "mailticket.db"
    assert db.owner() == SERVICE_USER  # the pipe ran as the service user and created it
    ticket = service_helpdesk.show(1)
    assert ticket["subject"] == "Screen is blank" and ticket["requester"] == SENDER
    # The pipe only queues the acknowledgement: the daemon or the timer sends it.
    assert [(a["to"], a["state"]) for a in service_helpdesk.outbox()] == [(SENDER, "queued")]


def test_unknown_recipient_is_refused_at_rcpt_by_postfix_with_no_bounce(postfix, service_helpdesk):
    server = postfix((COMMON, LMTP), {})  # no daemon: Postfix alone decides at RCPT
    recipients = documented(COMMON)["/etc/postfix/mailticket_recipients"].split()[::2]
    cfg = config_mod.load(service_helpdesk.config_path)
    assert recipients and all(cfg.accepts(r) for r in recipients)  # the map is what we accept
    assert not cfg.accepts("nobody-here@example.com")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        s.mail(SENDER)
        code, reply = s.rcpt("nobody-here@example.com")
        assert code == 550 and b"5.1.1" in reply, reply  # refused now, not bounced later
        assert [s.rcpt(r)[0] for r in recipients] == [250] * len(recipients)
        s.rset()
    server.wait_empty()
    log = server.log.read_text()
    assert "NOQUEUE: reject: RCPT" in log
    assert server.statuses("nobody-here@example.com") == [] and "from=<>" not in log  # no bounce


def test_documented_stop_timeout_outlasts_the_three_drain_stages():
    # Edges, worker, outbox: drain_seconds each, and 10 s more for each child that
    # overruns and gets SIGTERM (daemon.Child.finish).
    unit = DEPLOY_MD.read_text(encoding="utf-8").split("mailticket.service`:", 1)[1]
    timeout = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    assert timeout >= 3 * config_mod.Daemon().drain_seconds + 2 * 10
