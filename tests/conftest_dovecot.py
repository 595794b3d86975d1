"""Pytest plugin: a private Dovecot for the IMAP tests (registered in conftest.py).

`dovecot_server` starts one Dovecot per test session and stops it at the end;
`dovecot` gives each test a user of its own on it (an empty INBOX) and makes sure
the server is up, even if an earlier test stopped it.  `dovecot_tls` is another
server, started only for the tests that take it, that speaks STARTTLS and TLS.  Dovecot is required, never
skipped: `make test-deps` installs it.

`dovecot_oauth` is a server that also takes SASL XOAUTH2 and OAUTHBEARER, checking
each access token with `oauth_mail_provider` (tests/oauth_provider.py, on loopback),
the provider a test grants its refresh tokens from.  Both live for a test module: a
test gets a user of its own with `dovecot_oauth.account()`, and counts the provider's
requests by its own refresh token.
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


@pytest.fixture(scope="module")
def oauth_mail_provider():
    """The loopback OAuth2 provider whose tokens `dovecot_oauth` accepts."""
    from oauth_provider import Provider

    provider = Provider().start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="module")
def dovecot_oauth(oauth_mail_provider) -> Dovecot:
    """A Dovecot whose oauth2 passdb asks `oauth_mail_provider` about every token (RFC 7662)."""
    server = Dovecot(oauth2_introspection_url=oauth_mail_provider.introspect_url)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
