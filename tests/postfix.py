"""A private Postfix configured from docs/deploy.md, and the service user it pipes to.

    files = documented("The domain and its recipients", "Over LMTP")  # the doc's blocks
    server = Postfix(root, files, {"127.0.0.1:2424": f"127.0.0.1:{port}"})
    server.start()                      # `postfix -c DIR start`, waits for the port
    server.delivered("support@example.com")  # waits for `status=sent` in Postfix's log
    server.wait_empty()                 # nothing left in its queue
    server.stop()                       # `postfix -c DIR stop`, waits for the master to go

The Postfix recipes are read from the fenced blocks of docs/deploy.md, each headed
by the file it belongs in (`# /etc/postfix/main.cf`), so the doc cannot drift from
what is tested: `/etc/postfix/` becomes the private configuration folder, and the
caller substitutes ports, paths and the user.  Around them a base configuration that
never delivers beyond the machine: smtpd on a free
loopback port, no `smtp`, `relay` or `local` service in master.cf, and every
transport not named in the doc's transport map is an error.  /etc/postfix is never
written, and read only for the package's own files (postfix-files, dynamicmaps.cf,
and main.cf if there is one, for its multi-instance list): `postfix -c DIR` needs no
`alternate_config_directories` when run as root, and the set-gid `postqueue`, which
would, is never used (the queue is read from its folders).

Postfix refuses to pipe as root, so the pipe runs as `nobody`, standing in for the
doc's `mailticket` user (tests make no account on the machine).  That user cannot
run the project's interpreter (pyenv, under /root), so `service_venv` builds a venv
from /usr/bin/python3, as the doc says, that imports the project from its own
site-packages.  Its folders are of our own in /tmp, mode 0755: pytest's tmp_path
is under a 0700 folder.  Postfix, its venv and helpdesk folders are required, never
skipped: `make test-deps` installs Debian's postfix.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import Helpdesk
from helpers import free_port, wait_for

DEPLOY_MD = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
SERVICE_USER = "nobody"  # the doc's `mailticket` user
START_TIMEOUT = 30.0

MAIN_CF = """\
# A private Postfix for mailticket's tests: written by tests/postfix.py.
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
syslog_name = postfix-mailticket-test
myhostname = mailticket-test.localdomain
inet_interfaces = loopback-only
inet_protocols = ipv4
# No trusted client: the test's client is an outside server, as on the Internet.
mynetworks =
# Nothing is delivered beyond the machine, nor locally: only the doc's transports work.
mydestination =
relayhost =
default_transport = error:no outside delivery
relay_transport = error:no outside delivery
local_transport = error:no local delivery
alias_maps =
alias_database =
# A deferred message is retried within seconds, not Postfix's 300 s.
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s

# --- from docs/deploy.md ---
"""

MASTER_CF = """\
# A private Postfix for mailticket's tests: no smtp, relay or local delivery service.
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n  -  n  -    0  cleanup
qmgr      unix  n  -  n  300  1  qmgr
rewrite   unix  -  -  n  -    -  trivial-rewrite
bounce    unix  -  -  n  -    0  bounce
defer     unix  -  -  n  -    0  bounce
trace     unix  -  -  n  -    0  bounce
verify    unix  -  -  n  -    1  verify
proxymap  unix  -  -  n  -    -  proxymap
showq     unix  n  -  n  -    -  showq
error     unix  -  -  n  -    -  error
retry     unix  -  -  n  -    -  error
discard   unix  -  -  n  -    -  discard
lmtp      unix  -  -  n  -    -  lmtp
anvil     unix  -  -  n  -    1  anvil
scache    unix  -  -  n  -    1  scache
postlog   unix-dgram n - n -  1  postlogd

# --- from docs/deploy.md ---
"""

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


class PostfixError(RuntimeError):
    """Postfix is missing, or did not start (the message carries its log)."""


def documented(*sections: str) -> dict[str, str]:
    """The files docs/deploy.md's `### SECTION`s show, by path: their blocks' lines joined.

    A block belongs to the file its first line names (`# /etc/postfix/main.cf  ...`).
    """
    files: dict[str, list[str]] = {}
    seen: set[str] = set()
    heading, block = "", None  # block: the lines of the fenced block we are in
    for line in DEPLOY_MD.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith("```"):
            if block is None:
                block = []
                continue
            if heading in sections and block and block[0].startswith("# /"):
                files.setdefault(block[0][2:].split()[0], []).append("".join(block[1:]))
            block = None
        elif block is not None:
            block.append(line)
        elif line.startswith("#"):  # a heading (a `#` inside a block is a comment)
            heading = line.lstrip("#").strip()
            seen.add(heading)
    missing = [s for s in sections if s not in seen]
    if missing:
        raise AssertionError(f"{DEPLOY_MD}: no section {', '.join(map(repr, missing))}")
    return {path: "".join(bodies) for path, bodies in files.items()}


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


class Postfix:
    """One private Postfix: its configuration folder, queue and log in `root`."""

    def __init__(self, root: Path, files: dict[str, str], replace: dict[str, str]) -> None:
        """`files`: what `documented()` returns; `replace`: old -> new in their text."""
        for tool in ("postfix", "postmap"):
            if shutil.which(tool) is None:
                raise PostfixError(f"`{tool}` is not installed: run `make test-deps` "
                                   "(it installs the Debian package postfix)")
        if os.geteuid() != 0:
            raise PostfixError("a private Postfix must be started as root")
        self.root = root
        self.conf = root / "conf"
        self.port = free_port()
        self.log = root / "postfix.log"
        self.conf.mkdir(parents=True)
        (root / "queue").mkdir()
        replace = {"/etc/postfix/": f"{self.conf}/", **replace}
        texts = {"main.cf": MAIN_CF.format(root=root, port=self.port),
                 "master.cf": MASTER_CF.format(root=root, port=self.port)}
        for path, body in files.items():
            if path.startswith("/etc/postfix/"):
                for old, new in replace.items():
                    body = body.replace(old, new)
                name = Path(path).name
                texts[name] = texts.get(name, "") + body
        # Postfix waits up to 2 s for a configuration file changed in the last second
        # to settle (it may be half-written): date them back, as files edited earlier.
        settled = time.time() - 10
        for name, text in texts.items():
            (self.conf / name).write_text(text, encoding="utf-8")
            os.utime(self.conf / name, (settled, settled))
        for name in texts.keys() - {"main.cf", "master.cf"}:  # "then: postmap FILE"
            self._postfix("postmap", "-c", str(self.conf), str(self.conf / name))

    def _postfix(self, tool: str, *args: str) -> None:
        proc = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise PostfixError(f"`{tool} {' '.join(args)}` failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}\n{self.logs()}")

    def start(self) -> None:
        """`postfix check` (makes the queue's folders) and `postfix start`; wait for the port."""
        self._postfix("postfix", "-c", str(self.conf), "check")
        self._postfix("postfix", "-c", str(self.conf), "start")
        try:
            wait_for(lambda: _accepts(self.port), START_TIMEOUT, "Postfix's smtpd", 0.02)
        except AssertionError:
            self.stop()
            raise PostfixError(f"Postfix did not accept on port {self.port}\n{self.logs()}") from None

    def master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / "queue" / "pid" / "master.pid").read_text())
        return None

    def stop(self) -> None:
        """`postfix -c DIR stop`, then wait for the master to exit (SIGKILL at the deadline)."""
        pid = self.master_pid()
        if pid is None or not _alive(pid):
            return
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True, timeout=60)
        try:
            wait_for(lambda: not _alive(pid), START_TIMEOUT, "Postfix's master to exit", 0.02)
        except AssertionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def logs(self) -> str:
        if not self.log.exists():
            return f"(no log in {self.root})"
        return f"--- {self.log} ---\n{self.log.read_text(errors='replace')[-8000:]}"

    def statuses(self, recipient: str) -> list[tuple[str, str]]:
        """(relay, status) of every delivery attempt to `recipient` in the log, in order."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        pattern = rf"to=<{re.escape(recipient)}>, .*?relay=(\S+), .*?status=(\w+)"
        return [(m.group(1), m.group(2)) for m in re.finditer(pattern, text)]

    def delivered(self, recipient: str, timeout: float = 30.0) -> str:
        """Wait until the log says `status=sent` for `recipient`; return its relay.

        A bounce fails at once; a deferral is retried (1 s backoff) until the deadline.
        """
        def sent() -> str | None:
            done = self.statuses(recipient)
            if done and done[-1][1] == "bounced":
                raise AssertionError(f"Postfix bounced the mail to {recipient}\n{self.logs()}")
            return next((relay for relay, status in done if status == "sent"), None)

        try:
            return wait_for(sent, timeout, f"Postfix to deliver to {recipient}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def queued(self) -> list[Path]:
        """The messages in Postfix's queue (what `postqueue -p` lists)."""
        return [p for q in QUEUES for p in (self.root / "queue" / q).rglob("*") if p.is_file()]

    def wait_empty(self, timeout: float = 30.0) -> None:
        """Wait until the queue is empty: Postfix removes a file just after it logs the
        delivery, and an aborted transaction's file just after the client's RSET."""
        try:
            wait_for(lambda: not self.queued(), timeout, "Postfix's queue to empty")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.queued()}\n{self.logs()}") from None


def service_venv(root: Path) -> Path:
    """A venv in `root` the service user can run, built from /usr/bin/python3 (docs/deploy.md).

    Instead of installing the project again, a .pth file adds this interpreter's
    site-packages (the project's editable install and its dependencies); so the minor
    versions must match.  `bin/mailticket` is what pip's console script would be.
    """
    system = Path("/usr/bin/python3")
    if not system.exists():
        raise PostfixError("/usr/bin/python3 is missing: the service user's venv is built from it")
    venv = root / "venv"
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(venv)],
                   check=True, capture_output=True, timeout=120)
    [lib] = (venv / "lib").glob("python3.*")
    if lib.name != f"python{sys.version_info.major}.{sys.version_info.minor}":
        raise PostfixError(f"/usr/bin/python3 is {lib.name}, the tests run {sys.version}: the "
                           "service venv cannot share the project's site-packages")
    (lib / "site-packages" / "mailticket-project.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages()))
    script = venv / "bin" / "mailticket"
    script.write_text(f"#!{venv}/bin/python\nimport sys\nfrom mailticket.cli import main\n"
                      "if __name__ == '__main__':  # not in the daemon's spawned children\n"
                      "    sys.exit(main())\n")
    script.chmod(0o755)
    check = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                           user=SERVICE_USER, timeout=60)
    if check.returncode != 0:
        raise PostfixError(f"{SERVICE_USER} cannot run {script} (is the project's folder "
                           f"readable by other users?):\n{check.stderr}")
    return venv


def own_folder(parent: str | None = None) -> Path:
    """A new folder, mode 0755: the service user and Postfix's processes can reach it."""
    path = Path(tempfile.mkdtemp(prefix="mailticket-postfix-", dir=parent))
    path.chmod(0o755)
    return path


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def service_root() -> Path:
    root = own_folder()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def service_venv_path(service_root) -> Path:
    """The service user's venv (one per session: building it takes a second or two)."""
    return service_venv(service_root)


@pytest.fixture
def service_helpdesk(service_root) -> Helpdesk:
    """A helpdesk on SQLite as docs/deploy.md sets it up: `var/` belongs to the service user."""
    folder = own_folder(str(service_root))
    var = folder / "var"
    var.mkdir()
    user = pwd.getpwnam(SERVICE_USER)
    os.chown(var, user.pw_uid, user.pw_gid)
    hd = Helpdesk(folder, f"sqlite:///{var / 'mailticket.db'}")
    hd.write_config(address="support@example.com")
    yield hd
    from mailticket.models import database_proxy

    if database_proxy.obj is not None:
        database_proxy.obj.close()


@pytest.fixture
def postfix(service_root):
    """`postfix(sections, replace)`: a started private Postfix; every one is stopped at the end."""
    servers: list[Postfix] = []

    def start(sections: tuple[str, ...], replace: dict[str, str]) -> Postfix:
        server = Postfix(own_folder(str(service_root)), documented(*sections), replace)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
