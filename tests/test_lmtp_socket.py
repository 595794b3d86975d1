"""LMTP on a Unix socket, as Postfix and Exim deliver to it, with a real client.

Each test starts the real listener (`smtp.start`) on `listen = "unix:..."` over an
SQLite file in its own folder, and talks to it with `smtplib.LMTP(path)` (a host
that starts with "/" is a Unix socket to smtplib), or by hand where smtplib reads
fewer replies than LMTP sends.  The last test puts a private Postfix (tests/postfix.py)
in front, configured from docs/deploy.md: its lmtp client runs as the user postfix,
so the socket's owner and mode decide whether it may deliver.
"""

from __future__ import annotations

import errno
import grp
import json
import logging
import os
import pwd
import smtplib
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Helpdesk
from helpers import wait_for
from mails import mail
from postfix import documented, own_folder

from mailticket import config as config_mod
from mailticket import db as db_mod
from mailticket import smtp as smtp_mod
from mailticket.app import open_app
from mailticket.clock import FrozenClock
from mailticket.db import open_database
from mailticket.errors import ConfigError
from mailticket.models import Inbox, database_proxy

HELPDESK = "support@helpdesk.test"
SENDER = "alice@customer.test"
SOCKET = "lmtp.sock"
COMMON, OVER_SOCKET = "The domain and its recipients", "Over an LMTP socket"


@dataclass
class Server:
    listener: smtp_mod.Listener
    config: config_mod.Config
    path: Path
    stored: list[int] = field(default_factory=list)

    def client(self) -> smtplib.LMTP:
        client = smtplib.LMTP(str(self.path), timeout=10)
        client.ehlo("mta.helpdesk.test")  # LHLO
        return client


def rows() -> list[Inbox]:
    return list(Inbox.select().order_by(Inbox.id))


def smtp_toml(options: dict) -> str:
    return "[smtp]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items())


@pytest.fixture
def desk(tmp_path: Path) -> Helpdesk:
    """A helpdesk folder on SQLite; the socket goes beside its config (a short path:
    AF_UNIX allows about 107 bytes, and pytest cuts tmp_path's test name to 30)."""
    assert len(str(tmp_path / SOCKET)) < 100, tmp_path
    return Helpdesk(tmp_path, f"sqlite:///{tmp_path / 'mailticket.db'}")


@pytest.fixture
def serve(desk: Helpdesk):
    """serve(**smtp) -> a started Server on the Unix socket, stopped at the end."""
    started: list[smtp_mod.Listener] = []

    def start(**smtp) -> Server:
        # A relative socket path is the config folder's (config.py resolves it).
        options = {"lmtp": True, "listen": f"unix:{SOCKET}", **smtp}
        desk.write_config(smtp_toml(options))
        cfg = config_mod.load(desk.config_path)
        if not started:
            open_database(cfg.database.url)
        stored: list[int] = []
        listener = smtp_mod.start(cfg, FrozenClock(), stored.append)
        started.append(listener)
        return Server(listener, cfg, Path(cfg.smtp.listen.removeprefix("unix:")), stored)

    yield start
    for listener in started:
        listener.stop()
    if database_proxy.obj is not None:
        database_proxy.obj.close()


def lmtp_transaction(
    s: smtplib.LMTP, rcpts: list[str], raw: bytes
) -> tuple[list[int], list[tuple[int, bytes]]]:
    """RCPT codes, then every reply to DATA: one per accepted recipient (RFC 2033 4.2).

    smtplib's `data()` reads one reply; `getreply()` reads each of the others.  A test
    that expected too many would block: the client's timeout fails it instead.
    """
    assert s.mail(SENDER)[0] == 250
    codes = [s.rcpt(r)[0] for r in rcpts]
    replies = [s.data(raw)]
    replies += [s.getreply() for _ in range(codes.count(250) - 1)]
    return codes, replies


def lock_sqlite(path: Path) -> sqlite3.Connection:
    """Another writer holding SQLite's write lock: the listener's commit waits on it."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


# --- delivery over the socket ----------------------------------------------------------------


def test_a_message_over_the_socket_gets_250_only_after_its_commit(serve, desk, caplog):
    caplog.set_level(logging.INFO, logger="mailticket.smtp")
    server = serve()
    raw = mail(subject="Printer on fire")
    lock = lock_sqlite(desk.root / "mailticket.db")  # busy_timeout 5 s: the commit waits
    replies: list[tuple[int, bytes]] = []

    def deliver() -> None:
        with server.client() as s:
            replies.append(lmtp_transaction(s, [HELPDESK], raw)[1][0])

    client = threading.Thread(target=deliver)
    try:
        client.start()
        wait_for(lambda: server.listener.handler.busy == 1, 10, "the message to reach the store")
        # The message is in hand but not committed: the client has no reply yet.
        assert client.is_alive() and replies == []
        assert lock.execute("SELECT count(*) FROM inbox").fetchone() == (0,)
    finally:
        lock.rollback()
        lock.close()
    client.join(timeout=10)
    [row] = rows()
    assert replies == [(250, smtp_mod.OK_250.format(inbox_id=row.id)[4:].encode())]
    assert server.stored == [row.id]
    assert (row.source, row.mailbox, row.state) == ("lmtp", HELPDESK, "pending")
    stored = bytes(row.raw)
    assert stored.endswith(raw)
    # A Unix client has no address: the trace says who it said it was, and how.
    trace = stored[: -len(raw)].decode()
    assert trace.startswith(f"Return-Path: <{SENDER}>\r\nReceived: from mta.helpdesk.test\r\n\tby ")
    assert f"(mailticket) with LMTP\r\n\tfor <{HELPDESK}>; " in trace
    assert f"stored, {len(stored)} bytes from unix for {HELPDESK}" in caplog.text


def test_each_accepted_recipient_gets_its_reply_and_a_refused_one_none(serve):
    server = serve(domains=["helpdesk.test"])
    rcpts = [HELPDESK, "nobody@elsewhere.test", "support+billing@helpdesk.test"]
    with server.client() as s:
        codes, replies = lmtp_transaction(s, rcpts, mail())
        assert codes == [250, 550, 250]
        [row] = rows()  # one row for the message, whatever the number of recipients
        assert replies == [(250, smtp_mod.OK_250.format(inbox_id=row.id)[4:].encode())] * 2
        assert s.noop()[0] == 250  # no reply left unread: the session is in step
        # With no recipient accepted, DATA gets one refusal, not one per RCPT tried.
        assert s.mail(SENDER)[0] == 250 and s.rcpt("x@elsewhere.test")[0] == 550
        assert s.docmd("DATA")[0] == 503
        assert s.noop()[0] == 250
        s.rset()
    assert (row.source, row.mailbox) == ("lmtp", HELPDESK)  # the first accepted recipient
    assert b"\r\n\tby " in bytes(row.raw) and b"\tfor <" not in bytes(row.raw)  # not the others


def test_a_storage_failure_gives_each_recipient_451_and_stores_nothing(serve, desk, monkeypatch):
    pragmas = tuple(p for p in db_mod.SQLITE_PRAGMAS if p[0] != "busy_timeout")
    monkeypatch.setattr(db_mod, "SQLITE_PRAGMAS", (*pragmas, ("busy_timeout", 200)))
    server = serve(domains=["helpdesk.test"])
    lock = lock_sqlite(desk.root / "mailticket.db")
    try:
        with server.client() as s:
            codes, replies = lmtp_transaction(s, ["a@helpdesk.test", "b@helpdesk.test"], mail())
            assert codes == [250, 250]
            assert [code for code, _ in replies] == [451, 451]  # never a 250 for an uncommitted copy
            assert replies[0][1].startswith(b"4.3.0 ")
            assert s.noop()[0] == 250
    finally:
        lock.rollback()
        lock.close()
    assert rows() == [] and server.stored == []


def test_a_message_over_the_size_limit_gets_552_for_each_recipient(serve):
    server = serve(domains=["helpdesk.test"], max_size=3000)
    with server.client() as s:
        codes, replies = lmtp_transaction(s, ["a@helpdesk.test", "b@helpdesk.test"], mail(body="x" * 5000))
        assert codes == [250, 250]
        assert [code for code, _ in replies] == [552, 552]
        assert s.noop()[0] == 250  # the client is not left waiting for a second reply
        codes, replies = lmtp_transaction(s, ["a@helpdesk.test"], mail())  # the session goes on
        assert [code for code, _ in replies] == [250]
    assert len(rows()) == 1


def test_one_mta_may_open_many_connections_up_to_the_overall_limit(serve, caplog):
    # Every client on the socket is "unix": a per-address limit of 2 would throttle
    # the MTA's third delivery agent.  Only max_connections applies.
    server = serve(max_connections=4, max_connections_per_ip=2)
    clients = []
    try:
        for _ in range(4):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(10)
            c.connect(str(server.path))
            clients.append(c)
            assert c.recv(1024).startswith(b"220 ")
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        clients.append(extra)
        extra.settimeout(10)
        extra.connect(str(server.path))
        assert extra.recv(1024).decode() == smtp_mod.ERR_421_BUSY + "\r\n"
    finally:
        for c in clients:
            c.close()
    assert "refused a connection from unix: 4 open, the [smtp] max_connections limit" in caplog.text
    with server.client() as s:  # the slots are free again
        assert lmtp_transaction(s, [HELPDESK], mail())[1][0][0] == 250


# --- postmaster and subaddresses, through the pipeline ---------------------------------------


def process(desk: Helpdesk) -> list:
    """What the daemon's worker does with the pending rows."""
    app = open_app(config_mod.load(desk.config_path), clock=FrozenClock())
    try:
        return app.worker.run_pending()
    finally:
        app.close()


def test_postmaster_mail_opens_a_ticket_like_mail_to_the_helpdesk(serve, desk):
    server = serve()
    for rcpt, subject in [
        (HELPDESK, "Printer"),
        ("postmaster@helpdesk.test", "Your mail server"),
        ("postmaster", "Bare postmaster"),
    ]:
        with server.client() as s:
            assert s.mail(SENDER)[0] == 250
            assert s.docmd(f"RCPT TO:<{rcpt}>")[0] == 250  # bare <postmaster> (RFC 5321 4.5.1)
            assert s.data(mail(subject=subject))[0] == 250
    server.listener.stop()
    assert [r.mailbox for r in rows()] == [HELPDESK, "postmaster@helpdesk.test", "postmaster"]
    results = process(desk)
    assert [(r.outcome, r.ticket) for r in results] == [("created", 1), ("created", 2), ("created", 3)]
    for number, subject in [(2, "Your mail server"), (3, "Bare postmaster")]:
        ticket = desk.show(number)
        assert (ticket["subject"], ticket["requester"], ticket["status"]) == (subject, SENDER, "new")
    acks = sorted(a["subject"] for a in desk.outbox() if a["to"] == SENDER)
    assert acks == ["[#1] Printer", "[#2] Your mail server", "[#3] Bare postmaster"]


def test_a_subaddress_is_kept_as_the_mailbox_and_routes_by_rule(serve, desk):
    desk.rule_file(
        "10-queues.yaml",
        """\
        - name: billing-by-envelope
          when: {mailbox: support+billing@helpdesk.test}
          then: {queue: billing}
        - name: sales-by-header
          when: {recipient: support+sales@helpdesk.test}
          then: {queue: sales}
    """,
    )
    server = serve()
    with server.client() as s:
        # The envelope says +billing, the header only support@: the mailbox is the envelope's.
        assert lmtp_transaction(s, ["support+billing@helpdesk.test"], mail(to=HELPDESK))[1][0][0] == 250
        raw = mail(to="support+sales@helpdesk.test")
        assert lmtp_transaction(s, ["support+sales@helpdesk.test"], raw)[1][0][0] == 250
        assert lmtp_transaction(s, [HELPDESK], mail(subject="Plain"))[1][0][0] == 250
    server.listener.stop()
    assert [r.mailbox for r in rows()] == [
        "support+billing@helpdesk.test",
        "support+sales@helpdesk.test",
        HELPDESK,
    ]
    results = process(desk)
    assert [(r.outcome, r.queue) for r in results] == [
        ("created", "billing"),
        ("created", "sales"),
        ("created", "general"),
    ]
    assert desk.show(1)["queue"] == "billing"


# --- the socket file -------------------------------------------------------------------------


def test_the_socket_gets_its_mode_and_owner_and_goes_at_stop(serve, desk):
    if os.geteuid() != 0:  # only root gives a file away (CI runs the tests as root)
        with pytest.raises(ConfigError, match=r"\[smtp\] socket_owner = 'nobody:nogroup': cannot give "):
            serve(socket_owner="nobody:nogroup")
        assert not (desk.root / SOCKET).exists()
        return
    server = serve(socket_mode="0660", socket_owner="nobody:nogroup")
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
    server.listener.stop()
    assert not server.path.exists()


def test_the_mode_is_applied_and_an_empty_owner_is_the_daemons_own(serve):
    server = serve(socket_mode="0600")
    st = os.stat(server.path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    with server.client() as s:  # connectable by its owner
        assert s.noop()[0] == 250


@pytest.mark.parametrize("owner, named", [("no-such-user-mt", "user"), ("nobody:no-such-group-mt", "group")])
def test_an_unknown_owner_is_an_error_naming_the_key_and_leaves_no_file(serve, desk, owner, named):
    with pytest.raises(ConfigError) as failed:
        serve(socket_owner=owner)
    name = owner.rpartition(":")[2]
    assert str(failed.value) == f"[smtp] socket_owner = {owner!r}: no {named} {name!r} on this machine"
    assert not (desk.root / SOCKET).exists()


def test_a_stale_socket_of_a_killed_daemon_is_replaced(serve, desk, caplog):
    caplog.set_level(logging.INFO, logger="mailticket.unix_socket")
    path = desk.root / SOCKET
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a killed daemon leaves its socket file; nothing answers on it
    dead.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    server = serve()
    assert f"removed the stale socket {path}" in caplog.text
    with server.client() as s:
        assert lmtp_transaction(s, [HELPDESK], mail())[1][0][0] == 250


def test_a_socket_in_use_fails_the_start_and_is_left_to_its_server(serve, desk):
    first = serve()
    inode = os.stat(first.path).st_ino
    with pytest.raises(OSError) as failed:
        serve()
    assert not isinstance(failed.value, ConfigError) and failed.value.errno == errno.EADDRINUSE
    assert os.stat(first.path).st_ino == inode  # not removed, not replaced
    with first.client() as s:  # the first one still serves
        assert lmtp_transaction(s, [HELPDESK], mail())[1][0][0] == 250


def test_the_daemon_says_the_socket_is_in_use(serve, desk):
    serve()
    desk.write_config(smtp_toml({"lmtp": True, "listen": f"unix:{SOCKET}"}))
    proc = subprocess.run(
        [sys.executable, "-m", "mailticket.cli", "--config", str(desk.config_path), "run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert (
        f"[smtp] listen = unix:{desk.root / SOCKET}: cannot listen there: Address already in use"
        in proc.stderr
    ), proc.stderr


def test_a_file_that_is_not_a_socket_is_left_alone(serve, desk):
    path = desk.root / SOCKET
    path.write_text("not a socket\n")
    with pytest.raises(ConfigError, match=r"\[smtp\] listen = unix:.*: .* exists and is not a socket"):
        serve()
    assert path.read_text() == "not a socket\n"


def test_a_missing_folder_is_an_error_naming_it(serve, desk):
    with pytest.raises(ConfigError) as failed:
        serve(listen="unix:run/lmtp.sock")
    assert str(failed.value).startswith(
        f"[smtp] listen = unix:{desk.root}/run/lmtp.sock: the folder {desk.root}/run does not exist"
    )
    assert not (desk.root / "run").exists()  # not made behind the admin's back


# --- a real MTA --------------------------------------------------------------------------------


@pytest.mark.xdist_group("postfix")  # with test_postfix.py: one private Postfix at a time
def test_postfix_delivers_over_the_socket_as_the_user_postfix(postfix, service_root):
    """docs/deploy.md's socket recipe, followed: Postfix's lmtp client (user postfix)
    reaches the socket through its group and mode, and only so."""
    folder = own_folder(str(service_root))  # 0755: Postfix's processes reach the socket in it
    path = folder / SOCKET
    hd = Helpdesk(folder, f"sqlite:///{folder / 'mailticket.db'}")
    doc = documented(OVER_SOCKET)["/srv/mailticket/mailticket.toml"]
    # The doc's settings; `nobody` stands for the doc's `mailticket` user.
    doc = doc.replace("/run/mailticket/lmtp.sock", str(path)).replace(
        '"mailticket:postfix"', '"nobody:postfix"'
    )
    assert 'socket_mode = "0660"' in doc
    hd.write_config(
        doc.replace('socket_mode = "0660"', 'socket_mode = "0600"'), address="support@example.com"
    )
    cfg = config_mod.load(hd.config_path)
    open_database(cfg.database.url)
    listeners = [smtp_mod.start(cfg, FrozenClock())]
    try:
        server = postfix((COMMON, OVER_SOCKET), {"/run/mailticket/lmtp.sock": str(path)})
        # First the socket is the group's but mode 0600: Postfix cannot connect, and defers.
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
            s.sendmail(SENDER, ["support@example.com"], mail(to="support@example.com", subject="First"))
        wait_for(
            lambda: (
                "deferred" in [st for _, st in server.statuses("support@example.com")]
                and "Permission denied" in server.log.read_text()
            ),
            30,
            "Postfix to defer",
        )
        assert rows() == []
        listeners[0].stop()
        assert not path.exists()  # removed at stop
        # Then as the doc says (0660): the deferred message and new ones arrive.
        hd.write_config(doc, address="support@example.com")
        listeners.append(smtp_mod.start(config_mod.load(hd.config_path), FrozenClock()))
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == grp.getgrnam("postfix").gr_gid
        assert st.st_uid == pwd.getpwnam("nobody").pw_uid
        relay = server.delivered("support@example.com")
        assert str(path) in relay, relay
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
            for rcpt in ("support+billing@example.com", "postmaster@example.com"):
                s.sendmail(SENDER, [rcpt], mail(to=rcpt, subject=rcpt))
            # Not ours: Postfix refuses it at RCPT, the recipient map in step with accepts().
            assert s.docmd("MAIL FROM:<alice@customer.test>")[0] == 250
            assert s.docmd("RCPT TO:<sales@example.com>")[0] == 550
            s.rset()
        server.delivered("support+billing@example.com")
        server.delivered("postmaster@example.com")
        server.wait_empty()
    finally:
        for listener in listeners:
            listener.stop()
    got = rows()
    assert [r.mailbox for r in got] == [
        "support@example.com",
        "support+billing@example.com",
        "postmaster@example.com",
    ]
    assert all(r.source == "lmtp" for r in got)
    # Postfix's LHLO is its myhostname; a Unix client has no address to show.
    assert bytes(got[0].raw).split(b"\r\n")[1] == b"Received: from mailticket-test.localdomain"
    database_proxy.obj.close()
