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

The login itself has two flows, both ending in `save_login`: the device code
(RFC 8628: `device_login` shows a code that the user enters on any browser, then
polls) and the authorization code with PKCE (RFC 7636) and a loopback redirect
(RFC 8252: `browser_start` makes the address to open, `browser_finish` takes the
address the browser was sent back to).  The command line (cli/oauth.py) prints,
listens and reads; this module speaks to the provider.

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
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from authlib.common.security import generate_token  # type: ignore[import-untyped]
from authlib.integrations.base_client.errors import OAuthError as _LibError  # type: ignore[import-untyped]
from authlib.integrations.requests_client import OAuth2Session  # type: ignore[import-untyped]

from .clock import Clock, SystemClock
from .config import OAuth, read_secret
from .errors import MailticketError

log = logging.getLogger(__name__)

MARGIN = 300.0  # seconds before expiry at which a token is refreshed
TIMEOUT = 30.0  # seconds for each request to the provider
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 3.4
SLOW_DOWN = 5  # seconds added to the poll interval on each `slow_down` (RFC 8628 3.5)


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


def login_hint(name: str) -> str:
    return f"run `mailticket oauth login {name}` to sign in again"


def client_secret(cfg: OAuth, name: str) -> str | None:
    secret = read_secret(cfg.client_secret_env, cfg.client_secret_file, f"[oauth.{name}] client secret")
    return secret or None


def session(cfg: OAuth, name: str, **kwargs) -> OAuth2Session:
    """An authlib session for this app registration (client id, and secret if any)."""
    secret = client_secret(cfg, name)
    return OAuth2Session(
        cfg.client_id,
        secret,
        scope=" ".join(endpoints(cfg).scopes),
        token_endpoint_auth_method="client_secret_post" if secret else "none",
        **kwargs,
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


def _token_request(name: str, url: str, call: Callable[[], dict]) -> dict:
    """One request to the token endpoint; its transport failures as OAuthError.

    The provider's own refusals (`error` in the answer) stay authlib's errors, for
    the caller to tell apart.  No message here ever carries a token: requests'
    errors name the URL, never the form that was posted.
    """
    try:
        return call()
    except OSError as exc:  # requests' connection, timeout and HTTP 5xx errors are OSErrors
        response = getattr(exc, "response", None)
        if response is not None:
            raise OAuthError(
                f"[oauth.{name}]: the token endpoint {url} failed (HTTP {response.status_code}); "
                f"try again later"
            ) from None
        raise OAuthError(f"[oauth.{name}]: cannot reach the token endpoint {url}: {exc}") from None
    except ValueError:  # authlib: the answer is not a JSON object (a proxy's error page)
        raise OAuthError(f"[oauth.{name}]: the token endpoint {url} did not answer with JSON") from None


class TokenSource:
    """Access tokens for one `[oauth.NAME]`; safe to share between threads.

    `clock` decides when a token is due for refresh, so tests travel in time."""

    def __init__(self, cfg: OAuth, name: str, clock: Clock | None = None) -> None:
        self.cfg, self.name = cfg, name
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._access: str | None = None
        self._expires_at = 0.0

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def token(self) -> str:
        """A valid access token, refreshed first when it expires within MARGIN."""
        with self._lock:
            if self._access is None or self._now() >= self._expires_at - MARGIN:
                self._refresh()
            assert self._access is not None
            return self._access

    def invalidate(self) -> None:
        """The server refused the last token: the next `token()` refreshes."""
        with self._lock:
            self._access = None

    def valid_for(self) -> float:
        """Seconds the cached access token has left (0 when there is none)."""
        with self._lock:
            return max(0.0, self._expires_at - self._now()) if self._access else 0.0

    def _refresh(self) -> None:
        # Under the file's lock: the daemon's processes (the IMAP pollers', the outbox's)
        # refresh with the same token, and a provider that rotates refresh tokens (a
        # refresh hands out a new one) must see each of them read the newest.
        with _file_lock(self.cfg.token_file):
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        cfg, path, name = self.cfg, self.cfg.token_file, self.name
        try:
            stored = read_token_file(path)
        except OAuthError as exc:
            raise OAuthError(f"[oauth.{name}]: {exc}: {login_hint(name)}") from None
        url = endpoints(cfg).token_url
        try:
            with session(cfg, name) as s:
                got = _token_request(
                    name,
                    url,
                    lambda: s.refresh_token(url, refresh_token=stored["refresh_token"], timeout=TIMEOUT),
                )
        except _LibError as exc:
            if exc.error in ("invalid_grant", "invalid_client", "unauthorized_client"):
                raise OAuthError(
                    f"[oauth.{name}]: the provider refused the refresh token in {path} "
                    f"({exc.error}: {exc.description or 'no detail'}): {login_hint(name)}"
                ) from None
            raise OAuthError(f"[oauth.{name}]: token refresh failed: {exc.error}") from None
        if not got.get("access_token"):
            raise OAuthError(f"[oauth.{name}]: the token endpoint {url} answered without an access token")
        if got.get("refresh_token") and got["refresh_token"] != stored["refresh_token"]:
            try:  # rotated: the old one no longer works, so the new one must be kept
                write_token_file(path, {**stored, "refresh_token": got["refresh_token"]})
            except OSError as exc:
                raise OAuthError(
                    f"[oauth.{name}]: cannot keep the new refresh token in {path}: {exc}: "
                    f"fix that, then {login_hint(name)}"
                ) from None
        self._access = got["access_token"]
        self._expires_at = self._now() + float(got.get("expires_in") or 3600)
        log.info("oauth %s: access token refreshed (valid %d s)", name, int(self._expires_at - self._now()))


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


# --- signing in: `mailticket oauth login` ----------------------------------------------


def save_login(cfg: OAuth, got: dict, clock: Clock) -> dict:
    """Keep what a login got in the token file (0600, whole or not at all); the record
    written, which holds the refresh token and nothing of the access token."""
    if not got.get("refresh_token"):
        hint = {
            "microsoft": 'the scopes need "offline_access"',
            "google": "the consent screen must be shown again: remove the app's access in the "
            "Google account's security page and sign in again",
        }.get(cfg.provider, "ask the provider for offline access")
        raise OAuthError(f"the provider signed you in but gave no refresh token ({hint}); nothing was saved")
    record = {
        "refresh_token": got["refresh_token"],
        "provider": cfg.provider,
        "client_id": cfg.client_id,
        "scope": got.get("scope") or " ".join(endpoints(cfg).scopes),
        "obtained_at": clock.now().isoformat(timespec="seconds"),
    }
    if cfg.provider == "microsoft":
        record["tenant"] = cfg.tenant
    # Under the lock the daemon refreshes under, so it never reads half a login.
    with _file_lock(cfg.token_file):
        write_token_file(cfg.token_file, record)
    return record


@dataclass(frozen=True)
class DeviceCode:
    """What the user needs to sign in on another device (RFC 8628 3.2)."""

    verification_uri: str
    user_code: str
    message: str  # the provider's own sentence (Microsoft sends one), or ""
    expires_in: int
    interval: int


def device_login(
    cfg: OAuth,
    name: str,
    show: Callable[[DeviceCode], None],
    clock: Clock | None = None,
    wait: Callable[[float], object] = time.sleep,
) -> dict:
    """The device code flow (RFC 8628): ask for a code, `show` it, poll until the user
    has signed in; the token endpoint's answer.

    `wait(seconds)` is the pause between polls and `clock` tells when the code
    expired: a test passes a wait that moves a FrozenClock, and polls at full speed.
    Ctrl-C during a wait stops the login (KeyboardInterrupt)."""
    clock = clock or SystemClock()
    ep = endpoints(cfg)
    if not ep.device_url:
        raise OAuthError(f'[oauth.{name}]: no device_url: a "custom" provider must name its device endpoint')
    with session(cfg, name) as s:
        answer = _device_code(s, name, ep.device_url, ep.scopes)
        code = DeviceCode(
            # Google's answer says verification_url, RFC 8628's says verification_uri.
            verification_uri=answer.get("verification_uri") or answer.get("verification_url") or "",
            user_code=str(answer.get("user_code") or ""),
            message=str(answer.get("message") or ""),
            expires_in=int(answer.get("expires_in") or 900),
            interval=int(answer.get("interval") or 5),
        )
        show(code)
        return _poll(s, name, ep.token_url, answer["device_code"], code, clock, wait)


def _device_code(s: OAuth2Session, name: str, url: str, scopes: tuple[str, ...]) -> dict:
    """The device endpoint's answer (RFC 8628 3.2): device code, user code, where to go."""
    # The device endpoint authenticates the client as the token endpoint does (RFC 8628
    # 3.1): authlib's client auth adds client_id (and the secret, if there is one).
    try:
        resp = s.post(
            url,
            data={"scope": " ".join(scopes)},
            auth=s.client_auth(s.token_endpoint_auth_method),
            withhold_token=True,
            timeout=TIMEOUT,
        )
        answer = resp.json()
    except OSError as exc:
        raise OAuthError(f"[oauth.{name}]: cannot reach the device endpoint {url}: {exc}") from None
    except ValueError:
        raise OAuthError(
            f"[oauth.{name}]: the device endpoint {url} did not answer with JSON (HTTP {resp.status_code})"
        ) from None
    if not isinstance(answer, dict) or "error" in answer or not answer.get("device_code"):
        answer = answer if isinstance(answer, dict) else {}
        raise OAuthError(
            f"[oauth.{name}]: the device endpoint refused: {answer.get('error', resp.status_code)}: "
            f"{answer.get('error_description') or 'no detail'}"
        )
    return answer


def _poll(
    s: OAuth2Session,
    name: str,
    url: str,
    device_code: str,
    code: DeviceCode,
    clock: Clock,
    wait: Callable[[float], object],
) -> dict:
    """Ask the token endpoint every `interval` seconds until the user signed in (RFC 8628 3.4, 3.5)."""
    deadline = clock.now().timestamp() + code.expires_in
    interval = float(code.interval)
    expired = OAuthError(
        f"[oauth.{name}]: the code expired before the sign-in was done; nothing was saved: "
        "run the login again"
    )
    while True:
        wait(interval)
        if clock.now().timestamp() >= deadline:
            raise expired
        try:
            return s.fetch_token(
                url,
                grant_type=DEVICE_GRANT,
                device_code=device_code,
                scope=None,  # not part of this grant (RFC 8628 3.4)
                timeout=TIMEOUT,
            )
        except _LibError as exc:
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":
                interval += SLOW_DOWN
                continue
            if exc.error == "access_denied":
                raise OAuthError(
                    f"[oauth.{name}]: the sign-in was declined at the provider; nothing was saved"
                ) from None
            if exc.error == "expired_token":
                raise expired from None
            raise OAuthError(
                f"[oauth.{name}]: the token endpoint refused: {exc.error}: {exc.description or 'no detail'}"
            ) from None
        except OSError:
            # A network blip while the user is signing in: wait longer and ask again
            # (RFC 8628 3.5 asks for a back-off on connection timeouts).
            interval *= 2
        except ValueError:
            raise OAuthError(f"[oauth.{name}]: the token endpoint {url} did not answer with JSON") from None


class NotThisLogin(OAuthError):
    """An address that is not this login's answer (no code, another state): the login
    goes on waiting for the right one."""


@dataclass(frozen=True)
class BrowserLogin:
    """An authorization request in progress: the address to open and what checks the answer."""

    url: str
    state: str
    verifier: str  # the PKCE code verifier (RFC 7636), never sent before the code exchange
    redirect_uri: str


def browser_start(cfg: OAuth, name: str, redirect_uri: str) -> BrowserLogin:
    """The address at which the user signs in; the provider then sends the browser to
    `redirect_uri` (a loopback address, RFC 8252 7.3) with a code and our state."""
    ep = endpoints(cfg)
    if not ep.auth_url:
        raise OAuthError(
            f'[oauth.{name}]: no auth_url: a "custom" provider must name its authorization endpoint'
        )
    verifier = generate_token(64)
    # Google hands out a refresh token only for offline access, and again only when
    # the consent screen is shown; Microsoft's comes with the offline_access scope.
    extra = {"access_type": "offline", "prompt": "consent"} if cfg.provider == "google" else {}
    with session(cfg, name, code_challenge_method="S256") as s:
        url, state = s.create_authorization_url(
            ep.auth_url, redirect_uri=redirect_uri, code_verifier=verifier, **extra
        )
    return BrowserLogin(url, state, verifier, redirect_uri)


def browser_finish(cfg: OAuth, name: str, login: BrowserLogin, redirected: str) -> dict:
    """Exchange the code of the address the browser was sent back to (the listener's
    request, or what the user pasted); the token endpoint's answer.  NotThisLogin,
    before any request, when the address is not the answer to `login`."""
    text = redirected.strip().strip("'\"<>")
    query = urllib.parse.urlsplit(text).query if "?" in text else text
    params = dict(urllib.parse.parse_qsl(query))
    if "code" not in params and "error" not in params:
        raise NotThisLogin("that is not the address of a sign-in's answer (it has no code): paste it whole")
    if params.get("state") != login.state:
        # RFC 6749 10.12: the answer to another request (an old tab, or someone else's)
        # is refused before its code goes anywhere.
        raise NotThisLogin(
            "refused an answer whose state does not match this login (an older sign-in, or not ours)"
        )
    if "error" in params:
        raise OAuthError(
            f"[oauth.{name}]: the provider refused the sign-in: {params['error']}: "
            f"{params.get('error_description') or 'no detail'}; nothing was saved"
        )
    url = endpoints(cfg).token_url
    try:
        with session(cfg, name, code_challenge_method="S256") as s:
            return _token_request(
                name,
                url,
                lambda: s.fetch_token(
                    url,
                    grant_type="authorization_code",
                    code=params["code"],
                    code_verifier=login.verifier,
                    redirect_uri=login.redirect_uri,
                    timeout=TIMEOUT,
                ),
            )
    except _LibError as exc:
        raise OAuthError(
            f"[oauth.{name}]: the token endpoint refused the code: {exc.error}: "
            f"{exc.description or 'no detail'}; nothing was saved"
        ) from None
