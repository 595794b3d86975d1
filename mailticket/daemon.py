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

Signals: SIGTERM (and SIGINT) stop accepting, let in-flight messages get their
reply, then the worker processes what is stored and exits, then the outbox
process sends what was queued and exits; the daemon exits 0.  SIGHUP reloads the
configuration, rules and templates in the worker and the outgoing settings in the
outbox process; a broken edit is logged and the last good version kept.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading

from . import config as config_mod
from . import outbox
from .app import App, load_ruleset, open_app
from .config import Config
from .db import open_database
from .errors import MailticketError, RulesError
from .metrics import HttpEndpoint, Metrics
from .notify import Templates
from .pipeline import Env, Pipeline, Result

log = logging.getLogger(__name__)

DAEMON_BATCH = 10  # messages per worker transaction in the daemon (ingest uses 100)
COALESCE_SECONDS = 0.02
OUTBOX_GATHER_SECONDS = 0.1
OUTBOX_PASS = 200  # rows per delivery pass: one commit, one metrics message
OUTBOX_NICE = 10  # CFS weight of about a tenth of the other processes while the CPU is busy
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


# --- the worker process -----------------------------------------------------------------


class Worker:
    """Runs in the worker process: the pipeline over pending rows."""

    def __init__(self, app: App, config_path: str | None, life: Lifecycle, wake, events,
                 outbox_wake) -> None:
        self.app, self.config_path, self.life = app, config_path, life
        self.wake, self.events, self.outbox_wake = wake, events, outbox_wake

    def serve(self) -> None:
        while self.life.running():
            if self.life.take_reload():
                self.reload()
            if self.wake.wait(timeout=1.0):
                # Let a burst gather for a moment: one transaction for several messages
                # costs far less than one each (tickets wait 20 ms; no client waits).
                self.life.terminate.wait(COALESCE_SECONDS)
            self.wake.clear()
            self.process_pending()
        self.process_pending()  # what the edges stored before they stopped

    def process_pending(self) -> list[Result]:
        try:
            results = self.app.worker.run_pending()
        except Exception:  # the database went away: rows stay pending, try again soon
            log.exception("worker: could not process the inbox; will retry")
            return []
        if results:
            self.outbox_wake.set()  # what the pipeline queued is committed: send it
            # One message to the supervisor per pass, not per mail: pickling costs.
            self.events.put(("results", [(r.source or "unknown", r.outcome, r.latency)
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
    cfg = config_mod.load(config_path)
    setup_logging(cfg.daemon.log_format)
    app = open_app(cfg, batch=DAEMON_BATCH)
    worker = Worker(app, config_path, life, wake, events, outbox_wake)
    events.put(("ready", "worker"))
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

    def serve(self) -> None:
        transport = outbox.transport_for(self.config)
        try:
            while True:
                final = not self.life.running()  # the worker has exited: one last pass
                self.deliver(transport)
                if final:
                    return
                if self.wake.wait(timeout=self.config.daemon.outbox_interval):
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
                self.events.put(("delivery", done.sent, done.retry, done.dead, depth))
                if done.sent + done.retry + done.dead < OUTBOX_PASS:
                    return
        except Exception:
            log.exception("outbox: delivery run failed; will retry")

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
    cfg = config_mod.load(config_path)
    setup_logging(cfg.daemon.log_format)
    db = open_database(cfg.database.url, migrate=False)
    sender = Sender(cfg, config_path, SystemClock(), life, wake, events)
    events.put(("ready", "outbox"))
    try:
        sender.serve()
    finally:
        db.close()


# --- the main process: edges and supervisor ----------------------------------------------


class Child:
    """A child process as the supervisor sees it."""

    def __init__(self, name: str, target, *args) -> None:
        self.name = name
        self.stop = _mp.Event()
        self.ready = threading.Event()  # its signal handlers are in place
        self.reload_pending = False
        self.process = _mp.Process(target=target, name=name, args=(*args[:1], self.stop, *args[1:]))

    def alive(self) -> bool:
        return self.process.is_alive()

    def reload(self) -> None:
        if not self.ready.is_set():
            self.reload_pending = True  # sent once it can take it
        elif self.alive():
            self.reload_pending = False
            os.kill(self.process.pid, signal.SIGHUP)

    def finish(self, timeout: float) -> bool:
        """Ask it to drain and exit; False when it had to be stopped or failed."""
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
        self.wake = _mp.Event()  # wakes the worker when an edge stored a message
        self.outbox_wake = _mp.Event()  # wakes the outbox when the worker queued mail
        self.events = _mp.Queue()  # children -> supervisor: readiness and figures, for metrics
        self.worker = Child("worker", worker_main, config_path, self.events, self.wake,
                            self.outbox_wake)
        self.outbox = Child("outbox", outbox_main, config_path, self.events, self.outbox_wake)
        self.children = (self.worker, self.outbox)
        self.threads: list[threading.Thread] = []
        self.listener = None
        self.http: HttpEndpoint | None = None

    def stored(self, *_ids) -> None:
        """Called by an edge after it committed a message."""
        self.wake.set()

    def start(self) -> None:
        cfg = self.config
        for child in self.children:
            child.process.start()
        from . import smtp  # the edges are imported here: the CLI does not need them

        self.listener = smtp.start(cfg, self.clock, on_stored=self.stored)
        log.info("listening for %s on %s", "LMTP" if cfg.smtp.lmtp else "SMTP", cfg.smtp.listen)
        if cfg.imap:
            from .imap import ImapPoller

            for box in cfg.imap:
                poller = ImapPoller(box, self.clock, on_stored=self.stored)
                self._thread(f"imap:{box.user}@{box.host}/{box.folder}", poller.run, self.stop)
        self._thread("metrics", self._metrics_loop)
        if cfg.daemon.http:
            host, _, port = cfg.daemon.http.rpartition(":")
            self.http = HttpEndpoint(host, int(port), self.metrics, self.health)
            self.http.start()
            log.info("health and metrics on http://%s:%s/healthz and /metrics", host, self.http.port)

    def _thread(self, name: str, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def _metrics_loop(self) -> None:
        m = self.metrics
        while not (self.stop.is_set() and not any(c.alive() for c in self.children)):
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if event[0] == "ready":
                child = self.worker if event[1] == "worker" else self.outbox
                child.ready.set()
                if child.reload_pending:
                    child.reload()
            elif event[0] == "results":
                for source, outcome, latency in event[1]:
                    m.received.labels(source, outcome).inc()
                    if outcome == "created":
                        m.tickets_created.inc()
                    if latency is not None:
                        m.latency.observe(latency)
            elif event[0] == "delivery":
                _, sent, retry, dead, depth = event
                m.deliveries.inc(sent)
                m.delivery_failures.labels("retry").inc(retry)
                m.delivery_failures.labels("dead").inc(dead)
                for state in outbox.DEPTH_STATES:
                    m.outbox_depth.labels(state).set(depth.get(state, 0))

    def health(self) -> tuple[bool, dict]:
        worker = self.worker.ready.is_set() and self.worker.alive()
        sender = self.outbox.ready.is_set() and self.outbox.alive()
        edges = all(t.is_alive() for t in self.threads)
        try:
            self.db.execute_sql("SELECT 1")
            db_ok = True
        except Exception:  # noqa: BLE001 - health reports, never raises
            db_ok = False
        return (worker and sender and edges and db_ok,
                {"worker": worker, "outbox": sender, "edges": edges, "database": db_ok})

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
            if child.process.pid is None:
                continue
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
        self.start()
        try:
            while not self.stop.is_set():
                if reload_requested.wait(timeout=0.5):
                    reload_requested.clear()
                    self.reload()
                dead = [c for c in self.children if not c.alive()]
                if dead:
                    log.error("the %s process exited (%s); stopping", dead[0].name,
                              dead[0].process.exitcode)
                    break
        finally:
            code = self.shutdown()
        return code


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
