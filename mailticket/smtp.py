"""The SMTP/LMTP listener: the edge where mail arrives from an MTA or a client.

Its place in the flow (docs/architecture.md section 1): the edge only checks, stores and answers.
It refuses recipients that are not ours (550: never an open relay) and messages
over the size limit (552), commits the raw bytes to the durable inbox (one row
per message, whatever the number of recipients), and only then answers 250;
when the commit fails it answers 451 so the sender retries later.  Parsing,
threading and replies happen afterwards, in the worker that `on_stored(inbox_id)`
wakes.

It also holds its own under abuse (RFC 5321 4.5.3.2, 3.8): a limit on clients at
once, overall and per address (`smtp_limits`), 421 and close for an idle or trickling
client and after too many refused recipients, and a log that a flood cannot grow.

It listens on TCP (`listen = "HOST:PORT"`) or on a Unix socket (`listen =
"unix:/run/mailticket/lmtp.sock"`), as Postfix's and Exim's LMTP clients prefer: no
port to guard, and the socket's mode and owner (`socket_mode`, `socket_owner`) say who
may deliver.  A Unix client has no address: it is "unix" in the logs and the limits,
and only the overall limit applies to it (it is one MTA with many connections).

Commits block, so they run in store threads (`Writer`): a slow commit never
stalls the event loop and the other clients.  peewee keeps one connection per
thread; a failed commit drops it, so the next one reconnects (a restarted
PostgreSQL heals without restarting us).

This is the only module that imports aiosmtpd; smtp_data.BulkData mixes into its classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import re
import socket
import ssl
import threading
import weakref
from collections.abc import Callable
from email.utils import format_datetime
from typing import Any, AnyStr, cast

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from . import inbox, smtp_limits, unix_socket
from .clock import Clock
from .config import Config, host_port
from .errors import ConfigError, StorageError
from .models import database_proxy
from .smtp_data import BulkData, message_id_of

log = logging.getLogger(__name__)

# Every reply we send ourselves, in one place (RFC 5321 4.2, enhanced codes RFC 3463), but
# the DATA reader's 552 past the size limit (smtp_data.ERR_552).  aiosmtpd itself answers
# 552 for SIZE= in MAIL FROM (RFC 1870), and 500 for a command line over its limit.
OK_MAIL_250 = "250 2.1.0 OK"
OK_RCPT_250 = "250 2.1.5 OK"
OK_250 = "250 2.0.0 OK: queued as {inbox_id}"
ERR_421 = "421 4.3.2 Service shutting down, try again later"
# A 421 closes the connection (RFC 5321 3.8); these say why, so the sender's log does.
ERR_421_BUSY = "421 4.3.2 Too many connections, try again later"
ERR_421_ADDRESS = "421 4.7.0 Too many connections from your address, try again later"
ERR_421_TIMEOUT = "421 4.4.2 Timeout waiting for the client, closing connection"
ERR_421_RCPTS = "421 4.7.0 Too many refused recipients, closing connection"
ERR_451 = "451 4.3.0 Could not store the message, try again later"
ERR_550 = "550 5.1.1 <{address}>: recipient not accepted here"

# Store threads.  SQLite has one writer at a time: a single thread never waits on a
# lock of our own (busy_timeout covers the daemon's worker and the CLI).  Each thread
# commits up to BATCH waiting messages at once (benchmarks/bench_smtp.py).
WRITERS = {"sqlite": 1, "postgresql": 2}
BATCH = 64

# Refused recipients one session may try before it is closed (a dictionary attack).
MAX_REFUSED_RCPTS = 10
UNIX_CLIENT = "unix"  # stands for the address of a client on the Unix socket, which has none
_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")  # in a HELO name or our host name
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # a quoted local part may hold a bare CR


class Handler:
    """aiosmtpd finds the `handle_*` hooks by name (STYLE.md 7)."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        writer: Writer,
        on_stored: Callable[[int], None] | None,
        hostname: str,
    ) -> None:
        self.config, self.clock, self.writer = config, clock, writer
        self.on_stored, self.hostname, self.lmtp = on_stored, hostname, config.smtp.lmtp
        self.closing = False
        self.busy = 0  # DATA commands whose reply is not written yet
        self.idle = asyncio.Event()

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self.closing:  # RFC 5321 3.8: 421 when the service is shutting down
            return ERR_421
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return OK_MAIL_250

    async def handle_RCPT(
        self, server: Guard, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        # Only our own addresses and domains: anything else would make us an open relay.
        if not self.config.accepts(address):
            server.refused_rcpts += 1
            if server.refused_rcpts > MAX_REFUSED_RCPTS:
                log.warning(
                    "closed a session from %s after %d refused recipients", _ip(session), MAX_REFUSED_RCPTS
                )
                return ERR_421_RCPTS
            if server.refused_rcpts == 1:  # once a session: a dictionary attack is one line
                log.info("refused recipient <%s> from %s", address, _ip(session))
            return ERR_550.format(address=address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return OK_RCPT_250

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.busy += 1
        self.idle.clear()
        try:
            status = await self._store(session, envelope)
        finally:
            # aiosmtpd writes the reply in the same loop step as this return, so a
            # shutdown waiting on `idle` never closes the connection before it.
            self.busy -= 1
            if not self.busy:
                self.idle.set()
        # LMTP wants one reply per accepted recipient: _Lmtp repeats this one.  The message
        # is one inbox row for them all, so each recipient's copy was committed or not.
        return status

    async def _store(self, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message_id = message_id_of(content)
        raw = self.trace_headers(session, envelope) + content
        try:
            inbox_id = await self.writer.store(raw, envelope.rcpt_tos[0][:255])
        except Exception as exc:  # anything that kept it from the disk is temporary: 451
            log.warning(
                "inbox - %s: not stored, answered 451: %s",
                message_id,
                " ".join(str(exc).split()),
                exc_info=not isinstance(exc, StorageError),
            )
            return ERR_451
        log.info(
            "inbox %d %s: stored, %d bytes from %s for %s",
            inbox_id,
            message_id,
            len(raw),
            _ip(session),
            ", ".join(envelope.rcpt_tos),
        )
        if self.on_stored is not None:
            try:
                self.on_stored(inbox_id)
            except Exception:  # the message is safe: a wake-up failure must not cost a 250
                log.exception("inbox %d %s: on_stored failed", inbox_id, message_id)
        return OK_250.format(inbox_id=inbox_id)

    def trace_headers(self, session: Session, envelope: Envelope) -> bytes:
        """Return-Path and Received, prepended as the final delivery MTA does (RFC 5321 4.4)."""
        sender = _CONTROL.sub("", envelope.mail_from or "")
        return_path = "<>" if sender in ("", "<>") else f"<{sender}>"
        ip = _ip(session)
        # A Unix client has no address: "from HELO" alone (the TCP-info is optional).
        literal = "" if ip == UNIX_CLIENT else f" ([IPv6:{ip}])" if ":" in ip else f" ([{ip}])"
        helo = _UNSAFE.sub("?", session.host_name or "")[:100] or "unknown"
        # RFC 3848 protocol names: ESMTP after EHLO/LHLO, S when STARTTLS was used.
        protocol = "LMTP" if self.lmtp else ("ESMTP" if session.extended_smtp else "SMTP")
        if session.ssl is not None:
            protocol += "S"
        # A "for" clause only with a single recipient: it would disclose the others.
        rcpts = envelope.rcpt_tos
        for_clause = f"\r\n\tfor <{_CONTROL.sub('', rcpts[0])}>" if len(rcpts) == 1 else ""
        when = format_datetime(self.clock.now())
        text = (
            f"Return-Path: {return_path}\r\n"
            f"Received: from {helo}{literal}\r\n\tby {self.hostname} (mailticket)"
            f" with {protocol}{for_clause}; {when}\r\n"
        )
        return text.encode("utf-8", "surrogateescape")


class Guard(SMTP):  # a mixin for SMTP and LMTP; subclassing lets mypy check it
    """A connection's limits: how many at once, idle and slow clients, and 421 closes.

    The connection is counted before aiosmtpd sees it; past a limit the client gets 421
    instead of the greeting (RFC 5321 3.1) and is closed, so it holds a file for a moment
    only.  Every 421 closes the connection (RFC 5321 3.8), and a client that times out
    (aiosmtpd's `timeout`, RFC 5321 4.5.3.2) is told so instead of being dropped.
    """

    limits: smtp_limits.ConnectionLimits  # set by the Listener for each connection
    admitted: str | None = None  # the client address counted in `limits`
    refused_rcpts = 0  # in this connection (Handler.handle_RCPT)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # not the TLS layer after STARTTLS (RFC 3207)
            ip = _client(transport.get_extra_info("peername"))
            if limit := self.limits.admit(ip):
                cast(asyncio.Transport, transport).write(_REFUSED[limit].encode() + b"\r\n")
                transport.close()
                return
            self.admitted = ip
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.admitted is None:  # refused at connect: aiosmtpd never knew of it
            return
        self.limits.release(self.admitted)
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        log.info("%s: timed out, answered 421 and closed", self.admitted)
        if self.transport is not None:
            cast(asyncio.Transport, self.transport).write(ERR_421_TIMEOUT.encode() + b"\r\n")
        super()._timeout_cb()  # closes the connection

    async def push(self, status: AnyStr) -> None:
        await super().push(status)
        if isinstance(status, str) and status.startswith("421") and self.transport is not None:
            self.transport.close()  # RFC 5321 3.8: 421 closes the transmission channel


_REFUSED = {"total": ERR_421_BUSY, "address": ERR_421_ADDRESS}


class _Smtp(Guard, BulkData, SMTP):
    pass


class _Lmtp(Guard, BulkData, LMTP):
    """After the message, one reply per accepted recipient, in RCPT order (RFC 2033 4.2).

    Whatever answers the message answers once: the handler's store (250 or 451), or
    BulkData's 552 past the size limit.  So `push` repeats the first reply after the 354
    for each recipient; a DATA refused before its 354 (no recipient, a syntax error)
    gets one reply, as the RFC wants.  A recipient refused at RCPT is not in the envelope
    and gets none.  Without the repeat the client waits for the missing replies until it
    times out, and defers the message.
    """

    owed = 0  # replies the message in DATA owes: its accepted recipients

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            if self.owed:
                status, self.owed = "\r\n".join([status] * self.owed), 0
            elif status.startswith("354") and self.envelope is not None:
                self.owed = len(self.envelope.rcpt_tos)
        await super().push(status)


class Writer:
    """Store threads that commit whatever is waiting in one transaction (group commit).

    Under load a commit covers several messages, so the disk syncs once for them all;
    each client still gets its 250 only after the commit that holds its message.
    """

    def __init__(self, clock: Clock, source: str, threads: int) -> None:
        self.clock, self.source = clock, source
        self.queue: queue.SimpleQueue[tuple[bytes, str, asyncio.Future[int]] | None] = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._run, name=f"smtp-store-{n}", daemon=True) for n in range(threads)
        ]

    def store(self, raw: bytes, rcpt: str) -> asyncio.Future[int]:
        """Called on the event loop; the future gets the inbox id or the error."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put((raw, rcpt, future))
        return future

    def stop(self, timeout: float) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join(timeout)

    def _run(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                batch = [item]
                while len(batch) < BATCH:
                    try:
                        item = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self.queue.put(None)  # the stop signal, for the next round
                        break
                    batch.append(item)
                self._commit(batch)
        finally:
            _drop_connection()  # each thread closes its own (SQLite's cannot be shared)

    def _commit(self, batch: list[tuple[bytes, str, asyncio.Future[int]]]) -> None:
        items = [inbox.Incoming(raw, self.source, rcpt) for raw, rcpt, _ in batch]
        try:
            results: list[int | BaseException] = list(inbox.store_many(items, now=self.clock.now()))
        except Exception as exc:  # noqa: BLE001 - the client gets 451, the log says why
            _drop_connection()  # a dead connection is not reused: the next one reconnects
            # One bad message must not cost the others their 250: each alone, once more.
            results = [exc] if len(items) == 1 else [self._one(item) for item in items]
        for (_, _, future), result in zip(batch, results, strict=True):
            # RuntimeError: the loop is closed, stop() gave up waiting for this commit.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(_settle, future, result)

    def _one(self, item: inbox.Incoming) -> int | BaseException:
        try:
            return inbox.store_many([item], now=self.clock.now())[0]
        except Exception as exc:  # noqa: BLE001
            _drop_connection()
            return exc


class Listener:
    """A running listener: an asyncio loop in its own thread, and the store threads."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        on_stored: Callable[[int], None] | None,
        writers: int | None = None,
    ) -> None:
        smtp = config.smtp
        # Either a Unix socket's path, or a TCP host and port (port 0: any free one).
        self.path = smtp.listen[len("unix:") :] if smtp.listen.startswith("unix:") else None
        self.host, self.port = ("", 0) if self.path is not None else host_port(smtp.listen)
        self.socket_mode, self.socket_owner = smtp.socket_mode, smtp.socket_owner
        self.socket_inode: int | None = None  # the socket file we made, removed on stop
        tls_context = _tls_context(smtp.tls_cert, smtp.tls_key)
        backend = "sqlite" if config.database.is_sqlite else "postgresql"
        self.writers = writers or WRITERS[backend]
        self.writer = Writer(clock, "lmtp" if smtp.lmtp else "smtp", self.writers)
        # gethostname(), not getfqdn(): no DNS lookup that could hang the start.
        hostname = _UNSAFE.sub("-", socket.gethostname()) or "localhost"
        self.handler = Handler(config, clock, self.writer, on_stored, hostname)
        self.protocol = _Lmtp if smtp.lmtp else _Smtp
        self.kwargs: dict[str, Any] = {
            "data_size_limit": smtp.max_size or None,  # RFC 1870 SIZE; 0 means no limit
            "enable_SMTPUTF8": True,
            "hostname": hostname,
            "ident": "mailticket",
            "tls_context": tls_context,
            "require_starttls": False,  # RFC 3207
            "timeout": smtp.idle_timeout,
        }
        total = smtp_limits.fit_open_files(smtp.max_connections)
        # On the Unix socket every client is the one local MTA, opening a connection per
        # delivery agent: a per-address limit would only throttle it, so the overall one rules.
        per_ip = total if self.path is not None else smtp.max_connections_per_ip
        self.limits = smtp_limits.ConnectionLimits(total, per_ip, clock)
        self.loop = asyncio.new_event_loop()
        self.sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.server: asyncio.AbstractServer | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="smtp", daemon=True)

    def _session(self) -> SMTP:
        session = self.protocol(self.handler, loop=self.loop, **self.kwargs)
        session.limits = self.limits
        self.sessions.add(session)
        return session

    def start(self) -> Listener:
        try:
            unix = self._bind_unix() if self.path is not None else None
        except BaseException:
            self.loop.close()  # never ran: no thread to stop
            raise
        self.thread.start()
        try:
            if unix is not None:
                serving = self.loop.create_unix_server(self._session, sock=unix)
            else:
                serving = self.loop.create_server(self._session, self.host or None, self.port)
            self.server = asyncio.run_coroutine_threadsafe(serving, self.loop).result(timeout=30)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()
            if unix is not None:
                unix.close()
                self._remove_socket()
            raise
        if unix is None:
            self.port = self.server.sockets[0].getsockname()[1]  # the real one when 0 was asked
        for thread in self.writer.threads:
            thread.start()
        return self

    def _bind_unix(self) -> socket.socket:
        """The Unix socket, bound with its owner and mode, not yet listening (unix_socket.py)."""
        assert self.path is not None
        sock, self.socket_inode = unix_socket.bind(self.path, self.socket_mode, self.socket_owner)
        return sock

    def _remove_socket(self) -> None:
        """Remove the socket file we made; not one that has replaced it since."""
        if self.path is not None and self.socket_inode is not None:
            unix_socket.remove(self.path, self.socket_inode)
        self.socket_inode = None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, answer the messages being stored, close the connections."""
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(timeout), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
        self._remove_socket()  # the MTA then gets "no such file", not a refused connection
        self.writer.stop(timeout)

    async def _shutdown(self, timeout: float) -> None:
        assert self.server is not None
        self.server.close()
        self.handler.closing = True  # new transactions get 421 from handle_MAIL
        if self.handler.busy:
            try:
                await asyncio.wait_for(self.handler.idle.wait(), timeout)
            except TimeoutError:
                log.warning("stopping with %d messages still being stored", self.handler.busy)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()  # flushes the replies already written
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await self.server.wait_closed()


def start(
    config: Config,
    clock: Clock,
    on_stored: Callable[[int], None] | None = None,
    *,
    writers: int | None = None,
) -> Listener:
    """Listen on `config.smtp.listen` (SMTP, or LMTP; TCP or a Unix socket) until `.stop()`.

    An address or socket in use raises OSError (EADDRINUSE); a socket's folder missing,
    a path that is not a socket or an unknown `socket_owner` raise ConfigError.

    The database must be open (`db.open_database`) before.  `on_stored(inbox_id)` is
    called from the listener's thread after each commit; keep it short (set an Event).
    """
    return Listener(config, clock, on_stored, writers).start()


def _tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """STARTTLS (RFC 3207) when a certificate is configured; clients are not verified."""
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[smtp] tls_cert/tls_key: cannot load {cert}: {exc}") from None
    return context


def _settle(future: asyncio.Future[int], result: int | BaseException) -> None:
    if future.done():  # the client went away meanwhile; a resend is deduplicated later
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _drop_connection() -> None:
    """Close this thread's connection after a failure, so the next store reconnects."""
    with contextlib.suppress(Exception):  # it is broken already: a reset is all we want
        database_proxy.close()


def _ip(session: Session) -> str:
    return _client(session.peer)


def _client(peer: Any) -> str:
    """The client's address: on TCP the peer is (host, port, ...); on a Unix socket it is
    the client's path, "" when it has none (aiosmtpd types it as str)."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else UNIX_CLIENT
