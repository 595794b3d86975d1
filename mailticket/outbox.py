"""Deliver the outbox: build each queued message and hand it to a transport.

Transports: `folder` (the default: one `.eml` file per message, so a new helpdesk
sees its acknowledgements without a mail server) and `smtp` (a smarthost, in
`smarthost.py`).  Any failure of a row is an attempt, recorded on the row: a
temporary one schedules a retry with exponential backoff; a permanent one, or too
many attempts, makes the row `dead`.  A failure of the smarthost itself (connect,
TLS, AUTH) is no row's: the pass stops, its rows go back unspent, and the transport
backs off until the smarthost answers (`Delivery.transport_error` says why).

A pass first claims the rows that are due (`claim`: state `sending` under a short
lease that the pass renews while it runs), so two daemons on one PostgreSQL database,
or `outbox deliver` beside a daemon, never send the same row; a daemon alone on its
database hands back a killed predecessor's claims at start (`release_claims`).
With the smarthost each row is marked `sent` right after its hand-over; with the
folder transport, where writing a file again is harmless, the pass marks its rows
together.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import charset as _charset
from email.header import Header
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import format_datetime, formataddr, getaddresses
from pathlib import Path
from typing import cast

from . import models
from .attachments import AttachmentStore
from .clock import Clock
from .config import Config, Outgoing
from .db import is_sqlite, writing
from .models import Outbox, fn
from .smarthost import Outage, PermanentFailure, SmtpTransport, TemporaryFailure, TransportFailure

log = logging.getLogger(__name__)


# Outgoing mail is built with the compat32 API: a third of the CPU of policy.SMTP for the
# same message (about 0.5 ms against 1.4 ms for an acknowledgement, 3 ms when it is not
# ASCII), and outgoing mail is built for every ticket.  Non-ASCII text is encoded here
# explicitly: quoted-printable UTF-8, readable in the raw message.
_UTF8 = _charset.Charset("utf-8")
_UTF8.header_encoding = _UTF8.body_encoding = _charset.QP
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to"})
_TEXT_HEADERS = frozenset({"subject", "thread-topic"})  # free text, from the customer's subject
_WIRE = compat32.clone(linesep="\r\n")
# A header line is at most 998 characters (RFC 5322 2.1.1); free text is capped well below.
LINE_MAX = 998
TEXT_MAX = 255


def build(row: Outbox, now: datetime, store: AttachmentStore | None = None) -> bytes:
    """The wire form of an outbox row; no header line over LINE_MAX, whatever the row holds.

    A row with attachments (files of `store`) is multipart/mixed: the text first, then
    each file, base64, under its own name (RFC 2046 5.1.3, RFC 2183); a text-only row
    stays one text/plain part, the fast path of every automatic message.
    """
    body = row.body
    # 7bit when it can be (as most mail clients send it), else quoted-printable UTF-8.
    plain = body.isascii() and all(len(line) <= LINE_MAX for line in body.split("\n"))
    # typeshed takes only a charset name; email.mime.text also takes a Charset instance.
    text = MIMEText(body, "plain", "us-ascii" if plain else _UTF8)  # type: ignore[arg-type]
    msg: Message = text
    if row.attachments:
        if store is None:
            raise PermanentFailure("the message has attachments and no attachment store was given")
        msg = MIMEMultipart("mixed", _subparts=[text, *(_file(a, store) for a in row.attachments)])
    headers = dict(row.headers or {})
    _header(msg, "From", headers.pop("From", None) or row.mail_from)  # with the helpdesk's name
    _header(msg, "To", row.to_addr)
    _header(msg, "Subject", row.subject)
    msg["Date"] = format_datetime(row.created_at or now)
    msg["Message-ID"] = row.message_id
    for name, value in headers.items():
        _header(msg, name, value)
    data = msg.as_bytes(policy=_WIRE)
    head = data[: data.find(b"\r\n\r\n")]
    if any(len(line) > LINE_MAX for line in head.split(b"\r\n")):  # the last line of defence
        raise PermanentFailure(f"a header line is over {LINE_MAX} characters (RFC 5322 2.1.1)")
    return data


def _file(attachment: dict, store: AttachmentStore) -> MIMEApplication:
    """One attached file, read back from the store by its hash; base64 whatever it is."""
    maintype, _, subtype = attachment["content_type"].partition("/")
    part = MIMEApplication(store.read(attachment["sha256"]), subtype or "octet-stream")
    if maintype != "application":  # MIMEApplication's encoding, the type the agent sent
        part.replace_header("Content-Type", attachment["content_type"])
    name = attachment["filename"] or "attachment"
    # A non-ASCII name in RFC 2231 form, which every current client reads.
    part.add_header(
        "Content-Disposition", "attachment", filename=name if name.isascii() else ("utf-8", "", name)
    )
    return part


def _header(msg: Message, name: str, value: str) -> None:
    if name.lower() in _TEXT_HEADERS and len(value) > TEXT_MAX:
        value = value[:TEXT_MAX] + "..."  # ASCII: an ASCII subject stays readable raw
    elif name.lower() not in _ADDRESS_HEADERS:
        # An identifier that cannot be folded (a runaway Message-ID in References) is
        # dropped, as RFC 5322 3.6.4 lets References be trimmed.
        value = " ".join(word for word in value.split() if len(word) < LINE_MAX - len(name) - 2)
        if not value:
            return
    if value.isascii():
        msg[name] = value
    elif name.lower() in _ADDRESS_HEADERS:  # RFC 2047 for the names, never the addresses
        pairs = getaddresses([value])
        if all(address.isascii() for _, address in pairs):
            msg[name] = ", ".join(formataddr(pair, _UTF8) for pair in pairs)
        else:  # a UTF-8 address (RFC 6531/6532): raw UTF-8, sent only under SMTPUTF8
            msg[name] = value.encode("utf-8").decode("ascii", "surrogateescape")
    else:
        # typeshed types header values as str; compat32 takes a Header and folds it as is.
        msg[name] = Header(value, _UTF8, header_name=name)  # type: ignore[assignment]


class FolderTransport:
    # Sending a row again writes the same file: a pass may mark its rows sent together.
    idempotent = True

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.outage = Outage()  # never set: a file that cannot be written is the row's attempt

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


def transport_for(config: Config):
    if config.outgoing.transport == "smtp":
        return SmtpTransport(config.outgoing, config.oauth.get(config.outgoing.oauth))
    return FolderTransport(config.outgoing.folder)


@dataclass
class Delivery:
    sent: int = 0
    retry: int = 0
    dead: int = 0
    # Why the smarthost could not be used this pass (connect, TLS, AUTH), or None.
    transport_error: str | None = None


# A claimed row not marked within this long (its sender died) is taken again; a pass
# renews the claims it still holds every half lease.  The daemon's is four times
# `[daemon] lease_seconds` (`lease_for`): 2 minutes by default, longer than any one
# hand-over to the smarthost may take.
LEASE = timedelta(minutes=2)


def lease_for(config: Config) -> timedelta:
    return timedelta(seconds=4 * config.daemon.lease_seconds)


# The transport's own backoff (a smarthost down, refusing our login) stops growing here:
# the queue waits for the smarthost however long it is away, and notices it soon.
TRANSPORT_BACKOFF_MAX = timedelta(minutes=10)


def backoff(attempts: int, base: int, cap: timedelta = timedelta(hours=6)) -> timedelta:
    """base, 2 base, 4 base, ... capped (at six hours for a row)."""
    return min(timedelta(seconds=base * 2 ** min(max(attempts - 1, 0), 30)), cap)


def deliver_due(
    config: Config, clock: Clock, transport: SmtpTransport | None = None, limit: int = 500
) -> Delivery:
    """Send every row that is due now; return what happened.

    Every claimed row ends the pass sent, retrying, dead, or (when the smarthost itself
    failed) back in the queue with its attempts unspent.
    """
    own = transport is None
    transport = transport or transport_for(config)
    outage = transport.outage
    done = Delivery()
    try:
        if outage.retry_at and clock.now() < outage.retry_at:  # still backing off
            done.transport_error = outage.error
            return done
        store = AttachmentStore(config.paths.attachments)  # the files agents' replies carry
        lease = lease_for(config)
        _deliver(claim(clock.now(), limit, lease), config.outgoing, transport, clock, done, store, lease)
    finally:
        if own:
            transport.close()
    return done


def _deliver(
    rows: list[Outbox],
    cfg: Outgoing,
    transport: SmtpTransport,
    clock: Clock,
    done: Delivery,
    store: AttachmentStore,
    lease: timedelta = LEASE,
) -> None:
    marks: list[tuple[int, dict]] = []
    leased = clock.now()
    try:
        for i, row in enumerate(rows):
            if clock.now() - leased >= lease / 2:  # a long pass keeps what it claimed
                leased = clock.now()
                _renew([r.id for r in rows], leased + lease)
            try:
                mark = _attempt(row, cfg, transport, clock, done, store)
            except TransportFailure as exc:  # not this row's fault: stop, put every row back
                outage = transport.outage
                outage.failures += 1
                outage.retry_at = clock.now() + backoff(
                    outage.failures, cfg.retry_base_seconds, TRANSPORT_BACKOFF_MAX
                )
                outage.error = done.transport_error = str(exc)
                log.warning(
                    "outbox: smarthost unusable: %s; %d message(s) wait until %s",
                    exc,
                    len(rows) - i,
                    outage.retry_at.isoformat(),
                )
                _put_back([r.id for r in rows[i:]], outage.retry_at)
                return
            transport.outage = Outage()  # the smarthost answered
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


def claim(now: datetime, limit: int, lease: timedelta = LEASE) -> list[Outbox]:
    """Take up to `limit` rows that are due, for this process alone.

    They become `sending` with a lease (`next_attempt_at` = now + `lease`): another
    daemon on the same PostgreSQL database (which skips rows being claimed) or an
    `outbox deliver` beside the daemon never takes them meanwhile.  A process that
    dies while sending leaves them to be taken again once the lease is over (or at
    once by `release_claims` when the next one starts).
    """
    due = (Outbox.state.in_(("queued", "retry", "sending"))) & (Outbox.next_attempt_at <= now)
    query = Outbox.select(Outbox.id).where(due).order_by(Outbox.id).limit(limit)
    db = models.database_proxy
    with writing(), db.atomic():
        if not is_sqlite():
            query = query.for_update(skip_locked=True)  # FOR UPDATE SKIP LOCKED
        ids = [row.id for row in query]
        if not ids:
            return []
        Outbox.update(state="sending", next_attempt_at=now + lease).where(Outbox.id.in_(ids)).execute()
    return list(Outbox.select().where(Outbox.id.in_(ids)).order_by(Outbox.id))


def _renew(ids: list[int], until: datetime) -> None:
    """Extend the lease of the claims this pass still holds (the rows not yet marked)."""
    with writing():
        Outbox.update(next_attempt_at=until).where(Outbox.id.in_(ids) & (Outbox.state == "sending")).execute()


def _put_back(ids: list[int] | None, when: datetime) -> int:
    """Claimed rows back to `queued` (or `retry` once tried), due at `when`, attempts kept."""
    claimed = Outbox.state == "sending"
    if ids is not None:
        claimed &= Outbox.id.in_(ids)
    with writing(), models.database_proxy.atomic():
        return sum(
            Outbox.update(state=state, next_attempt_at=when).where(claimed & tried).execute()
            for state, tried in (("queued", Outbox.attempts == 0), ("retry", Outbox.attempts > 0))
        )


def release_claims(now: datetime) -> int:
    """Every `sending` row back in the queue, due now; the number of rows.

    For a process that knows it is alone on its database (a daemon on SQLite, at
    start): whatever a killed sender had claimed goes out now, not after its lease.
    """
    return _put_back(None, now)


def _attempt(
    row: Outbox, cfg: Outgoing, transport: SmtpTransport, clock: Clock, done: Delivery, store: AttachmentStore
) -> dict:
    """Hand one row to the transport; the columns that record the attempt.

    Any exception but the transport's own is this row's attempt, recorded: a folder
    that cannot be written, a message that cannot be built, a bug.  A row goes dead
    on its own failures only.
    """
    now = clock.now()
    try:
        transport.send(row, build(row, now, store))
    except TransportFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded on the row, never lost
        error: Exception | None = exc
    else:
        error = None
    row.attempts += 1
    if error is None:
        row.state, row.sent_at, row.last_error = "sent", now, None
        done.sent += 1
    else:
        ours = isinstance(error, (TemporaryFailure, PermanentFailure))
        row.last_error = (str(error) if ours else f"{type(error).__name__}: {error}")[:1000]
        if isinstance(error, PermanentFailure) or row.attempts >= cfg.max_attempts:
            row.state, done.dead = "dead", done.dead + 1
        else:
            row.state, done.retry = "retry", done.retry + 1
            row.next_attempt_at = now + backoff(row.attempts, cfg.retry_base_seconds)
    log.info("outbox %s to %s: %s (attempt %d)", row.id, row.to_addr, row.state, row.attempts)
    return {
        "state": row.state,
        "attempts": row.attempts,
        "sent_at": row.sent_at,
        "last_error": row.last_error,
        "next_attempt_at": row.next_attempt_at,
    }


DEPTH_STATES = ("queued", "sending", "retry", "dead")


def depth() -> dict[str, int]:
    """Rows waiting or given up on, by state (for the outbox depth metric)."""
    rows = (
        Outbox.select(Outbox.state, fn.COUNT(Outbox.id))
        .where(Outbox.state.in_(DEPTH_STATES))
        .group_by(Outbox.state)
        .tuples()
    )
    return dict(cast("Iterable[tuple[str, int]]", rows))  # .tuples(): peewee's stubs keep the model type


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
        "id": row.id,
        "ticket": row.ticket,
        "kind": row.kind,
        "to": row.to_addr,
        "subject": row.subject,
        "state": row.state,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
        "last_error": row.last_error,
        "message_id": row.message_id,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }
