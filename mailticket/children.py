"""The daemon's three child processes: the worker, the outbox sender and the timers.

Their place in the flow (docs/architecture.md section 2): the supervisor
(`daemon.py`) spawns each as `child_main(Kind, ...)`, which has one shape for all:
set up (configuration, logging, `Kind.open`), announce `ready`, serve until the
supervisor says stop, close.

- `WorkerProcess` runs the pipeline over pending inbox rows (`worker.InboxWorker`)
  when an edge wakes it, and wakes the outbox when it committed mail to send.
- `OutboxProcess` delivers what is due, when the worker woke it and at least every
  `[daemon] outbox_interval` seconds (retries come due on their own), at a lower
  CPU priority (`OUTBOX_NICE`).
- `TimersProcess` runs one pass of the timed jobs (`jobs.tick`: SLA warnings and
  escalations, status updates, reminders, auto-resolve, closing) every `[daemon]
  tick_interval` seconds from an APScheduler `BlockingScheduler`, and wakes the
  outbox when a pass queued mail.  The scheduler only wakes the passes: what is due
  and what was done is in the ticket rows, so a restart loses and repeats nothing.

A child tells the supervisor what it needs to know through its events pipe, as a
`Report`: ready, a change of state (its passes fail, or work again), the figures of
a pass for the metrics.  A pass that fails on the database drops the connection and
backs off (`Status`); SIGHUP reloads what each child can reload.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timezone
from typing import ClassVar, Literal, NoReturn

from apscheduler.executors.pool import ThreadPoolExecutor  # type: ignore[import-untyped]
from apscheduler.schedulers.blocking import BlockingScheduler  # type: ignore[import-untyped]

from . import config as config_mod
from . import jobs, outbox
from .app import App, load_ruleset, open_app
from .clock import Clock, SystemClock
from .config import Config
from .db import TRANSIENT_ERRORS, Database, open_database, reset_connection, writing
from .errors import MailticketError, RulesError, StorageError
from .notify import Templates
from .pipeline import Env, Pipeline, Result
from .smarthost import SmtpTransport

log = logging.getLogger(__name__)

DAEMON_BATCH = 10  # messages per worker transaction in the daemon (ingest uses 100)
DAEMON_BACKLOG_BATCH = 50  # up to which a backlog's batches grow (the edges wait meanwhile)
COALESCE_SECONDS = 0.02
OUTBOX_GATHER_SECONDS = 0.1
OUTBOX_PASS = 200  # rows per delivery pass: one commit, one report
OUTBOX_NICE = 10  # CFS weight of about a tenth of the other processes while the CPU is busy
RETRY_DELAYS = (0.5, 10.0)  # a child's first and longest wait after a failed pass, seconds
SPAWN = multiprocessing.get_context("spawn")  # a clean interpreter: no threads or sockets inherited


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(fmt: str, level: int = logging.INFO) -> None:
    """Every process of the daemon, the supervisor too, logs to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs every connection and disconnection at INFO: noise at any volume;
    # APScheduler every run of a job (the timers log what their passes did instead).
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Report:
    """What a child tells the supervisor on its events pipe: changes and passes, one
    message each (pickling costs: one per pass, never one per mail).

    - `ready`: its signal handlers are in place; a reload can be sent.
    - `state`: `problem` says why its passes fail; None once they work again.
    - `results`: a worker pass, (source, outcome, latency) for each message.
    - `delivery`: an outbox pass (`delivery`) and the outbox's rows by state (`depth`).
    - `pass`: a pass of the timed jobs: when, and how many actions (`detail`).
    """

    kind: Literal["ready", "state", "results", "delivery", "pass"]
    child: str  # "worker", "outbox" or "timers"
    problem: str | None = None
    results: tuple[tuple[str, str, float | None], ...] = ()
    delivery: outbox.Delivery | None = None
    depth: dict[str, int] = field(default_factory=dict)
    detail: dict = field(default_factory=dict)  # `pass`: the timers' pass, for /healthz


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
    RETRY_DELAYS[1].  The supervisor hears of each change, not of each pass: a `state`
    report, its problem None once a pass works again.
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
        log.log(
            logging.WARNING if expected else logging.ERROR,
            "%s: %s; trying again in %.3g s",
            self.name,
            problem,
            self.delay,
            exc_info=not expected,
        )
        if problem != self.problem:
            self.problem = problem
            self.events.send(Report("state", self.name, problem=problem))

    def worked(self) -> None:
        if self.problem is not None:
            log.info("%s: working again", self.name)
            self.events.send(Report("state", self.name))
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
        self._reader, self._writer = SPAWN.Pipe(duplex=False)  # picklable for a spawned child
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


class ChildProcess:
    """The shape of a child: `open` in the spawned process, `serve` until stopped, `close`."""

    name: ClassVar[str]

    def __init__(self, config_path: str | None, life: Lifecycle, events) -> None:
        self.config_path, self.life, self.events = config_path, life, events
        self.status = Status(self.name, events)

    @classmethod
    def open(
        cls, cfg: Config, config_path: str | None, life: Lifecycle, events, *wakeups: Wakeup
    ) -> ChildProcess:
        """Set up (may raise MailticketError or a database error: the child cannot start)."""
        raise NotImplementedError

    def serve(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def child_main(kind: type[ChildProcess], config_path: str | None, stop, events, *wakeups: Wakeup) -> None:
    """Entry point of every child process: set up, announce ready, serve, close."""
    life = Lifecycle(stop)
    try:
        cfg = config_mod.load(config_path)
        setup_logging(cfg.daemon.log_format)
        child = kind.open(cfg, config_path, life, events, *wakeups)
    except (MailticketError, *TRANSIENT_ERRORS) as exc:
        cannot_start(kind.name, exc)
    events.send(Report("ready", kind.name))
    try:
        child.serve()
    finally:
        child.close()


def cannot_start(name: str, exc: Exception) -> NoReturn:
    """A child that cannot start (the database down, the configuration broken since):
    one line, and exit; the supervisor starts it again later."""
    log.error("the %s process cannot start: %s", name, " ".join(str(exc).split()))
    sys.exit(1)


# --- the worker process -----------------------------------------------------------------


class WorkerProcess(ChildProcess):
    """The pipeline over pending rows, woken by the edges."""

    name = "worker"

    def __init__(
        self, app: App, config_path: str | None, life: Lifecycle, events, wake: Wakeup, outbox_wake: Wakeup
    ) -> None:
        super().__init__(config_path, life, events)
        self.app, self.wake, self.outbox_wake = app, wake, outbox_wake

    @classmethod
    def open(
        cls, cfg: Config, config_path: str | None, life: Lifecycle, events, *wakeups: Wakeup
    ) -> WorkerProcess:
        wake, outbox_wake = wakeups
        app = open_app(cfg, batch=DAEMON_BATCH)
        assert app.worker is not None  # opened for processing
        app.worker.most = DAEMON_BACKLOG_BATCH
        return cls(app, config_path, life, events, wake, outbox_wake)

    def close(self) -> None:
        self.app.close()

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
            assert self.app.worker is not None  # opened for processing
            results = self.app.worker.run_pending()
        except Exception as exc:  # noqa: BLE001 - rows stay pending; the next pass takes them
            self.status.failed("could not process the inbox", exc)
            return []
        self.status.worked()
        if results:
            self.outbox_wake.set()  # what the pipeline queued is committed: send it
            self.events.send(
                Report(
                    "results",
                    self.name,
                    results=tuple((r.source or "unknown", r.outcome, r.latency) for r in results),
                )
            )
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
        assert self.app.worker is not None  # opened for processing
        self.app.worker.pipeline = self.app.pipeline
        log.info("reloaded configuration, %d rules and templates", len(rules))


# --- the outbox process -----------------------------------------------------------------


class OutboxProcess(ChildProcess):
    """Delivers what is due when the worker queued mail, and at least every
    `outbox_interval` seconds (retries come due on their own)."""

    name = "outbox"

    def __init__(
        self,
        config: Config,
        config_path: str | None,
        clock: Clock,
        db: Database,
        life: Lifecycle,
        events,
        wake: Wakeup,
    ) -> None:
        super().__init__(config_path, life, events)
        self.config, self.clock, self.db, self.wake = config, clock, db, wake

    @classmethod
    def open(
        cls, cfg: Config, config_path: str | None, life: Lifecycle, events, *wakeups: Wakeup
    ) -> OutboxProcess:
        (wake,) = wakeups
        os.nice(OUTBOX_NICE)
        clock = SystemClock()
        db = open_database(cfg.database.url, migrate=False)
        if cfg.database.is_sqlite:
            # A daemon on SQLite is alone on its database: a row still `sending` was
            # claimed by an outbox process that was killed; it goes out now, not after
            # its lease.
            if released := outbox.release_claims(clock.now()):
                log.info("outbox: %d message(s) claimed by a previous run queued again", released)
        return cls(cfg, config_path, clock, db, life, events, wake)

    def close(self) -> None:
        self.db.close()

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

    def deliver(self, transport: SmtpTransport) -> None:
        try:
            while True:  # a backlog (after a burst, or a smarthost back up) in passes
                done = outbox.deliver_due(self.config, self.clock, transport, limit=OUTBOX_PASS)
                # done.transport_error: the smarthost could not be reached or refused us;
                # the rows wait in the outbox, and /healthz and the metrics say so.
                self.events.send(Report("delivery", self.name, delivery=done, depth=outbox.depth()))
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


# --- the timers process -----------------------------------------------------------------


class TimersProcess(ChildProcess):
    """One pass of the timed jobs every `tick_interval` seconds, the first at start.

    APScheduler's interval job runs in the scheduler's one pool thread (one database
    connection), `coalesce` and `max_instances=1`: a pass that overruns its interval is
    not doubled, and passes missed meanwhile (a suspended machine) become one.  A pass
    that fails on the database backs off (`Status`): later runs are skipped until the
    delay has passed, and within a long interval the pass is tried again sooner.
    """

    name = "timers"

    def __init__(
        self, app: App, config_path: str | None, life: Lifecycle, events, outbox_wake: Wakeup
    ) -> None:
        super().__init__(config_path, life, events)
        self.app, self.outbox_wake = app, outbox_wake
        self.interval = app.config.daemon.tick_interval
        self.retry_at = 0.0  # monotonic time before which scheduled runs are skipped
        self.scheduler = BlockingScheduler(
            timezone=timezone.utc, executors={"default": ThreadPoolExecutor(max_workers=1)}
        )

    @classmethod
    def open(
        cls, cfg: Config, config_path: str | None, life: Lifecycle, events, *wakeups: Wakeup
    ) -> TimersProcess:
        (outbox_wake,) = wakeups
        return cls(open_app(cfg), config_path, life, events, outbox_wake)

    def close(self) -> None:
        self.app.close()

    def serve(self) -> None:
        self.scheduler.add_job(
            self.run,
            "interval",
            seconds=self.interval,
            id="timers",
            coalesce=True,
            max_instances=1,
            next_run_time=self.app.clock.now(),  # the first pass at start: catch up at once
        )
        watcher = threading.Thread(target=self.watch, name="timers-watch", daemon=True)
        watcher.start()
        self.scheduler.start()  # blocks until `watch` shuts it down
        watcher.join()

    def watch(self) -> None:
        """Shut the scheduler down when it is time to stop (it waits for a running pass,
        never for the next interval); SIGHUP reloads meanwhile."""
        while self.life.running():
            if self.life.take_reload():
                self.reload()
            self.life.terminate.wait(0.5)
        while not self.scheduler.running:  # stopped before the scheduler got going
            self.life.terminate.wait(0.05)
        self.scheduler.shutdown(wait=True)

    def run(self) -> None:
        """The scheduled job: one pass, tried again while it fails and the interval lasts."""
        if time.monotonic() < self.retry_at:
            return  # backing off after a failed pass
        deadline = time.monotonic() + self.interval
        while self.life.running():
            if self.tick():
                self.retry_at = 0.0
                return
            self.retry_at = time.monotonic() + self.status.delay
            if self.retry_at >= deadline:
                return  # a later run tries again
            self.life.pause(self.status.delay)

    def tick(self) -> bool:
        """One pass of every timed job as of now, in one transaction; False when it failed."""
        assert self.app.pipeline is not None  # opened for processing
        env = self.app.pipeline.env
        try:
            with writing(), self.app.db.atomic():
                done = jobs.tick(env, env.clock.now())
        except Exception as exc:  # noqa: BLE001 - rolled back; the tickets stay due
            self.status.failed("could not run the timed jobs", exc)
            return False
        self.status.worked()
        detail = {"last_pass": env.clock.now().isoformat(timespec="seconds"), "actions": len(done.actions)}
        self.events.send(Report("pass", self.name, detail=detail))
        for action in done.actions:
            rest = ", ".join(f"{k} {v}" for k, v in action.items() if k not in ("ticket", "action"))
            log.info("timers: #%s %s%s", action["ticket"], action["action"], f" ({rest})" if rest else "")
        if done.actions:
            self.outbox_wake.set()  # what the pass queued is committed: send it
        return True

    def reload(self) -> None:
        """SIGHUP: new configuration (SLA terms), rules and templates, or keep the last good
        ones; the interval takes effect on restart."""
        try:
            cfg = config_mod.load(self.config_path)
            rules = load_ruleset(cfg)
            templates = Templates(cfg.paths.templates)
        except MailticketError as exc:
            log.error("reload: %s; the timers keep the last good configuration", " ".join(str(exc).split()))
            return
        self.app.config, self.app.rules = cfg, rules
        # The next pass takes the new Env (one attribute, swapped whole).
        self.app.pipeline = Pipeline(Env(cfg, rules, clock=self.app.clock, templates=templates))
        log.info("timers: new configuration, rules and templates in use")
