"""IMAP and the outgoing smarthost signed in with OAuth2 (SASL XOAUTH2 / OAUTHBEARER).

Real servers on loopback: a Dovecot whose oauth2 passdb asks the test OAuth2 provider
(tests/oauth_provider.py) about every token (RFC 7662 introspection), and an aiosmtpd
smarthost that takes only XOAUTH2 and OAUTHBEARER and asks the same provider.  The
provider's side of the story is driven from here: `expire_access_tokens()` is a token
that our cache still thinks good, `revoke()` a refresh token that is no more.  What is
checked is what a helpdesk cares about: the mail is stored or sent, nothing is lost
while the sign-in is broken, and the error says what to do.
"""

from __future__ import annotations

import asyncio
import base64
import email
import json
import logging
import signal
import smtplib
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
from aiosmtpd.smtp import MISSING, AuthResult
from helpers import wait_for
from mails import mail
from test_outbox import Sink, Smarthost

from mailticket import oauth, outbox
from mailticket.clock import FrozenClock, SystemClock
from mailticket.config import Config, Imap, OAuth, Outgoing
from mailticket.db import open_database
from mailticket.errors import MailticketError
from mailticket.imap import ImapPoller
from mailticket.models import Inbox, Outbox
from mailticket.notify import Rendered, queue
from mailticket.smarthost import SmtpTransport

# Named as the password source of every OAuth2 config here, and never set: reading a
# password when the sign-in is OAuth2 would raise ConfigError.
UNSET_ENV = "MAILTICKET_TEST_NO_SUCH_PASSWORD"
SMTP_USER = "helpdesk@helpdesk.test"
LOGIN_HINT = "mailticket oauth login mail"


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.delenv(UNSET_ENV, raising=False)
    database = open_database(f"sqlite:///{tmp_path / 'mailticket.db'}")
    yield database
    database.close()


@pytest.fixture
def provider(oauth_mail_provider):
    return oauth_mail_provider


@pytest.fixture
def oauth_cfg(provider, tmp_path) -> OAuth:
    """`[oauth.mail]` at the loopback provider; the token file is this test's own."""
    return OAuth(
        provider="custom",
        client_id=provider.client_id,
        token_url=provider.token_url,
        token_file=str(tmp_path / "oauth" / "mail.json"),
    )


def sign_in(provider, cfg: OAuth, user: str) -> str:
    """What `mailticket oauth login` leaves behind: a refresh token in the token file."""
    refresh_token = provider.grant(user)
    oauth.write_token_file(cfg.token_file, {"refresh_token": refresh_token})
    return refresh_token


def refreshes(provider, refresh_token: str) -> int:
    return provider.count("/token", grant_type="refresh_token", refresh_token=refresh_token)


def mails(n: int, prefix: str) -> list[bytes]:
    return [mail(subject=f"{prefix} {i}", message_id=f"<{prefix}{i}@customer.test>") for i in range(n)]


def stored() -> list[str]:
    return [email.message_from_bytes(bytes(r.raw))["Message-ID"] for r in Inbox.select().order_by(Inbox.id)]


# --- IMAP against Dovecot's oauth2 passdb ----------------------------------------------


def poller(box, cfg: OAuth, auth: str = "xoauth2") -> ImapPoller:
    imap = Imap(
        host=box.host,
        port=box.port,
        tls="none",
        user=box.user,
        auth=auth,
        oauth="mail",
        password_env=UNSET_ENV,
    )
    p = ImapPoller(imap, SystemClock(), oauth=cfg)
    p.backoff_min, p.backoff_max = 0.05, 0.5
    return p


@pytest.mark.parametrize("auth", ["xoauth2", "oauthbearer"])
def test_imap_signs_in_with_an_access_token(dovecot_oauth, provider, oauth_cfg, db, auth):
    box = dovecot_oauth.account()
    rt = sign_in(provider, oauth_cfg, box.user)
    box.append_many(mails(3, auth))
    p = poller(box, oauth_cfg, auth)
    assert p.poll_once() == 3
    assert stored() == [f"<{auth}{i}@customer.test>" for i in range(3)]
    assert box.unseen() == []
    assert refreshes(provider, rt) == 1
    box.append(mail(message_id=f"<{auth}-later@customer.test>"))
    assert p.poll_once() == 1  # the same connection: no new token needed
    p.close()
    assert refreshes(provider, rt) == 1
    # Dovecot says which mechanism signed the user in: not the test side's PLAIN.
    assert f"user=<{box.user}>, method={auth.upper()}" in dovecot_oauth.log.read_text()


def test_imap_refreshes_a_token_the_server_refuses(dovecot_oauth, provider, oauth_cfg, db):
    box = dovecot_oauth.account()
    rt = sign_in(provider, oauth_cfg, box.user)
    p = poller(box, oauth_cfg)
    assert p.poll_once() == 0
    p.close()
    provider.expire_access_tokens()  # our cache still has it as good for an hour
    box.append_many(mails(2, "expired"))
    assert p.poll_once() == 2  # refused once, refreshed, signed in
    p.close()
    assert stored() == ["<expired0@customer.test>", "<expired1@customer.test>"]
    assert refreshes(provider, rt) == 2
    assert box.unseen() == []


def test_imap_with_a_revoked_refresh_token_loses_nothing(dovecot_oauth, provider, oauth_cfg, db):
    box = dovecot_oauth.account()
    rt = sign_in(provider, oauth_cfg, box.user)
    p = poller(box, oauth_cfg, "oauthbearer")
    box.append(mail(message_id="<before@customer.test>"))
    assert p.poll_once() == 1
    p.close()
    provider.revoke(rt)
    provider.expire_access_tokens()
    box.append_many(mails(2, "meanwhile"))
    with pytest.raises(MailticketError) as failed:
        p.poll_once()
    text = str(failed.value)
    assert "refused the refresh token" in text and LOGIN_HINT in text
    assert stored() == ["<before@customer.test>"]
    assert len(box.unseen()) == 2  # untouched on the server
    with pytest.raises(MailticketError, match=LOGIN_HINT):
        p.poll_once()  # still no way in, still nothing lost
    assert len(box.unseen()) == 2

    rt = sign_in(provider, oauth_cfg, box.user)  # the administrator signs in again
    assert p.poll_once() == 2
    p.close()
    assert stored() == ["<before@customer.test>", "<meanwhile0@customer.test>", "<meanwhile1@customer.test>"]
    assert box.unseen() == [] and refreshes(provider, rt) == 1


def test_imap_run_loop_waits_out_a_revoked_token(dovecot_oauth, provider, oauth_cfg, db, caplog):
    """The daemon's loop logs the sign-in failure, backs off, and catches up after a new login."""
    box = dovecot_oauth.account()
    rt = sign_in(provider, oauth_cfg, box.user)
    provider.revoke(rt)
    box.append_many(mails(2, "loop"))
    p = poller(box, oauth_cfg)
    stop = threading.Event()
    thread = threading.Thread(target=p.run, args=(stop,), daemon=True)
    with caplog.at_level(logging.WARNING, logger="mailticket.imap"):
        thread.start()
        try:
            wait_for(
                lambda: sum(LOGIN_HINT in r.getMessage() for r in caplog.records) >= 2,
                10,
                "two logged sign-in failures",
            )
            assert len(box.unseen()) == 2
            sign_in(provider, oauth_cfg, box.user)
            wait_for(lambda: len(box.unseen()) == 0, 10, "the poller to catch up")
        finally:
            stop.set()
            thread.join(timeout=10)
    assert not thread.is_alive()
    assert stored() == ["<loop0@customer.test>", "<loop1@customer.test>"]


def test_imap_a_fresh_token_refused_too_names_the_mailbox(dovecot_oauth, provider, oauth_cfg, db):
    box = dovecot_oauth.account()
    rt = sign_in(provider, oauth_cfg, "someone-else@test")  # signed in as the wrong user
    box.append(mail(message_id="<wrong-user@customer.test>"))
    p = poller(box, oauth_cfg)
    with pytest.raises(MailticketError) as failed:
        p.poll_once()
    text = str(failed.value)
    assert box.user in text and "refused a newly refreshed access token" in text
    assert refreshes(provider, rt) == 2  # one retry with a fresh token, no more
    assert len(box.unseen()) == 1 and stored() == []


# --- the outgoing smarthost ------------------------------------------------------------


class OAuthSink(Sink):
    """A smarthost's handler that takes AUTH XOAUTH2 and OAUTHBEARER and nothing else.

    Each token is checked at the provider's introspection endpoint.  A refused one gets
    the error challenge (Google's XOAUTH2 document, RFC 7628 3.2.3), whose answer is
    recorded, then 535.  MAIL before a successful AUTH gets 530.
    """

    def __init__(self, introspect_url: str) -> None:
        super().__init__()
        self.introspect_url = introspect_url
        self.logins: list[tuple[str, str, bool]] = []  # (mechanism, user, accepted)
        self.after_error: list[bytes] = []  # the client's answers to the error challenge

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def auth_XOAUTH2(self, server, args):
        return await self._bearer(server, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server, args):
        return await self._bearer(server, args, "OAUTHBEARER")

    async def _bearer(self, server, args, mechanism: str) -> AuthResult:
        if len(args) == 2:
            blob = base64.b64decode(args[1])
        else:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        head, *pairs = blob.decode().split("\x01")
        fields = dict(p.split("=", 1) for p in pairs if p)
        if mechanism == "XOAUTH2":
            user = head.removeprefix("user=")
        else:  # the GS2 header: "n,a=USER,"
            user = head.split(",")[1].removeprefix("a=")
        token = fields.get("auth", "").removeprefix("Bearer ")
        answer = await asyncio.get_running_loop().run_in_executor(None, self._introspect, token)
        accepted = bool(answer.get("active")) and answer.get("username") == user
        self.logins.append((mechanism, user, accepted))
        if accepted:
            return AuthResult(success=True, auth_data=user)
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"})
        reply = await server.challenge_auth(error)
        if reply is MISSING:  # "*": aiosmtpd has answered 501
            return AuthResult(success=False, handled=True)
        self.after_error.append(reply)
        return AuthResult(success=False, handled=False)  # 535 5.7.8

    def _introspect(self, token: str) -> dict:
        body = urllib.parse.urlencode({"token": token}).encode()
        with urllib.request.urlopen(self.introspect_url, body, timeout=10) as answer:
            return json.load(answer)


@pytest.fixture
def smarthosts(provider):
    """Start OAuth2-only smarthosts (`exclude`: mechanisms not to offer); all stopped at the end."""
    started: list[Smarthost] = []

    def start(exclude: tuple[str, ...] = ()) -> Smarthost:
        host = Smarthost(auth_require_tls=False, auth_exclude_mechanism=["PLAIN", "LOGIN", *exclude])
        host.sink = OAuthSink(provider.introspect_url)
        host.start()
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()


@pytest.fixture
def clock(db):
    return FrozenClock()


def smtp_config(host: Smarthost, cfg: OAuth, auth: str = "xoauth2") -> Config:
    outgoing = Outgoing(
        transport="smtp",
        host="127.0.0.1",
        port=host.port,
        username=SMTP_USER,
        auth=auth,
        oauth="mail",
        password_env=UNSET_ENV,
        retry_base_seconds=60,
    )
    return Config(outgoing=outgoing, oauth={"mail": cfg})


def transport(config: Config) -> SmtpTransport:
    """The transport as outbox.transport_for should build it, with the [oauth.NAME] table."""
    return SmtpTransport(config.outgoing, config.oauth[config.outgoing.oauth])


def queue_mail(clock, n: int) -> int:
    return queue(
        kind="ack",
        ticket=n,
        mail_from="support@helpdesk.test",
        to=f"c{n}@customer.test",
        rendered=Rendered(f"[#{n}] Hi", "Body\n"),
        headers={},
        message_id=f"<oauth{n}@helpdesk.test>",
        now=clock.now(),
        automatic=True,
    )


def states() -> list[tuple[str, int]]:
    return [(r.state, r.attempts) for r in Outbox.select().order_by(Outbox.id)]


@pytest.mark.parametrize("auth", ["xoauth2", "oauthbearer"])
def test_outbox_delivers_through_an_oauth2_smarthost(smarthosts, provider, oauth_cfg, clock, auth):
    host = smarthosts()
    rt = sign_in(provider, oauth_cfg, SMTP_USER)
    config = smtp_config(host, oauth_cfg, auth)
    queue_mail(clock, 1)
    queue_mail(clock, 2)
    t = transport(config)
    done = outbox.deliver_due(config, clock, t)
    t.close()
    assert (done.sent, done.transport_error) == (2, None)
    assert states() == [("sent", 1), ("sent", 1)]
    assert host.sink.logins == [(auth.upper(), SMTP_USER, True)]  # one login for the pass
    assert [rcpts for _, _, rcpts in host.sink.envelopes] == [["c1@customer.test"], ["c2@customer.test"]]
    assert refreshes(provider, rt) == 1


@pytest.mark.parametrize(("auth", "answer"), [("xoauth2", b""), ("oauthbearer", b"\x01")])
def test_outbox_refreshes_a_token_the_smarthost_refuses(smarthosts, provider, oauth_cfg, clock, auth, answer):
    host = smarthosts()
    rt = sign_in(provider, oauth_cfg, SMTP_USER)
    config = smtp_config(host, oauth_cfg, auth)
    t = transport(config)
    queue_mail(clock, 1)
    assert outbox.deliver_due(config, clock, t).sent == 1
    t.close()  # the next pass signs in again
    provider.expire_access_tokens()
    queue_mail(clock, 2)
    done = outbox.deliver_due(config, clock, t)
    t.close()
    assert (done.sent, done.transport_error) == (1, None)
    mech = auth.upper()
    assert host.sink.logins == [(mech, SMTP_USER, True), (mech, SMTP_USER, False), (mech, SMTP_USER, True)]
    assert host.sink.after_error == [answer]  # the error challenge answered as the mechanism says
    assert refreshes(provider, rt) == 2
    assert states() == [("sent", 1), ("sent", 1)]


def test_outbox_with_a_revoked_refresh_token_keeps_the_queue(smarthosts, provider, oauth_cfg, clock):
    host = smarthosts()
    rt = sign_in(provider, oauth_cfg, SMTP_USER)
    config = smtp_config(host, oauth_cfg)
    t = transport(config)  # kept across passes, as the daemon keeps it
    queue_mail(clock, 1)
    assert outbox.deliver_due(config, clock, t).sent == 1
    t.close()
    provider.revoke(rt)
    provider.expire_access_tokens()
    queue_mail(clock, 2)
    queue_mail(clock, 3)
    done = outbox.deliver_due(config, clock, t)
    assert (done.sent, done.retry, done.dead) == (0, 0, 0)
    assert "refused the refresh token" in done.transport_error and LOGIN_HINT in done.transport_error
    assert t.outage.error == done.transport_error  # what /healthz shows
    assert states() == [("sent", 1), ("queued", 0), ("queued", 0)]

    clock.advance(hours=1)  # past the transport's backoff: tried again, still revoked
    assert LOGIN_HINT in outbox.deliver_due(config, clock, t).transport_error
    assert states()[1:] == [("queued", 0), ("queued", 0)]

    rt = sign_in(provider, oauth_cfg, SMTP_USER)
    clock.advance(hours=1)
    done = outbox.deliver_due(config, clock, t)
    t.close()
    assert (done.sent, done.transport_error) == (2, None)
    assert states() == [("sent", 1)] * 3 and refreshes(provider, rt) == 1
    assert len(host.sink.received) == 3


def test_outbox_a_fresh_token_refused_too_is_the_transports_failure(smarthosts, provider, oauth_cfg, clock):
    host = smarthosts()
    rt = sign_in(provider, oauth_cfg, "someone-else@helpdesk.test")  # the wrong user's token
    config = smtp_config(host, oauth_cfg)
    queue_mail(clock, 1)
    done = outbox.deliver_due(config, clock, transport(config))
    error = done.transport_error
    assert error.startswith("535") and "refused a newly refreshed access token" in error
    assert [ok for _, _, ok in host.sink.logins] == [False, False] and refreshes(provider, rt) == 2
    assert states() == [("queued", 0)]


def test_outbox_a_mechanism_the_smarthost_does_not_offer(smarthosts, provider, oauth_cfg, clock):
    host = smarthosts(exclude=("OAUTHBEARER",))
    rt = sign_in(provider, oauth_cfg, SMTP_USER)
    config = smtp_config(host, oauth_cfg, "oauthbearer")
    queue_mail(clock, 1)
    done = outbox.deliver_due(config, clock, transport(config))
    assert "does not offer AUTH OAUTHBEARER (it offers: XOAUTH2)" in done.transport_error
    assert refreshes(provider, rt) == 0 and host.sink.logins == []  # no token spent on it
    assert states() == [("queued", 0)]


def test_the_smarthost_refuses_a_wrong_token_with_an_error_challenge(smarthosts, provider):
    """The test smarthost itself behaves like Google's and Microsoft's."""
    host = smarthosts()
    good = provider.issue_access(SMTP_USER)

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    with smtplib.SMTP("127.0.0.1", host.port, timeout=10) as client:
        client.ehlo()
        assert set(client.esmtp_features["auth"].split()) == {"XOAUTH2", "OAUTHBEARER"}
        assert client.docmd("MAIL", "FROM:<a@helpdesk.test>")[0] == 530
        code, challenge = client.docmd("AUTH", "XOAUTH2 " + b64(oauth.xoauth2(SMTP_USER, "at-wrong")))
        assert code == 334 and json.loads(base64.b64decode(challenge))["status"] == "401"
        assert client.docmd("")[0] == 535
        bearer = oauth.oauthbearer(SMTP_USER, "127.0.0.1", host.port, "at-wrong")
        assert client.docmd("AUTH", "OAUTHBEARER " + b64(bearer))[0] == 334
        assert client.docmd(b64("\x01"))[0] == 535
        # A good token of another user is refused as well.
        other = provider.issue_access("someone-else@helpdesk.test")
        assert client.docmd("AUTH", "XOAUTH2 " + b64(oauth.xoauth2(SMTP_USER, other)))[0] == 334
        assert client.docmd("")[0] == 535
        assert client.docmd("AUTH", "XOAUTH2 " + b64(oauth.xoauth2(SMTP_USER, good)))[0] == 235
        assert client.docmd("MAIL", "FROM:<a@helpdesk.test>")[0] == 250
    assert host.sink.after_error == [b"", b"\x01", b""]


# --- the daemon: a revoked refresh token in /healthz, and nothing lost ------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_daemon_shows_a_revoked_mailbox_failing_and_catches_up_after_a_new_login(
    dovecot_oauth, provider, helpdesk, tmp_path, monkeypatch
):
    from test_daemon import DaemonProc

    monkeypatch.delenv(UNSET_ENV, raising=False)
    box = dovecot_oauth.account()
    token_file = tmp_path / "oauth" / "mail.json"
    cfg = OAuth(
        provider="custom",
        client_id=provider.client_id,
        token_url=provider.token_url,
        token_file=str(token_file),
    )
    first_rt = sign_in(provider, cfg, box.user)
    d = DaemonProc(helpdesk)
    d.configure(f"""
        [[imap]]
        host = "{box.host}"
        port = {box.port}
        tls = "none"
        user = "{box.user}"
        auth = "xoauth2"
        oauth = "mail"
        history_days = 0
        [oauth.mail]
        provider = "custom"
        client_id = "{provider.client_id}"
        token_url = "{provider.token_url}"
        token_file = "{token_file}"
    """)
    key = f"{box.user}@{box.host}:{box.port}/INBOX"

    def health() -> dict:
        try:
            return json.loads(d.get("/healthz"))
        except urllib.error.HTTPError as exc:  # 503 carries the same JSON
            return json.loads(exc.read())

    try:
        d.start()
        box.append(mail(subject="Signed in", message_id="<signed-in@customer.test>"))
        wait_for(lambda: box.unseen() == [] and box.uids(), 30, "the first mail taken")
        assert health()["mailboxes"][key] == {"held": True, "problem": None}

        issued = [t for t, (user, _) in provider.access.items() if user == box.user]
        assert issued  # the daemon signed in with one
        provider.revoke()  # an admin revoked the app's consent at the provider
        dovecot_oauth.restart()  # every IMAP session ends: the daemon must sign in again
        box.append(mail(subject="While revoked", message_id="<while-revoked@customer.test>"))
        # (First the restart's reset connection; then the sign-in that cannot be done.)
        failing = wait_for(
            lambda: LOGIN_HINT in ((h := health())["mailboxes"][key]["problem"] or "") and h,
            30,
            "the failure",
        )
        problem = failing["mailboxes"][key]["problem"]
        assert "refresh token" in problem and LOGIN_HINT in problem
        assert failing["problems"][f"imap {key}"] == problem
        assert failing["ok"] is True  # SMTP still takes mail
        assert len(box.unseen()) == 1  # it waits on the server
        log = d.log.read_text()
        assert first_rt not in log and not any(t in log for t in issued)  # no token logged

        sign_in(provider, cfg, box.user)  # `mailticket oauth login mail` again
        wait_for(lambda: box.unseen() == [], 60, "the waiting mail taken after the new login")
        wait_for(lambda: health()["mailboxes"][key]["problem"] is None, 30, "the mailbox healthy again")

        def subjects() -> set[str]:
            return {t["subject"] for t in json.loads(helpdesk.cli("ticket", "list", "--json").output)}

        wait_for(lambda: {"Signed in", "While revoked"} <= subjects(), 30, "both tickets")
        assert d.stop() == 0
    finally:
        d.stop(signal.SIGKILL)
