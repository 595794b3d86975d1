"""`mailticket run`: the long-running service, as three processes.

- The main process holds the incoming edges and the supervisor: the SMTP/LMTP
  listener and one IMAP poller thread per mailbox only store raw messages
  (`intake`) and wake the worker; the loopback HTTP endpoint serves `/healthz` and
  `/metrics`; signals are handled here.
- The worker process runs the pipeline over pending inbox rows.
- The outbox process delivers what the pipeline queued.

Why processes: receiving a message (SMTP parsing), processing it and building the
reply each cost about a millisecond or more of CPU, and Python runs one thread at
a time.  In one process a client would wait for the pipeline's CPU before its 250,
and a thread that builds mail makes the listener's thread wait for the interpreter
lock at every reply.  The durable inbox is the queue between the edges and the
worker, and the outbox table the queue between the worker and the sender, so the
split costs nothing in safety: each process only ever sees committed rows.

The outbox process runs at a lower CPU priority (`OUTBOX_NICE`): when the machine
is saturated by a burst, storing and processing mail comes first and the
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
reply, then the worker processes what is stored and exits, then the outbox
process sends what was queued and exits; the daemon exits 0.  SIGHUP reloads the
configuration, rules and templates in the worker and the outgoing settings in the
outbox process; a broken edit is logged and the last good version kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from typing import NoReturn

from . import config as config_mod
from . import outbox
from .app import App, load_ruleset, open_app
from .config import Config, host_port
from .db import TRANSIENT_ERRORS, open_database, reset_connection
from .db import check as check_database
from .errors import ConfigError, MailticketError, RulesError, StorageError
from .metrics import HttpEndpoint, Metrics
from .notify import Templates
from .pipeline import Env, Pipeline, Result

log = logging.getLogger(__name__)

DAEMON_BATCH = 10  # messages per worker transaction in the daemon (ingest uses 100)
DAEMON_BACKLOG_BATCH = 50  # up to which a backlog's batches grow (the edges wait meanwhile)
COALESCE_SECONDS = 0.02
OUTBOX_GATHER_SECONDS = 0.1
OUTBOX_PASS = 200  # rows per delivery pass: one commit, one metrics message
OUTBOX_NICE = 10  # CFS weight of about a tenth of the other processes while the CPU is busy
RETRY_DELAYS = (0.5, 10.0)  # a child's first and longest wait after a failed pass, seconds
RESTART_DELAYS = (1.0, 60.0)  # first and longest wait before starting a dead child again
STABLE_SECONDS = 60.0  # a child that ran this long before it died starts again at once
_mp = multiprocessing.get_context("spawn")  # a clean interpreter: no threads or sockets inherited


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "process": record.processName, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(fmt: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs every connection and disconnection at INFO: noise at any volume.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


class Lifecycle:
    """What a child process shares with the supervisor: when to stop, and its signals.

    The supervisor decides when a child stops: Ctrl-C reaches the whole process group,
    and a child must finish its transaction and drain rather than die in the middle.
    Signal handlers only set thread-local flags (touching a multiprocessing Event from a
    handler can deadlock on its lock); the loops see them within a second.
    """

    def __init__(self, stop) -> None:
        self.stop = stop  # set by the supervisor
        self.terminate = threading.Event()  # SIGTERM sent to the child itself
        self.reload_requested = threading.Event()
        self.parent = os.getppid()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: self.terminate.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def running(self) -> bool:
        # A child whose supervisor is gone (SIGKILL) stops too, after draining.
        return not (self.stop.is_set() or self.terminate.is_set()) and os.getppid() == self.parent

    def take_reload(self) -> bool:
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            return True
        return False

    def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less when it is time to stop."""
        deadline = time.monotonic() + seconds
        while self.running() and (left := deadline - time.monotonic()) > 0:
            self.terminate.wait(min(left, 0.5))


class Status:
    """Whether a child's last pass worked, and how long to wait after one that failed.

    A failed pass drops the database connection (peewee would keep a dead one and fail
    at once, every time), and the wait before the next doubles from RETRY_DELAYS[0] to
    RETRY_DELAYS[1].  The supervisor hears of each change, not of each pass:
    `("state", name, problem)`, the problem None once a pass works again.
    """

    def __init__(self, name: str, events) -> None:
        self.name, self.events = name, events
        self.problem: str | None = None
        self.delay = 0.0  # before the next pass; 0 while passes work

    def failed(self, what: str, exc: Exception) -> None:
        reset_connection()
        first, longest = RETRY_DELAYS
        self.delay = min(max(self.delay * 2, first), longest)
        problem = f"{what}: {' '.join(str(exc).split()) or type(exc).__name__}"
        expected = isinstance(exc, (StorageError, *TRANSIENT_ERRORS))  # else a bug: traceback
        log.log(logging.WARNING if expected else logging.ERROR, "%s: %s; trying again in %.3g s",
                self.name, problem, self.delay, exc_info=not expected)
        if problem != self.problem:
            self.problem = problem
            self.events.send(("state", self.name, problem))

    def worked(self) -> None:
        if self.problem is not None:
            log.info("%s: working again", self.name)
            self.events.send(("state", self.name, None))
        self.problem, self.delay = None, 0.0


class Wakeup:
    """A wake-up call from one process to another that survives a kill -9 of either.

    multiprocessing.Event is a condition variable over semaphores: a process killed
    while it waits on one (or holds its lock) leaves the next `set()` blocked for good,
    and the listener sets one for every message it stores.  A pipe holds no lock: `set`
    writes a byte (never blocking: a full pipe is set already), `wait` polls the other
    end, `clear` reads what is there.
    """

    def __init__(self) -> None:
        self._reader, self._writer = _mp.Pipe(duplex=False)  # picklable for a spawned child
        os.set_blocking(self._reader.fileno(), False)
        os.set_blocking(self._writer.fileno(), False)

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._writer.fileno(), b"\0")

    def wait(self, timeout: float) -> bool:
        return self._reader.poll(timeout)

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._reader.fileno(), 4096):
                pass


# --- the worker process -----------------------------------------------------------------


class Worker:
    """Runs in the worker process: the pipeline over pending rows."""

    def __init__(self, app: App, config_path: str | None, life: Lifecycle, wake, events,
                 outbox_wake) -> None:
        self.app, self.config_path, self.life = app, config_path, life
        self.wake, self.events, self.outbox_wake = wake, events, outbox_wake
        self.status = Status("worker", events)

    def serve(self) -> None:
        while self.life.running():
            if self.life.take_reload():
                self.reload()
            if self.status.delay:  # the last pass failed: what arrives meanwhile waits, stored
                self.life.pause(self.status.delay)
            elif self.wake.wait(timeout=1.0):
                # Let a burst gather for a moment: one transaction for several messages
                # costs far less than one each (tickets wait 20 ms; no client waits).
                self.life.terminate.wait(COALESCE_SECONDS)
            self.wake.clear()
            self.process_pending()
        self.process_pending()  # what the edges stored before they stopped

    def process_pending(self) -> list[Result]:
        try:
            results = self.app.worker.run_pending()
        except Exception as exc:  # noqa: BLE001 - rows stay pending; the next pass takes them
            self.status.failed("could not process the inbox", exc)
            return []
        self.status.worked()
        if results:
            self.outbox_wake.set()  # what the pipeline queued is committed: send it
            # One message to the supervisor per pass, not per mail: pickling costs.
            self.events.send(("results", [(r.source or "unknown", r.outcome, r.latency)
                                         for r in results]))
        return results

    def reload(self) -> None:
        """SIGHUP: new configuration, rules and templates, or keep the last good ones."""
        try:
            cfg = config_mod.load(self.config_path)
            rules = load_ruleset(cfg)
            templates = Templates(cfg.paths.templates)
        except RulesError as exc:
            log.error("reload: the rules are broken, keeping the last good set:\n%s", exc)
            return
        except MailticketError as exc:
            log.error("reload: %s; keeping the last good configuration", exc)
            return
        old = self.app.config
        if (cfg.smtp, cfg.imap, cfg.database, cfg.daemon) != (old.smtp, old.imap, old.database, old.daemon):
            log.warning("reload: listener, IMAP, database and daemon settings take effect on restart")
        self.app.config, self.app.rules = cfg, rules
        self.app.pipeline = Pipeline(Env(cfg, rules, clock=self.app.clock, templates=templates))
        self.app.worker.pipeline = self.app.pipeline
        log.info("reloaded configuration, %d rules and templates", len(rules))


def worker_main(config_path: str | None, stop, events, wake, outbox_wake) -> None:
    """Entry point of the worker process."""
    life = Lifecycle(stop)
    try:
        cfg = config_mod.load(config_path)
        setup_logging(cfg.daemon.log_format)
        app = open_app(cfg, batch=DAEMON_BATCH)
        app.worker.most = DAEMON_BACKLOG_BATCH
    except MailticketError as exc:
        cannot_start("worker", exc)
    worker = Worker(app, config_path, life, wake, events, outbox_wake)
    events.send(("ready", "worker"))
    try:
        worker.serve()
    finally:
        app.close()


# --- the outbox process -----------------------------------------------------------------


class Sender:
    """Runs in the outbox process: delivers what is due when the worker queued mail,
    and at least every `outbox_interval` seconds (retries come due on their own)."""

    def __init__(self, config: Config, config_path: str | None, clock, life: Lifecycle, wake,
                 events) -> None:
        self.config, self.config_path, self.clock, self.life = config, config_path, clock, life
        self.wake, self.events = wake, events
        self.status = Status("outbox", events)

    def serve(self) -> None:
        transport = outbox.transport_for(self.config)
        try:
            while True:
                final = not self.life.running()  # the worker has exited: one last pass
                self.deliver(transport)
                if final:
                    return
                if self.status.delay:  # the database failed: back off
                    self.life.pause(self.status.delay)
                elif self.wake.wait(timeout=self.config.daemon.outbox_interval):
                    # Gather what the worker's next passes queue: fewer, fuller passes.
                    self.life.terminate.wait(OUTBOX_GATHER_SECONDS)
                self.wake.clear()
                if self.life.take_reload() and self.reload():
                    transport.close()
                    transport = outbox.transport_for(self.config)
        finally:
            transport.close()

    def deliver(self, transport) -> None:
        try:
            while True:  # a backlog (after a burst, or a smarthost back up) in passes
                done = outbox.deliver_due(self.config, self.clock, transport, limit=OUTBOX_PASS)
                depth = outbox.depth()
                # transport_error: the smarthost could not be reached or refused us; the
                # rows wait in the outbox, and /healthz and the metrics say so.
                self.events.send(("delivery", done.sent, done.retry, done.dead, depth,
                                 done.transport_error))
                if done.sent + done.retry + done.dead < OUTBOX_PASS:
                    break
        except Exception as exc:  # noqa: BLE001 - claimed rows come due again after their lease
            self.status.failed("could not deliver the outbox", exc)
            return
        self.status.worked()

    def reload(self) -> bool:
        """SIGHUP: the new [outgoing] settings, or keep the last good ones."""
        try:
            self.config = config_mod.load(self.config_path)
        except MailticketError as exc:
            log.error("reload: %s; the outbox keeps the last good configuration", exc)
            return False
        return True


def outbox_main(config_path: str | None, stop, events, wake) -> None:
    """Entry point of the outbox process."""
    from .clock import SystemClock

    life = Lifecycle(stop)
    os.nice(OUTBOX_NICE)
    clock = SystemClock()
    try:
        cfg = config_mod.load(config_path)
        setup_logging(cfg.daemon.log_format)
        db = open_database(cfg.database.url, migrate=False)
        if cfg.database.is_sqlite:
            # A daemon on SQLite is alone on its database: a row still `sending` was
            # claimed by an outbox process that was killed; it goes out now, not after
            # its lease.
            if released := outbox.release_claims(clock.now()):
                log.info("outbox: %d message(s) claimed by a previous run queued again", released)
    except (MailticketError, *TRANSIENT_ERRORS) as exc:
        cannot_start("outbox", exc)
    sender = Sender(cfg, config_path, clock, life, wake, events)
    events.send(("ready", "outbox"))
    try:
        sender.serve()
    finally:
        db.close()


def cannot_start(name: str, exc: Exception) -> NoReturn:
    """A child that cannot start (the database down, the configuration broken since):
    one line, and exit; the supervisor starts it again later."""
    log.error("the %s process cannot start: %s", name, " ".join(str(exc).split()))
    sys.exit(1)


# --- the main process: edges and supervisor ----------------------------------------------


class Child:
    """A child process as the supervisor sees it; started again when it dies.

    Each start has its own stop event and its own events channel (a pipe the child
    sends on): a child killed in the middle of a message or holding a lock spoils
    only what dies with it.
    """

    def __init__(self, name: str, target, config_path: str | None, *wakeups: Wakeup) -> None:
        self.name, self.target, self.config_path, self.wakeups = name, target, config_path, wakeups
        self.stop = _mp.Event()
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
        self.stop = _mp.Event()
        self.events, send = _mp.Pipe(duplex=False)
        self.process = _mp.Process(target=self.target, name=self.name,
                                   args=(self.config_path, self.stop, send, *self.wakeups))
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
            log.error("the %s process exited (%s); restarting it in %.3g s", self.name,
                      self.process.exitcode, self.delay)
        elif now >= self.restart_at:
            self.restart_at = None
            log.warning("restarting the %s process", self.name)
            metrics.restarts.labels(self.name).inc()
            self.start()

    def reload(self) -> None:
        if not self.ready.is_set():
            self.reload_pending = True  # sent once it can take it
        elif self.alive() and self.process.pid is not None:
            self.reload_pending = False
            os.kill(self.process.pid, signal.SIGHUP)

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
    def __init__(self, config: Config, config_path: str | None, clock, db) -> None:
        self.config, self.config_path, self.clock, self.db = config, config_path, clock, db
        self.metrics = Metrics()
        self.stop = threading.Event()  # the edges' stop
        self.wake = Wakeup()  # wakes the worker when an edge stored a message
        self.outbox_wake = Wakeup()  # wakes the outbox when the worker queued mail
        self.worker = Child("worker", worker_main, config_path, self.wake, self.outbox_wake)
        self.outbox = Child("outbox", outbox_main, config_path, self.outbox_wake)
        self.children = (self.worker, self.outbox)
        self.threads: list[threading.Thread] = []
        self.listener = None
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

    def _open_edges(self) -> None:
        cfg = self.config
        from . import smtp  # the edges are imported here: the CLI does not need them

        try:
            self.listener = smtp.start(cfg, self.clock, on_stored=self.stored)
        except OSError as exc:
            raise ConfigError(f"[smtp] listen = {cfg.smtp.listen}: cannot listen there: "
                              f"{_reason(exc)}") from None
        log.info("listening for %s on %s", "LMTP" if cfg.smtp.lmtp else "SMTP", cfg.smtp.listen)
        pollers = []
        if cfg.imap:
            from .imap import ImapPoller

            pollers = [(box, ImapPoller(box, self.clock, on_stored=self.stored)) for box in cfg.imap]
        if cfg.daemon.http:
            host, port = host_port(cfg.daemon.http)
            try:
                http = HttpEndpoint(host, port, self.metrics, self.health)
            except OSError as exc:
                raise ConfigError(f"[daemon] http = {cfg.daemon.http}: cannot listen there: "
                                  f"{_reason(exc)}") from None
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
            for conn in multiprocessing.connection.wait(list(channels), timeout=0.5):
                child = channels[conn]
                try:
                    event = conn.recv()
                except (EOFError, OSError):  # it exited (maybe in the middle of a message)
                    conn.close()
                    if child.events is conn:
                        child.events = None
                    continue
                self._record(child, event)

    def _record(self, child: Child, event: tuple) -> None:
        m = self.metrics
        if event[0] == "ready":
            child.ready.set()
            if child.reload_pending:
                child.reload()
        elif event[0] == "state":
            child.problem = event[2]
        elif event[0] == "results":
            for source, outcome, latency in event[1]:
                m.received.labels(source, outcome).inc()
                if outcome == "created":
                    m.tickets_created.inc()
                if latency is not None:
                    m.latency.observe(latency)
        elif event[0] == "delivery":
            _, sent, retry, dead, depth, self.transport_error = event
            m.deliveries.inc(sent)
            m.delivery_failures.labels("retry").inc(retry)
            m.delivery_failures.labels("dead").inc(dead)
            m.transport_up.set(0 if self.transport_error else 1)
            for state in outbox.DEPTH_STATES:
                m.outbox_depth.labels(state).set(depth.get(state, 0))

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
        detail = {name: name not in problems for name in ("worker", "outbox", "edges", "database")}
        detail["outbox"] = detail["outbox"] and "smarthost" not in problems
        return ok, {**detail, "problems": problems}

    def reload(self) -> None:
        """SIGHUP: the worker reloads configuration, rules and templates, the outbox [outgoing]."""
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
        # In order: the worker processes what the edges stored, then the outbox sends
        # what the worker queued.
        for child, wake in ((self.worker, self.wake), (self.outbox, self.outbox_wake)):
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
    """"Address already in use", not asyncio's long sentence around it."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def run(config_path: str | None, clock=None) -> int:
    from .clock import SystemClock

    cfg = config_mod.load(config_path)
    setup_logging(cfg.daemon.log_format)
    # Check everything the worker will need before answering any mail: broken rules or
    # an unreachable database stop the start here, with a clear message.
    open_app(cfg).close()
    db = open_database(cfg.database.url)
    try:
        return Daemon(cfg, config_path, clock or SystemClock(), db).serve_forever()
    finally:
        db.close()
