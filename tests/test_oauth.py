"""OAuth2 for the mailboxes: the token source and `mailticket oauth login|status`, against
the loopback provider (tests/oauth_provider.py) over real HTTP.

The logins that print a code or an address and read an answer run the CLI as a
real process, read its stdout as a person would and play the provider's side.
Time-dependent parts (refresh margin, code expiry, slow_down) travel with a
FrozenClock instead of sleeping.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import free_port, wait_for
from oauth_provider import Provider

from mailticket import oauth
from mailticket.cli import main
from mailticket.clock import FrozenClock
from mailticket.config import OAuth
from mailticket.config import load as load_config

USER = "support@example.com"


@pytest.fixture(scope="module")
def provider_server():
    p = Provider().start()
    yield p
    p.stop()


@pytest.fixture
def provider(provider_server):
    provider_server.reset()  # a fresh provider for each test, on the module's one server
    return provider_server


def table(provider: Provider, token_file: Path, **changes) -> OAuth:
    cfg = OAuth(
        provider="microsoft",
        client_id=provider.client_id,
        token_file=str(token_file),
        token_url=provider.token_url,
        device_url=provider.device_url,
        auth_url=provider.auth_url,
    )
    return replace(cfg, **changes)


def stored(provider: Provider, path: Path, user: str = USER) -> str:
    """A token file as a finished login leaves it; its refresh token."""
    rt = provider.grant(user)
    oauth.write_token_file(str(path), {"refresh_token": rt, "provider": "microsoft", "client_id": "x"})
    return rt


def all_tokens(provider: Provider) -> set[str]:
    """Every token the provider ever issued or knows (refresh tokens rotate away)."""
    with provider.lock:
        known = set(provider.access) | set(provider.refresh)
        for _, form in provider.requests:
            known.update(v for k, v in form.items() if k in ("refresh_token", "code", "device_code"))
    return known


# --- the token source ----------------------------------------------------------------------


def test_token_is_reused_then_refreshed_before_it_expires(provider, tmp_path):
    stored(provider, tmp_path / "t.json")
    clock = FrozenClock()
    src = oauth.TokenSource(table(provider, tmp_path / "t.json"), "m365", clock)
    first = src.token()
    assert provider.count("/token", grant_type="refresh_token") == 1
    assert src.valid_for() == provider.lifetime
    clock.advance(seconds=provider.lifetime - oauth.MARGIN - 1)  # 301 s left: still good
    assert src.token() == first
    assert provider.count("/token", grant_type="refresh_token") == 1
    clock.advance(seconds=2)  # within MARGIN of expiry: refreshed first
    second = src.token()
    assert second != first and provider.count("/token", grant_type="refresh_token") == 2
    assert src.valid_for() == provider.lifetime


def test_invalidate_forces_a_refresh(provider, tmp_path):
    stored(provider, tmp_path / "t.json")
    src = oauth.TokenSource(table(provider, tmp_path / "t.json"), "m365", FrozenClock())
    first = src.token()
    src.invalidate()
    assert src.valid_for() == 0
    assert src.token() != first
    assert provider.count("/token", grant_type="refresh_token") == 2


def test_a_rotated_refresh_token_is_written_back(provider, tmp_path):
    provider.rotate = True
    path = tmp_path / "t.json"
    old = stored(provider, path)
    src = oauth.TokenSource(table(provider, path), "m365", FrozenClock())
    src.token()
    kept = json.loads(path.read_text())
    assert kept["refresh_token"] != old and kept["refresh_token"] in provider.refresh
    assert old not in provider.refresh  # the provider forgot the old one: only the file's works
    assert kept["provider"] == "microsoft"  # the rest of the record stays
    assert os.stat(path).st_mode & 0o777 == 0o600
    src.invalidate()
    src.token()  # the next refresh uses the rotated token
    assert json.loads(path.read_text())["refresh_token"] in provider.refresh


def test_a_revoked_refresh_token_names_the_file_and_the_command(provider, tmp_path):
    path = tmp_path / "t.json"
    stored(provider, path)
    before = path.read_bytes()
    src = oauth.TokenSource(table(provider, path), "m365", FrozenClock())
    src.token()
    provider.revoke()
    src.invalidate()
    with pytest.raises(oauth.OAuthError) as err:
        src.token()
    message = str(err.value)
    assert str(path) in message and "mailticket oauth login m365" in message and "invalid_grant" in message
    assert path.read_bytes() == before


def test_a_missing_token_file_says_to_log_in(provider, tmp_path):
    src = oauth.TokenSource(table(provider, tmp_path / "none.json"), "m365", FrozenClock())
    with pytest.raises(oauth.OAuthError, match=r"no refresh token yet.*mailticket oauth login m365"):
        src.token()


def test_an_unreachable_token_endpoint_is_said_and_leaves_the_file(provider, tmp_path):
    path = tmp_path / "t.json"
    stored(provider, path)
    before = path.read_bytes()
    url = f"http://127.0.0.1:{free_port()}/token"  # nothing listens there
    src = oauth.TokenSource(table(provider, path, token_url=url), "m365", FrozenClock())
    with pytest.raises(oauth.OAuthError, match="cannot reach the token endpoint") as err:
        src.token()
    assert url in str(err.value)
    assert path.read_bytes() == before


def test_no_token_reaches_the_log(provider, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's and authlib's too
    provider.rotate = True
    path = tmp_path / "t.json"
    stored(provider, path)
    src = oauth.TokenSource(table(provider, path), "m365", FrozenClock())
    got = [src.token()]
    src.invalidate()
    got.append(src.token())
    provider.revoke()
    src.invalidate()
    with pytest.raises(oauth.OAuthError):
        src.token()
    assert "access token refreshed" in caplog.text  # the log did see the refreshes
    leaked = [t for t in all_tokens(provider) | set(got) if t in caplog.text]
    assert not leaked


def test_two_sources_sharing_a_rotating_file_both_keep_working(provider, tmp_path):
    # Each refresh hands out a new refresh token and voids the old one: without the
    # file lock, one source would refresh with a token the other already spent.
    provider.rotate = True
    path = tmp_path / "t.json"
    stored(provider, path)
    cfg = table(provider, path)
    errors: list[BaseException] = []

    def work(src: oauth.TokenSource) -> None:
        try:
            for _ in range(15):
                src.invalidate()
                assert src.token().startswith("at-")
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(oauth.TokenSource(cfg, "m365"),)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert provider.count("/token", grant_type="refresh_token") == 30
    assert json.loads(path.read_text())["refresh_token"] in provider.refresh


def test_two_processes_sharing_a_rotating_file_both_keep_working(provider, tmp_path):
    provider.rotate = True
    path = tmp_path / "t.json"
    stored(provider, path)
    code = textwrap.dedent(f"""
        from mailticket import oauth
        from mailticket.config import OAuth
        cfg = OAuth(provider="custom", client_id={provider.client_id!r}, token_file={str(path)!r},
                    token_url={provider.token_url!r})
        src = oauth.TokenSource(cfg, "shared")
        for _ in range(10):
            src.invalidate()
            src.token()
        print("ok")
    """)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert provider.count("/token", grant_type="refresh_token") == 20
    assert json.loads(path.read_text())["refresh_token"] in provider.refresh


# --- the device flow, as a library (time travels) ------------------------------------------


class Waits:
    """The pause between polls: moves the clock instead of sleeping, and remembers."""

    def __init__(self, clock: FrozenClock) -> None:
        self.clock, self.seconds = clock, []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        self.clock.advance(seconds=seconds)


def test_device_flow_slows_down_when_told(provider, tmp_path):
    clock = FrozenClock()
    waits = Waits(clock)

    def show(code: oauth.DeviceCode) -> None:
        assert code.interval == 1 and code.verification_uri.endswith("/devicelogin") and code.message
        provider.slow_down(code.user_code, times=2)
        provider.approve(code.user_code, USER)

    got = oauth.device_login(table(provider, tmp_path / "t.json"), "m365", show, clock=clock, wait=waits)
    assert got["refresh_token"] in provider.refresh
    assert waits.seconds == [1, 1 + oauth.SLOW_DOWN, 1 + 2 * oauth.SLOW_DOWN]  # +5 s per slow_down


def test_device_flow_gives_up_when_the_code_expires(provider, tmp_path):
    provider.device_expires_in = 5
    clock = FrozenClock()
    waits = Waits(clock)
    with pytest.raises(oauth.OAuthError, match="code expired"):
        oauth.device_login(
            table(provider, tmp_path / "t.json"), "m365", lambda c: None, clock=clock, wait=waits
        )
    polls = provider.count("/token", grant_type=oauth.DEVICE_GRANT)
    assert polls == 4 and sum(waits.seconds) == 5  # pending at 1..4 s, expired at 5 s without asking
    assert not (tmp_path / "t.json").exists()


def test_device_flow_stops_on_expired_token(provider, tmp_path):
    clock = FrozenClock()

    def show(code: oauth.DeviceCode) -> None:
        provider.expire_device(code.user_code)

    with pytest.raises(oauth.OAuthError, match="code expired"):
        oauth.device_login(table(provider, tmp_path / "t.json"), "m365", show, clock=clock, wait=Waits(clock))
    assert provider.count("/token", grant_type=oauth.DEVICE_GRANT) == 1


# --- `mailticket oauth login` --------------------------------------------------------------


def write_config(tmp_path: Path, provider: Provider, extra: str = "") -> Path:
    path = tmp_path / "mailticket.toml"
    path.write_text(
        textwrap.dedent(f"""
            [oauth.m365]
            provider = "microsoft"
            client_id = "{provider.client_id}"
            token_url = "{provider.token_url}"
            device_url = "{provider.device_url}"

            [[imap]]
            host = "outlook.office365.com"
            user = "{USER}"
            auth = "xoauth2"
            oauth = "m365"
        """)
        + textwrap.dedent(extra),
        encoding="utf-8",
    )
    return path


class Cli:
    """`mailticket` as a real process: its output read line by line as it comes."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if k != "MAILTICKET_CONFIG"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailticket.cli", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**environ, **(env or {})},
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def expect(self, pattern: str, timeout: float = 30, stderr: bool = False) -> re.Match:
        """The first stdout (or stderr) line matching `pattern`, waiting for it to be printed."""
        lines, reader = (self.err, self._readers[1]) if stderr else (self.out, self._readers[0])

        def found():
            match = next((m for line in list(lines) if (m := re.search(pattern, line))), None)
            if match is None and self.proc.poll() is not None and not reader.is_alive():
                raise AssertionError(f"exited {self.proc.returncode}: {self.output}")
            return match

        return wait_for(found, timeout, f"{pattern!r} on {'stderr' if stderr else 'stdout'}")

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(timeout)
        self.close()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:  # a test that failed half-way
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()

    @property
    def output(self) -> str:
        return "".join(self.out) + "".join(self.err)


@pytest.fixture
def run_cli():
    """Start `mailticket ARGS...` as a process; whatever still runs at the end is killed."""
    started: list[Cli] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Cli:
        started.append(Cli(*args, env=env))
        return started[-1]

    yield start
    for cli in started:
        cli.close()


def assert_no_token_in(text: str, provider: Provider) -> None:
    assert not [t for t in all_tokens(provider) if t in text]


def test_login_device_flow_saves_the_refresh_token(provider, tmp_path, run_cli):
    config = write_config(tmp_path, provider)
    cli = run_cli("--config", str(config), "oauth", "login")  # the one [oauth.NAME]: no name needed
    code = cli.expect(r"^\s+code\s+(\S+)\s*$").group(1)
    assert any(provider.device_url.replace("/device", "/devicelogin") in line for line in cli.out)
    provider.approve(code, USER)
    assert cli.finish() == 0, cli.output
    path = tmp_path / "var" / "oauth" / "m365.json"
    saved = json.loads(path.read_text())
    assert saved["refresh_token"] in provider.refresh and provider.refresh[saved["refresh_token"]] == USER
    assert saved["provider"] == "microsoft" and saved["client_id"] == provider.client_id
    assert saved["scope"] and saved["obtained_at"]
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert str(path) in cli.output and 'oauth = "m365"' in cli.output
    assert_no_token_in(cli.output, provider)
    # and the daemon's side can use it
    cfg = load_config(config)
    assert oauth.TokenSource(cfg.oauth["m365"], "m365").token() in provider.access


def test_login_stops_on_ctrl_c_and_saves_nothing(provider, tmp_path, run_cli):
    config = write_config(tmp_path, provider)
    cli = run_cli("--config", str(config), "oauth", "login", "m365")
    cli.expect(r"Waiting for the sign-in")
    wait_for(lambda: provider.count("/token", grant_type=oauth.DEVICE_GRANT) >= 1, 10, "a first poll")
    cli.proc.send_signal(signal.SIGINT)
    assert cli.finish() == 130, cli.output
    assert "nothing was saved" in cli.output
    assert not (tmp_path / "var" / "oauth" / "m365.json").exists()


def in_background(provider: Provider, act) -> threading.Thread:
    """Play the user: once a device code is out, `act(user_code)`."""
    provider.device_expires_in = 20  # should the user never act, the login ends anyway

    def device():
        with provider.lock:
            return next(iter(provider.devices.values()), None)

    def run() -> None:
        act(wait_for(device, 20, "a device code").user_code)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_login_declined_exits_non_zero_and_saves_nothing(provider, tmp_path):
    config = write_config(tmp_path, provider)
    t = in_background(provider, provider.deny)
    res = CliRunner().invoke(main, ["--config", str(config), "oauth", "login", "m365"])
    t.join(5)
    assert res.exit_code == 1 and "declined" in res.output, res.output
    assert not (tmp_path / "var" / "oauth" / "m365.json").exists()


def test_login_before_the_config_has_the_table(provider, tmp_path):
    # --provider and --client-id stand in for the table; the command prints the table to add.
    token_file = tmp_path / "tokens" / "helpdesk.json"
    t = in_background(provider, lambda code: provider.approve(code, USER))
    res = CliRunner().invoke(
        main,
        [
            "--config",
            str(tmp_path / "not-yet.toml"),
            "oauth",
            "login",
            "helpdesk",
            "--provider",
            "custom",
            "--client-id",
            provider.client_id,
            "--token-url",
            provider.token_url,
            "--device-url",
            provider.device_url,
            "--scope",
            "mail",
            "--scope",
            "offline",
            "--token-file",
            str(token_file),
        ],
    )
    t.join(5)
    assert res.exit_code == 0, res.output
    assert json.loads(token_file.read_text())["refresh_token"] in provider.refresh
    assert "[oauth.helpdesk]" in res.output and f'token_file = "{token_file}"' in res.output
    assert 'scopes = ["mail", "offline"]' in res.output
    assert provider.devices == {} and provider.count("/device", scope="mail offline") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["login"], "name one of m365, other"),
        (["login", "nope"], "give --provider and --client-id"),
        (["login", "gmail", "--flow", "device"], "device flow does not allow"),
    ],
)
def test_login_usage_errors(provider, tmp_path, args, message):
    config = write_config(
        tmp_path,
        provider,
        """
        [oauth.other]
        provider = "custom"
        client_id = "c"
        token_url = "http://127.0.0.1:1/token"

        [oauth.gmail]
        provider = "google"
        client_id = "c"
        """,
    )
    res = CliRunner().invoke(main, ["--config", str(config), "oauth", *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert provider.requests == []


def google_config(tmp_path: Path, provider: Provider) -> Path:
    provider.client_secret = "s3cret"
    path = tmp_path / "mailticket.toml"
    path.write_text(
        textwrap.dedent(f"""
            [oauth.gmail]
            provider = "google"
            client_id = "{provider.client_id}"
            client_secret_env = "TEST_GOOGLE_SECRET"
            token_url = "{provider.token_url}"
            auth_url = "{provider.auth_url}"

            [outgoing]
            transport = "smtp"
            host = "smtp.gmail.com"
            username = "{USER}"
            auth = "xoauth2"
            oauth = "gmail"
        """),
        encoding="utf-8",
    )
    return path


def browser_login(run_cli, tmp_path: Path, provider: Provider) -> tuple[Cli, str]:
    config = google_config(tmp_path, provider)
    cli = run_cli("--config", str(config), "oauth", "login", "gmail", env={"TEST_GOOGLE_SECRET": "s3cret"})
    url = cli.expect(r"^\s+(" + re.escape(provider.auth_url) + r"\?\S+)").group(1)
    cli.expect(r"paste the whole address")
    return cli, url


def test_google_login_by_pasting_the_redirect(provider, tmp_path, run_cli):
    cli, url = browser_login(run_cli, tmp_path, provider)  # google: the browser flow by default
    cli.type(provider.sign_in(url, "intruder@example.com", state="forged"))  # not this login's answer
    cli.expect(r"state does not match this login", stderr=True)
    assert provider.count("/token") == 0  # its code went nowhere
    cli.type(provider.sign_in(url, USER))
    assert cli.finish() == 0, cli.output
    asked = provider.authorize_requests[0]
    assert asked["scope"] == "https://mail.google.com/"
    assert asked["code_challenge_method"] == "S256" and asked["access_type"] == "offline"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", asked["redirect_uri"])
    # the code went back with its PKCE verifier (the provider checked it) and the secret
    assert provider.count("/token", grant_type="authorization_code", client_secret="s3cret") == 1
    saved = json.loads((tmp_path / "var" / "oauth" / "gmail.json").read_text())
    assert saved["refresh_token"] in provider.refresh and saved["provider"] == "google"
    assert provider.refresh[saved["refresh_token"]] == USER
    assert "Signed in" in cli.output
    assert_no_token_in(cli.output, provider)


def test_google_login_through_the_loopback_listener(provider, tmp_path, run_cli):
    cli, url = browser_login(run_cli, tmp_path, provider)
    redirect = provider.sign_in(url, USER)
    root = redirect.split("?")[0]
    with pytest.raises(urllib.error.HTTPError) as err:  # a browser's extra requests are not the answer
        urllib.request.urlopen(root + "favicon.ico", timeout=10)
    err.value.close()
    assert err.value.code == 404
    with urllib.request.urlopen(redirect, timeout=10) as page:  # the browser, sent back
        assert page.status == 200 and "terminal" in page.read().decode()
    assert cli.finish() == 0, cli.output
    saved = json.loads((tmp_path / "var" / "oauth" / "gmail.json").read_text())
    assert saved["refresh_token"] in provider.refresh
    assert_no_token_in(cli.output, provider)


# --- `mailticket oauth status` -------------------------------------------------------------


def status(config: Path, *args: str):
    return CliRunner().invoke(main, ["--config", str(config), "oauth", "status", *args])


def test_status_shows_files_modes_and_users(provider, tmp_path):
    config = write_config(
        tmp_path,
        provider,
        f"""
        [outgoing]
        transport = "smtp"
        username = "{USER}"
        auth = "xoauth2"
        oauth = "m365"

        [oauth.spare]
        provider = "custom"
        client_id = "c"
        token_url = "{provider.token_url}"
        """,
    )
    path = tmp_path / "var" / "oauth" / "m365.json"
    stored(provider, path)
    path.chmod(0o644)
    res = status(config)
    assert res.exit_code == 0, res.output
    assert "mode 0644" in res.output and f"chmod 600 {path}" in res.output
    assert f"[[imap]] {USER}, [outgoing]" in res.output
    assert "spare.json (missing)" in res.output and "mailticket oauth login spare" in res.output
    rows = {r["name"]: r for r in json.loads(status(config, "--json").output)}
    assert rows["m365"]["present"] and rows["m365"]["mode"] == "0644" and rows["m365"]["private"] is False
    assert rows["spare"]["present"] is False and rows["spare"]["used_by"] == []
    assert rows["m365"]["check"] is None and provider.count("/token") == 0  # no --check: no request
    assert_no_token_in(res.output, provider)


def test_status_check_refreshes_and_fails_on_a_revoked_token(provider, tmp_path):
    config = write_config(tmp_path, provider)
    stored(provider, tmp_path / "var" / "oauth" / "m365.json")
    res = status(config, "--check")
    assert res.exit_code == 0, res.output
    assert "OK: an access token valid for" in res.output
    assert provider.count("/token", grant_type="refresh_token") == 1
    provider.revoke()
    res = status(config, "m365", "--check", "--json")
    assert res.exit_code == 1
    (row,) = json.loads(res.output)
    assert row["check"]["ok"] is False and "mailticket oauth login m365" in row["check"]["error"]
    res = status(config, "--check")
    assert res.exit_code == 1 and "FAILED" in res.output and "invalid_grant" in res.output
    assert_no_token_in(res.output, provider)
