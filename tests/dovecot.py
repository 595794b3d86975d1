"""A private Dovecot IMAP server for tests and benchmarks, and a test-side IMAP client.

    server = Dovecot()              # a temp folder with dovecot.conf; nothing runs yet
    server.start()                  # `dovecot -F -c CONF`, waits until the port accepts
    box = server.account()          # a fresh user (its own INBOX), password shared
    box.append(raw)                 # APPEND from the test side (imapclient)
    server.restart(); server.stop() # `doveadm -c CONF stop`; cleanup() also removes the folder

Dovecot's rules for running as root in a temp folder: mail processes
run as `nobody` (static userdb), who owns the mail folder; login and auth run as
`dovenull`/`dovecot`, so the folder is mode 0755 and `imap-login`/`anvil` have no
chroot.  The static passdb takes any user name with the one password, so every
test gets a user, and so a mailbox, of its own on one shared server.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Self

from helpers import free_port, wait_for
from imapclient import IMAPClient

PASSWORD = "s3cret-for-tests"
START_TIMEOUT = 20.0

CONF = """\
# A private Dovecot for mailticket's tests: written by tests/dovecot.py.
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = mailticket-test-{port}
protocols = imap
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth2_mechanisms}
mail_location = maildir:{root}/mail/%u
mail_fsync = never
# IDLE notices new mail at once (inotify); this is only the fallback check.
mailbox_idle_check_interval = 1 secs
mail_max_userip_connections = 200
# Tests log in with a wrong password on purpose: answer at once.
auth_failure_delay = 0
{oauth2_passdb}passdb {{
  driver = static
{static_mechanisms}  args = password={password}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
service anvil {{
  chroot ={anvil_penalty}
}}
"""


# With `oauth2_introspection_url`: SASL XOAUTH2 and OAUTHBEARER (RFC 7628) check the
# bearer token with the provider's RFC 7662 introspection endpoint on every login.  The
# static password keeps PLAIN and LOGIN for the test side's own client.
OAUTH2_PASSDB = """\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {args}
}}
"""

# Dovecot 2.3's oauth2 passdb (PasswordDatabase.oauth2 in its wiki): a form POST of
# `token=...`; the answer names the user in `username` and must say `"active": true`, so
# a revoked or expired token is refused.  tokeninfo_url is left empty: introspection only.
OAUTH2_CONF = """\
introspection_mode = post
introspection_url = {url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 10000
"""


class DovecotError(RuntimeError):
    """Dovecot is missing, or did not start or stop (the message carries its log)."""


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _self_signed(cert: Path, key: Path) -> None:
    if shutil.which("openssl") is None:
        raise DovecotError("`openssl` is not installed: it makes the test TLS certificate")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _ppids() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        out[int(stat.parent.name)] = int(fields[1])
    return out


def _descendants(pid: int) -> list[int]:
    ppids = _ppids()
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in ppids.items() if pp == parent]
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie waits for init to reap it: it serves no one


def _end(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM these processes (ours: Dovecot's children), SIGKILL any left at the deadline."""
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    try:
        wait_for(lambda: not any(_alive(p) for p in pids), timeout, "Dovecot processes to end", 0.02)
    except AssertionError:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Dovecot:
    """One private Dovecot: its config, its process, and test-side helpers."""

    host = "127.0.0.1"
    password = PASSWORD

    def __init__(
        self,
        root: Path | None = None,
        port: int | None = None,
        *,
        tls: bool = False,
        oauth2_introspection_url: str = "",
    ) -> None:
        """`tls`: also offer STARTTLS and implicit TLS (`tls_port`), with a self-signed
        certificate for 127.0.0.1 (`cafile` is what a client must trust).

        `oauth2_introspection_url`: also offer SASL XOAUTH2 and OAUTHBEARER, each token
        checked at that RFC 7662 endpoint (tests/oauth_provider.py's `introspect_url`)
        at every login: no auth cache, so a revoked or expired token is refused at once."""
        for tool in ("dovecot", "doveadm"):
            if shutil.which(tool) is None:
                raise DovecotError(
                    f"`{tool}` is not installed: the IMAP tests need a real Dovecot. "
                    "Run `make test-deps` (it installs the Debian package dovecot-imapd)."
                )
        # Not pytest's tmp_path: its parent is mode 0700, which `nobody` cannot traverse.
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="mailticket-dovecot-"))
        self.port = port or free_port()
        self.conf = self.root / "dovecot.conf"
        self.log = self.root / "dovecot.log"
        self.proc: subprocess.Popen | None = None
        self._users = itertools.count(1)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        mail = self.root / "mail"
        mail.mkdir(exist_ok=True)
        mail.chmod(0o755)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(mail, nobody.pw_uid, nobody.pw_gid)
        self.tls_port = free_port() if tls else 0
        self.cafile = self.root / "cert.pem"
        ssl = "ssl = no"
        if tls:
            _self_signed(self.cafile, self.root / "key.pem")
            ssl = f"ssl = yes\nssl_cert = <{self.cafile}\nssl_key = <{self.root / 'key.pem'}"
        oauth2 = {"oauth2_mechanisms": "", "oauth2_passdb": "", "static_mechanisms": "", "anvil_penalty": ""}
        if oauth2_introspection_url:
            ext = self.root / "dovecot-oauth2.conf.ext"
            ext.write_text(OAUTH2_CONF.format(url=oauth2_introspection_url), encoding="utf-8")
            oauth2 = {
                # auth_cache_size = 0 is Dovecot's default; said here because a cached
                # verdict would hide a revocation from the tests.
                "oauth2_mechanisms": " xoauth2 oauthbearer\nauth_cache_size = 0",
                "oauth2_passdb": OAUTH2_PASSDB.format(args=ext),
                # The static password must not answer for a bearer token.
                "static_mechanisms": "  mechanisms = plain login\n",
                # No auth penalty: after a refused token Dovecot would make every login
                # from 127.0.0.1 wait 4 s or more (anvil's penalty); the tests refuse
                # tokens on purpose.  Mode 0 keeps the auth process off the socket.
                "anvil_penalty": "\n  unix_listener anvil-auth-penalty {\n    mode = 0\n  }",
            }
        self.conf.write_text(
            CONF.format(
                root=self.root,
                port=self.port,
                tls_port=self.tls_port,
                ssl=ssl,
                password=self.password,
                **oauth2,
            ),
            encoding="utf-8",
        )

    # --- the process ----------------------------------------------------------------

    def start(self) -> None:
        """Start Dovecot in the foreground (our child) and wait until the port accepts."""
        if self.proc is not None:
            if self.proc.poll() is None:
                return
            self.proc = None  # it died: start a new one
        stderr = (self.root / "dovecot.stderr").open("ab")
        with stderr:
            self.proc = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )

        def listening() -> bool:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise DovecotError(f"dovecot exited with status {code}\n{self.logs()}")
            return all(_accepts(self.host, p) for p in (self.port, self.tls_port) if p)

        try:
            wait_for(listening, START_TIMEOUT, "Dovecot to accept connections", 0.02)
        except AssertionError:
            self.stop()
            raise DovecotError(f"dovecot did not accept on port {self.port}\n{self.logs()}") from None

    def stop(self, doveadm: bool = True) -> None:
        """`doveadm -c CONF stop` (or SIGTERM, faster), and close every client connection.

        The master exits, but an `imap` process serving a logged-in client outlives
        it (seen with Dovecot 2.3.19, even with shutdown_clients = yes), and the
        master takes a second or more to exit while they run.  So the master's own
        children are ended first, by pid (each client gets `* BYE Server shutting
        down`, as from a real restart), then the master.
        """
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            children = _descendants(proc.pid)
            _end(children)
            # doveadm waits until the master's pid is gone, and a child of ours stays a
            # zombie until we reap it: so reap it while doveadm waits.
            stopper = None
            if doveadm:  # doveadm polls about once a second: a restart uses SIGTERM
                stopper = subprocess.Popen(
                    ["doveadm", "-c", str(self.conf), "stop"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            else:
                proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                raise DovecotError(f"dovecot did not stop on `doveadm stop`\n{self.logs()}") from None
            finally:
                if stopper is not None:
                    stopper.wait(timeout=30)
            _end(children)  # any respawned meanwhile

    def cleanup(self) -> None:
        """Stop, and remove the folder if we made it."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """Stop (every client sees its connection closed) and start again on the same port."""
        self.stop(doveadm=False)
        self.start()

    def logs(self) -> str:
        parts = []
        for name in ("dovecot.stderr", "dovecot.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {path} ---\n{path.read_text(errors='replace')[-8000:]}")
        return "\n".join(parts) or f"(no log in {self.root})"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def account(self, user: str | None = None) -> Account:
        """A user of our own: a fresh, empty INBOX on this server."""
        return Account(self, user or f"user{next(self._users)}-{os.getpid()}@test")


class Account:
    """One user on the server, with helpers that act as a mail client from the test side."""

    def __init__(self, server: Dovecot, user: str) -> None:
        self.server = server
        self.user = user

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def password(self) -> str:
        return self.server.password

    def cleanup(self) -> None:
        """Stop, and remove the folder if we made it."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        self.server.restart()

    @contextmanager
    def client(self, folder: str | None = None) -> Iterator[IMAPClient]:
        """A logged-in imapclient connection (closed at the end), `folder` selected if given."""
        c = IMAPClient(self.host, self.port, ssl=False, timeout=30)
        try:
            c.login(self.user, self.password)
            if folder:
                self.ensure_folder(folder, c)
                c.select_folder(folder)
            yield c
        finally:
            try:
                c.logout()
            except Exception:  # noqa: BLE001 - the server may be gone already
                c.shutdown()

    def ensure_folder(self, folder: str, c: IMAPClient) -> None:
        if folder.upper() != "INBOX" and not c.folder_exists(folder):
            c.create_folder(folder)

    def append(
        self, raw: bytes, folder: str = "INBOX", when: datetime | None = None, flags: Iterable[bytes] = ()
    ) -> None:
        """APPEND one message; `when` sets its INTERNALDATE (the arrival time, RFC 3501)."""
        with self.client() as c:
            self.ensure_folder(folder, c)
            c.append(folder, raw, flags=tuple(flags), msg_time=when)

    def append_many(
        self, raws: Iterable[bytes], folder: str = "INBOX", when: datetime | None = None, chunk: int = 200
    ) -> int:
        """APPEND many messages with MULTIAPPEND (RFC 3502), `chunk` per command."""
        count = 0
        with self.client() as c:
            self.ensure_folder(folder, c)
            batch: list[dict] = []
            for raw in raws:
                batch.append({"msg": raw, "date": when} if when else {"msg": raw})
                if len(batch) == chunk:
                    c.multiappend(folder, batch)
                    count += len(batch)
                    batch = []
            if batch:
                c.multiappend(folder, batch)
                count += len(batch)
        return count

    def uids(self, folder: str = "INBOX") -> list[int]:
        with self.client(folder) as c:
            return sorted(c.search(["ALL"]))

    def flags(self, folder: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
        """UID -> flags of every message in the folder."""
        with self.client(folder) as c:
            uids = c.search(["ALL"])
            return dict(c.get_flags(uids)) if uids else {}

    def unseen(self, folder: str = "INBOX") -> list[int]:
        with self.client(folder) as c:
            return sorted(c.search(["UNSEEN"]))

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.client() as c:
            self.ensure_folder(folder, c)
            return c.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"]

    def recreate_folder(self, folder: str) -> int:
        """Delete and create `folder` (not INBOX): a new UIDVALIDITY, UIDs from 1 again."""
        if folder.upper() == "INBOX":
            raise ValueError("INBOX cannot be deleted; use another folder for this")
        with self.client() as c:
            if c.folder_exists(folder):
                c.delete_folder(folder)
            c.create_folder(folder)
            return c.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"]
