"""The listener's Unix socket (`[smtp] listen = "unix:/PATH"`): bound with its owner and
mode, a stale one cleared, removed at stop (smtp.py's `Listener` uses it).

Postfix's and Exim's LMTP clients prefer a socket to a port: no port to guard, and the
socket's mode and owner (`[smtp] socket_mode`, `socket_owner`) say who may deliver.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import stat
from collections.abc import Callable

from .errors import ConfigError

log = logging.getLogger(__name__)


def bind(path: str, mode: str, owner: str) -> tuple[socket.socket, int]:
    """The socket at `path`, bound, with its owner and mode, not yet listening; and the
    inode of the file it made (`remove` takes only that one away).

    Bound here rather than by asyncio's create_unix_server, which removes any socket
    file at the path first, a live daemon's too.  Nothing can connect before the
    listen() that follows, so no client ever sees the socket with the umask's mode.
    """
    where = f"[smtp] listen = unix:{path}"
    folder = os.path.dirname(path) or "."
    # Not created here: under /run it is systemd's RuntimeDirectory= (docs/deploy.md),
    # whose owner and mode are the service's; a folder we made as root would not be.
    if not os.path.isdir(folder):
        raise ConfigError(
            f"{where}: the folder {folder} does not exist (create it, or let systemd's "
            "RuntimeDirectory= make it)"
        )
    uid, gid = _owner(owner)  # an unknown name fails before any file is made
    _clear_stale_socket(path, where)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)  # EADDRINUSE if a socket appeared meanwhile
    except BaseException:
        sock.close()
        raise
    inode = os.stat(path).st_ino
    try:
        if (uid, gid) != (-1, -1):
            try:
                os.chown(path, uid, gid)
            except PermissionError as exc:
                raise ConfigError(
                    f"[smtp] socket_owner = {owner!r}: cannot give {path} to it: "
                    f"{exc.strerror} (only root gives a file away; a daemon running as its "
                    "user may choose a group it is a member of)"
                ) from None
        os.chmod(path, int(mode, 8))
    except BaseException:
        sock.close()
        remove(path, inode)
        raise
    return sock, inode


def remove(path: str, inode: int) -> None:
    """Remove the socket file `bind` made; not one that has replaced it since."""
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)


def _owner(owner: str) -> tuple[int, int]:
    """`[smtp] socket_owner` ("user", "user:group", ":group"; names or numbers) as
    (uid, gid), -1 for a part not given (os.chown leaves it)."""
    user, _, group = owner.partition(":")

    def find(name: str, kind: str, lookup: Callable[[str], int]) -> int:
        if not name:
            return -1
        if name.isdigit():
            return int(name)
        try:
            return lookup(name)
        except KeyError:
            raise ConfigError(
                f"[smtp] socket_owner = {owner!r}: no {kind} {name!r} on this machine"
            ) from None

    return (
        find(user, "user", lambda n: pwd.getpwnam(n).pw_uid),
        find(group, "group", lambda n: grp.getgrnam(n).gr_gid),
    )


def _clear_stale_socket(path: str, where: str) -> None:
    """Remove a socket file left by a daemon that was killed; leave anything else.

    A socket that refuses connections has no server: it goes.  One that answers (or
    keeps us waiting) is another daemon's: EADDRINUSE, as for a TCP port in use.  A path
    that is not a socket is never removed.  When we cannot tell (no permission to
    connect), the file stays and bind() fails with EADDRINUSE.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(
            f"{where}: {path} exists and is not a socket (left alone: remove it or listen elsewhere)"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            log.info("removed the stale socket %s (no server answers on it)", path)
            return
        except TimeoutError:  # a server whose backlog is full: busy, not gone
            pass
        except OSError:
            return
    raise OSError(errno.EADDRINUSE, f"another server answers on {path}")
