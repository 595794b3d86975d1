"""The outbox under faults, each injected by a real aiosmtpd smarthost on loopback (or a
folder that cannot be written): every row ends sent or dead, and one bad row harms no other."""

from __future__ import annotations

import gc
import ssl
import subprocess
import warnings
from email import message_from_bytes
from email.header import decode_header, make_header

import pytest
from aiosmtpd.smtp import AuthResult
from helpers import free_port, wait_for
from test_outbox import Smarthost, cfg_for, queue_one

from mailticket import outbox
from mailticket.clock import FrozenClock
from mailticket.config import Config, Outgoing
from mailticket.db import open_database
from mailticket.models import Outbox
from mailticket.notify import Rendered, queue


@pytest.fixture
def clock(db_url):
    db = open_database(db_url)
    yield FrozenClock()
    db.close()


@pytest.fixture
def hosts():
    """Start smarthosts with aiosmtpd options; every one is stopped at the end."""
    started: list[Smarthost] = []

    def start(**options) -> Smarthost:
        host = Smarthost(**options)
        host.start()
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()


def queue_to(clock, to: str, n: int, subject: str = "[#1] Hi", headers: dict | None = None) -> int:
    return queue(kind="ack", ticket=n, mail_from="support@helpdesk.test", to=to,
                 rendered=Rendered(subject, "Body\n"), headers=headers or {},
                 message_id=f"<x{n}@helpdesk.test>", now=clock.now(), automatic=True)


def smtp_cfg(port: int, **keys) -> Config:
    keys = {"transport": "smtp", "host": "127.0.0.1", "port": port, "retry_base_seconds": 60, **keys}
    return Config(outgoing=Outgoing(**keys))


def states() -> list[tuple[str, int]]:
    return [(r.state, r.attempts) for r in Outbox.select().order_by(Outbox.id)]


# --- 1. any exception for a row is an attempt --------------------------------------------


def test_a_file_where_the_folder_should_be_costs_attempts_then_dead(clock, tmp_path):
    blocker = tmp_path / "outgoing"
    blocker.write_text("not a folder")
    cfg = Config(outgoing=Outgoing(folder=str(blocker), max_attempts=2, retry_base_seconds=60))
    row_id = queue_one(clock)
    assert outbox.deliver_due(cfg, clock).retry == 1
    row = Outbox.get_by_id(row_id)
    assert (row.state, row.attempts) == ("retry", 1) and "NotADirectoryError" in row.last_error
    clock.advance(seconds=61)
    assert outbox.deliver_due(cfg, clock).dead == 1
    assert states() == [("dead", 2)]


def test_a_row_that_cannot_be_built_harms_no_other(clock, hosts):
    host = hosts()
    queue_to(clock, "alice@customer.test", 1, headers={"X-Broken": 7})  # not a string: a bug
    queue_to(clock, "bob@customer.test", 2)
    done = outbox.deliver_due(smtp_cfg(host.port, max_attempts=1), clock)
    assert (done.sent, done.dead) == (1, 1)
    assert states() == [("dead", 1), ("sent", 1)]
    assert "AttributeError" in Outbox.get_by_id(1).last_error


# --- 2. addresses that are not ASCII (RFC 6531) --------------------------------------------


def test_a_utf8_address_fails_alone_when_smtputf8_is_not_offered(clock, hosts):
    host = hosts(enable_SMTPUTF8=False)
    cfg = smtp_cfg(host.port)
    transport = outbox.transport_for(cfg)  # kept open across passes, as the daemon does
    queue_to(clock, "josé@exemple.fr", 1)
    queue_to(clock, "alice@customer.test", 2)
    done = outbox.deliver_due(cfg, clock, transport)
    assert (done.sent, done.dead, done.retry) == (1, 1, 0)
    assert states() == [("dead", 1), ("sent", 1)]
    assert "SMTPUTF8" in Outbox.get_by_id(1).last_error
    queue_to(clock, "bob@customer.test", 3)  # the kept connection is clean: no 503
    assert outbox.deliver_due(cfg, clock, transport).sent == 1
    transport.close()
    assert [rcpts for _, _, rcpts in host.sink.envelopes] == [["alice@customer.test"], ["bob@customer.test"]]


def test_a_utf8_address_goes_raw_under_smtputf8(clock, hosts):
    host = hosts(enable_SMTPUTF8=True)
    queue_to(clock, "José <josé@exemple.fr>", 1)
    assert outbox.deliver_due(smtp_cfg(host.port), clock).sent == 1
    [(_, options, rcpts)] = host.sink.envelopes
    assert rcpts == ["josé@exemple.fr"] and "SMTPUTF8" in options
    assert "To: José <josé@exemple.fr>".encode() in host.received[0]  # RFC 6532: raw UTF-8


def test_a_connection_closed_while_idle_costs_no_row_an_attempt(clock, hosts):
    host = hosts(timeout=1)  # aiosmtpd says 421 and hangs up after this many idle seconds
    cfg = smtp_cfg(host.port)
    transport = outbox.transport_for(cfg)  # kept open between passes, as the daemon does
    queue_to(clock, "alice@customer.test", 1)
    assert outbox.deliver_due(cfg, clock, transport).sent == 1
    wait_for(lambda: host.sink.hung_up, what="the smarthost's idle timeout")
    queue_to(clock, "bob@customer.test", 2)
    done = outbox.deliver_due(cfg, clock, transport)
    transport.close()
    assert (done.sent, done.retry) == (1, 0) and states() == [("sent", 1), ("sent", 1)]


# --- 3. the smarthost's failures are the transport's ---------------------------------------


class Logins:
    """An aiosmtpd authenticator that counts logins and refuses them (535) until told."""

    def __init__(self) -> None:
        self.count = 0
        self.accept = False

    def __call__(self, server, session, envelope, mechanism, auth_data):
        self.count += 1
        return AuthResult(success=self.accept, handled=False)  # aiosmtpd answers 535


def test_a_refused_login_stops_the_pass_and_spends_no_attempt(clock, hosts, monkeypatch):
    logins = Logins()
    host = hosts(authenticator=logins, auth_require_tls=False)
    monkeypatch.setenv("SMARTHOST_PASSWORD", "wrong")
    cfg = smtp_cfg(host.port, username="helpdesk", password_env="SMARTHOST_PASSWORD", max_attempts=2)
    transport = outbox.transport_for(cfg)
    for n in range(1, 4):
        queue_to(clock, f"c{n}@customer.test", n)
    done = outbox.deliver_due(cfg, clock, transport)
    assert done.transport_error.startswith("535") and (done.sent, done.retry, done.dead) == (0, 0, 0)
    # One login for the pass, not one per row (smtplib tries each mechanism offered: PLAIN,
    # then LOGIN): no account lockout.
    tries = logins.count
    assert tries <= 2
    assert states() == [("queued", 0)] * 3
    assert all(r.next_attempt_at == clock.now() + outbox.backoff(1, 60) for r in Outbox.select())
    assert outbox.deliver_due(cfg, clock, transport).transport_error  # backing off: no new login
    assert logins.count == tries
    clock.advance(hours=3)  # longer than two attempts' backoff: a row error would be dead by now
    outbox.deliver_due(cfg, clock, transport)
    logins.accept = True
    clock.advance(hours=1)
    done = outbox.deliver_due(cfg, clock, transport)
    transport.close()
    assert done.sent == 3 and done.transport_error is None
    assert states() == [("sent", 1)] * 3 and logins.count == 2 * tries + 1


def test_a_421_greeting_backs_off_and_the_queue_never_dies(clock, hosts):
    host = hosts()
    host.sink.refuse_connect = True
    cfg = smtp_cfg(host.port, max_attempts=8)
    transport = outbox.transport_for(cfg)
    for n in range(1, 4):
        queue_to(clock, f"c{n}@customer.test", n)
    start, delays = clock.now(), []
    while clock.now() - start < outbox.timedelta(hours=6):  # old code: all dead after ~2 hours
        done = outbox.deliver_due(cfg, clock, transport)
        assert done.transport_error.startswith("421")
        delays.append(transport.outage.retry_at - clock.now())
        clock.set(transport.outage.retry_at)
    assert host.sink.connections == len(delays)  # one connection a pass, never one per row
    assert [d.total_seconds() for d in delays[:5]] == [60, 120, 240, 480, 600]  # exponential, capped
    assert max(delays) == outbox.TRANSPORT_BACKOFF_MAX
    assert states() == [("queued", 0)] * 3
    host.sink.refuse_connect = False
    assert outbox.deliver_due(cfg, clock, transport).sent == 3
    transport.close()


# --- 4. TLS is verified ------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, and a server context that uses it."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=smarthost.test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return str(cert), server


def no_leaked_socket(action):
    """Run `action` and fail if it left a socket to the garbage collector (ResourceWarning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = action()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    return result


def test_starttls_refuses_an_unverified_certificate_and_keeps_the_password(
        clock, hosts, certificate, monkeypatch):
    cert, server_context = certificate
    logins = Logins()
    logins.accept = True
    host = hosts(tls_context=server_context, authenticator=logins)  # AUTH only under TLS
    monkeypatch.setenv("SMARTHOST_PASSWORD", "secret")
    keys = {"starttls": True, "username": "helpdesk", "password_env": "SMARTHOST_PASSWORD"}
    queue_one(clock)
    done = no_leaked_socket(lambda: outbox.deliver_due(smtp_cfg(host.port, **keys), clock))
    assert "CERTIFICATE_VERIFY_FAILED" in done.transport_error
    assert logins.count == 0 and states() == [("queued", 0)]  # the password never left
    clock.advance(hours=1)
    assert outbox.deliver_due(smtp_cfg(host.port, tls_ca_file=cert, **keys), clock).sent == 1
    assert logins.count == 1 and len(host.received) == 1


def test_implicit_tls_verified_by_a_private_ca(clock, hosts, certificate):
    cert, server_context = certificate
    host = hosts(ssl_context=server_context)
    queue_to(clock, "alice@customer.test", 1)
    done = no_leaked_socket(lambda: outbox.deliver_due(smtp_cfg(host.port, implicit_tls=True), clock))
    assert "CERTIFICATE_VERIFY_FAILED" in done.transport_error
    clock.advance(hours=1)
    assert outbox.deliver_due(smtp_cfg(host.port, implicit_tls=True, tls_ca_file=cert), clock).sent == 1
    queue_to(clock, "bob@customer.test", 2)  # the documented opt-out
    assert outbox.deliver_due(smtp_cfg(host.port, implicit_tls=True, tls_verify=False), clock).sent == 1
    assert len(host.received) == 2


# --- 5. claims: released at start, short leases renewed --------------------------------------


def test_release_claims_sends_what_a_killed_sender_held_at_once(clock, hosts):
    host = hosts()
    for n in range(1, 4):
        queue_to(clock, f"c{n}@customer.test", n)
    assert len(outbox.claim(clock.now(), 10)) == 3  # and then every process was killed
    assert outbox.deliver_due(cfg_for(host.port), clock).sent == 0  # leased
    assert outbox.release_claims(clock.now()) == 3
    assert outbox.deliver_due(cfg_for(host.port), clock).sent == 3
    assert outbox.LEASE <= outbox.timedelta(minutes=2)


def test_a_long_pass_renews_its_claims(clock, hosts):
    """Each hand-over takes 50 s: 16 rows outlast a lease many times over."""
    host = hosts()
    for n in range(1, 17):
        queue_to(clock, f"c{n}@customer.test", n)
    taken = []

    def slow(envelope):
        clock.advance(seconds=50)
        if envelope.rcpt_tos == ["c14@customer.test"]:  # another sender looks meanwhile
            taken.extend(r.id for r in outbox.claim(clock.now(), 20))

    host.sink.on_data = slow
    assert outbox.deliver_due(cfg_for(host.port), clock).sent == 16
    assert taken == [] and len(host.received) == 16


# --- 6. no header line over 998 characters --------------------------------------------------


def test_a_huge_subject_comes_out_folded_and_capped(clock, hosts):
    host = hosts()
    queue_to(clock, "alice@customer.test", 1, subject="[#1] " + "word " * 200_000)  # 1 MB
    queue_to(clock, "bob@customer.test", 2, subject="é" * 1_000_000,
             headers={"References": "<a@x> <" + "b" * 5000 + "@x> <c@x>", "Thread-Topic": "t" * 5000})
    assert outbox.deliver_due(cfg_for(host.port), clock).sent == 2
    for data in host.received:
        head = data.split(b"\r\n\r\n")[0]
        assert max(len(line) for line in head.split(b"\r\n")) <= 998
    first, second = (message_from_bytes(d) for d in host.received)
    subject = first["Subject"].replace("\r\n", "")  # unfolded (RFC 5322 2.2.3)
    assert subject.startswith("[#1] word word") and subject.endswith("...")
    assert len(subject) == outbox.TEXT_MAX + 3
    assert len(str(make_header(decode_header(second["Subject"])))) == outbox.TEXT_MAX + 3
    assert second["References"].split() == ["<a@x>", "<c@x>"]  # the runaway id dropped
    assert len(second["Thread-Topic"].replace("\r\n", "").strip()) == outbox.TEXT_MAX + 3


# --- the command line -----------------------------------------------------------------


def test_outbox_deliver_exits_75_while_the_smarthost_is_down(helpdesk, clock):
    helpdesk.write_config(f'[outgoing]\ntransport = "smtp"\nhost = "127.0.0.1"\nport = {free_port()}\n')
    queue_one(clock)
    result = helpdesk.cli("outbox", "deliver")
    assert result.exit_code == 75 and "smarthost: ConnectionRefusedError" in result.output
    [row] = helpdesk.outbox()
    assert (row["state"], row["attempts"]) == ("queued", 0)
    listing = helpdesk.cli("outbox", "list", "--help").output
    assert "Only messages in this state" in listing and "At most this many" in listing
