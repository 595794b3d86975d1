"""`mailticket run`: the long-running service, as two processes.

The main process is the edge and the supervisor: the SMTP/LMTP listener and one
IMAP poller thread per mailbox only store raw messages (`intake`) and wake the
worker; the loopback HTTP endpoint serves `/healthz` and `/metrics`; signals are
handled here.  The worker process runs the pipeline over pending inbox rows and
delivers the outbox.

Why two processes: receiving a message (SMTP parsing) and processing it both cost
about 2 ms of CPU, and Python runs one thread at a time, so in one process the
edge and the worker share one core and a client waits for the worker's CPU
before its 250.  The durable inbox already is the queue between them, so the
split costs nothing in safety: the worker only ever sees committed rows.

Signals: SIGTERM (and SIGINT) stop accepting, let in-flight messages get their
reply, then the worker processes what is stored and exits; the daemon exits 0.
SIGHUP reloads the configuration, rules and templates in the worker; a broken
edit is logged and the last good version kept.
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
import time

from . import config as config_mod
from . import outbox
from .app import App, load_ruleset, open_app
from .config import Config
from .db import open_database
from .errors import MailticketError, RulesError
from .metrics import HttpEndpoint, Metrics
from .models import Outbox, fn
from .notify import Templates
from .pipeline import Env, Pipeline, Result

log = logging.getLogger(__name__)

DAEMON_BATCH = 20  # messages per worker transaction in the daemon (ingest uses 100)
COALESCE_SECONDS = 0.02
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


# --- the worker process -----------------------------------------------------------------


class Worker:
    """Runs in the worker process: the pipeline over pending rows, and outbox delivery."""

    def __init__(self, app: App, config_path: str | None, wake, stop, events) -> None:
        self.app, self.config_path = app, config_path
        self.wake, self.stop, self.events = wake, stop, events
        self.wake_outbox = threading.Event()
        self.inbox_busy = threading.Event()  # more mail is waiting: intake goes first
        self.reload_requested = threading.Event()
        self.terminate = threading.Event()  # SIGTERM sent to the worker itself
        self.parent = os.getppid()

    def running(self) -> bool:
        # A worker whose supervisor is gone (SIGKILL) stops too, after draining.
        return not (self.stop.is_set() or self.terminate.is_set()) and os.getppid() == self.parent

    def serve(self) -> None:
        outbox_thread = threading.Thread(target=self._outbox_loop, name="outbox", daemon=True)
        outbox_thread.start()
        while self.running():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            if self.wake.wait(timeout=1.0):
                # Let a burst gather for a moment: one transaction for several messages
                # costs far less than one each (tickets wait 20 ms; no client waits).
                self.terminate.wait(COALESCE_SECONDS)
            self.wake.clear()
            if self.process_pending():
                if self.wake.is_set():
                    self.inbox_busy.set()
                else:
                    self.inbox_busy.clear()
                    self.wake_outbox.set()
        self.process_pending()  # what the edges stored before they stopped
        self.inbox_busy.clear()
        self.terminate.set()
        self.wake_outbox.set()
        outbox_thread.join(timeout=self.app.config.daemon.drain_seconds)

    def process_pending(self) -> list[Result]:
        try:
            results = self.app.worker.run_pending()
        except Exception:  # the database went away: rows stay pending, try again soon
            log.exception("worker: could not process the inbox; will retry")
            return []
        if results:  # one message to the supervisor per pass, not per mail: pickling costs
            self.events.put(("results", [(r.source or "unknown", r.outcome, r.latency)
                                         for r in results]))
        return results

    def _outbox_loop(self) -> None:
        transport = outbox.transport_for(self.app.config)
        interval = self.app.config.daemon.outbox_interval
        last = 0.0
        try:
            while self.running():
                self.wake_outbox.wait(timeout=interval)
                self.wake_outbox.clear()
                # During a burst the pipeline comes first (building a message costs as much
                # CPU as processing one, and one process runs one thread at a time); the
                # acknowledgements still leave at least every `outbox_interval` seconds.
                if self.inbox_busy.is_set() and time.monotonic() - last < interval:
                    continue
                last = time.monotonic()
                self.deliver(transport)
            self.deliver(transport)  # acknowledgements of the last messages
        finally:
            transport.close()
            self.app.db.close()  # this thread's connection

    def deliver(self, transport) -> None:
        try:
            done = outbox.deliver_due(self.app.config, self.app.clock, transport)
            depth = dict(Outbox.select(Outbox.state, fn.COUNT(Outbox.id))
                         .where(Outbox.state.in_(("queued", "retry", "dead")))
                         .group_by(Outbox.state).tuples())
            self.events.put(("delivery", done.sent, done.retry, done.dead, depth))
        except Exception:
            log.exception("outbox: delivery run failed; will retry")

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


def worker_main(config_path: str | None, wake, stop, events) -> None:
    """Entry point of the worker process."""
    # The supervisor decides when to stop: Ctrl-C reaches the whole process group, and the
    # worker must finish its batch and drain rather than die mid-transaction.
    # Handlers only set thread-local flags: touching a multiprocessing Event from a signal
    # handler can deadlock on its lock; the loop sees the flags within a second.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    terminate = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminate.set())
    cfg = config_mod.load(config_path)
    setup_logging(cfg.daemon.log_format)
    app = open_app(cfg, batch=DAEMON_BATCH)
    worker = Worker(app, config_path, wake, stop, events)
    worker.terminate = terminate
    signal.signal(signal.SIGHUP, lambda *_: worker.reload_requested.set())
    events.put(("ready",))
    try:
        worker.serve()
    finally:
        app.close()


# --- the main process: edges and supervisor ----------------------------------------------


class Daemon:
    def __init__(self, config: Config, config_path: str | None, clock, db) -> None:
        self.config, self.config_path, self.clock, self.db = config, config_path, clock, db
        self.metrics = Metrics()
        self.stop = threading.Event()  # the edges' stop
        self.wake = _mp.Event()  # wakes the worker when an edge stored a message
        self.worker_stop = _mp.Event()
        self.events = _mp.Queue()  # worker -> supervisor: results and deliveries, for metrics
        self.threads: list[threading.Thread] = []
        self.listener = None
        self.http: HttpEndpoint | None = None
        self.process = None
        self.worker_ready = threading.Event()  # its signal handlers are in place
        self.reload_pending = False

    def stored(self, *_ids) -> None:
        """Called by an edge after it committed a message."""
        self.wake.set()

    def start(self) -> None:
        cfg = self.config
        self.process = _mp.Process(target=worker_main, name="worker",
                                   args=(self.config_path, self.wake, self.worker_stop, self.events))
        self.process.start()
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
        while not (self.stop.is_set() and self.process is not None and not self.process.is_alive()):
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if event[0] == "ready":
                self.worker_ready.set()
                if self.reload_pending:
                    self.reload()
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
                for state in ("queued", "retry", "dead"):
                    m.outbox_depth.labels(state).set(depth.get(state, 0))

    def health(self) -> tuple[bool, dict]:
        worker = self.worker_ready.is_set() and self.process is not None and self.process.is_alive()
        edges = all(t.is_alive() for t in self.threads)
        try:
            self.db.execute_sql("SELECT 1")
            db_ok = True
        except Exception:  # noqa: BLE001 - health reports, never raises
            db_ok = False
        return worker and edges and db_ok, {"worker": worker, "edges": edges, "database": db_ok}

    def reload(self) -> None:
        """SIGHUP: the worker reloads configuration, rules and templates."""
        if not self.worker_ready.is_set():
            self.reload_pending = True  # sent once the worker can take it
            return
        self.reload_pending = False
        if self.process is not None and self.process.is_alive():
            log.info("reload requested")
            os.kill(self.process.pid, signal.SIGHUP)

    def shutdown(self) -> int:
        log.info("stopping: no new mail accepted; finishing what is in flight")
        drain = self.config.daemon.drain_seconds
        if self.listener is not None:
            self.listener.stop(timeout=drain)
        self.stop.set()
        for t in self.threads:
            if t.name.startswith("imap:"):
                t.join(timeout=drain)
        self.worker_stop.set()
        self.wake.set()
        code = 0
        if self.process is not None:
            self.process.join(timeout=drain)
            if self.process.is_alive():
                log.warning("the worker did not finish within %d s; stopping it", drain)
                self.process.terminate()
                self.process.join(timeout=10)
                code = 1
            elif self.process.exitcode:
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
                if self.process is not None and not self.process.is_alive():
                    log.error("the worker process exited (%s); stopping", self.process.exitcode)
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
