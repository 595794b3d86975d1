"""Deliver the outbox: build each queued message and hand it to a transport.

Transports: `folder` (the default: one `.eml` file per message, so a new helpdesk
sees its acknowledgements without a mail server) and `smtp` (a smarthost).  A
temporary failure schedules a retry with exponential backoff; a permanent one, or
too many attempts, makes the row `dead`.  Each attempt is recorded on the row.

A row is marked `sent` in the same short transaction that follows the hand-over,
and rows are claimed one at a time, so one daemon never sends a message twice.
"""

from __future__ import annotations

import logging
import os
import smtplib
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path

from . import models
from .config import Config, Outgoing, read_secret
from .models import Outbox

log = logging.getLogger(__name__)


class TemporaryFailure(Exception):
    """Try again later (4xx, connection refused, timeout)."""


class PermanentFailure(Exception):
    """Never try again (5xx, refused recipient)."""


def build(row: Outbox, now: datetime) -> bytes:
    """The wire form of an outbox row."""
    msg = EmailMessage(policy=SMTP)
    headers = dict(row.headers or {})
    msg["From"] = headers.pop("From", None) or row.mail_from  # with the helpdesk's name, when given
    msg["To"] = row.to_addr
    msg["Subject"] = row.subject
    msg["Date"] = format_datetime(row.created_at or now)
    msg["Message-ID"] = row.message_id
    for name, value in headers.items():
        msg[name] = value
    msg.set_content(row.body)
    return msg.as_bytes()


class FolderTransport:
    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def send(self, row: Outbox, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{row.id:08d}-{row.kind}.eml"
        tmp = self.folder / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.folder / name)

    def close(self) -> None:
        pass


class SmtpTransport:
    """A smarthost over one kept-open connection (NOTES.md: 160/s against 1 per message)."""

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


def backoff(attempts: int, base: int) -> timedelta:
    """base, 2 base, 4 base, ... capped at six hours."""
    return timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), 6 * 3600))


def deliver_due(config: Config, clock, transport=None, limit: int = 500) -> Delivery:
    """Send every row that is due now; return what happened."""
    own = transport is None
    transport = transport or transport_for(config)
    done = Delivery()
    try:
        now = clock.now()
        due = list(
            Outbox.select()
            .where(Outbox.state.in_(("queued", "retry")) & (Outbox.next_attempt_at <= now))
            .order_by(Outbox.id)
            .limit(limit)
        )
        for row in due:
            _attempt(row, config.outgoing, transport, clock, done)
    finally:
        if own:
            transport.close()
    return done


def _attempt(row: Outbox, cfg: Outgoing, transport, clock, done: Delivery) -> None:
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
    models.update(Outbox, row.id, {"state": row.state, "attempts": row.attempts, "sent_at": row.sent_at,
                                   "last_error": row.last_error, "next_attempt_at": row.next_attempt_at})
    log.info("outbox %s to %s: %s (attempt %d)", row.id, row.to_addr, row.state, row.attempts)


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
