"""The daemon's timers process: the timed jobs run by APScheduler in a real `mailticket run`.

A ticket whose first response is overdue (ingested with a clock ten minutes in the
past: no test waits a minute) is escalated by the daemon's first pass: tier 2 and the
group tier2, the tier2 agent told (`escalation`), the customer told (`update`), an
`sla-breached` event.  Later passes (seen through later tickets' escalations, never
through a sleep) and a restart after a kill -9 escalate nothing twice.
"""

from __future__ import annotations

import json
import signal
from datetime import datetime, timedelta, timezone

import pytest
from helpers import wait_for
from mails import mail
from test_daemon import DaemonProc

from mailticket import config, ingest
from mailticket.app import open_app
from mailticket.clock import FrozenClock

T1, T2 = "bob@agents.test", "eve@agents.test"


class TimersDaemon(DaemonProc):
    """A daemon whose timed jobs run every second, on a 24/7 calendar with a first
    response due within a minute for P3, and agents in tier1 and tier2."""

    def configure(self, extra: str = "") -> None:
        secret = self.hd.root / "secret"
        secret.write_bytes(b"s3cret-for-timers\n")
        self.hd.write_config(
            f"""
            [smtp]
            listen = "127.0.0.1:{self.smtp_port}"
            [daemon]
            http = "127.0.0.1:{self.http_port}"
            outbox_interval = 1
            tick_interval = 1
            drain_seconds = 10
            [sla]
            business_days = "mon-sun"
            business_hours = "00:00-24:00"
            first_response = {{ P3 = 1 }}
            warning = 50
            [agents]
            secret_file = "{secret}"
        """
            + extra
        )


@pytest.fixture
def desk(helpdesk, monkeypatch):
    monkeypatch.delenv("MAILTICKET_AGENT_SECRET", raising=False)
    d = TimersDaemon(helpdesk)
    for email, extra in [
        (T1, ["--name", "Bob", "--group", "tier1"]),
        (T2, ["--name", "Eve", "--group", "tier2", "--tier", "2"]),
    ]:
        res = helpdesk.cli("agents", "add", email, *extra)
        assert res.exit_code == 0, res.output
    helpdesk.rule_file("10.yaml", "- name: all\n  then: {group: tier1}\n")
    yield d
    d.stop(signal.SIGKILL)


def overdue_ticket(hd, sender: str) -> None:
    """A customer's mail processed ten minutes ago: its first response (1 minute) is overdue."""
    path = hd.root / f"{sender.split('@')[0]}.eml"
    path.write_bytes(mail(sender=sender, subject=f"Help for {sender}"))
    past = datetime.now(timezone.utc) - timedelta(minutes=10)
    app = open_app(config.load(hd.config_path), clock=FrozenClock(past))
    try:
        summary = ingest.store_and_process(app, (str(path),), batch=10)
    finally:
        app.close()
    assert summary.counts["created"] == 1, summary


def group_of(hd, number: int) -> str | None:
    from mailticket.db import open_database
    from mailticket.models import Ticket

    db = open_database(hd.db_url)
    try:
        return Ticket.get(Ticket.number == number).group
    finally:
        db.close()


def outbox_rows(hd, kind: str) -> list[tuple[int, str]]:
    """(ticket, to) of the outbox rows of `kind`, oldest first."""
    from mailticket.db import open_database
    from mailticket.models import Outbox

    db = open_database(hd.db_url)
    try:
        return [(r.ticket, r.to_addr) for r in Outbox.select().where(Outbox.kind == kind).order_by(Outbox.id)]
    finally:
        db.close()


def escalated(hd, number: int, customer: str) -> bool:
    """The whole escalation of ticket `number` is there (in one transaction, so all or nothing)."""
    t = hd.show(number)
    return (
        (number, T2) in outbox_rows(hd, "escalation")
        and (number, customer) in outbox_rows(hd, "update")
        and (t["tier"], group_of(hd, number)) == (2, "tier2")
        and any(e["kind"] == "sla-breached" for e in t["events"])
    )


def escalations(hd, number: int) -> int:
    return sum(1 for n, _ in outbox_rows(hd, "escalation") if n == number)


def test_an_overdue_ticket_is_escalated_once_by_the_daemon(desk, helpdesk):
    overdue_ticket(helpdesk, "alice@customer.test")
    desk.start()
    assert json.loads(desk.get("/healthz"))["timers"]
    wait_for(lambda: escalated(helpdesk, 1, "alice@customer.test"), 30, "ticket #1 escalated")
    assert "timers: #1 escalated (tier 2, group tier2" in desk.log.read_text()
    # Two more passes, each seen by the escalation of a ticket made after the last one.
    for number, customer in ((2, "carol@customer.test"), (3, "dan@customer.test")):
        overdue_ticket(helpdesk, customer)
        wait_for(lambda n=number, c=customer: escalated(helpdesk, n, c), 30, f"ticket #{number} escalated")
    assert [escalations(helpdesk, n) for n in (1, 2, 3)] == [1, 1, 1]
    assert [e["kind"] for e in helpdesk.show(1)["events"]].count("sla-breached") == 1
    assert desk.stop() == 0


def test_a_restart_after_a_kill_escalates_nothing_twice(desk, helpdesk):
    overdue_ticket(helpdesk, "alice@customer.test")
    desk.start()
    wait_for(lambda: escalated(helpdesk, 1, "alice@customer.test"), 30, "ticket #1 escalated")
    desk.stop(signal.SIGKILL)
    overdue_ticket(helpdesk, "carol@customer.test")
    desk.start()
    wait_for(lambda: escalated(helpdesk, 2, "carol@customer.test"), 30, "#2 escalated after the restart")
    assert [escalations(helpdesk, n) for n in (1, 2)] == [1, 1]
    assert desk.stop() == 0
