"""The smarthost transport: outgoing mail over SMTP to the relay named in `[outgoing]`.

Its place in the flow: `outbox.deliver_due` claims the rows that are due and hands
each one, built, to a transport; this one keeps one connection open across rows
(docs/performance.md: 160 messages/s against a new connection per message).

Failures come in three kinds, because each is handled differently:
- `TransportFailure`: the smarthost itself (connect, greeting, TLS, AUTH).  No row is
  to blame: the pass stops at once (a blackholed host costs the timeout once, not once
  per row), its rows go back without spending an attempt, and the transport backs off
  (`Outage`) until the smarthost answers again.
- `TemporaryFailure`: this row, later (a 4xx reply, a connection lost mid-transaction).
- `PermanentFailure`: this row, never (a 5xx reply, an address that cannot be sent).
After any failed transaction the connection is reset (RSET, RFC 5321 4.1.1.5) or
closed, so the next row never starts inside the last one's transaction; a kept-open
connection that the smarthost closed while idle gets one fresh try, free of charge.

The password goes to whoever answers, so TLS verifies the certificate and the host
name by default: the system's CAs, or `tls_ca_file` for a private CA.

With `auth = "xoauth2"` or `"oauthbearer"` (Microsoft 365 and Google turned password
login off) the login is SASL with an OAuth2 access token of `[oauth.NAME]` (oauth.py),
and no password is read.  A token the smarthost refuses (535) is refreshed once; a
refresh token the provider refused is a `TransportFailure` whose text says which
command signs in again, so /healthz tells the administrator what to do.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr

from .config import OAuth, Outgoing, read_secret

log = logging.getLogger(__name__)

# Seconds for each network operation: a blackholed smarthost costs this once per pass.
TIMEOUT = 30
SMTP_OK = 250
SMTP_CLOSING = 421  # service not available, closing the channel (RFC 5321 3.8)
SMTP_FIRST_PERMANENT = 500  # 5yz: permanent negative completion (RFC 5321 4.2.1)
SMTP_AUTH_INVALID = 535  # authentication credentials invalid (RFC 4954 6)


class TransportFailure(Exception):
    """The smarthost cannot be used at all (connect, TLS, AUTH): no row's fault."""


class TemporaryFailure(Exception):
    """Try this row again later (4xx, connection lost mid-transaction)."""


class PermanentFailure(Exception):
    """Never try this row again (5xx, refused recipient, unsendable address)."""


class ChannelClosed(TemporaryFailure):
    """The smarthost closed the connection during the transaction (421, or hung up)."""


@dataclass
class Outage:
    """The transport as a whole failing: kept on the transport across passes."""

    failures: int = 0  # transport failures in a row
    retry_at: datetime | None = None  # not tried again before this
    error: str | None = None


def tls_context(cfg: Outgoing) -> ssl.SSLContext:
    """Certificate and host name checked, unless `tls_verify = false` says otherwise."""
    context = ssl.create_default_context(cafile=cfg.tls_ca_file or None)
    if not cfg.tls_verify:  # an explicit, documented opt-out (a self-signed relay on loopback)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply(exc.smtp_code, exc.smtp_error)
    return f"{type(exc).__name__}: {exc}"


def _reply(code: int, text: bytes | str) -> str:
    """`535 5.7.8 Authentication credentials invalid`, as the smarthost said it."""
    return f"{code} {text.decode('utf-8', 'replace') if isinstance(text, bytes) else text}"


class SmtpTransport:
    """A smarthost over one kept-open connection."""

    idempotent = False  # each row is marked sent right after its hand-over

    def __init__(self, cfg: Outgoing, oauth: OAuth | None = None) -> None:
        """`oauth`: the `[oauth.NAME]` that `cfg.oauth` names, for auth = xoauth2 | oauthbearer."""
        self.cfg = cfg
        self.oauth = oauth
        # With OAuth2 the access token stands in for the password: none is read.
        self.password = (
            read_secret(cfg.password_env, cfg.password_file, "[outgoing]") if cfg.auth == "password" else ""
        )
        self.conn: smtplib.SMTP | None = None
        self.outage = Outage()

    def send(self, row, data: bytes) -> None:
        reused = self.conn is not None
        try:
            self._transaction(self._connect(), row, data)
        except ChannelClosed:
            if not reused:
                raise
            # A kept-open connection that the smarthost closed while idle (Postfix says
            # "421 4.4.2 timeout exceeded" after 5 minutes and hangs up; the 421 is read
            # as the answer to MAIL) is not this row's fault: one try on a fresh one.
            self.send(row, data)

    def _transaction(self, conn: smtplib.SMTP, row, data: bytes) -> None:
        """MAIL, RCPT, DATA for one row; on any failure the connection is left clean."""
        options = _options(conn, row)
        try:
            conn.sendmail(row.mail_from, [row.to_addr], data, mail_options=options)
        except smtplib.SMTPServerDisconnected as exc:
            self.close()
            raise ChannelClosed(describe(exc)) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            self._closed_or_reset(code)
            raise _failure(code)(_reply(code, text)) from exc
        except smtplib.SMTPResponseException as exc:
            self._closed_or_reset(exc.smtp_code)
            raise _failure(exc.smtp_code)(describe(exc)) from exc
        except BaseException as exc:
            # Anything else left the transaction half done (the UnicodeEncodeError of an
            # address smtplib cannot encode, a timeout): RSET or reconnect before the next.
            self._reset()
            if isinstance(exc, (OSError, smtplib.SMTPException)):
                raise TemporaryFailure(describe(exc)) from exc
            raise

    def _closed_or_reset(self, code: int) -> None:
        if code == SMTP_CLOSING:
            self.close()
        else:
            self._reset()

    def _connect(self) -> smtplib.SMTP:
        if self.conn is not None:
            return self.conn
        cfg = self.cfg
        try:
            context = tls_context(cfg) if cfg.starttls or cfg.implicit_tls else None
            # smtplib closes its socket itself when the connect, handshake or greeting fails.
            conn: smtplib.SMTP
            if cfg.implicit_tls:  # port 465 (RFC 8314)
                conn = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=TIMEOUT, context=context)
            else:
                conn = smtplib.SMTP(cfg.host, cfg.port, timeout=TIMEOUT)
        except Exception as exc:  # refused, timed out, 421, a certificate (ssl.SSLError)
            raise TransportFailure(describe(exc)) from exc
        try:
            conn.ehlo_or_helo_if_needed()
            if cfg.starttls:
                conn.starttls(context=context)
                conn.ehlo_or_helo_if_needed()  # the extensions offered under TLS
            if cfg.auth != "password":
                self._oauth_login(conn)
            elif cfg.username:
                conn.login(cfg.username, self.password)
        except TransportFailure:
            conn.close()
            raise
        except Exception as exc:  # STARTTLS refused or unverified, 535, a password smtplib cannot send
            conn.close()  # every failure path closes the socket
            raise TransportFailure(describe(exc)) from exc
        log.info("smarthost %s:%d connected%s", cfg.host, cfg.port, " (TLS)" if context else "")
        self.conn = conn
        return conn

    def _oauth_login(self, conn: smtplib.SMTP) -> None:
        """AUTH XOAUTH2 or OAUTHBEARER; a refused token is refreshed once (it may have been
        revoked, or have expired before the time our cache has for it)."""
        from . import oauth  # here: authlib is loaded only where OAuth2 is used

        cfg = self.cfg
        mechanism = cfg.auth.upper()
        offered = conn.esmtp_features.get("auth", "").upper().split()
        if mechanism not in offered:
            raise TransportFailure(
                f"the smarthost does not offer AUTH {mechanism} "
                f"(it offers: {' '.join(offered) or 'no AUTH at all'})"
            )
        if not cfg.username:
            raise TransportFailure(f"[outgoing] username: required with auth = {cfg.auth!r}")
        if self.oauth is None:  # outbox.transport_for passes config.oauth.get(cfg.oauth)
            raise TransportFailure(f"[outgoing] auth = {cfg.auth!r} needs [oauth.{cfg.oauth}]")
        tokens = oauth.source(self.oauth, cfg.oauth)

        def initial(token: str) -> str:
            if cfg.auth == "oauthbearer":
                return oauth.oauthbearer(cfg.username, cfg.host, cfg.port, token)
            return oauth.xoauth2(cfg.username, token)

        try:
            try:
                self._authenticate(conn, initial(tokens.token()))
                return
            except smtplib.SMTPAuthenticationError as exc:
                if exc.smtp_code != SMTP_AUTH_INVALID:
                    raise
                log.info("smarthost: the access token was refused (%s); refreshing it", describe(exc))
                tokens.invalidate()
            try:
                self._authenticate(conn, initial(tokens.token()))
            except smtplib.SMTPAuthenticationError as exc:
                raise TransportFailure(
                    f"{describe(exc)}: the smarthost refused a newly refreshed access token of "
                    f"[oauth.{cfg.oauth}]: check that the app registration may send mail (its "
                    f"scopes) and that the token is {cfg.username}'s"
                ) from exc
        except oauth.OAuthError as exc:  # no token at all: its text says what to run
            raise TransportFailure(str(exc)) from exc

    def _authenticate(self, conn: smtplib.SMTP, initial: str) -> None:
        """One AUTH exchange with the initial response (RFC 4954 4); smtplib base64s it."""
        # A refused token comes back as a 334 error challenge (JSON).  RFC 7628 3.2.3:
        # OAUTHBEARER answers it with a single %x01; Google's XOAUTH2 document: an
        # empty line.  The server then fails the exchange with 535.
        after_error = "\x01" if self.cfg.auth == "oauthbearer" else ""

        def respond(challenge: bytes | None = None) -> str:
            return initial if challenge is None else after_error

        conn.auth(self.cfg.auth.upper(), respond, initial_response_ok=True)

    def _reset(self) -> None:
        """RSET after a failed transaction; a connection that cannot take it is closed."""
        if self.conn is None:
            return
        try:
            code, _ = self.conn.rset()
        except (OSError, smtplib.SMTPException):
            code = 0
        if code != SMTP_OK:
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.quit()
            except (smtplib.SMTPException, OSError):
                self.conn.close()
            self.conn = None


def _options(conn: smtplib.SMTP, row) -> list[str]:
    """SMTPUTF8 when an envelope address is not ASCII (RFC 6531), or a permanent failure."""
    if row.mail_from.isascii() and parseaddr(row.to_addr)[1].isascii():
        return []
    if not conn.has_extn("smtputf8"):
        raise PermanentFailure(
            f"{row.to_addr}: the address is not ASCII and the smarthost does not offer SMTPUTF8 (RFC 6531)"
        )
    return ["SMTPUTF8"]  # smtplib then sends the addresses raw, in UTF-8


def _failure(code: int) -> type[Exception]:
    if code == SMTP_CLOSING:
        return ChannelClosed
    return PermanentFailure if code >= SMTP_FIRST_PERMANENT else TemporaryFailure
