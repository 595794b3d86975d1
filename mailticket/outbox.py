"""Deliver the outbox: build each queued message and hand it to a transport.

Transports: `folder` (the default: one `.eml` file per message, so a new helpdesk
sees its acknowledgements without a mail server) and `smtp` (a smarthost).  A
temporary failure schedules a retry with exponential backoff; a permanent one, or
too many attempts, makes the row `dead`.  Each attempt is recorded on the row.

A pass first claims the rows that are due (`claim`: state `sending` under a lease),
so two daemons on one PostgreSQL database, or `outbox deliver` beside a daemon,
never send the same row.  With the smarthost each row is marked `sent` right after
its hand-over; with the folder transport, where writing a file again is harmless,
the pass marks its rows together.
"""

from __future__ import annotations

import logging
import os
import smtplib
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import charset as _charset
from email.header import Header
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import format_datetime, formataddr, getaddresses
from pathlib import Path

from . import models
from .config import Config, Outgoing, read_secret
from .db import writing
from .models import Outbox, fn

log = logging.getLogger(__name__)


class TemporaryFailure(Exception):
    """Try again later (4xx, connection refused, timeout)."""


class PermanentFailure(Exception):
    """Never try again (5xx, refused recipient)."""


# Outgoing mail is built with the compat32 API: a third of the CPU of policy.SMTP for the
# same message (about 0.5 ms against 1.4 ms for an acknowledgement, 3 ms when it is not
# ASCII), and outgoing mail is built for every ticket.  Non-ASCII text is encoded here
# explicitly: quoted-printable UTF-8, readable in the raw message.
_UTF8 = _charset.Charset("utf-8")
_UTF8.header_encoding = _UTF8.body_encoding = _charset.QP
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to"})
_WIRE = compat32.clone(linesep="\r\n")


def build(row: Outbox, now: datetime) -> bytes:
    """The wire form of an outbox row."""
    body = row.body
    # 7bit when it can be (as most mail clients send it), else quoted-printable UTF-8.
    plain = body.isascii() and all(len(line) <= 998 for line in body.split("\n"))
    msg = MIMEText(body, "plain", "us-ascii" if plain else _UTF8)
    headers = dict(row.headers or {})
    _header(msg, "From", headers.pop("From", None) or row.mail_from)  # with the helpdesk's name
    _header(msg, "To", row.to_addr)
    _header(msg, "Subject", row.subject)
    msg["Date"] = format_datetime(row.created_at or now)
    msg["Message-ID"] = row.message_id
    for name, value in headers.items():
        _header(msg, name, value)
    return msg.as_bytes(policy=_WIRE)


def _header(msg: MIMEText, name: str, value: str) -> None:
    if value.isascii():
        msg[name] = value
    elif name.lower() in _ADDRESS_HEADERS:  # RFC 2047 for the names, never the addresses
        try:
            msg[name] = ", ".join(formataddr(pair, _UTF8) for pair in getaddresses([value]))
        except UnicodeEncodeError:  # a UTF-8 address (RFC 6531): no encoding can carry it
            msg[name] = value
    else:
        msg[name] = Header(value, _UTF8, header_name=name)


class FolderTransport:
    # Sending a row again writes the same file: a pass may mark its rows sent together.
    idempotent = True

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def send(self, row: Outbox, data: bytes) -> None:
        name = f"{row.id:08d}-{row.kind}.eml"
        tmp = self.folder / f".{name}.tmp"
        try:
            tmp.write_bytes(data)
        except FileNotFoundError:  # the first message, or the folder was removed
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
        os.replace(tmp, self.folder / name)  # readers never see half a message

    def close(self) -> None:
        pass


class SmtpTransport:
    """A smarthost over one kept-open connection (NOTES.md: 160/s against 1 per message)."""

    idempotent = False  # each row is marked sent right after its hand-over

    def __init__(self, cfg: Outgoing) -> None:
        self.cfg = cfg
        self.password = read_secret(cfg.password_env, cfg.password_file, "[outgoing]")
        self.conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        if self.conn is None:
            conn = smtplib.SMTP(self.cfg.host, self.cfg.port, timeout=30)
            if self.cfg.starttls:
                conn.starttls()
            if self.cfg.username:
                conn.login(self.cfg.username, self.password)
            self.conn = conn
        return self.conn

    def send(self, row: Outbox, data: bytes) -> None:
        try:
            self._connect().sendmail(row.mail_from, [row.to_addr], data)
        except smtplib.SMTPRecipientsRefused as exc:
            code = next(iter(exc.recipients.values()))[0]
            raise (PermanentFailure if code >= 500 else TemporaryFailure)(str(exc)) from exc
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise (PermanentFailure if exc.smtp_code >= 500 else TemporaryFailure)(
                f"{exc.smtp_code} {exc.smtp_error!r}") from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            self.close()
            raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self.conn = None


def transport_for(config: Config):
    if config.outgoing.transport == "smtp":
        return SmtpTransport(config.outgoing)
    return FolderTransport(config.outgoing.folder)


@dataclass
class Delivery:
    sent: int = 0
    retry: int = 0
    dead: int = 0


# A claimed row not marked within this long (its sender died) is taken again.
LEASE = timedelta(minutes=10)


def backoff(attempts: int, base: int) -> timedelta:
    """base, 2 base, 4 base, ... capped at six hours."""
    return timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), 6 * 3600))


def deliver_due(config: Config, clock, transport=None, limit: int = 500) -> Delivery:
    """Send every row that is due now; return what happened."""
    own = transport is None
    transport = transport or transport_for(config)
    done = Delivery()
    marks: list[tuple[int, dict]] = []
    try:
        for row in claim(clock.now(), limit):
            mark = _attempt(row, config.outgoing, transport, clock, done)
            if transport.idempotent:
                marks.append((row.id, mark))
            else:  # a crash must not send it twice: mark it before the next hand-over
                with writing():
                    models.update(Outbox, row.id, mark)
    finally:
        if marks:  # one transaction for the pass: one commit, one wait for the write lock
            with writing(), models.database_proxy.atomic():
                for row_id, mark in marks:
                    models.update(Outbox, row_id, mark)
        if own:
            transport.close()
    return done


def claim(now: datetime, limit: int) -> list[Outbox]:
    """Take up to `limit` rows that are due, for this process alone.

    They become `sending` with a lease (`next_attempt_at` = now + LEASE): another
    daemon on the same PostgreSQL database (which skips rows being claimed) or an
    `outbox deliver` beside the daemon never takes them meanwhile.  A process that
    dies while sending leaves them to be taken again once the lease is over.
    """
    due = ((Outbox.state.in_(("queued", "retry", "sending"))) & (Outbox.next_attempt_at <= now))
    query = Outbox.select(Outbox.id).where(due).order_by(Outbox.id).limit(limit)
    db = models.database_proxy
    with writing(), db.atomic():
        if not isinstance(db.obj, models.SqliteDatabase):
            query = query.for_update("FOR UPDATE SKIP LOCKED")
        ids = [row.id for row in query]
        if not ids:
            return []
        Outbox.update(state="sending", next_attempt_at=now + LEASE).where(Outbox.id.in_(ids)).execute()
    return list(Outbox.select().where(Outbox.id.in_(ids)).order_by(Outbox.id))


def _attempt(row: Outbox, cfg: Outgoing, transport, clock, done: Delivery) -> dict:
    """Hand one row to the transport; the columns that record the attempt."""
    now = clock.now()
    row.attempts += 1
    try:
        transport.send(row, build(row, now))
    except TemporaryFailure as exc:
        row.last_error = str(exc)[:1000]
        if row.attempts >= cfg.max_attempts:
            row.state, done.dead = "dead", done.dead + 1
        else:
            row.state, done.retry = "retry", done.retry + 1
            row.next_attempt_at = now + backoff(row.attempts, cfg.retry_base_seconds)
    except PermanentFailure as exc:
        row.last_error = str(exc)[:1000]
        row.state, done.dead = "dead", done.dead + 1
    else:
        row.state, row.sent_at, row.last_error = "sent", now, None
        done.sent += 1
    log.info("outbox %s to %s: %s (attempt %d)", row.id, row.to_addr, row.state, row.attempts)
    return {"state": row.state, "attempts": row.attempts, "sent_at": row.sent_at,
            "last_error": row.last_error, "next_attempt_at": row.next_attempt_at}


DEPTH_STATES = ("queued", "sending", "retry", "dead")


def depth() -> dict[str, int]:
    """Rows waiting or given up on, by state (for the outbox depth metric)."""
    return dict(Outbox.select(Outbox.state, fn.COUNT(Outbox.id))
                .where(Outbox.state.in_(DEPTH_STATES))
                .group_by(Outbox.state).tuples())


def listing(state: str | None = None, limit: int = 100) -> list[Outbox]:
    query = Outbox.select().order_by(Outbox.id.desc()).limit(limit)
    if state:
        query = query.where(Outbox.state == state)
    return list(query)


def requeue(ids: list[int] | None, now: datetime) -> int:
    """Put dead (or retrying) rows back in the queue, due now."""
    query = Outbox.update(state="queued", next_attempt_at=now, attempts=0).where(
        Outbox.state.in_(("dead", "retry"))
    )
    if ids:
        query = query.where(Outbox.id.in_(ids))
    return query.execute()


def as_dict(row: Outbox) -> dict:
    return {
        "id": row.id, "ticket": row.ticket, "kind": row.kind, "to": row.to_addr,
        "subject": row.subject, "state": row.state, "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
        "last_error": row.last_error, "message_id": row.message_id,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }
