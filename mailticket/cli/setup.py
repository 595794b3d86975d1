"""`init` (a working helpdesk in a folder) and `run` (the daemon in the foreground)."""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

import click

from .. import auth
from ..app import load_config, open_app
from ..config import DEFAULT_PATH
from ..errors import MailticketError, RulesError, StorageError
from .base import Ctx, TryLater, main

# The repository's rules/ (what admins read), shipped in the package as the symlink
# mailticket/sample_rules: `init` finds it from a wheel and an editable install alike.
SAMPLE_RULES = resources.files("mailticket") / "sample_rules"

# --- init --------------------------------------------------------------------------------

CONFIG_TEMPLATE = """\
# mailticket configuration. Every key has a default; see `mailticket --help` and the README.

[helpdesk]
name = "{name}"
address = "{address}"          # customers write here; acknowledgements come from here
token = "[#{{number}}]"             # the subject token that threads replies
timezone = "UTC"
language = "en"                  # for messages whose language cannot be told
languages = ["en", "fr", "nl"]   # acknowledgement templates exist for these
auto_reply_limit = 5             # automatic mails per address per hour, at most

[database]
url = "sqlite:///var/mailticket.db"   # or postgresql://user@host/dbname

[smtp]
listen = "127.0.0.1:2525"
lmtp = false
domains = []          # accept any recipient in these domains (empty: the address above only)
max_size = 26214400   # bytes

[outgoing]
transport = "folder"       # "folder" writes .eml files; "smtp" sends through a smarthost
folder = "var/outgoing"

[paths]
rules = "rules"
templates = "templates"        # your own templates override the shipped ones
attachments = "var/attachments"

[agents]
secret_file = "var/agent-secret"   # signs agents' reply addresses; `init` wrote it (mode 0600)
"""

AGENT_SECRET = "var/agent-secret"  # relative to the config's folder, as CONFIG_TEMPLATE says


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option(
    "--address",
    default="support@example.com",
    show_default=True,
    help="The helpdesk's customer-facing address.",
)
@click.option("--name", default="Support", show_default=True, help="The helpdesk's name.")
@click.option("--force", is_flag=True, help="Overwrite an existing configuration file.")
@click.pass_obj
def init(obj: Ctx, directory: str | None, address: str, name: str, force: bool) -> None:
    """Create a working helpdesk in DIRECTORY: config, database, sample rules.

    Without DIRECTORY it goes where `--config` (or $MAILTICKET_CONFIG) points, so that
    `mailticket --config /etc/mailticket/mailticket.toml init` writes that file and
    every later command with the same --config finds it; else into the current folder.
    """
    cfg_file = Path(obj.config_path) if obj.config_path else None
    if directory is None:
        cfg_file = cfg_file or Path(DEFAULT_PATH)
    elif cfg_file is None:
        cfg_file = Path(directory) / DEFAULT_PATH
    elif cfg_file.parent.resolve() != Path(directory).resolve():
        raise click.UsageError(
            f"{obj.source} names {cfg_file}, which is not in {directory}: give the folder or "
            f"the configuration file, not two different places"
        )
    target = cfg_file.parent
    target.mkdir(parents=True, exist_ok=True)
    if cfg_file.exists() and not force:
        click.echo(f"{cfg_file} exists; keeping it (use --force to overwrite)")
    else:
        cfg_file.write_text(CONFIG_TEMPLATE.format(name=name, address=address), encoding="utf-8")
        click.echo(f"wrote {cfg_file}")
    if auth.write_secret(target / AGENT_SECRET):
        click.echo(f"wrote a random agent secret to {target / AGENT_SECRET} (mode 0600)")
    rules_dir = target / "rules"
    if not rules_dir.exists() and SAMPLE_RULES.is_dir():
        with resources.as_file(SAMPLE_RULES) as sample:  # a folder on disk (a zip too, Python 3.12+)
            shutil.copytree(sample, rules_dir)
        click.echo(f"copied the sample rules to {rules_dir}")
    rules_dir.mkdir(exist_ok=True)
    (target / "templates").mkdir(exist_ok=True)
    try:
        app = open_app(load_config(str(cfg_file)))
    except MailticketError as exc:
        raise click.ClickException(str(exc)) from None
    app.close()
    click.echo(f"database ready at {app.config.database.url}")
    click.echo(f"next: mailticket --config {cfg_file} ingest MESSAGE.eml")


# --- run ---------------------------------------------------------------------------------


@main.command()
@click.pass_obj
def run(obj: Ctx) -> None:
    """Run the daemon in the foreground: receive, process, deliver.

    Listens for SMTP (or LMTP) on [smtp] listen, polls the [[imap]] mailboxes,
    delivers the outbox and serves /healthz and /metrics on [daemon] http.
    Logs go to stderr. SIGTERM stops cleanly; SIGHUP reloads the configuration,
    rules and templates.
    """
    from .. import daemon

    obj.config  # noqa: B018 - a missing or broken file is one clear line, before any start
    try:
        code = daemon.run(obj.config_path or DEFAULT_PATH)
    except RulesError as exc:
        raise click.ClickException(f"refusing to start: the rules are broken:\n{exc}") from None
    except StorageError as exc:
        raise TryLater(str(exc)) from None
    except MailticketError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)
