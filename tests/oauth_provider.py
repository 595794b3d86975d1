"""A loopback OAuth2 provider for the tests, standing in for Microsoft's or Google's.

It speaks the endpoints mailticket and Dovecot use, over real HTTP on 127.0.0.1:

- `/token` (RFC 6749): grants `refresh_token`, `authorization_code` and the device
  code (`urn:ietf:params:oauth:grant-type:device_code`, RFC 8628 3.4); errors as JSON
  with `error` (`invalid_grant`, `authorization_pending`, `slow_down`, ...).
- `/device` (RFC 8628 3.1): a device code, a user code and the verification URI.
- `/authorize`: where a browser would go (the tests call `authorize` instead).
- `/introspect` (RFC 7662): what Dovecot's `oauth2` passdb asks about a token, as a
  form POST (`token=...`) or a GET with the token in the query or as a bearer header.

The test drives it: `grant(user)` issues a refresh token as a login would have,
`approve(user_code, user)` is the user entering the code, `revoke(...)` and
`expire_access_tokens()` are the provider's side of revocation and expiry.  Every
request is recorded in `requests` (path and form), so a test can count refreshes.

For the login flows: `slow_down(user_code)` makes the next polls answer `slow_down`,
`expire_device(user_code)` ends a device code early, `device_expires_in` is the
lifetime a new device code announces, and `sign_in(url, user)` is the browser's
part of the authorization code flow: it reads the authorization URL, remembers the
PKCE challenge (RFC 7636) that `/token` then checks, and returns the address the
browser would be sent back to.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass
class Device:
    user_code: str
    client_id: str
    scope: str
    user: str | None = None  # set once approved
    denied: bool = False
    slow_downs: int = 0  # this many polls answer `slow_down` first


@dataclass
class Provider:
    lifetime: int = 3600  # seconds an access token lives
    rotate: bool = False  # a refresh hands out a new refresh token (Microsoft does)
    client_id: str = "mailticket-test"
    client_secret: str = ""  # non-empty: /token requires it
    access: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (user, expires)
    refresh: dict[str, str] = field(default_factory=dict)  # refresh token -> user
    devices: dict[str, Device] = field(default_factory=dict)  # device code -> state
    codes: dict[str, str] = field(default_factory=dict)  # authorization code -> user
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    device_expires_in: int = 900  # seconds a new device code announces it is valid
    # authorization code -> (PKCE S256 challenge, redirect_uri), for codes that `sign_in` issued
    pkce: dict[str, tuple[str, str]] = field(default_factory=dict)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)  # what `sign_in` read

    # --- the test's side -------------------------------------------------------------

    def start(self) -> Provider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                form = dict(urllib.parse.parse_qsl(url.query))
                bearer = self.headers.get("Authorization", "")
                if bearer.lower().startswith("bearer "):
                    form.setdefault("token", bearer[7:].strip())
                self._answer(*provider.handle(url.path, form, self.headers.get("Authorization", "")))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8")
                form = dict(urllib.parse.parse_qsl(body))
                self._answer(
                    *provider.handle(self.path.split("?")[0], form, self.headers.get("Authorization", ""))
                )

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="oauth-provider", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def reset(self) -> None:
        """Forget every token, code, device and request and take the default settings
        back, keeping the server: one provider serves a whole test module."""
        fresh = Provider()
        with self.lock:
            for f in fields(self):
                if f.name not in ("lock", "server"):
                    setattr(self, f.name, getattr(fresh, f.name))

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    token_url = property(lambda self: self.url + "/token")
    device_url = property(lambda self: self.url + "/device")
    auth_url = property(lambda self: self.url + "/authorize")
    introspect_url = property(lambda self: self.url + "/introspect")

    def grant(self, user: str) -> str:
        """A refresh token for `user`, as a completed login would have stored."""
        token = "rt-" + secrets.token_urlsafe(16)
        with self.lock:
            self.refresh[token] = user
        return token

    def issue_access(self, user: str, lifetime: int | None = None) -> str:
        token = "at-" + secrets.token_urlsafe(16)
        with self.lock:
            self.access[token] = (user, time.time() + (self.lifetime if lifetime is None else lifetime))
        return token

    def approve(self, user_code: str, user: str) -> None:
        """The user entered `user_code` at the verification URI and signed in."""
        with self.lock:
            device = next(d for d in self.devices.values() if d.user_code == user_code)
            device.user = user

    def deny(self, user_code: str) -> None:
        with self.lock:
            next(d for d in self.devices.values() if d.user_code == user_code).denied = True

    def authorize(self, user: str) -> str:
        """An authorization code for `user`, as the redirect after a browser login carries."""
        code = "code-" + secrets.token_urlsafe(8)
        with self.lock:
            self.codes[code] = user
        return code

    def slow_down(self, user_code: str, times: int = 1) -> None:
        """The next `times` polls for this code answer `slow_down` (RFC 8628 3.5)."""
        with self.lock:
            next(d for d in self.devices.values() if d.user_code == user_code).slow_downs += times

    def expire_device(self, user_code: str) -> None:
        """The device code is no longer valid: polls answer `expired_token`."""
        with self.lock:
            code = next(c for c, d in self.devices.items() if d.user_code == user_code)
            del self.devices[code]

    def sign_in(self, authorization_url: str, user: str, state: str | None = None) -> str:
        """The browser's part: `user` signs in at `authorization_url`; the address the
        provider sends the browser back to (with `state`, when given, instead of the
        request's own: a forged or stale answer)."""
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorization_url).query))
        assert params.get("client_id") == self.client_id, params
        assert params.get("response_type") == "code", params
        code = self.authorize(user)
        with self.lock:
            self.authorize_requests.append(params)
            if params.get("code_challenge_method") == "S256":
                self.pkce[code] = (params["code_challenge"], params.get("redirect_uri", ""))
        back = {"code": code, "state": params.get("state", "") if state is None else state}
        return params["redirect_uri"] + "?" + urllib.parse.urlencode(back)

    def revoke(self, refresh_token: str | None = None) -> None:
        """Revoke one refresh token (or all) and every access token of its user."""
        with self.lock:
            users = {self.refresh[refresh_token]} if refresh_token else set(self.refresh.values())
            for t in [t for t, u in self.refresh.items() if u in users]:
                del self.refresh[t]
            for t in [t for t, (u, _) in self.access.items() if u in users]:
                del self.access[t]

    def expire_access_tokens(self) -> None:
        """Every access token issued so far stops working now (the server says so)."""
        with self.lock:
            self.access = {t: (u, 0.0) for t, (u, _) in self.access.items()}

    def count(self, path: str, **match: str) -> int:
        """How many requests to `path` had these form values."""
        with self.lock:
            return sum(
                1 for p, f in self.requests if p == path and all(f.get(k) == v for k, v in match.items())
            )

    # --- the endpoints ---------------------------------------------------------------

    def handle(self, path: str, form: dict[str, str], authorization: str = "") -> tuple[int, dict]:
        with self.lock:
            self.requests.append((path, dict(form)))
            if path == "/token":
                return self._token(form, authorization)
            if path == "/device":
                return self._device(form)
            if path == "/introspect":
                return self._introspect(form)
            return 404, {"error": "not_found"}

    def _client_ok(self, form: dict[str, str], authorization: str) -> bool:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if authorization.lower().startswith("basic "):
            import base64

            raw = base64.b64decode(authorization[6:]).decode()
            client_id, _, secret = (urllib.parse.unquote(x) for x in raw.partition(":"))
        return client_id == self.client_id and (not self.client_secret or secret == self.client_secret)

    def _tokens(self, user: str, refresh_token: str | None) -> tuple[int, dict]:
        token = "at-" + secrets.token_urlsafe(16)
        self.access[token] = (user, time.time() + self.lifetime)
        out = {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime, "scope": "mail"}
        if refresh_token is None or self.rotate:
            if refresh_token is not None:
                del self.refresh[refresh_token]
            new = "rt-" + secrets.token_urlsafe(16)
            self.refresh[new] = user
            out["refresh_token"] = new
        return 200, out

    def _token(self, form: dict[str, str], authorization: str) -> tuple[int, dict]:
        if not self._client_ok(form, authorization):
            return 401, {"error": "invalid_client", "error_description": "unknown client or bad secret"}
        grant = form.get("grant_type")
        if grant == "refresh_token":
            rt = form.get("refresh_token", "")
            if rt not in self.refresh:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "AADSTS70000: the refresh token was revoked or has expired",
                }
            return self._tokens(self.refresh[rt], rt)
        if grant == DEVICE_GRANT:
            device = self.devices.get(form.get("device_code", ""))
            if device is None:
                return 400, {"error": "expired_token"}
            if device.denied:
                return 400, {"error": "access_denied"}
            if device.slow_downs > 0:
                device.slow_downs -= 1
                return 400, {"error": "slow_down"}
            if device.user is None:
                return 400, {"error": "authorization_pending"}
            del self.devices[form["device_code"]]
            return self._tokens(device.user, None)
        if grant == "authorization_code":
            problem = self._pkce_problem(form)
            if problem:
                return 400, {"error": "invalid_grant", "error_description": problem}
            user = self.codes.pop(form.get("code", ""), None)
            if user is None:
                return 400, {"error": "invalid_grant", "error_description": "unknown or used code"}
            return self._tokens(user, None)
        return 400, {"error": "unsupported_grant_type"}

    def _device(self, form: dict[str, str]) -> tuple[int, dict]:
        if form.get("client_id") != self.client_id:
            return 400, {"error": "invalid_client"}
        code = "dc-" + secrets.token_urlsafe(16)
        user_code = secrets.token_hex(4).upper()
        self.devices[code] = Device(user_code, form["client_id"], form.get("scope", ""))
        return 200, {
            "device_code": code,
            "user_code": user_code,
            "verification_uri": self.url + "/devicelogin",
            "expires_in": self.device_expires_in,
            "interval": 1,
            "message": f"To sign in, open {self.url}/devicelogin and enter the code {user_code}.",
        }

    def _pkce_problem(self, form: dict[str, str]) -> str:
        """Why a code that `sign_in` issued cannot be exchanged (RFC 7636 4.6), or ""."""
        challenge, redirect_uri = self.pkce.pop(form.get("code", ""), ("", ""))
        if not challenge:
            return ""
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != challenge:
            self.codes.pop(form.get("code", ""), None)
            return "PKCE verification failed"
        if form.get("redirect_uri") != redirect_uri:
            self.codes.pop(form.get("code", ""), None)
            return "redirect_uri differs from the authorization request's"
        return ""

    def _introspect(self, form: dict[str, str]) -> tuple[int, dict]:
        found = self.access.get(form.get("token", ""))
        if found is None or found[1] < time.time():
            return 200, {"active": False}
        user, expires = found
        return 200, {"active": True, "username": user, "sub": user, "exp": int(expires), "scope": "mail"}
