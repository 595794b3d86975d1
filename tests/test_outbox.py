"""Outbox delivery to a real SMTP smarthost (aiosmtpd): retries, backoff, dead, never twice."""

from __future__ import annotations

import threading

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from helpers import free_port

from mailticket import outbox
from mailticket.clock import FrozenClock
from mailticket.config import Config, Outgoing
from mailticket.db import open_database
from mailticket.models import Outbox
from mailticket.notify import Rendered, queue


class Sink:
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.envelopes: list = []  # (mail_from, mail_options, rcpt_tos) of each accepted message
        self.reply: str | None = None  # an error reply to give instead of 250
        self.refuse_connect = False  # greet with 421 and hang up
        self.connections = 0
        self.hung_up = 0  # connections closed after carrying a message
        self.on_data = None  # called with the envelope before the reply (in the server's thread)

    async def handle_DATA(self, server, session, envelope):
        if self.on_data:
            self.on_data(envelope)
        if self.reply:
            return self.reply
        self.received.append(envelope.content)
        session.carried = True
        self.envelopes.append((envelope.mail_from, envelope.mail_options, envelope.rcpt_tos))
        return "250 OK"


class FaultySMTP(SMTP):
    """aiosmtpd's server, counting connections, that can greet them with 421."""

    async def _handle_client(self) -> None:
        sink = self.event_handler
        sink.connections += 1
        if sink.refuse_connect:
            await self.push("421 4.3.2 Service not available, closing transmission channel")
            self.transport.close()
            return
        await super()._handle_client()

    def connection_lost(self, error) -> None:
        if getattr(self.session, "carried", False):
            self.event_handler.hung_up += 1
        super().connection_lost(error)


class FaultyController(Controller):
    def factory(self):
        return FaultySMTP(self.handler, **self.SMTP_kwargs)


class Smarthost:
    """A real aiosmtpd server that a test can stop and start again on the same port.

    `options` go to aiosmtpd (tls_context, ssl_context, authenticator, enable_SMTPUTF8...).
    """

    def __init__(self, **options) -> None:
        self.sink = Sink()
        self.port = free_port()
        self.options = options
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = FaultyController(self.sink, hostname="127.0.0.1", port=self.port,
                                           **self.options)
        self.controller.start()
        self.sink.connections = 0  # not the controller's own check

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def received(self):
        return self.sink.received


@pytest.fixture
def smarthost():
    host = Smarthost()
    host.start()
    yield host
    host.stop()


@pytest.fixture
def setup(db_url, tmp_path):
    db = open_database(db_url)
    clock = FrozenClock()
    yield clock
    db.close()


def cfg_for(port: int, max_attempts: int = 3) -> Config:
    return Config(outgoing=Outgoing(transport="smtp", host="127.0.0.1", port=port,
                                    max_attempts=max_attempts, retry_base_seconds=60))


def queue_one(clock) -> int:
    return queue(kind="ack", ticket=1, mail_from="support@helpdesk.test", to="alice@customer.test",
                 rendered=Rendered("[#1] Hi", "Body\n"), headers={"Auto-Submitted": "auto-replied"},
                 message_id="<x1@helpdesk.test>", now=clock.now(), automatic=True)


def test_delivers_once_over_smtp(setup, smarthost):
    clock = setup
    queue_one(clock)
    cfg = cfg_for(smarthost.port)
    assert outbox.deliver_due(cfg, clock).sent == 1
    assert outbox.deliver_due(cfg, clock).sent == 0  # never twice
    [data] = smarthost.received
    assert b"Auto-Submitted: auto-replied" in data and b"Message-ID: <x1@helpdesk.test>" in data


def test_waits_while_down_then_delivers_with_backoff(setup, smarthost):
    """A smarthost that is down is the transport's failure: the row waits, its attempts unspent."""
    clock = setup
    row_id = queue_one(clock)
    cfg = cfg_for(smarthost.port, max_attempts=5)
    transport = outbox.transport_for(cfg)  # kept across passes, as the daemon keeps it
    smarthost.stop()
    done = outbox.deliver_due(cfg, clock, transport)
    assert (done.sent, done.retry, done.dead) == (0, 0, 0) and "Connection" in done.transport_error
    row = Outbox.get_by_id(row_id)
    assert row.state == "queued" and row.attempts == 0
    assert row.next_attempt_at - clock.now() == outbox.backoff(1, 60)
    assert outbox.deliver_due(cfg, clock, transport).transport_error  # not due yet: backoff
    clock.advance(seconds=61)
    outbox.deliver_due(cfg, clock, transport)
    assert Outbox.get_by_id(row_id).next_attempt_at - clock.now() == outbox.backoff(2, 60)
    smarthost.start()
    clock.advance(seconds=121)
    done = outbox.deliver_due(cfg, clock, transport)
    assert done.sent == 1 and done.transport_error is None
    row = Outbox.get_by_id(row_id)
    assert row.state == "sent" and row.attempts == 1 and len(smarthost.received) == 1
    transport.close()


def test_dead_after_the_limit_and_retry_command(setup, smarthost):
    clock = setup
    row_id = queue_one(clock)
    cfg = cfg_for(smarthost.port, max_attempts=2)
    smarthost.sink.reply = "451 4.3.0 try later"
    outbox.deliver_due(cfg, clock)
    clock.advance(hours=1)
    assert outbox.deliver_due(cfg, clock).dead == 1
    assert Outbox.get_by_id(row_id).state == "dead"
    smarthost.sink.reply = None
    assert outbox.requeue([row_id], clock.now()) == 1
    assert outbox.deliver_due(cfg, clock).sent == 1


def test_permanent_failure_is_dead_at_once(setup, smarthost):
    clock = setup
    row_id = queue_one(clock)
    smarthost.sink.reply = "550 5.1.1 no such user"
    assert outbox.deliver_due(cfg_for(smarthost.port, max_attempts=8), clock).dead == 1
    assert "550" in Outbox.get_by_id(row_id).last_error


def test_a_row_is_sent_by_one_sender_even_when_two_deliver_at_once(setup):
    """Two daemons (here: two threads, each with its own connection) share one outbox."""
    clock = setup
    ids = [queue(kind="ack", ticket=n, mail_from="support@helpdesk.test", to=f"c{n}@customer.test",
                 rendered=Rendered(f"[#{n}] Hi", "Body\n"), headers={}, message_id=f"<x{n}@helpdesk.test>",
                 now=clock.now(), automatic=True) for n in range(1, 7)]
    sent: list[tuple[str, int]] = []
    config = Config()

    class Recording:
        idempotent = False

        def __init__(self, name: str) -> None:
            self.name = name
            self.outage = outbox.Outage()

        def send(self, row, data) -> None:
            sent.append((self.name, row.id))
            if self.name == "first" and len(sent) == 1:
                # While the first daemon is in the middle of its pass, the second one runs.
                other = threading.Thread(target=outbox.deliver_due,
                                         args=(config, clock, Recording("second")))
                other.start()
                other.join(timeout=30)

        def close(self) -> None:
            pass

    done = outbox.deliver_due(config, clock, Recording("first"), limit=3)
    assert done.sent == 3
    assert sorted(row_id for _, row_id in sent) == ids  # every row once, none twice
    assert {name for name, row_id in sent if row_id in ids[3:]} == {"second"}
    assert [r.state for r in Outbox.select().order_by(Outbox.id)] == ["sent"] * 6


def test_a_claim_whose_sender_died_is_taken_again_after_the_lease(setup, smarthost):
    clock = setup
    queue_one(clock)
    assert [r.state for r in outbox.claim(clock.now(), 10)] == ["sending"]  # and then it died
    cfg = cfg_for(smarthost.port)
    assert outbox.deliver_due(cfg, clock).sent == 0  # still leased to the other
    clock.advance(seconds=outbox.LEASE.total_seconds())
    assert outbox.deliver_due(cfg, clock).sent == 1
    assert len(smarthost.received) == 1
