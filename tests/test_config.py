"""Configuration: defaults, and errors that name the file and the key."""

from __future__ import annotations

import pytest

from mailticket import config
from mailticket.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "mailticket.toml"
    p.write_text(text)
    return p


def test_empty_file_gives_defaults_and_relative_paths_anchor_at_the_file(tmp_path):
    cfg = config.load(write(tmp_path, ""))
    assert cfg.helpdesk.token == "[#{number}]"
    assert cfg.outgoing.transport == "folder"
    assert cfg.database.url == f"sqlite:///{tmp_path}/var/mailticket.db"
    assert cfg.paths.rules == str(tmp_path / "rules")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[helpdesk]\nadress = 'x@y'\n", "[helpdesk] unknown key 'adress'"),
        ("[smtp]\nmax_size = 'big'\n", "[smtp] max_size: expected an integer"),
        ("[smtp]\nlmtp = 'yes'\n", "[smtp] lmtp: expected true or false"),
        ("[outgoing]\ntransport = 'pigeon'\n", "[outgoing] transport: must be one of folder, smtp"),
        ("[helpdesk]\ntimezone = 'Mars/Base'\n", "[helpdesk] timezone: unknown time zone"),
        ("[helpdesk]\ntoken = '[#]'\n", "[helpdesk] token: must contain {number}"),
        ("[database]\nurl = 'mysql://x'\n", "[database] url"),
        ("[sla]\nfirst_response = {P9 = 3}\n", "unknown priority 'P9'"),
        ("[smpt]\n", "unknown section [smpt]"),
        ("[helpdesk\n", "not valid TOML"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_imap_sections_and_ours(tmp_path):
    cfg = config.load(
        write(
            tmp_path,
            """
[helpdesk]
address = "help@desk.test"
aliases = ["sales@desk.test"]
[smtp]
domains = ["support.test"]
[[imap]]
host = "imap.test"
user = "u"
password_env = "PW"
""",
        )
    )
    assert cfg.imap[0].host == "imap.test" and cfg.imap[0].port == 993
    assert cfg.is_ours("SALES@desk.test") and cfg.accepts("anyone@support.test")
    assert not cfg.is_ours("alice@customer.test") and not cfg.accepts("alice@customer.test")
    # Accepting a domain's recipients says nothing about its senders: staff are customers.
    assert not cfg.is_ours("anyone@support.test")
    # RFC 5321 4.5.1: postmaster at our domains, and bare, is always accepted.
    assert cfg.accepts("postmaster@desk.test") and cfg.accepts("<Postmaster>")
    assert cfg.accepts("postmaster@support.test") and not cfg.accepts("postmaster@other.test")


def test_missing_named_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="mailticket init"):
        config.load(tmp_path / "nope.toml")


def test_secret_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PW_TEST", "s3cret")
    assert config.read_secret("PW_TEST", "", "[imap]") == "s3cret"
    (tmp_path / "pw").write_text("fromfile\n")
    assert config.read_secret("", str(tmp_path / "pw"), "[imap]") == "fromfile"
    with pytest.raises(ConfigError, match="NOPE_PW is not set"):
        config.read_secret("NOPE_PW", "", "[imap]")


def test_oauth2_smarthost_needs_the_account_name(tmp_path):
    data = {
        "outgoing": {"transport": "smtp", "auth": "xoauth2", "oauth": "m365"},
        "oauth": {"m365": {"provider": "microsoft", "client_id": "app"}},
    }
    with pytest.raises(ConfigError, match=r"\[outgoing\] username: required with auth = 'xoauth2'"):
        config.from_dict(data, tmp_path / "mailticket.toml")
    data["outgoing"]["username"] = "support@example.com"
    assert config.from_dict(data, tmp_path / "mailticket.toml").outgoing.oauth == "m365"
