"""`mailticket run`: the long-running service, as four processes.

- The main process holds the incoming edges and the supervisor: the SMTP/LMTP
  listener and one IMAP poller thread per mailbox only store raw messages
  (`inbox`) and wake the worker; the loopback HTTP endpoint serves `/healthz` and
  `/metrics`; signals are handled here.
- The worker process runs the pipeline over pending inbox rows.
- The outbox process delivers what the pipeline queued.
- The timers process runs the timed jobs (SLA, updates, reminders, closing) every
  `[daemon] tick_interval` seconds and wakes the outbox when they queued mail.

This module is the supervisor; the children's side (their loops, signals, backoff
and the `Report`s they send) is `children.py`.

Why processes: receiving a message (SMTP parsing), processing it and building the
reply each cost about a millisecond or more of CPU, and Python runs one thread at
a time.  In one process a client would wait for the pipeline's CPU before its 250,
and a thread that builds mail makes the listener's thread wait for the interpreter
lock at every reply.  The durable inbox is the queue between the edges and the
worker, and the outbox table the queue between the worker and the sender, so the
split costs nothing in safety: each process only ever sees committed rows.

The outbox process runs at a lower CPU priority (`children.OUTBOX_NICE`): when the
machine is saturated by a burst, storing and processing mail comes first and the
acknowledgements follow as soon as there is CPU to spare; on an idle machine the
priority changes nothing.

Nothing stops processing for good.  A child that meets a database error (the server
unreachable, a lock, the connection lost) drops its connection, backs off and tries
again, and tells the supervisor through its events channel, so `/healthz` answers 503
while the pipeline cannot make progress and says why.  A child that dies is started
again, after a delay that doubles while it keeps dying.  What cannot start (an
address in use, an unreadable certificate) stops the start before any child runs,
with one line that names it.

Signals: SIGTERM (and SIGINT) stop accepting, let in-flight messages get their
reply, then the worker processes what is stored and the timers finish their pass
(no new one starts) and both exit, then the outbox process sends what was queued
and exits; the daemon exits 0.  SIGHUP reloads the configuration, rules and
templates in the worker and the timers and the outgoing settings in the outbox
process; a broken edit is logged and the last good version kept.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, cast

from . import config as config_mod
from . import leases, outbox
from .app import open_app
from .children import (
    SPAWN,
    ChildProcess,
    OutboxProcess,
    Report,
    TimersProcess,
    Wakeup,
    WorkerProcess,
    child_main,
    setup_logging,
)
from .clock import Clock
from .config import Config, host_port
from .db import Database, open_database, reset_connection
from .db import check as check_database
from .errors import ConfigError
from .metrics import HttpEndpoint, Metrics

if TYPE_CHECKING:
    from .imap import ImapPoller
    from .smtp import Listener

log = logging.getLogger(__name__)

RESTART_DELAYS = (1.0, 60.0)  # first and longest wait before starting a dead child again
STABLE_SECONDS = 60.0  # a child that ran this long before it died starts again at once


class Child:
    """A child process as the supervisor sees it; started again when it dies.

    Each start runs `children.child_main(kind, ...)` with its own stop event and its
    own events channel (a pipe the child sends `Report`s on): a child killed in the
    middle of a message or holding a lock spoils only what dies with it.
    """

    def __init__(self, kind: type[ChildProcess], config_path: str | None, *wakeups: Wakeup) -> None:
        self.kind, self.name, self.config_path, self.wakeups = kind, kind.name, config_path, wakeups
        self.stop = SPAWN.Event()
        self.events: multiprocessing.connection.Connection | None = None  # what it sends us
        self.ready = threading.Event()  # its signal handlers are in place
        self.reload_pending = False
        self.problem: str | None = None  # what it last reported it cannot do; None: all works
        self.process: multiprocessing.process.BaseProcess | None = None
        self.started_at = 0.0
        self.delay = 0.0  # the last wait before a restart
        self.restart_at: float | None = None

    def start(self) -> None:
        self.ready.clear()
        self.problem = None
        self.stop = SPAWN.Event()
        self.events, send = SPAWN.Pipe(duplex=False)
        self.process = SPAWN.Process(
            target=child_main,
            name=self.name,
            args=(self.kind, self.config_path, self.stop, send, *self.wakeups),
        )
        self.process.start()
        send.close()  # the child's end: when it dies, we read EOF
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def supervise(self, metrics: Metrics) -> None:
        """Start it again when it died: at once if it had run for a while, else after a
        wait that doubles each time (a child that cannot start must not spin)."""
        if self.process is None or self.process.is_alive():
            return
        now = time.monotonic()
        if self.restart_at is None:
            first, longest = RESTART_DELAYS
            early = now - self.started_at < STABLE_SECONDS
            self.delay = min(self.delay * 2, longest) if early and self.delay else first
            self.restart_at = now + self.delay
            log.error(
                "the %s process exited (%s); restarting it in %.3g s",
                self.name,
                self.process.exitcode,
                self.delay,
            )
        elif now >= self.restart_at:
            self.restart_at = None
            log.warning("restarting the %s process", self.name)
            metrics.restarts.labels(self.name).inc()
            self.start()

    def reload(self) -> None:
        if not self.ready.is_set():
            self.reload_pending = True  # sent once it can take it
        elif (process := self.process) is not None and process.is_alive() and process.pid is not None:
            self.reload_pending = False
            os.kill(process.pid, signal.SIGHUP)

    def finish(self, timeout: float) -> bool:
        """Ask it to drain and exit; False when it had to be stopped or failed."""
        if self.process is None:
            return True
        if not self.process.is_alive():  # died, not restarted yet: it may have died holding `stop`
            return not self.process.exitcode
        self.stop.set()
        self.process.join(timeout=timeout)
        if self.process.is_alive():
            log.warning("the %s did not finish within %d s; stopping it", self.name, timeout)
            self.process.terminate()
            self.process.join(timeout=10)
            return False
        return not self.process.exitcode


class Daemon:
    def __init__(self, config: Config, config_path: str | None, clock: Clock, db: Database) -> None:
        self.config, self.config_path, self.clock, self.db = config, config_path, clock, db
        self.metrics = Metrics()
        self.stop = threading.Event()  # the edges' stop
        self.wake = Wakeup()  # wakes the worker when an edge stored a message
        self.outbox_wake = Wakeup()  # wakes the outbox when the worker queued mail
        self.worker = Child(WorkerProcess, config_path, self.wake, self.outbox_wake)
        self.outbox = Child(OutboxProcess, config_path, self.outbox_wake)
        self.timers = Child(TimersProcess, config_path, self.outbox_wake)
        self.children = (self.worker, self.outbox, self.timers)
        self.threads: list[threading.Thread] = []
        self.name = leases.daemon_name(config.daemon.name)  # in mailbox leases and /healthz
        self.pollers: list[ImapPoller] = []
        self.timers_pass: dict = {}  # the timers' last pass: when, and what it did
        self.listener: Listener | None = None
        self.http: HttpEndpoint | None = None
        self.transport_error: str | None = None  # the outbox's last word on the smarthost

    def stored(self, *_ids) -> None:
        """Called by an edge after it committed a message."""
        self.wake.set()

    def start(self) -> None:
        """Open the edges, then start the children.

        What cannot start (an address in use, an unreadable certificate, an IMAP
        password file) raises a MailticketError naming it before any child runs, and
        what was opened is closed again.
        """
        try:
            self._take_back_leases()
            self._open_edges()
        except BaseException:
            self.stop.set()
            if self.listener is not None:
                self.listener.stop(timeout=0)
            if self.http is not None:
                self.http.stop()
            raise
        for child in self.children:
            child.start()
        self._thread("metrics", self._metrics_loop)

    def _take_back_leases(self) -> None:
        """On SQLite this daemon is alone (`one_daemon`): the mailbox leases a killed
        predecessor held (under another HOST:PID) are free now, not after they run out."""
        if self.config.database.is_sqlite and self.config.imap:
            if freed := leases.release_all():
                log.info("imap: %d mailbox lease(s) of a previous run released", freed)

    def _open_edges(self) -> None:
        cfg = self.config
        from . import smtp  # the edges are imported here: the CLI does not need them

        try:
            self.listener = smtp.start(cfg, self.clock, on_stored=self.stored)
        except OSError as exc:
            raise ConfigError(
                f"[smtp] listen = {cfg.smtp.listen}: cannot listen there: {_reason(exc)}"
            ) from None
        log.info("listening for %s on %s", "LMTP" if cfg.smtp.lmtp else "SMTP", cfg.smtp.listen)
        pollers = []
        if cfg.imap:
            from .imap import ImapPoller

            pollers = [
                (
                    box,
                    ImapPoller(
                        box,
                        self.clock,
                        on_stored=self.stored,
                        oauth=cfg.oauth.get(box.oauth),
                        holder=self.name,
                        lease_seconds=cfg.daemon.lease_seconds,
                    ),
                )
                for box in cfg.imap
            ]
            self.pollers = [p for _, p in pollers]
        if cfg.daemon.http:
            host, port = host_port(cfg.daemon.http)
            try:
                http = HttpEndpoint(host, port, self.metrics, self.health)
            except OSError as exc:
                raise ConfigError(
                    f"[daemon] http = {cfg.daemon.http}: cannot listen there: {_reason(exc)}"
                ) from None
            http.start()
            self.http = http
            log.info("health and metrics on http://%s:%s/healthz and /metrics", host, http.port)
        for box, poller in pollers:
            self._thread(f"imap:{box.user}@{box.host}/{box.folder}", poller.run, self.stop)

    def _thread(self, name: str, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def _metrics_loop(self) -> None:
        m = self.metrics
        m.transport_up.set(1)  # until the outbox says otherwise
        while not (self.stop.is_set() and not any(c.alive() for c in self.children)):
            # Readiness, state changes and figures from the children, for /healthz and metrics.
            channels = {c.events: c for c in self.children if c.events is not None}
            ready = multiprocessing.connection.wait(list(channels), timeout=0.5)
            for conn in cast("list[multiprocessing.connection.Connection]", ready):  # of `channels`
                child = channels[conn]
                try:
                    report = conn.recv()
                except (EOFError, OSError):  # it exited (maybe in the middle of a message)
                    conn.close()
                    if child.events is conn:
                        child.events = None
                    continue
                self._record(child, report)

    def _record(self, child: Child, report: Report) -> None:
        m = self.metrics
        if report.kind == "ready":
            child.ready.set()
            if child.reload_pending:
                child.reload()
        elif report.kind == "state":
            child.problem = report.problem
        elif report.kind == "results":
            for source, outcome, latency in report.results:
                m.received.labels(source, outcome).inc()
                if outcome == "created":
                    m.tickets_created.inc()
                if latency is not None:
                    m.latency.observe(latency)
        elif report.kind == "pass":
            self.timers_pass = report.detail
        elif report.kind == "delivery" and (done := report.delivery) is not None:
            self.transport_error = done.transport_error
            m.deliveries.inc(done.sent)
            m.delivery_failures.labels("retry").inc(done.retry)
            m.delivery_failures.labels("dead").inc(done.dead)
            m.transport_up.set(0 if self.transport_error else 1)
            for state in outbox.DEPTH_STATES:
                m.outbox_depth.labels(state).set(report.depth.get(state, 0))

    def health(self) -> tuple[bool, dict]:
        """Whether the pipeline can make progress now, and what stands in its way.

        Not ok (503) while a child is not running or not ready, while a child reports
        that its passes fail (the database, usually), when an edge thread died, or when
        the database does not answer.  A smarthost that cannot be used shows the outbox
        as failing but keeps 200: the mail waits safely in the outbox.
        """
        problems: dict[str, str] = {}
        for child in self.children:
            if not child.alive():
                problems[child.name] = "not running; restarting"
            elif not child.ready.is_set():
                problems[child.name] = "starting"
            elif child.problem:
                problems[child.name] = child.problem
        stopped = [t.name for t in self.threads if not t.is_alive()]
        if stopped:
            problems["edges"] = "stopped: " + ", ".join(stopped)
        if (error := check_database()) is not None:
            problems["database"] = error
        ok = not problems
        if self.transport_error:
            problems["smarthost"] = self.transport_error
        mailboxes = self._mailboxes(database_up="database" not in problems)
        for key, box in mailboxes.items():
            if box.get("problem"):  # mail waits on the server: shown, but not a 503
                problems[f"imap {key}"] = box["problem"]
        detail = {name: name not in problems for name in ("worker", "outbox", "timers", "edges", "database")}
        detail["outbox"] = detail["outbox"] and "smarthost" not in problems
        jobs = {"timers": {"running": detail["timers"], **self.timers_pass}}
        held = sorted(k for k, b in mailboxes.items() if b["held"])
        # Every daemon runs the timed jobs' passes; each ticket and job row is taken by one.
        holds = {"mailboxes": held, "jobs": ["timers"] if detail["timers"] else []}
        return ok, {
            **detail,
            "daemon": self.name,
            "holds": holds,
            "mailboxes": mailboxes,
            "jobs": jobs,
            "problems": problems,
        }

    def _mailboxes(self, database_up: bool) -> dict[str, dict]:
        """Each [[imap]] mailbox: whether this daemon polls it now, else which daemon holds
        it and until when, and why its polling fails if it does."""
        out: dict[str, dict] = {}
        held: dict = {}
        if self.pollers and database_up:
            try:
                held = leases.leases([p.key for p in self.pollers])
            except Exception as exc:  # noqa: BLE001 - /healthz reports, never fails
                log.debug("healthz: cannot read the mailbox leases: %s", exc)
            finally:
                reset_connection()  # this request's thread: no connection left behind
        for poller in self.pollers:
            lease = held.get(poller.key)
            # The database says who holds it; the poller's own flag is only a fallback (the
            # database unreadable): a poller starved past its lease still believes it holds
            # the mailbox until its next renewal tells it otherwise.
            mine = poller.holding if lease is None else lease.holder == self.name
            box: dict = {"held": mine, "problem": poller.problem}
            if lease is not None and not mine:
                box["held_by"] = lease.holder
                box["lease_until"] = lease.until.isoformat() if lease.until else None
            out[poller.key] = box
        return out

    def reload(self) -> None:
        """SIGHUP: the worker and the timers reload configuration, rules and templates, the
        outbox [outgoing]."""
        log.info("reload requested")
        for child in self.children:
            child.reload()

    def shutdown(self) -> int:
        log.info("stopping: no new mail accepted; finishing what is in flight")
        drain = self.config.daemon.drain_seconds
        if self.listener is not None:
            self.listener.stop(timeout=drain)
        self.stop.set()
        for t in self.threads:
            if t.name.startswith("imap:"):
                t.join(timeout=drain)
        code = 0
        # In order: the worker processes what the edges stored while the timers finish
        # their pass, then the outbox sends what both queued.
        self.timers.stop.set()
        for child, wake in ((self.worker, self.wake), (self.timers, None), (self.outbox, self.outbox_wake)):
            if wake is not None:
                wake.set()
            if not child.finish(drain):
                code = 1
        if self.http is not None:
            self.http.stop()
        log.info("stopped")
        return code

    def serve_forever(self) -> int:
        """Run until SIGTERM/SIGINT; SIGHUP reloads.  Returns the exit status."""
        reload_requested = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
        self.start()  # raises before any child runs
        try:
            while not self.stop.is_set():
                if reload_requested.wait(timeout=0.5):
                    reload_requested.clear()
                    self.reload()
                for child in self.children:
                    child.supervise(self.metrics)
        finally:
            code = self.shutdown()
        return code


def _reason(exc: OSError) -> str:
    """ "Address already in use", not asyncio's long sentence around it."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def run(config_path: str | None, clock: Clock | None = None) -> int:
    from .clock import SystemClock

    cfg = config_mod.load(config_path)
    setup_logging(cfg.daemon.log_format)
    alone = one_daemon(cfg)  # SQLite: held (open) until this process exits
    # Check everything the worker will need before answering any mail: broken rules or
    # an unreachable database stop the start here, with a clear message.
    open_app(cfg).close()
    db = open_database(cfg.database.url)
    try:
        return Daemon(cfg, config_path, clock or SystemClock(), db).serve_forever()
    finally:
        db.close()
        if alone is not None:
            os.close(alone)


def one_daemon(cfg: Config) -> int | None:
    """On SQLite, make sure this is the only daemon on the database; the lock's descriptor.

    SQLite has one writer at a time and the daemon counts on being alone there (at start
    it hands back what a killed predecessor's outbox had claimed).  A second `mailticket
    run` on the same file is refused, naming the first; several daemons need PostgreSQL.
    The lock is an flock on `FILE.daemon-lock`, which the kernel releases when the daemon
    dies however it dies.
    """
    if not cfg.database.is_sqlite:
        return None
    path = cfg.database.url[len("sqlite:///") :]
    if not path or path == ":memory:":
        return None
    lock = f"{path}.daemon-lock"
    os.makedirs(os.path.dirname(lock) or ".", exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"[database] url = {cfg.database.url}: another mailticket daemon already runs on this "
            f"SQLite database ({holder}). SQLite serves one daemon: stop that one first, or move "
            'to PostgreSQL to run several (docs/deploy.md, "Several daemons").'
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd
