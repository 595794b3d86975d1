"""Pytest plugin: a private Dovecot for the IMAP tests (registered in conftest.py).

`dovecot_server` starts one Dovecot per test session and stops it at the end;
`dovecot` gives each test a user of its own on it (an empty INBOX) and makes sure
the server is up, even if an earlier test stopped it.  `dovecot_tls` is another
server, started only for the tests that take it, that speaks STARTTLS and TLS.  Dovecot is required, never
skipped: `make test-deps` installs it.
"""

from __future__ import annotations

import pytest
from dovecot import Account, Dovecot


@pytest.fixture(scope="session")
def dovecot_server() -> Dovecot:
    server = Dovecot()  # its own folder in /tmp: pytest's tmp_path is not readable by `nobody`
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def dovecot(dovecot_server) -> Account:
    dovecot_server.start()  # no-op when running; revives it after a failed restart test
    return dovecot_server.account()


@pytest.fixture(scope="module")
def dovecot_tls() -> Dovecot:
    """A second Dovecot offering STARTTLS and implicit TLS (self-signed: trust `cafile`)."""
    server = Dovecot(tls=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
