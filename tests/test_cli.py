"""The command line as a user meets it: init, help everywhere, errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from mails import mail

from mailticket.cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def all_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path, cmd", list(all_commands(main)), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_has_help_and_is_in_the_readme(path, cmd):
    assert cmd.help and len(cmd.help.strip()) > 15, f"{' '.join(path)} has no help"
    res = CliRunner().invoke(main, [*path, "--help"])
    assert res.exit_code == 0 and "Usage:" in res.output
    if not isinstance(cmd, click.Group):
        assert path[-1] in README, f"`{' '.join(path)}` is not in the README"


def test_init_makes_a_working_helpdesk(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["init", str(tmp_path / "hd"), "--address", "help@desk.test"])
    assert res.exit_code == 0, res.output
    hd = tmp_path / "hd"
    assert (hd / "mailticket.toml").exists() and (hd / "var" / "mailticket.db").exists()
    assert sorted(p.name for p in (hd / "rules").glob("*.yaml"))  # the sample rules were copied
    eml = tmp_path / "m.eml"
    eml.write_bytes(mail(to="help@desk.test"))
    cfg = str(hd / "mailticket.toml")
    res = runner.invoke(main, ["--config", cfg, "ingest", "--json", str(eml)])
    assert json.loads(res.output)["outcome"] == "created"
    assert runner.invoke(main, ["--config", cfg, "rules", "check"]).exit_code == 0
    # init again keeps the existing config
    res = runner.invoke(main, ["init", str(hd)])
    assert "keeping it" in res.output


def test_bad_config_is_one_clear_line(tmp_path):
    cfg = tmp_path / "mailticket.toml"
    cfg.write_text("[smtp]\nmax_size = 'huge'\n")
    res = CliRunner().invoke(main, ["--config", str(cfg), "ticket", "list"])
    assert res.exit_code == 1
    assert "max_size" in res.output and str(cfg) in res.output
    assert "Traceback" not in res.output


def test_missing_ticket_and_missing_input(helpdesk):
    res = helpdesk.cli("ticket", "show", "42")
    assert res.exit_code == 1 and "no ticket #42" in res.output
    res = helpdesk.cli("ingest", "/nonexistent.eml")
    assert res.exit_code == 2 and "no such file" in res.output


def test_schema_version_and_refusal_of_a_newer_database(db_url):
    from mailticket import db as dbmod
    from mailticket.errors import StorageError
    from mailticket.models import SchemaVersion

    database = dbmod.open_database(db_url)
    assert dbmod.schema_version(database) == dbmod.SCHEMA_VERSION
    assert dbmod.migrate_schema(database) == dbmod.SCHEMA_VERSION  # idempotent
    SchemaVersion.create(version=dbmod.SCHEMA_VERSION + 1)
    with pytest.raises(StorageError, match="newer than this mailticket"):
        dbmod.migrate_schema(database)
    SchemaVersion.delete().where(SchemaVersion.version > dbmod.SCHEMA_VERSION).execute()
    database.close()
