"""The IMAP edge: one poller per `[[imap]]` mailbox (docs/architecture.md section 1).

Like the SMTP listener it only checks, stores and answers; the pipeline does the
work later, from the durable inbox.  For each batch of new messages:

  fetch   `UID FETCH ... BODY.PEEK[]`: PEEK, so the server does not set \\Seen before
          we have the message (RFC 3501 6.4.5)
  store   `inbox.store_many` and the mailbox's last UID, in ONE transaction
  answer  only after that commit: flag \\Seen, or MOVE to the processed folder
          (RFC 6851; COPY + \\Deleted + UID EXPUNGE where MOVE is missing)

A crash before the commit leaves the batch unflagged on the server and below no
saved UID: it is fetched again.  A crash after it leaves at most one batch stored
but unflagged (a lost connection is caught up on reconnect): never lost, never
fetched twice.

Bookkeeping (RFC 3501 2.3.1.1): a UID means something only together with the
folder's UIDVALIDITY; `ImapState` keeps both per mailbox.  The first time a mailbox
is connected, mail older than `history_days` is imported silently (recorded, never
acknowledged) or skipped, so that connecting an old mailbox does not answer years
of history.  Until that first drain is done the row's uidvalidity stays NULL: a
restart in the middle of it carries on importing silently instead of acknowledging
the rest.

This is the only module that imports imapclient.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from . import leases
from .clock import Clock
from .config import Imap, OAuth, read_secret
from .db import TRANSIENT_ERRORS, DatabaseError, writing
from .errors import MailticketError, StorageError
from .inbox import Incoming, store_many
from .leases import LeaseLost
from .models import ImapState, database_proxy

log = logging.getLogger(__name__)

BATCH = 200  # messages per UID FETCH of bodies (docs/performance.md: batches make IMAP fast)
BATCH_BYTES = 16 * 1024 * 1024  # and at most this many bytes of mail in memory at once
TIMEOUT = 60.0  # socket timeout for connect and every command
IDLE_RENEW = 25 * 60  # RFC 2177: a server may drop a client idle for 30 minutes
IDLE_TICK = 1.0  # how often the IDLE loop looks at the stop event
BACKOFF_MIN, BACKOFF_MAX = 1.0, 300.0

SEEN, DELETED = b"\\Seen", b"\\Deleted"
BODY = b"BODY[]"

# The server went away or misbehaved: reconnect with backoff.  imaplib's IMAP4.abort
# (a dropped connection) is a child of IMAPClientError (IMAP4.error); socket, TLS
# and timeout errors are OSErrors.
NETWORK_ERRORS = (OSError, IMAPClientError)


def mailbox_key(cfg: Imap) -> str:
    """The mailbox's name in ImapState and in logs: `user@host:port/folder`."""
    return f"{cfg.user}@{cfg.host}:{cfg.port}/{cfg.folder}"


def _shutdown(client: IMAPClient) -> None:
    """Close the socket of a connection that may be half-dead (a failed STARTTLS, a reset)."""
    try:
        client.shutdown()
    except (*NETWORK_ERRORS, ValueError):
        pass


class ImapPoller:
    """Reads one mailbox into the durable inbox: `poll_once()` now, or `run(stop)` for ever."""

    def __init__(
        self,
        cfg: Imap,
        clock: Clock,
        on_stored: Callable[[list[int]], None] | None = None,
        *,
        batch: int = BATCH,
        batch_bytes: int = BATCH_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        oauth: OAuth | None = None,
        holder: str | None = None,
        lease_seconds: int = 30,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.on_stored = on_stored
        self.batch = batch
        self.batch_bytes = batch_bytes
        self.ssl_context = ssl_context  # None: the system's CAs, hostname checked
        self.oauth = oauth  # the [oauth.NAME] that `cfg.oauth` names, for auth = xoauth2 | oauthbearer
        self.key = mailbox_key(cfg)
        self.backoff_min, self.backoff_max = BACKOFF_MIN, BACKOFF_MAX
        self._client: IMAPClient | None = None
        self._uidvalidity = 0  # of the selected folder
        self._saved_uidvalidity: int | None = None  # as ImapState has it
        self._last_uid = 0  # as ImapState has it: committed
        self._importing = False  # first drain of this mailbox: the history cut-off applies
        self._unacked: list[int] = []  # committed, not yet flagged/moved (connection lost)
        self._stop = threading.Event()  # run()'s: a long backlog stops between batches
        # Several daemons on one database: `run` polls only while this daemon (`holder`)
        # holds the mailbox's lease (leases.py), renewed every third of `lease_seconds`.
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.holding = False  # for /healthz
        self.problem: str | None = None  # why the last attempt failed (/healthz); None: it works
        self._renewed = 0.0  # time.monotonic() of the last renewal

    # --- connection ------------------------------------------------------------------

    def _connect(self) -> IMAPClient:
        """The one seam for the network client: a logged-in IMAPClient (tests wrap it).

        With `auth = "xoauth2"` or `"oauthbearer"` the login is SASL with an OAuth2
        access token.  A token the server refuses (revoked, or expired before the time
        our cache has for it) is refreshed once and tried on a new connection; a
        refused fresh one, or no token at all (`OAuthError`: the refresh token was
        revoked, the provider is unreachable), raises a MailticketError, which `run`
        logs and backs off from: nothing is fetched, so nothing is flagged or lost.
        """
        cfg = self.cfg
        if cfg.auth == "password":
            password = read_secret(cfg.password_env, cfg.password_file, f"[imap] {self.key}")
            # imapclient's protocol logger redacts the LOGIN line (STYLE.md 11).
            return self._signed_in(lambda client: client.login(cfg.user, password))
        from .oauth import OAuthError, source  # here: authlib is loaded only where OAuth2 is used

        if self.oauth is None:  # the daemon passes config.oauth.get(cfg.oauth)
            raise OAuthError(f"imap {self.key}: auth = {cfg.auth!r} needs [oauth.{cfg.oauth}]")
        tokens = source(self.oauth, cfg.oauth)
        try:
            return self._signed_in(self._sasl(tokens.token()))
        except LoginError as exc:
            log.info("imap %s: the server refused the access token (%s); refreshing it", self.key, exc)
            tokens.invalidate()
        try:
            return self._signed_in(self._sasl(tokens.token()))
        except LoginError as exc:
            raise OAuthError(
                f"imap {self.key}: the server refused a newly refreshed access token of "
                f"[oauth.{cfg.oauth}] ({exc}): check that the app registration may use IMAP "
                f"(its scopes) and that the token is {cfg.user}'s"
            ) from exc

    def _sasl(self, token: str) -> Callable[[IMAPClient], object]:
        """The login with `token`; the token was fetched before connecting, so a provider
        that cannot be reached costs no connection to the IMAP server."""
        user = self.cfg.user
        if self.cfg.auth == "oauthbearer":
            return lambda client: client.oauthbearer_login(user, token)  # RFC 7628
        return lambda client: client.oauth2_login(user, token)  # Google's and Microsoft's XOAUTH2

    def _signed_in(self, login: Callable[[IMAPClient], object]) -> IMAPClient:
        """A new connection (TLS as configured), logged in by `login`, or its socket closed."""
        cfg = self.cfg
        context = None
        if cfg.tls != "none":
            context = self.ssl_context or ssl.create_default_context()
        client = IMAPClient(
            cfg.host,
            cfg.port,
            ssl=cfg.tls == "tls",
            ssl_context=context if cfg.tls == "tls" else None,
            timeout=TIMEOUT,
        )
        try:
            if cfg.tls == "starttls":
                client.starttls(context)
            login(client)
        except BaseException:
            _shutdown(client)
            raise
        client.normalise_times = False  # INTERNALDATE as an aware datetime, to compare
        return client

    def _open(self) -> IMAPClient:
        client = self._connect()
        try:
            pf = self.cfg.processed_folder
            if pf and not client.folder_exists(pf):
                client.create_folder(pf)
                log.info("imap %s: created the processed folder %s", self.key, pf)
            info = client.select_folder(self.cfg.folder)
            self._load_state(int(info[b"UIDVALIDITY"]))
        except BaseException:
            _shutdown(client)
            raise
        self._client = client
        log.info(
            "imap %s: connected (UIDVALIDITY %d, last UID %d%s)",
            self.key,
            self._uidvalidity,
            self._last_uid,
            ", first import" if self._importing else "",
        )
        if self._unacked:  # stored before the connection dropped: answer them now
            self._acknowledge(self._unacked)
        return client

    def close(self) -> None:
        """Log out (or just drop the socket when the server is gone)."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except (*NETWORK_ERRORS, ValueError):
            _shutdown(client)

    def _drop(self) -> None:
        """Forget a connection that failed: close its socket, no goodbye."""
        client, self._client = self._client, None
        if client is not None:
            _shutdown(client)

    # --- bookkeeping -----------------------------------------------------------------

    def _load_state(self, uidvalidity: int) -> None:
        try:
            state = ImapState.get_or_none(ImapState.mailbox == self.key)
        except (DatabaseError, *TRANSIENT_ERRORS) as exc:  # a lost connection is an InterfaceError
            raise StorageError(f"cannot read the IMAP state: {exc}") from exc
        self._uidvalidity = uidvalidity
        if state is None:  # first connection: the backlog is history
            self._importing, self._last_uid, self._saved_uidvalidity = True, 0, None
            return
        self._saved_uidvalidity = state.uidvalidity
        if state.uidvalidity is None:  # a first import was interrupted: carry on with it
            self._importing, self._last_uid = True, state.last_uid
        elif state.uidvalidity != uidvalidity:
            # RFC 3501 2.3.1.1: a new UIDVALIDITY means the folder was recreated or the
            # server rebuilt it, and our UIDs point at nothing (or at other messages).
            # Start over from UID 1: re-reading is safe because the pipeline's dedupe
            # by Message-ID records a message already stored as a duplicate, whereas
            # keeping the old last UID could silently skip new mail.
            log.warning(
                "imap %s: UIDVALIDITY changed %d -> %d: reading the folder again "
                "from UID 1 (duplicates are recognised by Message-ID)",
                self.key,
                state.uidvalidity,
                uidvalidity,
            )
            self._importing, self._last_uid, self._unacked = False, 0, []
        else:
            self._importing, self._last_uid = False, state.last_uid

    def _save_state(self, last_uid: int, importing: bool) -> None:
        uidvalidity = None if importing else self._uidvalidity
        mine = ImapState.mailbox == self.key
        if self.holder is not None:  # fenced: only while the lease is still ours
            mine &= ImapState.holder == self.holder
        updated = ImapState.update(uidvalidity=uidvalidity, last_uid=last_uid).where(mine).execute()
        if not updated and self.holder is not None:
            self.holding = False
            raise LeaseLost(f"imap {self.key}: another daemon took the mailbox over; this batch is undone")
        if not updated:
            ImapState.insert(mailbox=self.key, uidvalidity=uidvalidity, last_uid=last_uid).execute()

    def _commit(self, items: list[Incoming], last_uid: int, *, importing: bool) -> list[int]:
        """Store the messages and move the last UID past them: all or nothing."""
        try:
            with writing(), database_proxy.atomic():  # store_many's nests as a savepoint
                ids = store_many(items, now=self.clock.now()) if items else []
                self._save_state(last_uid, importing)
        except (DatabaseError, *TRANSIENT_ERRORS) as exc:
            raise StorageError(f"could not store the IMAP state: {exc}") from exc
        self._last_uid, self._importing = last_uid, importing
        self._saved_uidvalidity = None if importing else self._uidvalidity
        return ids

    # --- fetching --------------------------------------------------------------------

    def poll_once(self) -> int:
        """Fetch whatever is new now; return how many messages were stored.

        Connects if needed.  Raises a network error (the connection is dropped, the
        next call reconnects) or StorageError (nothing of the failed batch is
        flagged; it is fetched again next time).
        """
        try:
            client = self._client or self._open()
            return self._drain(client)
        except NETWORK_ERRORS:
            self._drop()
            raise

    def _drain(self, client: IMAPClient) -> int:
        client.noop()  # lets the server tell us about new mail (RFC 3501 6.1.2)
        # `n:*` always matches the highest UID, even when it is below n (RFC 3501 6.4.8).
        uids = sorted(u for u in client.search(["UID", f"{self._last_uid + 1}:*"]) if u > self._last_uid)
        stored = 0
        for start in range(0, len(uids), self.batch):
            if self._stop.is_set():  # every batch so far is committed: safe to stop here
                return stored
            chunk = uids[start : start + self.batch]
            # Sizes first, to hold at most `batch_bytes` of mail at once; arrival dates
            # only while importing history (parsing them costs as much as the sizes).
            items = ["RFC822.SIZE", "INTERNALDATE"] if self._importing else ["RFC822.SIZE"]
            meta = client.fetch(chunk, items)
            group: list[int] = []
            size = 0
            for uid in chunk:
                group.append(uid)
                size += meta.get(uid, {}).get(b"RFC822.SIZE", 0)
                if size >= self.batch_bytes:
                    stored += self._take(client, group, meta)
                    group, size = [], 0
            if group:
                stored += self._take(client, group, meta)
        if self._importing or self._saved_uidvalidity != self._uidvalidity:
            # The first drain is done (or the folder is new): what comes now is new mail.
            self._commit([], self._last_uid, importing=False)
        return stored

    def _take(self, client: IMAPClient, group: list[int], meta: dict) -> int:
        """Fetch, store and acknowledge one group of UIDs; return how many were stored."""
        historic: set[int] = set()
        if self._importing:
            cutoff = self.clock.now() - timedelta(days=self.cfg.history_days)
            historic = {u for u in group if u in meta and meta[u][b"INTERNALDATE"] < cutoff}
        skip = historic if self.cfg.history == "skip" else set()
        # A UID missing from `meta` was expunged by someone else meanwhile: gone.
        wanted = [u for u in group if u in meta and u not in skip]
        bodies = client.fetch(wanted, ["BODY.PEEK[]"]) if wanted else {}
        items, took = [], []
        for uid in wanted:
            raw = bodies.get(uid, {}).get(BODY)
            if raw is not None:
                items.append(
                    Incoming(
                        raw, "imap", mailbox=self.key, queue=self.cfg.queue or None, silent=uid in historic
                    )
                )
                took.append(uid)
        ids = self._commit(items, group[-1], importing=self._importing)
        if skip:
            log.info(
                "imap %s: skipped %d messages older than %d days (history = skip)",
                self.key,
                len(skip),
                self.cfg.history_days,
            )
        log.debug("imap %s: stored %d messages, last UID %d", self.key, len(ids), group[-1])
        self._unacked = took  # committed: from here on, owed a flag or a move
        if ids and self.on_stored:
            try:
                self.on_stored(ids)
            except Exception:  # the daemon's wake-up call must not cost the acknowledgement
                log.exception("imap %s: on_stored callback failed", self.key)
        self._acknowledge(took)
        return len(ids)

    def _acknowledge(self, uids: list[int]) -> None:
        """After the commit: flag \\Seen, or move to the processed folder."""
        self._unacked = uids
        if not uids:
            return
        client = self._client
        assert client is not None
        folder = self.cfg.processed_folder
        if not folder:
            client.add_flags(uids, [SEEN], silent=True)
        elif client.has_capability("MOVE"):
            client.move(uids, folder)  # RFC 6851: atomic, and no \Deleted left behind
        else:
            client.copy(uids, folder)
            client.add_flags(uids, [DELETED], silent=True)
            if client.has_capability("UIDPLUS"):
                client.uid_expunge(uids)  # RFC 4315: only these, not others' \Deleted
            else:
                client.expunge()  # RFC 3501: every \Deleted message of the folder
        self._unacked = []

    # --- the loop --------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll, then IDLE (or wait `poll_interval`), until `stop` is set; reconnect on errors.

        With a `holder`, only while this daemon holds the mailbox's lease: otherwise it
        waits and tries again (another daemon polls it meanwhile).  Meant for a thread
        of its own: `threading.Thread(target=poller.run, args=(stop,))`.
        """
        self._stop = stop
        delay = self.backoff_min
        try:
            while not stop.is_set():
                try:
                    if not self._keep_lease(force=True):
                        stop.wait(self._renew_every())  # another daemon polls it
                        continue
                    self.poll_once()
                    delay = self.backoff_min
                    self.problem = None
                    self._wait(stop)
                except (*NETWORK_ERRORS, MailticketError, DatabaseError, *TRANSIENT_ERRORS) as exc:
                    # One line per failure; imapclient's errors never carry the password.
                    self.problem = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "imap %s: %s: %s; retrying in %.3g s", self.key, type(exc).__name__, exc, delay
                    )
                except Exception as exc:  # a bug: keep the thread alive, say so loudly
                    self.problem = f"unexpected error: {type(exc).__name__}: {exc}"
                    log.exception("imap %s: unexpected error; retrying in %.3g s", self.key, delay)
                else:
                    continue
                self._drop()
                stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
        finally:
            self.close()
            if self.holding and self.holder is not None:
                with contextlib.suppress(Exception):  # the lease runs out on its own anyway
                    leases.release(self.key, self.holder)
                    log.info("imap %s: lease released", self.key)
                self.holding = False
            if database_proxy.obj is not None and not database_proxy.is_closed():
                database_proxy.close()  # this thread's connection only (peewee keeps one per thread)

    # --- the lease (several daemons) -------------------------------------------------

    def _renew_every(self) -> float:
        return self.lease_seconds / 3

    def _keep_lease(self, force: bool = False) -> bool:
        """Take or renew the mailbox's lease when due; whether this daemon holds it.

        Losing it (another daemon took over while this one stalled) drops the
        connection: the next batch is the other daemon's.
        """
        if self.holder is None:
            return True
        if not force and time.monotonic() - self._renewed < self._renew_every():
            return self.holding
        was = self.holding
        try:
            self.holding = leases.take(self.key, self.holder, self.lease_seconds, self.clock)
        except (DatabaseError, *TRANSIENT_ERRORS) as exc:
            self.holding = False
            raise StorageError(f"cannot renew the lease on the mailbox: {exc}") from exc
        self._renewed = time.monotonic()
        if self.holding and not was:
            log.info("imap %s: this daemon (%s) now polls the mailbox", self.key, self.holder)
        elif was and not self.holding:
            log.warning("imap %s: another daemon took the mailbox over", self.key)
            self._drop()
        return self.holding

    def _wait(self, stop: threading.Event) -> None:
        client = self._client
        if client is None:
            return
        if self.cfg.idle and client.has_capability("IDLE"):
            self._idle(client, stop)
            return
        until = time.monotonic() + self.cfg.poll_interval
        while not stop.is_set() and (left := until - time.monotonic()) > 0:
            stop.wait(min(left, self._renew_every()) if self.holder is not None else left)
            if not self._keep_lease():
                return

    def _idle(self, client: IMAPClient, stop: threading.Event) -> None:
        """RFC 2177 IDLE until new mail, `stop`, or time to renew the IDLE."""
        client.idle()
        started = time.monotonic()
        while not stop.is_set() and time.monotonic() - started < IDLE_RENEW:
            tick = time.monotonic()
            responses = client.idle_check(timeout=IDLE_TICK)
            if any(r[:1] == (b"BYE",) or r[1:2] in ((b"EXISTS",), (b"RECENT",)) for r in responses):
                break
            # Readable but nothing parsed: the server closed the connection, and
            # idle_check swallows that EOF; idle_done() below raises it.
            if not responses and time.monotonic() - tick < IDLE_TICK / 2:
                break
            if self.holder is not None and not self._keep_lease():
                break
        if self._client is not None:  # still connected (a lost lease dropped it)
            client.idle_done()
