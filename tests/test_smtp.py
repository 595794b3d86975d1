"""The SMTP/LMTP listener with a real smtplib client on loopback.

Each test starts the real listener on a free port (port 0) over a real database,
and the fixture always stops it.  Failures are real ones: an SQLite write lock
held by another connection, PostgreSQL connections killed by the server.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import wait_for
from mails import mail, msgid

from mailticket import db as db_mod
from mailticket import smtp as smtp_mod
from mailticket.clock import FrozenClock
from mailticket.config import Config, from_dict
from mailticket.db import open_database
from mailticket.errors import ConfigError
from mailticket.models import Inbox, database_proxy
from mailticket.smtp_data import BulkData, message_id_of

HELPDESK = "support@helpdesk.test"
SENDER = "alice@customer.test"


@dataclass
class Server:
    listener: smtp_mod.Listener
    config: Config
    stored: list[int] = field(default_factory=list)

    def client(self, cls: type[smtplib.SMTP] = smtplib.SMTP) -> smtplib.SMTP:
        return cls("127.0.0.1", self.listener.port, timeout=10)


def rows() -> list[Inbox]:
    return list(Inbox.select().order_by(Inbox.id))


@pytest.fixture
def serve(tmp_path: Path):
    """serve(db_url=None, writers=None, **smtp_options) -> a started Server, stopped at the end."""
    started: list[smtp_mod.Listener] = []
    databases: dict[str, object] = {}

    def start(db_url: str | None = None, *, writers: int | None = None, **smtp) -> Server:
        url = db_url or f"sqlite:///{tmp_path / 'mailticket.db'}"
        cfg = from_dict({"helpdesk": {"address": HELPDESK}, "database": {"url": url},
                         "smtp": {"listen": "127.0.0.1:0", **smtp}}, tmp_path / "mailticket.toml")
        if url not in databases:
            databases[url] = open_database(url)
        stored: list[int] = []
        listener = smtp_mod.start(cfg, FrozenClock(), stored.append, writers=writers)
        started.append(listener)
        return Server(listener, cfg, stored)

    yield start
    for listener in started:
        listener.stop()
    if database_proxy.obj is not None:
        database_proxy.obj.close()


def test_accepted_recipient_is_stored_once_with_its_bytes(serve, caplog):
    caplog.set_level(logging.INFO, logger="mailticket.smtp")
    server = serve()
    raw = mail(body="Hello,\n.a line that starts with a dot\n.\nAlice\n")
    with server.client() as s:
        s.ehlo("client.customer.test")
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt(HELPDESK)[0] == 250
        code, reply = s.data(raw)
    assert code == 250
    [row] = rows()
    assert reply.decode() == smtp_mod.OK_250.format(inbox_id=row.id)[4:]
    assert server.stored == [row.id]
    assert (row.source, row.mailbox, row.state) == ("smtp", HELPDESK, "pending")
    stored = bytes(row.raw)
    assert stored.endswith(raw)  # byte for byte, dot-stuffing undone (RFC 5321 4.5.2)
    trace = stored[: -len(raw)].decode()
    assert trace.startswith(f"Return-Path: <{SENDER}>\r\nReceived: from client.customer.test "
                            "([127.0.0.1])\r\n\tby ")
    assert f"with ESMTP\r\n\tfor <{HELPDESK}>; Mon, 05 Jan 2026 09:00:00 +0000\r\n" in trace
    assert f"inbox {row.id} {msgid(raw)}: stored" in caplog.text


def test_null_sender_of_a_bounce_is_accepted(serve):
    server = serve()
    with server.client() as s:
        assert s.sendmail("<>", [HELPDESK], mail(subject="Undeliverable")) == {}
    [row] = rows()
    assert bytes(row.raw).startswith(b"Return-Path: <>\r\n")


def test_unknown_recipient_is_refused_never_relayed(serve):
    server = serve()
    with server.client() as s, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        s.sendmail(SENDER, ["someone@elsewhere.test"], mail())
    assert refused.value.recipients["someone@elsewhere.test"][0] == 550
    with server.client() as s:
        assert s.sendmail(SENDER, ["bob@elsewhere.test", HELPDESK.upper()], mail()) == {
            "bob@elsewhere.test": (550, b"5.1.1 <bob@elsewhere.test>: recipient not accepted here")
        }
    [row] = rows()  # only the message with one accepted recipient
    assert row.mailbox == HELPDESK.upper()


def test_configured_domains_and_addresses_are_accepted(serve):
    server = serve(domains=["Tickets.Test"], addresses=["billing@other.test"])
    with server.client() as s:
        refused = s.sendmail(SENDER, ["anyone@tickets.test", "billing@other.test",
                                      "sales@other.test", "x@sub.tickets.test"], mail())
    assert set(refused) == {"sales@other.test", "x@sub.tickets.test"}
    assert len(rows()) == 1


def test_message_over_the_maximum_size_is_refused(serve):
    server = serve(max_size=4000)
    small, big = mail(), mail(body=("x" * 60 + "\n") * 100)
    assert len(small) < 4000 < len(big)
    with server.client() as s:
        s.ehlo()
        assert s.esmtp_features["size"] == "4000"  # RFC 1870: the limit is advertised
        assert s.mail(SENDER, [f"SIZE={len(big)}"])[0] == 552
        s.rset()
        # A client that does not declare SIZE is refused after DATA.
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt(HELPDESK)[0] == 250
        assert s.data(big)[0] == 552
        # The session goes on, and a message under the limit is taken.
        assert s.sendmail(SENDER, [HELPDESK], small) == {}
    [row] = rows()
    assert bytes(row.raw).endswith(small)


def lock_sqlite(path: str) -> sqlite3.Connection:
    """Another process's writer holding the write lock (WAL allows only one writer)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


@pytest.fixture
def short_busy_timeout(monkeypatch):
    pragmas = tuple(p for p in db_mod.SQLITE_PRAGMAS if p[0] != "busy_timeout")
    monkeypatch.setattr(db_mod, "SQLITE_PRAGMAS", (*pragmas, ("busy_timeout", 200)))


def test_locked_sqlite_gets_451_then_250_when_it_is_free(serve, tmp_path, short_busy_timeout):
    server = serve()
    lock = lock_sqlite(str(tmp_path / "mailticket.db"))
    try:
        with server.client() as s:
            with pytest.raises(smtplib.SMTPDataError) as failed:
                s.sendmail(SENDER, [HELPDESK], mail())
            assert failed.value.smtp_code == 451
            assert failed.value.smtp_error.startswith(b"4.3.0 ")
    finally:
        lock.rollback()
        lock.close()
    assert rows() == [] and server.stored == []
    with server.client() as s:  # the sender's retry
        assert s.sendmail(SENDER, [HELPDESK], mail()) == {}
    assert len(rows()) == 1


def hold_writer_lock(url: str) -> subprocess.Popen:
    """Another daemon process inside `db.writing()` until its stdin is closed."""
    code = ("import sys\nfrom mailticket.db import open_database, writing\n"
            f"open_database({url!r})\nwith writing():\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"held\n"
    return proc


def test_writer_lock_held_elsewhere_gets_451_then_250(serve, tmp_path, short_busy_timeout):
    server = serve()
    holder = hold_writer_lock(f"sqlite:///{tmp_path / 'mailticket.db'}")
    try:
        with server.client() as s:
            with pytest.raises(smtplib.SMTPDataError) as failed:
                s.sendmail(SENDER, [HELPDESK], mail())
            assert failed.value.smtp_code == 451
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()
    with server.client() as s:  # the lock is free again: taken at once
        assert s.sendmail(SENDER, [HELPDESK], mail()) == {}
    assert len(rows()) == 1


def test_writer_lock_is_reentrant_and_excludes_other_threads(serve, tmp_path):
    serve()  # opens the SQLite database
    order: list[str] = []
    with db_mod.writing():
        with db_mod.writing():  # nested: no deadlock with itself
            def take() -> None:
                with db_mod.writing():
                    order.append("other")

            other = threading.Thread(target=take)
            other.start()
            other.join(timeout=0.3)
            assert other.is_alive()  # the other thread waits for the lock
            order.append("inner")
        order.append("outer")  # the inner exit did not let go of the lock
    other.join(timeout=10)
    assert order == ["inner", "outer", "other"]


def test_postgresql_restart_reconnects_without_a_451(serve, pg_url):
    import psycopg2

    server = serve(pg_url, writers=1)
    Inbox.delete().execute()
    own_pid = database_proxy.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    with server.client() as s:
        assert s.sendmail(SENDER, [HELPDESK], mail()) == {}
        # The server kills every other connection, as a restart or failover does.
        admin = psycopg2.connect(pg_url)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                        "datname = current_database() AND pid NOT IN (pg_backend_pid(), %s)",
                        (own_pid,))
        admin.close()
        # The store thread meets its dead connection, drops it and stores on a new one:
        # the first message after the restart gets its 250, not a 451.
        assert s.sendmail(SENDER, [HELPDESK], mail()) == {}
        assert s.sendmail(SENDER, [HELPDESK], mail()) == {}
    assert len(rows()) == 3
    Inbox.delete().execute()


def test_a_message_the_database_refuses_does_not_fail_its_batch(serve, tmp_path):
    """Messages waiting together are committed together; a failing one is retried alone."""
    server = serve()
    database_proxy.execute_sql(
        "CREATE TRIGGER poison BEFORE INSERT ON inbox WHEN instr(NEW.raw, CAST('POISON' AS BLOB))"
        " BEGIN SELECT RAISE(ABORT, 'poisoned message'); END")
    lock = lock_sqlite(str(tmp_path / "mailticket.db"))  # busy_timeout 5 s: the store waits
    replies: dict[str, int] = {}

    def send(subject: str) -> None:
        with server.client() as s:
            try:
                s.sendmail(SENDER, [HELPDESK], mail(subject=subject))
                replies[subject] = 250
            except smtplib.SMTPDataError as exc:
                replies[subject] = exc.smtp_code

    threads = [threading.Thread(target=send, args=(subject,))
               for subject in ("first", "second", "POISON", "third")]
    threads[0].start()  # its commit waits on the lock; the others queue up behind it
    wait_for(lambda: server.listener.handler.busy == 1, 10, "the first store")
    for t in threads[1:]:
        t.start()
    wait_for(lambda: server.listener.handler.busy == 4, 10, "the others to queue")
    lock.rollback()
    lock.close()
    for t in threads:
        t.join(timeout=10)
    assert replies == {"first": 250, "second": 250, "POISON": 451, "third": 250}
    assert len(rows()) == 3 and len(server.stored) == 3


def lmtp_send(s: smtplib.LMTP, rcpts: list[str], raw: bytes) -> tuple[list[int], list[int]]:
    """RCPT replies, then the DATA replies (one per accepted recipient, RFC 2033 4.2)."""
    assert s.mail(SENDER)[0] == 250
    rcpt_codes = [s.rcpt(r)[0] for r in rcpts]
    data_codes = [s.data(raw)[0]]  # smtplib reads the first; the others follow
    data_codes += [s.getreply()[0] for _ in range(rcpt_codes.count(250) - 1)]
    return rcpt_codes, data_codes


def test_lmtp_answers_once_per_accepted_recipient(serve):
    server = serve(lmtp=True, domains=["helpdesk.test"])
    rcpts = ["support@helpdesk.test", "nobody@elsewhere.test", "billing@helpdesk.test"]
    with server.client(smtplib.LMTP) as s:
        assert s.ehlo_or_helo_if_needed() is None and s.does_esmtp
        assert lmtp_send(s, rcpts, mail()) == ([250, 550, 250], [250, 250])
        assert s.noop()[0] == 250  # no reply left unread: the session is in step
    [row] = rows()  # one row per message, not per recipient
    assert (row.source, row.mailbox) == ("lmtp", "support@helpdesk.test")
    assert b"with LMTP; " in bytes(row.raw)  # no "for" clause with several recipients


def test_lmtp_all_recipients_get_451_when_the_store_fails(serve, tmp_path, short_busy_timeout):
    server = serve(lmtp=True, domains=["helpdesk.test"])
    lock = lock_sqlite(str(tmp_path / "mailticket.db"))
    try:
        with server.client(smtplib.LMTP) as s:
            s.ehlo()
            rcpts = ["a@helpdesk.test", "b@helpdesk.test", "c@helpdesk.test"]
            assert lmtp_send(s, rcpts, mail()) == ([250, 250, 250], [451, 451, 451])
            assert s.noop()[0] == 250
    finally:
        lock.rollback()
        lock.close()
    assert rows() == []


def self_signed(folder: Path) -> tuple[str, str]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


def test_starttls_with_a_configured_certificate(serve, tmp_path):
    cert, key = self_signed(tmp_path)
    server = serve(tls_cert=cert, tls_key=key)
    with server.client() as s:
        s.ehlo()
        assert s.has_extn("starttls")
        assert s.starttls(context=ssl.create_default_context(cafile=cert))[0] == 220
        s.ehlo()
        assert not s.has_extn("starttls")
        assert s.sendmail(SENDER, [HELPDESK], mail()) == {}
    with server.client() as s:  # STARTTLS is offered, not required
        assert s.sendmail(SENDER, [HELPDESK], mail()) == {}
    tls, plain = rows()
    assert b" with ESMTPS\r\n" in bytes(tls.raw) and b" with ESMTP\r\n" in bytes(plain.raw)


def test_no_starttls_without_a_certificate_and_a_bad_one_stops_the_start(serve, tmp_path):
    server = serve()
    with server.client() as s:
        s.ehlo()
        assert not s.has_extn("starttls")
    with pytest.raises(ConfigError, match="tls_cert"):
        serve(tls_cert=str(tmp_path / "missing.pem"))


def test_a_port_in_use_fails_the_start(serve):
    server = serve()
    with pytest.raises(OSError):
        serve(listen=f"127.0.0.1:{server.listener.port}")
    with server.client() as s:  # the first one is unharmed
        assert s.noop()[0] == 250


@pytest.mark.parametrize("writers", [None, 4], ids=["default-writers", "4-writers"])
def test_concurrent_clients_lose_nothing(db_url, serve, writers):
    server = serve(db_url, writers=writers)
    clients, each = 16, 20
    sent: list[str] = []
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with server.client() as s:  # one connection kept open, as an MTA does
                for i in range(each):
                    raw = mail(subject=f"client {n} message {i}")
                    assert s.sendmail(SENDER, [HELPDESK], raw) == {}
                    sent.append(msgid(raw))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    stored = rows()
    assert len(stored) == len(sent) == clients * each
    assert sorted(server.stored) == [r.id for r in stored]
    assert {message_id_of(bytes(r.raw)) for r in stored} == set(sent)


def test_stop_answers_the_message_being_stored_and_refuses_new_ones(serve, tmp_path):
    server = serve()
    lock = lock_sqlite(str(tmp_path / "mailticket.db"))  # busy_timeout 5 s: the store waits
    replies: list[object] = []

    def send() -> None:
        with server.client() as s:
            replies.append(s.sendmail(SENDER, [HELPDESK], mail()))

    idle = server.client()
    idle.ehlo()
    sender = threading.Thread(target=send)
    sender.start()
    wait_for(lambda: server.listener.handler.busy == 1, 10, "the store to start")
    stopper = threading.Thread(target=server.listener.stop)
    stopper.start()
    wait_for(lambda: server.listener.handler.closing, 10, "the listener to start closing")
    assert idle.mail(SENDER)[0] == 421  # RFC 5321 3.8
    lock.rollback()
    lock.close()
    sender.join(timeout=10)
    stopper.join(timeout=10)
    idle.close()
    assert replies == [{}] and len(rows()) == 1
    with pytest.raises(ConnectionRefusedError):
        server.client()


# --- DATA read in blocks (smtp_data.BulkData) ---------------------------------------------


def read_data(pieces: list[bytes], limit: int | None = None) -> tuple[bytes | None, bytes]:
    """BulkData._read_data over a real StreamReader fed `pieces` one loop step apart.

    Returns what it read and what it left in the reader (the next command)."""

    class Session(BulkData):
        def __init__(self) -> None:
            self._reader = asyncio.StreamReader()
            self.data_size_limit = limit

        def _keep_pace(self, started: float, received: int) -> None:
            pass  # the timers are tested over real connections in test_smtp_limits.py

    async def run() -> tuple[bytes | None, bytes]:
        session = Session()
        task = asyncio.ensure_future(session._read_data(0.0))
        for piece in pieces:
            await asyncio.sleep(0)  # one loop step: the reader takes each piece as a block
            session._reader.feed_data(piece)
        session._reader.feed_eof()
        content = await task
        return content, await session._reader.read()

    return asyncio.run(run())


@pytest.mark.parametrize("pieces, content", [
    ([b".\r\n"], b""),  # an empty message
    ([b"Subject: x\r\n\r\nbody\r\n.\r\n"], b"Subject: x\r\n\r\nbody\r\n"),
    ([b"..leading dot\r\n...\r\nx\r\n.\r\n"], b".leading dot\r\n..\r\nx\r\n"),  # RFC 5321 4.5.2
    ([b"a\r\n", b".", b"\r", b"\n"], b"a\r\n"),  # the end marker across three blocks
    ([b"a\r", b"\n.\r\n"], b"a\r\n"),
    ([b"a\r\n.", b"x\r\n.\r\n"], b"a\r\nx\r\n"),  # a stuffed dot at a block's end
    ([b"bare\n.\nlf\r\n.\r\n"], b"bare\n.\nlf\r\n"),  # only CRLF ends a line, as in aiosmtpd
    ([b"x" * 5000 + b"\r\n.\r\n"], b"x" * 5000 + b"\r\n"),  # long lines are taken
])
def test_data_in_blocks(pieces, content):
    assert read_data(pieces) == (content, b"")


def test_data_in_blocks_leaves_the_next_command_in_the_reader():
    assert read_data([b"a\r\n.\r\nMAIL FROM:<b@c.test>\r\n"]) == (b"a\r\n", b"MAIL FROM:<b@c.test>\r\n")


def test_data_in_blocks_size_limit_to_the_byte():
    line = b"y" * 98 + b"\r\n"  # 100 bytes
    assert read_data([line * 10 + b".\r\n"], limit=1000) == (line * 10, b"")
    assert read_data([line * 10 + b"z\r\n.\r\n"], limit=1000) == (None, b"")
    # Far over the limit, in many blocks: dropped as it comes, the end still found.
    assert read_data([line] * 500 + [b".\r", b"\nQUIT\r\n"], limit=1000) == (None, b"QUIT\r\n")


def test_a_client_that_sends_its_next_command_early_is_answered_in_order(serve):
    server = serve()
    with socket.create_connection(("127.0.0.1", server.listener.port), timeout=10) as sock:
        replies = sock.makefile("rb")

        def reply() -> bytes:
            while (line := replies.readline())[3:4] == b"-":
                pass
            return line[:3]

        assert reply() == b"220"
        sock.sendall(b"EHLO client.test\r\n")
        assert reply() == b"250"
        sock.sendall(b"MAIL FROM:<alice@customer.test>\r\nRCPT TO:<support@helpdesk.test>\r\n")
        assert reply() == b"250" and reply() == b"250"
        sock.sendall(b"DATA\r\n")
        assert reply() == b"354"
        first, second = mail(subject="one"), mail(subject="two")
        # The rest of a session in one write: no wait for the 250 before the next MAIL.
        sock.sendall(first + b".\r\nMAIL FROM:<alice@customer.test>\r\nRCPT TO:<support@helpdesk.test>\r\n"
                     b"DATA\r\n")
        assert [reply() for _ in range(4)] == [b"250", b"250", b"250", b"354"]
        sock.sendall(second + b".\r\nQUIT\r\n")
        assert [reply(), reply()] == [b"250", b"221"]
    assert [bytes(r.raw).endswith(m) for r, m in zip(rows(), (first, second), strict=True)] == [True, True]
