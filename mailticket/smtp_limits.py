"""How many clients the SMTP/LMTP listener serves at once, and a log that a flood cannot grow.

Its place in the flow (docs/architecture.md section 1): in front of the edge.  `smtp.py` asks `admit`
when a connection opens and calls `release` when it closes; past `[smtp]
max_connections` (overall) or `max_connections_per_ip` the client gets 421 and is
closed at once, so it holds a file descriptor for a moment only.

Why it matters: every connection is an open file.  Without a limit, 1,100 idle
connections under the usual 1,024 open files stop all service, and asyncio logs a
traceback for every accept() that fails with EMFILE (megabytes a second).  So the
listener also raises its soft open-file limit to the hard one, and keeps the
connection limit below it with room for the database and the logs.

All of this runs on the listener's event loop thread: no locks.
"""

from __future__ import annotations

import logging
import resource
from collections import Counter
from datetime import datetime, timedelta

from .clock import Clock

log = logging.getLogger(__name__)

REPORT_EVERY = timedelta(minutes=1)  # one refusal line per client address per minute
FD_RESERVE = 100  # open files kept for the database, the logs and the store threads


class ConnectionLimits:
    """Counts open connections, overall and per client address."""

    def __init__(self, total: int, per_ip: int, clock: Clock) -> None:
        self.total, self.per_ip, self.clock = total, per_ip, clock
        self.open: Counter[str] = Counter()
        self.count = 0
        # Client address -> (when a refusal was logged, refusals since, not logged).  Oldest
        # first, so `_forget` stops at the first entry younger than a minute.
        self.reported: dict[str, tuple[datetime, int]] = {}

    def admit(self, ip: str) -> str | None:
        """None when the client may go on (call `release` later), else the limit it hit."""
        if self.count >= self.total:
            limit = "total"
        elif self.open[ip] >= self.per_ip:
            limit = "address"
        else:
            self.count += 1
            self.open[ip] += 1
            return None
        self._report(ip, limit)
        return limit

    def release(self, ip: str) -> None:
        self.count -= 1
        self.open[ip] -= 1
        if not self.open[ip]:
            del self.open[ip]

    def _report(self, ip: str, limit: str) -> None:
        """Log a refusal once per client address per minute; count the others."""
        now = self.clock.now()
        self._forget(now)
        if ip in self.reported:
            when, since = self.reported[ip]
            self.reported[ip] = (when, since + 1)
            return
        open_now, key = (
            (self.count, "max_connections") if limit == "total" else (self.open[ip], "max_connections_per_ip")
        )
        log.warning(
            "refused a connection from %s: %d open, the [smtp] %s limit (more from it"
            " in the next minute are counted, not logged)",
            ip,
            open_now,
            key,
        )
        self.reported[ip] = (now, 0)

    def _forget(self, now: datetime) -> None:
        """Drop the addresses logged over a minute ago, with the count of what was not."""
        while self.reported:
            ip, (when, since) = next(iter(self.reported.items()))
            if now - when < REPORT_EVERY:
                break
            del self.reported[ip]
            if since:
                log.warning("refused %d more connections from %s in the minute after", since, ip)


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # a container may forbid it: keep the soft one
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


def fit_open_files(max_connections: int) -> int:
    """`max_connections`, lowered to leave FD_RESERVE open files when the limit is tighter."""
    soft = raise_open_file_limit()
    if soft == resource.RLIM_INFINITY or max_connections + FD_RESERVE <= soft:
        return max_connections
    fitted = max(soft - FD_RESERVE, 1)
    log.warning(
        "[smtp] max_connections %d lowered to %d: the open-file limit is %d", max_connections, fitted, soft
    )
    return fitted
