"""Who may act as an agent (auth.py and the pipeline's `authenticate` step).

Signed reply addresses round-trip and refuse a tampered MAC, another From and an
expired date; Authentication-Results count only when topmost from our authserv-id;
plus-addressed helpdesk addresses are accepted; through a real ingest, an agent's
mail is "agent" only with a proof, else "forged" (a `security` event, a WARNING);
`init` writes the secret with mode 0600 and the config reads it.
"""

from __future__ import annotations

import logging
import stat
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from mailticket import auth, config
from mailticket.cli import main

from mails import mail

SECRET = b"s3cret-for-tests"
HD = "support@helpdesk.test"
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
LATER = NOW + timedelta(days=30)


def signed(ticket=1, agent="bob@agents.test", purpose="reply", expires=LATER, secret=SECRET) -> str:
    return auth.reply_address(HD, ticket=ticket, agent=agent, purpose=purpose, expires=expires, secret=secret)


# --- signed reply addresses ---------------------------------------------------------------


def test_reply_address_round_trip():
    address = signed(ticket=123, purpose="note")
    local, _, domain = address.partition("@")
    assert domain == "helpdesk.test" and local.startswith("support+n.123.")
    assert len(local) <= 64 and local == local.lower()  # RFC 5321 4.5.3.1.1
    got = auth.verify(["alice@x.test", address], "Bob@Agents.test", now=NOW, secret=SECRET,
                      helpdesk_address=HD)
    assert got == auth.Signed("note", 123, LATER.replace(microsecond=0), True, "")
    # No tag of ours: None (another helpdesk's tag, a plain address).
    other = address.replace("helpdesk.test", "elsewhere.test")
    assert auth.verify([HD, other], "bob@agents.test", now=NOW, secret=SECRET, helpdesk_address=HD) is None


@pytest.mark.parametrize(
    "case, why",
    [("tampered", auth.BAD), ("other sender", auth.BAD), ("other secret", auth.BAD),
     ("expired", auth.EXPIRED)],
)
def test_a_signature_that_does_not_hold_says_why(case, why):
    address, sender, now = signed(ticket=7), "bob@agents.test", NOW
    if case == "tampered":
        address = address.replace("+r.7.", "+r.8.")  # the MAC was for ticket 7
    elif case == "other sender":
        sender = "mallory@agents.test"
    elif case == "other secret":
        address = signed(ticket=7, secret=b"another")
    else:
        now = LATER + timedelta(seconds=1)
    got = auth.verify([address], sender, now=now, secret=SECRET, helpdesk_address=HD)
    assert got is not None and not got.valid and got.why == why


# --- Authentication-Results ---------------------------------------------------------------

OURS = "mx.helpdesk.test"


@pytest.mark.parametrize(
    "headers, expected",
    [
        ([f"{OURS}; dkim=pass header.d=agents.test header.b=abc"], True),
        ([f"{OURS}; dkim=pass header.d=agents.test"], True),
        ([f"{OURS}; dkim=pass header.d=mail.agents.test"], False),  # a child is not aligned
        ([f"{OURS}; dkim=pass header.d=evil.test; spf=pass smtp.mailfrom=bob@agents.test"], False),
        ([f"{OURS}; dkim=fail header.d=agents.test"], False),
        ([f"{OURS}; dmarc=pass header.from=agents.test"], True),
        ([f"{OURS}; dmarc=fail header.from=agents.test"], False),
        (["mx.evil.test; dkim=pass header.d=agents.test"], False),  # another authserv-id
        # Ours on top says none: a lower "ours" (the sender's forgery) does not count.
        ([f"{OURS}; dkim=none", f"{OURS}; dkim=pass header.d=agents.test"], False),
        # Another's on top is skipped; ours below it is the topmost of ours.
        (["mx.relay.test; none", f"{OURS}; dkim=pass header.d=agents.test"], True),
        ([f"{OURS}; ;;garbage", f"{OURS}; dkim=pass header.d=agents.test"], False),
        ([], False),
    ],
)
def test_authentication_results_topmost_of_ours(headers, expected):
    assert auth.aligned(headers, authserv_id=OURS, domain="agents.test") is expected


def test_a_parent_domain_aligns_and_an_empty_authserv_id_trusts_nothing():
    header = [f"{OURS}; dkim=pass header.d=agents.test"]
    assert auth.aligned(header, authserv_id=OURS, domain="eu.agents.test")
    assert not auth.aligned(header, authserv_id="", domain="agents.test")


def test_plus_addressed_helpdesk_address_is_accepted(tmp_path):
    path = tmp_path / "mailticket.toml"
    path.write_text('[helpdesk]\naddress = "support@helpdesk.test"\n', encoding="utf-8")
    cfg = config.load(path)
    assert cfg.accepts(signed()) and cfg.accepts("Support+anything@helpdesk.test")
    assert not cfg.accepts("other+support@helpdesk.test") and not cfg.accepts("support+x@elsewhere.test")


# --- the pipeline's verdicts --------------------------------------------------------------


@pytest.fixture
def desk(helpdesk, tmp_path, monkeypatch):
    """A helpdesk with a secret file, an agent Bob, and ticket #1 from a customer."""
    monkeypatch.delenv("MAILTICKET_AGENT_SECRET", raising=False)
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    helpdesk.write_config(f'[agents]\nsecret_file = "{tmp_path / "secret"}"\nauthserv_id = "{OURS}"\n')
    res = helpdesk.cli("agents", "add", "bob@agents.test", "--name", "Bob")
    assert res.exit_code == 0, res.output
    [first] = helpdesk.ingest(mail())
    assert first["outcome"] == "created" and first["ticket"] == 1
    return helpdesk


def security_events(helpdesk, number=1) -> list[dict]:
    return [e for e in helpdesk.show(number)["events"] if e["kind"] == "security"]


def agent_mail(to=HD, sender="Bob <bob@agents.test>", **kw) -> bytes:
    return mail(sender=sender, to=to, subject="Re: [#1] Printer is broken", body="Try again.\n", **kw)


def test_an_agent_with_a_signed_address_is_the_agent(desk):
    expires = datetime.now(timezone.utc) + timedelta(days=30)
    [res] = desk.ingest(agent_mail(to=signed(expires=expires)))
    assert "auth: agent bob@agents.test (signed reply address)" in res["reason"]
    assert security_events(desk) == []


def test_aligned_authentication_results_stand_in_for_a_signature(desk):
    results = f"{OURS}; dkim=pass header.d=agents.test"
    [res] = desk.ingest(agent_mail(headers={"Authentication-Results": results}))
    assert "auth: agent bob@agents.test (Authentication-Results of mx.helpdesk.test)" in res["reason"]


def test_an_agents_from_without_a_signature_is_forged(desk, caplog):
    caplog.set_level(logging.WARNING, logger="mailticket.agentmail")
    [res] = desk.ingest(agent_mail())
    assert "auth: forged agent mail from bob@agents.test: no signed reply address" in res["reason"]
    [event] = security_events(desk)
    assert event["detail"]["verdict"] == "forged" and event["detail"]["sender"] == "bob@agents.test"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("forged agent mail from bob@agents.test" in w for w in warnings), warnings


@pytest.mark.parametrize("who", ["stranger", "agent"])
def test_a_signature_for_another_from_is_forged(desk, who):
    """Bob's reply address, used by a stranger (a leaked notification) or by another agent."""
    if who == "agent":
        assert desk.cli("agents", "add", "carol@agents.test", "--name", "Carol").exit_code == 0
    sender = {"stranger": "mallory@evil.test", "agent": "carol@agents.test"}[who]
    expires = datetime.now(timezone.utc) + timedelta(days=30)
    [res] = desk.ingest(agent_mail(to=signed(expires=expires), sender=sender))
    assert f"auth: forged agent mail from {sender}: {auth.BAD}" in res["reason"]
    [event] = security_events(desk)
    assert event["detail"]["sender"] == sender and event["detail"]["why"] == auth.BAD


def test_an_expired_signature_is_forged(desk):
    [res] = desk.ingest(agent_mail(to=signed(expires=datetime.now(timezone.utc) - timedelta(days=1))))
    assert "auth: forged agent mail from bob@agents.test: expired" in res["reason"]
    assert len(security_events(desk)) == 1


def test_a_customer_stays_a_customer(desk):
    [res] = desk.ingest(mail(subject="Re: [#1] Printer is broken"))
    assert res["outcome"] == "appended" and "auth:" not in (res["reason"] or "")


def test_an_agent_in_the_helpdesks_domain_is_not_our_own_mail(helpdesk, tmp_path, monkeypatch):
    monkeypatch.delenv("MAILTICKET_AGENT_SECRET", raising=False)
    (tmp_path / "secret").write_bytes(SECRET)
    helpdesk.write_config(
        f'[smtp]\ndomains = ["helpdesk.test"]\n[agents]\nsecret_file = "{tmp_path / "secret"}"\n'
    )
    assert helpdesk.cli("agents", "add", "alice@helpdesk.test", "--name", "Alice").exit_code == 0
    [first] = helpdesk.ingest(mail())
    expires = datetime.now(timezone.utc) + timedelta(days=30)
    [res] = helpdesk.ingest(agent_mail(sender="alice@helpdesk.test", to=signed(agent="alice@helpdesk.test",
                                                                                 expires=expires)))
    assert res["outcome"] == "agent-reply" and res["ticket"] == first["ticket"]
    assert "auth: agent alice@helpdesk.test" in res["reason"]
    # The helpdesk's own address is still our own mail, never an agent.
    [own] = helpdesk.ingest(mail(sender=HD, subject="loop"))
    assert own["outcome"] == "suppressed" and "auth:" not in own["reason"]


# --- the secret -------------------------------------------------------------------------


def test_init_writes_a_private_secret_that_the_config_reads(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILTICKET_AGENT_SECRET", raising=False)
    hd = tmp_path / "hd"
    res = CliRunner().invoke(main, ["init", str(hd)])
    assert res.exit_code == 0, res.output
    path = hd / "var" / "agent-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = config.load(hd / "mailticket.toml")
    assert cfg.agents.secret_file == str(path)
    secret = auth.secret(cfg)
    assert len(secret) >= 32 and secret == path.read_text().strip().encode()
    # init again keeps it: a new secret would void every reply address already sent.
    assert CliRunner().invoke(main, ["init", str(hd), "--force"]).exit_code == 0
    assert auth.secret(cfg) == secret
    # The environment variable, when set, wins over the file.
    monkeypatch.setenv("MAILTICKET_AGENT_SECRET", "from-env")
    assert auth.secret(cfg) == b"from-env"


def test_no_secret_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILTICKET_AGENT_SECRET", raising=False)
    cfg = config.from_dict({}, tmp_path / "mailticket.toml")
    with pytest.raises(config.ConfigError, match="no signing secret"):
        auth.secret(cfg)
