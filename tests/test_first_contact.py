"""An admin's first hour: where `init` writes, and no silent default configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailticket.cli import main


@pytest.fixture
def in_empty_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILTICKET_CONFIG", raising=False)
    return tmp_path


def test_init_follows_the_config_flag(in_empty_folder):
    cfg = in_empty_folder / "etc" / "mailticket" / "site.toml"
    runner = CliRunner()
    res = runner.invoke(main, ["--config", str(cfg), "init"])
    assert res.exit_code == 0, res.output
    assert cfg.is_file() and (cfg.parent / "rules").is_dir()
    assert not (in_empty_folder / "mailticket.toml").exists()  # nothing in the current folder
    res = runner.invoke(main, ["--config", str(cfg), "ticket", "list"])
    assert res.exit_code == 0, res.output


def test_init_follows_the_environment(in_empty_folder, monkeypatch):
    cfg = in_empty_folder / "srv" / "mailticket.toml"
    monkeypatch.setenv("MAILTICKET_CONFIG", str(cfg))
    runner = CliRunner()
    assert runner.invoke(main, ["init"]).exit_code == 0
    assert cfg.is_file() and not (in_empty_folder / "mailticket.toml").exists()
    assert runner.invoke(main, ["ticket", "list"]).exit_code == 0


def test_init_refuses_two_different_places(in_empty_folder):
    res = CliRunner().invoke(main, ["--config", "a/mailticket.toml", "init", "b"])
    assert res.exit_code == 2
    assert "a/mailticket.toml" in res.output and "not in b" in res.output
    assert not Path("a").exists() and not Path("b").exists()
    # The same place said twice is fine.
    res = CliRunner().invoke(main, ["--config", "c/mailticket.toml", "init", "c"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("command, code", [
    (["ticket", "list"], 1), (["run"], 1), (["outbox", "list"], 1), (["rules", "check"], 1),
    (["ingest", "-"], 75),  # behind an MTA pipe: defer the mail while the admin fixes it
])
def test_no_configuration_is_an_error_not_an_empty_helpdesk(in_empty_folder, command, code):
    res = CliRunner().invoke(main, command, input=b"")
    assert res.exit_code == code, res.output
    assert "no configuration file" in res.output and "./mailticket.toml" in res.output
    assert "mailticket init" in res.output
    assert os.listdir(in_empty_folder) == []  # no database made in the wrong folder


def test_a_named_missing_file_says_where_the_name_came_from(in_empty_folder, monkeypatch):
    res = CliRunner().invoke(main, ["--config", "nope.toml", "ticket", "list"])
    assert res.exit_code == 1 and "nope.toml (from --config)" in res.output
    monkeypatch.setenv("MAILTICKET_CONFIG", "gone.toml")
    res = CliRunner().invoke(main, ["ticket", "list"])
    assert res.exit_code == 1 and "gone.toml (from $MAILTICKET_CONFIG)" in res.output


def test_help_needs_no_configuration(in_empty_folder):
    assert CliRunner().invoke(main, ["ticket", "list", "--help"]).exit_code == 0
    assert CliRunner().invoke(main, ["--help"]).exit_code == 0


def test_every_configuration_problem_is_reported_at_once(tmp_path):
    cfg = tmp_path / "mailticket.toml"
    cfg.write_text(
        '[helpdesk]\naddress = "nobody"\ncolour = "blue"\n'
        '[smtp]\nlisten = "127.0.0.1:99999"\nmax_size = "huge"\n'
        '[outgoing]\nport = 70000\nmax_attempts = 0\n'
        '[[imap]]\nport = 0\n'
        '[daemon]\nhttp = "localhost"\n'
        '[nonsense]\n')
    res = CliRunner().invoke(main, ["--config", str(cfg), "ticket", "list"])
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if str(cfg) in line]
    wanted = ["[helpdesk] address", "[helpdesk] unknown key 'colour'", "[smtp] listen",
              "[smtp] max_size", "[outgoing] port: must be from 1 to 65535, got 70000",
              "[outgoing] max_attempts: must be at least 1", "[imap] port", "[daemon] http",
              "unknown section [nonsense]"]
    for want in wanted:
        assert any(want in line for line in lines), f"{want!r} not reported:\n{res.output}"
    assert len(lines) == len(wanted)
    assert "Traceback" not in res.output



def test_the_log_tells_each_messages_story(helpdesk, caplog):
    import logging

    from mails import mail

    caplog.set_level(logging.INFO, logger="mailticket.worker")
    first = mail(message_id="<story-1@customer.test>")
    helpdesk.ingest(first)
    helpdesk.ingest(first)  # again: a duplicate
    lines = [r.getMessage() for r in caplog.records if r.name == "mailticket.worker"]
    assert any(line.startswith("inbox 1 <story-1@customer.test>: created ticket #1 (queue general, P3)")
               for line in lines), lines
    assert any(line.startswith("inbox 2 <story-1@customer.test>: duplicate ticket #1") for line in lines)


def test_every_option_has_help():
    import click

    def walk(cmd, path=()):
        yield path, cmd
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, (*path, name))

    missing = [f"{' '.join(path) or 'mailticket'} {p.opts[0]}"
               for path, cmd in walk(main) for p in cmd.params
               if isinstance(p, click.Option) and not p.help and p.name != "help"]
    assert not missing, f"options without help: {missing}"
