"""`mailticket oauth login|status`: sign a mailbox in at Microsoft 365, Google or another
OAuth2 provider, and see which tokens the mailboxes use and whether they still work.

`login` keeps the refresh token in the `[oauth.NAME]` token_file (mode 0600); the
daemon turns it into access tokens (oauth.TokenSource).  No token is ever printed.
The provider is spoken to in oauth.py (the only module with authlib); here are the
options, the printing, and the browser flow's loopback listener (RFC 8252 7.3).
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import stat
import sys
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..clock import SystemClock
from ..config import DEFAULT_PATH, Config, OAuth
from ..errors import MailticketError
from .base import Ctx, emit_json, json_option, main

if TYPE_CHECKING:
    from ..oauth import DeviceCode

BROWSER_TIMEOUT = 600  # seconds the browser flow waits for the redirect
PROVIDERS = ("microsoft", "google", "custom")
GMAIL_SCOPE = "https://mail.google.com/"


class Stopped(click.ClickException):
    """Ctrl-C during a login: nothing was saved (exit 130, as a shell reports SIGINT)."""

    exit_code = 130


@main.group("oauth")
def oauth_group() -> None:
    """OAuth2 sign-in for Microsoft 365 and Google mailboxes: login, status."""


# --- login -------------------------------------------------------------------------------


def _config_or_none(obj: Ctx) -> Config | None:
    """The config when its file exists: a first login may come before the file does."""
    return obj.config if Path(obj.config_path or DEFAULT_PATH).is_file() else None


def _target(obj: Ctx, name: str | None, options: dict, token_file: str | None) -> tuple[str, OAuth, bool]:
    """The [oauth.NAME] to sign in (the config's table, the options over it), and whether
    the config has that table."""
    cfg = _config_or_none(obj)
    tables = cfg.oauth if cfg else {}
    where = cfg.path if cfg else (obj.config_path or DEFAULT_PATH)
    if not name:
        if len(tables) == 1:
            name = next(iter(tables))
        elif tables:
            raise click.UsageError(f"several [oauth.NAME] tables in {where}: name one of {', '.join(tables)}")
        elif options.get("provider"):
            name = options["provider"]
        else:
            if cfg is None:
                obj.config  # noqa: B018 - raises the usual "no configuration file" error
            raise click.UsageError(
                f"no [oauth.NAME] table in {where}: add one (README: OAuth2 mailboxes), "
                f"or give --provider and --client-id"
            )
    assert name
    base = tables.get(name)
    if base is None:
        if not options.get("provider") or not options.get("client_id"):
            raise click.UsageError(
                f"no [oauth.{name}] table in {where}: give --provider and --client-id (or add the table)"
            )
        base = OAuth()
    changes = {k: v for k, v in options.items() if v}
    if options.get("client_secret_env"):
        changes["client_secret_file"] = ""
    elif options.get("client_secret_file"):
        changes["client_secret_env"] = ""
        changes["client_secret_file"] = str(Path(options["client_secret_file"]).resolve())
    if token_file:
        changes["token_file"] = str(Path(token_file).resolve())
    elif not base.token_file:  # no table: var/oauth/NAME.json beside the config, as config.py does
        folder = Path(cfg.path).parent if cfg else Path(where).resolve().parent
        changes["token_file"] = str(folder / "var" / "oauth" / f"{name}.json")
    target = dataclasses.replace(base, **changes)
    if not target.client_id:
        raise click.UsageError(f"[oauth.{name}] has no client_id: give --client-id")
    if target.provider == "custom" and not target.token_url:
        raise click.UsageError('provider "custom" needs --token-url (and --device-url or --auth-url)')
    return name, target, cfg is not None and name in tables


def _table_snippet(name: str, cfg: OAuth) -> str:
    """The [oauth.NAME] table that gives the config what this login used."""
    lines = [f"[oauth.{name}]"]
    defaults = OAuth()
    for f in dataclasses.fields(OAuth):
        value = getattr(cfg, f.name)
        if f.name in ("provider", "client_id", "token_file") or (
            value and value != getattr(defaults, f.name)
        ):
            lines.append(f"{f.name} = {json.dumps(list(value) if isinstance(value, tuple) else value)}")
    return "\n".join(lines)


def _show_device_code(name: str, cfg: OAuth) -> Callable[[DeviceCode], None]:
    def show(code: DeviceCode) -> None:
        click.echo(f"To sign in [oauth.{name}] ({cfg.provider}), on any device with a browser:")
        click.echo(f"  open   {code.verification_uri}")
        click.echo(f"  code   {code.user_code}")
        if code.message:
            click.echo(code.message)
        minutes = max(1, code.expires_in // 60)
        click.echo(f"Waiting for the sign-in (the code is valid for {minutes} min; Ctrl-C stops) ...")

    return show


class _Listener(HTTPServer):
    """The loopback address the provider sends the browser back to; keeps what arrived."""

    timeout = 1.0

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Redirect)
        self.received: list[str] = []


class _Redirect(BaseHTTPRequestHandler):
    timeout = 10  # a client that connects and says nothing does not hold the login

    def log_message(self, *args) -> None:  # the request line carries the code: not on stderr
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(url.query)
        if url.path != "/" or not ("code" in params or "error" in params):
            self._page(404, "This is not the address of a sign-in answer.")  # /favicon.ico and the like
            return
        assert isinstance(self.server, _Listener)
        self.server.received.append(self.path)
        self._page(200, "mailticket got the answer of the sign-in; the terminal says whether it worked.")

    def _page(self, status: int, text: str) -> None:
        body = f"<!doctype html><title>mailticket</title><p>{text}</p>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Answers:
    """The addresses the browser was sent back to: requests to the listener, and lines
    pasted on stdin (a server without a browser), in the order they come.

    One thread and a selector, reading stdin's file descriptor directly: a reader
    thread blocked in sys.stdin would hold its lock when the process exits."""

    def __init__(self, server: _Listener, timeout: float) -> None:
        self.server = server
        self.deadline = time.monotonic() + timeout
        self.sel = selectors.DefaultSelector()
        self.sel.register(server.fileno(), selectors.EVENT_READ, "http")
        self.stdin: int | None = None
        try:
            self.stdin = sys.stdin.fileno()
            self.sel.register(self.stdin, selectors.EVENT_READ, "stdin")
        except (AttributeError, ValueError, OSError):  # no stdin, or a regular file (epoll refuses it)
            self.stdin = None
        self.pending = b""
        self.pasted: list[str] = []

    def next(self) -> str:
        while not (self.server.received or self.pasted):
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise click.ClickException(
                    f"no answer from the sign-in within {BROWSER_TIMEOUT // 60} min; nothing was saved"
                )
            for key, _ in self.sel.select(timeout=min(left, 1.0)):
                if key.data == "http":
                    self.server.handle_request()
                else:
                    self._read_stdin()
        return (self.server.received or self.pasted).pop(0)

    def _read_stdin(self) -> None:
        assert self.stdin is not None
        chunk = os.read(self.stdin, 4096)
        if not chunk:  # stdin closed: the listener may still get the answer
            self.sel.unregister(self.stdin)
            return
        self.pending += chunk
        while b"\n" in self.pending:
            line, _, self.pending = self.pending.partition(b"\n")
            if line.strip():
                self.pasted.append(line.decode("utf-8", "replace").strip())

    def close(self) -> None:
        self.sel.close()
        self.server.server_close()


def _browser_login(name: str, cfg: OAuth, port: int) -> dict:
    from .. import oauth

    try:
        server = _Listener(port)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on 127.0.0.1:{port} for the sign-in's answer: {exc}"
        ) from None
    answers = _Answers(server, BROWSER_TIMEOUT)
    try:
        redirect_uri = f"http://127.0.0.1:{server.server_port}/"
        login = oauth.browser_start(cfg, name, redirect_uri)
        click.echo(f"To sign in [oauth.{name}] ({cfg.provider}), open this address in a browser:")
        click.echo(f"  {login.url}")
        click.echo(f"The provider then sends the browser to {redirect_uri}, where this command listens.")
        click.echo(
            "Browser on another machine: when it ends on an error page at that address, "
            "paste the whole address here and press Enter."
        )
        while True:
            try:
                return oauth.browser_finish(cfg, name, login, answers.next())
            except oauth.NotThisLogin as exc:
                click.echo(f"{exc}; still waiting for the sign-in's answer", err=True)
    finally:
        answers.close()


@oauth_group.command("login")
@click.argument("name", required=False)
@click.option("--provider", type=click.Choice(PROVIDERS), help="The provider (default: [oauth.NAME]'s).")
@click.option("--client-id", help="The app registration's client id.")
@click.option("--tenant", help="microsoft: the directory (tenant) id, or organizations / common.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="SCOPE",
    help="A scope to ask for (repeatable; default: the provider's IMAP and SMTP scopes).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="Where to keep the refresh token (default: [oauth.NAME] token_file, or var/oauth/NAME.json).",
)
@click.option(
    "--client-secret-env", metavar="VAR", help="The environment variable holding the client secret."
)
@click.option("--client-secret-file", type=click.Path(dir_okay=False), help="Or a file holding it.")
@click.option("--token-url", help="The token endpoint (custom needs it; else the provider's).")
@click.option("--device-url", help="The device authorization endpoint (RFC 8628), for custom.")
@click.option("--auth-url", help="The authorization endpoint (browser flow), for custom.")
@click.option(
    "--flow",
    type=click.Choice(["device", "browser"]),
    help="device: a code to enter on any browser (default, except for google); browser: sign in "
    "at an address that sends the browser back to this machine (default for google).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="browser flow: the port on 127.0.0.1 to listen on (default: any free one).",
)
@click.pass_obj
def oauth_login(
    obj: Ctx,
    name: str | None,
    provider: str | None,
    client_id: str | None,
    tenant: str | None,
    scopes: tuple[str, ...],
    token_file: str | None,
    client_secret_env: str | None,
    client_secret_file: str | None,
    token_url: str | None,
    device_url: str | None,
    auth_url: str | None,
    flow: str | None,
    port: int,
) -> None:
    """Sign in a mailbox's account at its provider and keep the refresh token.

    NAME is an [oauth.NAME] table of the config (optional when there is one). The
    options override the table, or stand in for it before it exists (then
    --provider and --client-id are needed). The refresh token goes to the table's
    token_file, mode 0600; no token is printed.
    """
    from .. import oauth

    options = {
        "provider": provider,
        "client_id": client_id,
        "tenant": tenant,
        "scopes": tuple(scopes),
        "client_secret_env": client_secret_env,
        "client_secret_file": client_secret_file,
        "token_url": token_url,
        "device_url": device_url,
        "auth_url": auth_url,
    }
    name, cfg, in_config = _target(obj, name, options, token_file)
    flow = flow or ("browser" if cfg.provider == "google" else "device")
    if cfg.provider == "google" and flow == "device" and GMAIL_SCOPE in oauth.endpoints(cfg).scopes:
        # Google's device flow grants only a short list of scopes, and the one IMAP and
        # SMTP need is not among them: https://developers.google.com/identity/protocols/
        # oauth2/limited-input-device#allowedscopes (the device endpoint answers
        # invalid_scope, as in googleapis/oauth2client#88).
        raise click.UsageError(
            f"Google's device flow does not allow the {GMAIL_SCOPE} scope that IMAP and SMTP need: "
            f"use --flow browser (the default for google)"
        )
    clock = SystemClock()
    try:
        if flow == "device":
            got = oauth.device_login(cfg, name, _show_device_code(name, cfg), clock=clock)
        else:
            got = _browser_login(name, cfg, port)
        oauth.save_login(cfg, got, clock)
    except KeyboardInterrupt:
        raise Stopped("stopped; nothing was saved") from None
    except MailticketError as exc:  # OAuthError, and ConfigError for an unset secret variable
        raise click.ClickException(str(exc)) from None
    click.echo(f"Signed in: the refresh token for [oauth.{name}] is in {cfg.token_file} (mode 0600).")
    if not in_config:
        where = obj.config_path or DEFAULT_PATH
        click.echo(f"Add this table to {where}:\n\n{_table_snippet(name, cfg)}\n")
    click.echo(
        f'Next: set auth = "xoauth2" and oauth = "{name}" in [[imap]] / [outgoing], '
        f"then restart mailticket or send it SIGHUP."
    )


# --- status ------------------------------------------------------------------------------


def _used_by(cfg: Config, name: str) -> list[str]:
    boxes = [f"[[imap]] {b.user or b.host}" for b in cfg.imap if b.auth != "password" and b.oauth == name]
    if cfg.outgoing.auth != "password" and cfg.outgoing.oauth == name:
        boxes.append("[outgoing]")
    return boxes


def _status(cfg: Config, name: str, table: OAuth, check: bool) -> dict:
    from .. import oauth

    row: dict = {
        "name": name,
        "provider": table.provider,
        "client_id": table.client_id,
        "token_file": table.token_file,
        "present": False,
        "mode": None,
        "private": None,
        "obtained_at": None,
        "problem": None,
        "used_by": _used_by(cfg, name),
        "check": None,
    }
    try:
        st = os.stat(table.token_file)
    except FileNotFoundError:
        row["problem"] = f"no token file: run `mailticket oauth login {name}`"
    except OSError as exc:
        row["problem"] = f"cannot see the token file: {exc}"
    else:
        mode = stat.S_IMODE(st.st_mode)
        row.update(present=True, mode=f"{mode:04o}", private=not mode & 0o077)
        try:
            row["obtained_at"] = oauth.read_token_file(table.token_file).get("obtained_at")
        except oauth.OAuthError as exc:
            row["problem"] = str(exc)
    if check:
        source = oauth.TokenSource(table, name)
        try:
            source.token()
            row["check"] = {"ok": True, "valid_seconds": int(source.valid_for()), "error": None}
        except MailticketError as exc:  # OAuthError, or ConfigError for an unset secret variable
            row["check"] = {"ok": False, "valid_seconds": None, "error": str(exc)}
    return row


def _show_status(row: dict) -> None:
    click.echo(f"[oauth.{row['name']}]  {row['provider']}, client id {row['client_id']}")
    if row["present"]:
        obtained = f", signed in {row['obtained_at']}" if row["obtained_at"] else ""
        click.echo(f"  token file  {row['token_file']} (mode {row['mode']}{obtained})")
        if not row["private"]:
            click.echo(f"  warning     group or others can read it: chmod 600 {row['token_file']}")
    else:
        click.echo(f"  token file  {row['token_file']} (missing)")
    if row["problem"]:
        click.echo(f"  problem     {row['problem']}")
    click.echo(f"  used by     {', '.join(row['used_by']) or 'no mailbox'}")
    if row["check"] is not None:
        c = row["check"]
        click.echo(
            f"  check       OK: an access token valid for {c['valid_seconds']} s"
            if c["ok"]
            else f"  check       FAILED: {c['error']}"
        )


@oauth_group.command("status")
@click.argument("name", required=False)
@click.option("--check", is_flag=True, help="Refresh each token now (a request to the provider).")
@json_option
@click.pass_obj
def oauth_status(obj: Ctx, name: str | None, check: bool, as_json: bool) -> None:
    """Show each [oauth.NAME]: provider, token file (present, mode), the mailboxes using it.

    With --check, a real refresh says whether the token still works; the exit status
    is 1 when one does not. With --json, a list of {"name", "provider", "client_id",
    "token_file", "present", "mode", "private", "obtained_at", "problem", "used_by",
    "check": null or {"ok", "valid_seconds", "error"}}.
    """
    cfg = obj.config
    tables = cfg.oauth
    if name:
        if name not in tables:
            known = ", ".join(tables) or "none"
            raise click.ClickException(f"no [oauth.{name}] in {cfg.path} (known: {known})")
        tables = {name: tables[name]}
    rows = [_status(cfg, n, t, check) for n, t in tables.items()]
    if as_json:
        emit_json(rows)
    else:
        for row in rows:
            _show_status(row)
        if not rows:
            click.echo(f"no [oauth.NAME] tables in {cfg.path}")
    if check and any(not r["check"]["ok"] for r in rows):
        click.get_current_context().exit(1)
