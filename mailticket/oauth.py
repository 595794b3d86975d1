"""OAuth2 for the mailboxes: access tokens for SASL XOAUTH2 / OAUTHBEARER (IMAP and SMTP).

Microsoft 365 and Google switched password login off for IMAP and SMTP; a mailbox
there signs in with a short-lived access token, obtained from a long-lived refresh
token.  `[oauth.NAME]` (config.py) says which provider and app registration; the
refresh token lives in its `token_file` (mode 0600), written by `mailticket oauth
login` and never in the config itself, nor in any log line.

`TokenSource` hands out access tokens: cached in memory, refreshed shortly before
they expire (`MARGIN`) and after a server rejected one (`invalidate`).  A refresh
token that the provider revoked (or that expired) raises `OAuthError` with what to
run, and the mailbox shows as failing in /healthz until a new login.

This is the only module that imports authlib.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from authlib.integrations.base_client.errors import OAuthError as _LibError  # type: ignore[import-untyped]
from authlib.integrations.requests_client import OAuth2Session  # type: ignore[import-untyped]

from .config import OAuth, read_secret
from .errors import MailticketError

log = logging.getLogger(__name__)

MARGIN = 300.0  # seconds before expiry at which a token is refreshed
TIMEOUT = 30.0  # seconds for each request to the provider


class OAuthError(MailticketError):
    """No access token can be had: the refresh token is missing, revoked or expired, or
    the provider refused the app.  The message says what to do."""


@dataclass(frozen=True)
class Endpoints:
    token_url: str
    device_url: str
    auth_url: str
    scopes: tuple[str, ...]


def endpoints(cfg: OAuth) -> Endpoints:
    """The provider's endpoints and default scopes, with the config's overrides."""
    if cfg.provider == "microsoft":
        base = f"https://login.microsoftonline.com/{cfg.tenant or 'common'}/oauth2/v2.0"
        preset = Endpoints(
            f"{base}/token",
            f"{base}/devicecode",
            f"{base}/authorize",
            (
                "https://outlook.office.com/IMAP.AccessAsUser.All",
                "https://outlook.office.com/SMTP.Send",
                "offline_access",
            ),
        )
    elif cfg.provider == "google":
        preset = Endpoints(
            "https://oauth2.googleapis.com/token",
            "https://oauth2.googleapis.com/device/code",
            "https://accounts.google.com/o/oauth2/v2/auth",
            ("https://mail.google.com/",),
        )
    else:
        preset = Endpoints("", "", "", ())
    return Endpoints(
        cfg.token_url or preset.token_url,
        cfg.device_url or preset.device_url,
        cfg.auth_url or preset.auth_url,
        cfg.scopes or preset.scopes,
    )


def client_secret(cfg: OAuth, name: str) -> str | None:
    secret = read_secret(cfg.client_secret_env, cfg.client_secret_file, f"[oauth.{name}] client secret")
    return secret or None


def session(cfg: OAuth, name: str) -> OAuth2Session:
    """An authlib session for this app registration (client id, and secret if any)."""
    secret = client_secret(cfg, name)
    return OAuth2Session(
        cfg.client_id,
        secret,
        scope=" ".join(endpoints(cfg).scopes),
        token_endpoint_auth_method="client_secret_post" if secret else "none",
    )


def read_token_file(path: str) -> dict:
    """The stored token: at least `refresh_token`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OAuthError(f"{path}: no refresh token yet") from None
    except (OSError, ValueError) as exc:
        raise OAuthError(f"{path}: cannot read the refresh token: {exc}") from None
    if not isinstance(data, dict) or not data.get("refresh_token"):
        raise OAuthError(f"{path}: holds no refresh_token")
    return data


def write_token_file(path: str, data: dict) -> None:
    """Write the token file whole or not at all, readable by its owner only."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class TokenSource:
    """Access tokens for one `[oauth.NAME]`; safe to share between threads."""

    def __init__(self, cfg: OAuth, name: str) -> None:
        self.cfg, self.name = cfg, name
        self._lock = threading.Lock()
        self._access: str | None = None
        self._expires_at = 0.0

    def token(self) -> str:
        """A valid access token, refreshed first when it expires within MARGIN."""
        with self._lock:
            if self._access is None or time.time() >= self._expires_at - MARGIN:
                self._refresh()
            assert self._access is not None
            return self._access

    def invalidate(self) -> None:
        """The server refused the last token: the next `token()` refreshes."""
        with self._lock:
            self._access = None

    def _refresh(self) -> None:
        # Under the file's lock: the daemon's processes (the IMAP pollers', the outbox's)
        # refresh with the same token, and a provider that rotates refresh tokens (a
        # refresh hands out a new one) must see each of them read the newest.
        with _file_lock(self.cfg.token_file):
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        cfg, path = self.cfg, self.cfg.token_file
        stored = read_token_file(path)
        login = f"run `mailticket oauth login {self.name}` to sign in again"
        try:
            got = session(cfg, self.name).refresh_token(
                endpoints(cfg).token_url, refresh_token=stored["refresh_token"], timeout=TIMEOUT
            )
        except _LibError as exc:
            if exc.error in ("invalid_grant", "invalid_client", "unauthorized_client"):
                raise OAuthError(
                    f"[oauth.{self.name}]: the provider refused the refresh token in {path} "
                    f"({exc.error}: {exc.description or 'no detail'}): {login}"
                ) from None
            raise OAuthError(f"[oauth.{self.name}]: token refresh failed: {exc.error}") from None
        except OSError as exc:  # requests' connection errors are OSErrors
            raise OAuthError(f"[oauth.{self.name}]: cannot reach the token endpoint: {exc}") from None
        if got.get("refresh_token") and got["refresh_token"] != stored["refresh_token"]:
            write_token_file(path, {**stored, "refresh_token": got["refresh_token"]})  # rotated
        self._access = got["access_token"]
        self._expires_at = time.time() + float(got.get("expires_in") or 3600)
        log.info(
            "oauth %s: access token refreshed (valid %d s)", self.name, int(self._expires_at - time.time())
        )


_sources: dict[tuple[str, OAuth], TokenSource] = {}
_sources_lock = threading.Lock()


def source(cfg: OAuth, name: str) -> TokenSource:
    """The process's one TokenSource for `[oauth.NAME]`: mailboxes that share it share tokens."""
    with _sources_lock:
        key = (name, cfg)
        if key not in _sources:
            _sources[key] = TokenSource(cfg, name)
        return _sources[key]


def xoauth2(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response, unencoded (the protocol libraries base64 it)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def oauthbearer(user: str, host: str, port: int, token: str) -> str:
    """The SASL OAUTHBEARER initial response (RFC 7628 3.1), unencoded."""
    return f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")
