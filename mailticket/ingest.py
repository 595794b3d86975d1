"""`mailticket ingest` without the command line: read messages, store them, process them.

Its place in the flow (docs/architecture.md section 1): the third edge, beside SMTP and
IMAP.  It reads .eml files, mboxes, Maildirs and stdin (an MTA's pipe), commits each
batch to the durable inbox (`inbox.store_many`), and only then runs the worker on the
rows it stored.  What it returns says what an MTA needs to know: 0 when every message
was stored (quarantine counts as stored, and so does a message whose processing failed:
it stays pending for the daemon), 75 (EX_TEMPFAIL) when one could not be stored, so the
MTA retries.  67 (EX_NOUSER) is for a recipient that is not ours (`refused_recipient`),
checked before anything is read.

The click command (cli/mail.py) is options in, `store_and_process`, output out.
"""

from __future__ import annotations

import logging
import logging.handlers
import mailbox
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import envelope, inbox
from .app import App
from .config import Config
from .errors import MailticketError
from .inbox import Incoming
from .pipeline import Result

log = logging.getLogger(__name__)

# sysexits.h, as MTAs read a pipe command's status (docs/deploy.md).
EX_TEMPFAIL = 75  # try again later
EX_NOUSER = 67  # bounce as "user unknown" (5.1.1)
SYSLOG_SOCKET = "/dev/log"


class BadInput(MailticketError):
    """A path that is no message, mbox or Maildir (the command line's usage error)."""


@dataclass
class Summary:
    """What became of the messages, and the one line of stderr when something went wrong."""

    counts: Counter[str] = field(default_factory=Counter)  # outcome -> messages
    not_stored: int = 0  # not committed: the MTA must try again (75)
    waiting: int = 0  # committed, not processed: pending for the daemon (still 0)
    why: str = ""  # the first failure

    @property
    def exit_code(self) -> int:
        return EX_TEMPFAIL if self.not_stored else 0

    @property
    def problem(self) -> str | None:
        if self.not_stored:
            return one_line(
                f"mailticket: {self.not_stored} message(s) not stored, try again later: {self.why}"
            )
        if self.waiting:
            return one_line(
                f"mailticket: {self.waiting} message(s) stored, processing deferred "
                f"(the daemon takes them): {self.why}"
            )
        return None


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one short line: an MTA puts a pipe command's output in its bounce and log."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def refused_recipient(config: Config, recipients: tuple[str, ...]) -> str | None:
    """The first recipient that is not ours (the listener's RCPT rule: never an open relay)."""
    return next((r for r in recipients if not config.accepts(r)), None)


def log_for_pipe() -> None:
    """Send the logs of an MTA pipe to syslog (facility mail, beside the MTA's own).

    Postfix puts a failed command's output in the bounce it mails to the sender and in
    its log (pipe(8)): stderr gets one line of ours at most, never a traceback.  With
    no syslog socket the log is dropped; the inbox row keeps the state and the reason.
    """
    root = logging.getLogger()
    if any(getattr(h, "mailticket_pipe", False) for h in root.handlers):
        return
    handler: logging.Handler = logging.NullHandler()
    if os.path.exists(SYSLOG_SOCKET):
        try:
            handler = logging.handlers.SysLogHandler(
                SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_MAIL
            )
            handler.setFormatter(logging.Formatter("mailticket[%(process)d]: %(name)s: %(message)s"))
        except OSError:
            pass
    handler.mailticket_pipe = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    logging.captureWarnings(True)  # a library's warning is a log line too, not stderr
    logging.raiseExceptions = False  # a syslog that went away: no "Logging error" trace


def read_inputs(paths: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    """(where, raw bytes) for every message in .eml files, mboxes, Maildirs and stdin.

    The envelope sender of stdin (an MTA's From_ line or Return-Path) and of an mbox's
    From_ lines becomes the topmost Return-Path header (envelope.py).
    """
    for p in paths:
        if p == "-":
            yield "-", envelope.from_pipe(sys.stdin.buffer.read())
            continue
        path = Path(p)
        if path.is_dir():
            if not all((path / sub).is_dir() for sub in ("cur", "new")):
                raise BadInput(f"{p}: a folder, but not a Maildir (no cur/ and new/)")
            md = mailbox.Maildir(path, factory=None, create=False)
            for key in sorted(md.iterkeys()):
                yield f"{p}:{key}", md.get_bytes(key)
            continue
        with path.open("rb") as fh:
            head = fh.read(5)
        if head == b"From ":
            box = mailbox.mbox(path, factory=None, create=False)
            try:
                for n, key in enumerate(box.iterkeys()):
                    yield f"{p}#{n + 1}", envelope.from_mbox(box.get_bytes(key, from_=True))
            finally:
                box.close()
        else:
            yield str(path), path.read_bytes()


def count_inputs(paths: tuple[str, ...]) -> int | None:
    """A cheap message count for a progress bar (None when it would cost a read)."""
    total = 0
    for p in paths:
        path = Path(p)
        if p == "-":
            return None
        if path.is_dir():
            total += sum(len(os.listdir(path / s)) for s in ("cur", "new") if (path / s).is_dir())
        elif path.stat().st_size > 1_000_000:
            with path.open("rb") as fh:
                total += sum(chunk.count(b"\nFrom ") for chunk in iter(lambda: fh.read(1 << 20), b"")) + 1
        else:
            total += 1
    return total


def store_and_process(
    app: App,
    paths: tuple[str, ...],
    *,
    batch: int,
    recipients: tuple[str, ...] = (),
    on_result: Callable[[Result], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Summary:
    """Store the messages of `paths` `batch` at a time, and process each batch once stored.

    `on_result` gets each message's result as it is processed, `on_batch` the size of
    each batch stored.  Raises BadInput for a folder that is not a Maildir (the messages
    before it are stored); every other failure is in the Summary.
    """
    assert app.worker is not None, "open the app with processing"
    app.worker.batch = batch
    mailbox_ = recipients[0].strip().strip("<>")[:255] if recipients else None  # as the listener
    summary = Summary()
    pending: list[Incoming] = []

    def report(result: Result) -> None:
        summary.counts[result.outcome] += 1
        if on_result is not None:
            on_result(result)

    def flush() -> None:
        n = len(pending)
        try:
            ids = inbox.store_many(pending, now=app.clock.now())
        except Exception as exc:  # StorageError, or a lock file that cannot be opened
            ours = isinstance(exc, MailticketError)
            if not ours:
                log.exception("ingest: %d message(s) not stored", n)
            summary.not_stored += n
            summary.why = summary.why or (str(exc) if ours else f"{type(exc).__name__}: {exc}")
            pending.clear()
            return
        pending.clear()
        # Stored: from here on nothing may fail the command, or an MTA would deliver
        # the message twice (75) or bounce it (any other status).  A row whose run
        # did not commit stays pending, and the daemon's worker takes it later.
        assert app.worker is not None  # opened for processing
        done = sum(summary.counts.values())
        try:
            app.worker.run_pending(ids=ids, on_result=report)
        except Exception as exc:
            left = n - (sum(summary.counts.values()) - done)
            log.error(
                "inbox %s: stored; %d left pending, not processed: %s",
                ",".join(map(str, ids)),
                left,
                exc,
                exc_info=True,
            )
            summary.waiting += left
            summary.why = summary.why or f"{type(exc).__name__}: {exc}"
        if on_batch is not None:
            on_batch(n)

    try:
        for _where, raw in read_inputs(paths):
            pending.append(Incoming(raw, "ingest", mailbox=mailbox_))
            if len(pending) >= batch:
                flush()
    except BadInput:
        raise
    except Exception as exc:  # an unreadable input: what was not read is not stored
        log.exception("ingest: could not read the input")
        summary.not_stored += 1
        summary.why = summary.why or f"{type(exc).__name__}: {exc}"
    if pending:
        flush()
    return summary
