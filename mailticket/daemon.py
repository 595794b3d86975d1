"""`mailticket run`: the long-running service.

It starts the edges (the SMTP/LMTP listener and one IMAP poller per mailbox),
which only store raw messages and wake the worker; the worker thread runs the
pipeline over pending inbox rows; the outbox thread delivers what is due; a
loopback HTTP endpoint serves `/healthz` and `/metrics`.

Signals: SIGTERM (and SIGINT) stop accepting, let in-flight work finish, process
what is already stored, and exit 0.  SIGHUP reloads the configuration, the rules
and the templates; a broken edit is logged and the last good version kept.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from . import config as config_mod
from . import outbox
from .app import App, load_ruleset, open_app
from .errors import MailticketError, RulesError
from .metrics import HttpEndpoint, Metrics
from .models import Outbox, fn
from .notify import Templates
from .pipeline import Env, Pipeline, Result

log = logging.getLogger(__name__)

DAEMON_BATCH = 20  # messages per worker transaction in the daemon (ingest uses 100)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(fmt: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@dataclass
class Daemon:
    app: App
    config_path: str | None
    metrics: Metrics = field(default_factory=Metrics)
    stop: threading.Event = field(default_factory=threading.Event)
    wake_worker: threading.Event = field(default_factory=threading.Event)
    wake_outbox: threading.Event = field(default_factory=threading.Event)
    reload_requested: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.listener = None
        self.http: HttpEndpoint | None = None
        self.pollers: list = []
        self.last_batch_at = time.monotonic()

    # --- the pieces ------------------------------------------------------------------

    def stored(self, *_ids) -> None:
        """Called by an edge after it committed a message: wake the worker."""
        self.wake_worker.set()

    def _worker_loop(self) -> None:
        while not self.stop.is_set():
            self.wake_worker.wait(timeout=1.0)
            self.wake_worker.clear()
            self.process_pending()
        self.process_pending()  # drain what the edges stored before they stopped

    def process_pending(self) -> list[Result]:
        try:
            results = self.app.worker.run_pending(on_result=self._count)
        except Exception:  # the database went away: rows stay pending, try again soon
            log.exception("worker: could not process the inbox; will retry")
            return []
        self.last_batch_at = time.monotonic()
        if results:
            self.wake_outbox.set()
        return results

    def _count(self, result: Result) -> None:
        self.metrics.received.labels(result.source or "unknown", result.outcome).inc()
        if result.outcome == "created":
            self.metrics.tickets_created.inc()
        if result.latency is not None:
            self.metrics.latency.observe(result.latency)

    def _outbox_loop(self) -> None:
        transport = outbox.transport_for(self.app.config)
        try:
            while not self.stop.is_set():
                self.wake_outbox.wait(timeout=self.app.config.daemon.outbox_interval)
                self.wake_outbox.clear()
                self.deliver(transport)
        finally:
            transport.close()

    def deliver(self, transport=None) -> None:
        try:
            done = outbox.deliver_due(self.app.config, self.app.clock, transport)
            self.metrics.deliveries.inc(done.sent)
            self.metrics.delivery_failures.labels("retry").inc(done.retry)
            self.metrics.delivery_failures.labels("dead").inc(done.dead)
            depth = dict(Outbox.select(Outbox.state, fn.COUNT(Outbox.id))
                         .where(Outbox.state.in_(("queued", "retry", "dead")))
                         .group_by(Outbox.state).tuples())
            for state in ("queued", "retry", "dead"):
                self.metrics.outbox_depth.labels(state).set(depth.get(state, 0))
        except Exception:
            log.exception("outbox: delivery run failed; will retry")

    def health(self) -> tuple[bool, dict]:
        alive = all(t.is_alive() for t in self.threads)
        try:
            self.app.db.execute_sql("SELECT 1")
            db_ok = True
        except Exception:  # noqa: BLE001 - health reports, never raises
            db_ok = False
        return alive and db_ok, {"threads": alive, "database": db_ok,
                                 "rules": len(self.app.rules)}

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.app.config
        from . import smtp  # the edges are imported here: the CLI does not need them

        self.listener = smtp.start(cfg, self.app.clock, on_stored=self.stored)
        log.info("listening for %s on %s", "LMTP" if cfg.smtp.lmtp else "SMTP", cfg.smtp.listen)
        if cfg.imap:
            from .imap import ImapPoller

            for box in cfg.imap:
                poller = ImapPoller(box, self.app.clock, on_stored=self.stored)
                self.pollers.append(poller)
                self._thread(f"imap:{box.user}@{box.host}/{box.folder}", poller.run, self.stop)
        self._thread("worker", self._worker_loop)
        self._thread("outbox", self._outbox_loop)
        if cfg.daemon.http:
            host, _, port = cfg.daemon.http.rpartition(":")
            self.http = HttpEndpoint(host, int(port), self.metrics, self.health)
            self.http.start()
            log.info("health and metrics on http://%s:%s/healthz and /metrics", host, self.http.port)
        self.wake_worker.set()  # anything left pending from before a restart

    def _thread(self, name: str, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self.threads.append(t)

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
        if (cfg.smtp, cfg.imap, cfg.database) != (self.app.config.smtp, self.app.config.imap,
                                                  self.app.config.database):
            log.warning("reload: listener, IMAP and database settings take effect on restart")
        self.app.config, self.app.rules = cfg, rules
        self.app.pipeline = Pipeline(Env(cfg, rules, clock=self.app.clock, templates=templates))
        self.app.worker.pipeline = self.app.pipeline
        log.info("reloaded configuration, %d rules and templates", len(rules))

    def shutdown(self) -> None:
        log.info("stopping: no new mail accepted; finishing what is in flight")
        if self.listener is not None:
            self.listener.stop(timeout=self.app.config.daemon.drain_seconds)
        self.stop.set()
        self.wake_worker.set()
        self.wake_outbox.set()
        deadline = time.monotonic() + self.app.config.daemon.drain_seconds
        for t in self.threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        if self.http is not None:
            self.http.stop()
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            log.warning("stopped with threads still busy: %s", ", ".join(stuck))
        log.info("stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT; SIGHUP reloads."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        self.start()
        try:
            while not self.stop.is_set():
                if self.reload_requested.wait(timeout=0.5):
                    self.reload_requested.clear()
                    self.reload()
        finally:
            self.shutdown()


def run(config_path: str | None) -> None:
    cfg = config_mod.load(config_path)
    setup_logging(cfg.daemon.log_format)
    # Short worker transactions: on SQLite the worker holds the one write lock for a
    # whole batch, and the SMTP listener's commits (the client's 250) wait behind it.
    app = open_app(cfg, batch=DAEMON_BATCH)
    Daemon(app, config_path).serve_forever()
    app.close()
