"""The `mailticket` command tree (click): options in, a library call, a table or JSON out.

Errors a user can fix become one clear line (`click.ClickException`), never a
traceback.  `--json` output is for scripts and is a contract (the README: Command line).
Exit code 75 (EX_TEMPFAIL) tells an MTA to retry later, 67 (EX_NOUSER) that the
recipient is unknown (`ingest`, docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from datetime import datetime
from importlib import resources
from pathlib import Path

import click

from . import __version__, actions, agents, auth, outbox, tickets
from . import inbox as durable_inbox  # `inbox` is the name of a command group below
from .app import App, load_config, missing_templates, open_app
from .config import DEFAULT_PATH
from .db import writing
from .errors import MailticketError, RulesError, StorageError
from .ingest import (
    EX_NOUSER,
    EX_TEMPFAIL,
    BadInput,
    count_inputs,
    log_for_pipe,
    one_line,
    refused_recipient,
    store_and_process,
)
from .models import Agent, Ticket
from .parsers import commands
from .pipeline import Env, Result
from .rules import check_rules, load_rules

log = logging.getLogger(__name__)

# The repository's rules/ (what admins read), shipped in the package as the symlink
# mailticket/sample_rules: `init` finds it from a wheel and an editable install alike.
SAMPLE_RULES = resources.files(__package__) / "sample_rules"


class TryLater(click.ClickException):
    """The database could not be reached: exit 75 so that an MTA or a script retries."""

    exit_code = EX_TEMPFAIL


class Ctx:
    def __init__(self, config_path: str | None, source: str = "") -> None:
        self.config_path = config_path
        self.source = source  # where the path came from: "--config", "$MAILTICKET_CONFIG", ""
        self._app: App | None = None

    @property
    def config(self):
        path = self.config_path or DEFAULT_PATH
        if not Path(path).is_file():
            where = (
                f"{path} (from {self.source})"
                if self.source
                else (f"./{DEFAULT_PATH} (no --config given and $MAILTICKET_CONFIG is not set)")
            )
            raise click.ClickException(
                f"no configuration file: looked for {where}.\n"
                f"Run `mailticket init DIR` to create a helpdesk, or name its file with "
                f"`mailticket --config FILE ...`."
            )
        try:
            return load_config(path)
        except MailticketError as exc:
            raise click.ClickException(str(exc)) from None

    def app(self, processing: bool = True) -> App:
        """The opened helpdesk; `processing=False` for commands that only read or deliver."""
        if self._app is None or (processing and self._app.pipeline is None):
            if self._app is not None:
                self._app.close()
            try:
                self._app = open_app(self.config, processing=processing)
            except RulesError as exc:
                raise click.ClickException(
                    f"the rules are broken; fix them (see `mailticket rules check`):\n{exc}"
                ) from None
            except StorageError as exc:
                raise TryLater(f"{exc}; try again later") from None
            except MailticketError as exc:
                raise click.ClickException(str(exc)) from None
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None


json_option = click.option("--json", "as_json", is_flag=True, help="Output JSON for scripts.")


def emit_json(data) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=None, default=str))


def table(rows: list[list], headers: list[str]) -> None:
    """A plain aligned table."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[str("" if c is None else c) for c in row] for row in [headers, *rows]]
    widths = [min(max(len(r[i]) for r in cells), 60) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(c[:60].ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="MAILTICKET_CONFIG",
    help="Configuration file (default: ./mailticket.toml, or $MAILTICKET_CONFIG).",
)
@click.version_option(__version__, prog_name="mailticket")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """mailticket: a helpdesk that lives in email.

    Every email becomes a ticket, threaded by its [#N] token or its References,
    routed by the YAML rules and acknowledged from a template.
    """
    source = {
        click.core.ParameterSource.COMMANDLINE: "--config",
        click.core.ParameterSource.ENVIRONMENT: "$MAILTICKET_CONFIG",
    }.get(ctx.get_parameter_source("config_path"), "")  # type: ignore[arg-type]
    ctx.obj = Ctx(config_path, source)
    ctx.call_on_close(ctx.obj.close)


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
    from . import daemon

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


# --- ingest ------------------------------------------------------------------------------


class NotOurs(click.ClickException):
    """A --recipient that is not ours: exit 67, so that an MTA bounces it as unknown."""

    exit_code = EX_NOUSER


class IngestCommand(click.Command):
    """`ingest`: from a pipe (-) a usage error is 75 in one line, as every error before the
    store is: an MTA bounces any status it does not know, so a typo in its pipe command
    would bounce every message until someone noticed."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        pipe = "-" in args
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if not pipe:
                raise
            raise TryLater(one_line(exc.format_message())) from None


def open_for_ingest(obj: Ctx, recipients: tuple[str, ...], pipe: bool) -> App:
    """The helpdesk, ready to store: exit 67 for a recipient not ours, 75 when it cannot open.

    From a pipe every failure before the store is 75 in one line, a user's error too
    (no configuration file, broken rules): the MTA keeps the mail until it is fixed,
    where any other status would bounce it to the sender.
    """
    try:
        if (rcpt := refused_recipient(obj.config, recipients)) is not None:
            raise NotOurs(f"<{one_line(rcpt.strip('<> '), 100)}>: recipient not accepted here")
        return obj.app()
    except NotOurs:
        raise
    except click.ClickException as exc:
        if pipe or isinstance(exc, TryLater):
            raise TryLater(one_line(exc.message)) from None
        raise
    except Exception as exc:  # a bug or a broken system, before anything was stored
        log.exception("ingest: could not open the helpdesk")
        raise TryLater(one_line(f"{type(exc).__name__}: {exc}; try again later")) from None


@main.command(cls=IngestCommand)
@click.argument("paths", nargs=-1, required=True)
@json_option
@click.option(
    "--batch", default=100, show_default=True, help="Messages stored and processed per transaction."
)
@click.option(
    "--recipient",
    "recipients",
    multiple=True,
    metavar="ADDRESS",
    help="The envelope recipient, as an MTA pipe passes it (repeatable): stored as "
    "the message's mailbox; exit 67 when it is not ours.",
)
@click.pass_obj
def ingest(obj: Ctx, paths: tuple[str, ...], as_json: bool, batch: int, recipients: tuple[str, ...]) -> None:
    """Store and process messages from .eml files, mboxes, Maildirs or - (stdin).

    Each message is first committed to the durable inbox, then run through the
    pipeline. With --json, one line per message:
    {"message_id", "outcome", "ticket", "reason"}; outcome is one of created,
    appended, duplicate, suppressed, bounce, quarantined.

    The envelope sender (the From_ line or Return-Path an MTA pipe puts first, an
    mbox's From_ lines) is kept as the message's topmost Return-Path header.

    Exit status: 0 when every message was stored (quarantine counts as stored, and so
    does a message whose processing failed: it stays pending for the daemon), 67 when
    a --recipient is not ours (nothing is stored), 75 when a message could not be
    stored, so that an MTA retries later.  From - (an MTA pipe) any failure before the
    store is 75, and stderr gets one line, never a traceback.
    """
    pipe = "-" in paths
    if pipe:
        log_for_pipe()
    for p in paths:
        if p != "-" and not Path(p).exists():
            raise click.BadParameter(f"{p}: no such file or folder", param_hint="PATHS")
    app = open_for_ingest(obj, recipients, pipe)
    show_bar = not as_json and sys.stderr.isatty()
    total = count_inputs(paths) if show_bar else None
    results: list[Result] = []

    def report(result: Result) -> None:
        if as_json:
            emit_json(result.as_dict())
        else:
            results.append(result)

    with click.progressbar(
        length=total or 0, label="ingesting", file=sys.stderr, hidden=not (show_bar and total and total > 50)
    ) as bar:
        try:
            done = store_and_process(
                app, paths, batch=batch, recipients=recipients, on_result=report, on_batch=bar.update
            )
        except BadInput as exc:
            raise click.BadParameter(str(exc)) from None
    if not as_json:
        if len(results) <= 20:
            for r in results:
                where = f"#{r.ticket}" if r.ticket else "-"
                click.echo(
                    f"{r.outcome:<11} {where:<7} {r.message_id or '(no Message-ID)'}"
                    + (f"  ({r.reason})" if r.reason else "")
                )
        if done.counts or done.problem is None:
            click.echo(", ".join(f"{n} {k}" for k, n in sorted(done.counts.items())) or "no messages")
    if done.problem:
        click.echo(done.problem, err=True)
    if done.exit_code:
        sys.exit(done.exit_code)


# --- tickets -----------------------------------------------------------------------------


@main.group()
def ticket() -> None:
    """List, show and work tickets: reply, note, set, open (as an agent)."""


@ticket.command("list")
@click.option("--status", help="Only tickets with this status.")
@click.option("--queue", help="Only tickets in this queue.")
@click.option("--requester", help="Only tickets of this customer address.")
@click.option("--limit", default=50, show_default=True, help="At most this many tickets, newest first.")
@json_option
@click.pass_obj
def ticket_list(obj: Ctx, status, queue, requester, limit, as_json) -> None:
    """List tickets, newest first."""
    obj.app(processing=False)
    rows = tickets.listing(status=status, queue=queue, requester=requester, limit=limit)
    if as_json:
        emit_json([tickets.as_dict(t, full=False) for t in rows])
        return
    table(
        [[f"#{t.number}", t.status, t.priority, t.queue, t.requester, t.subject] for t in rows],
        ["ticket", "status", "prio", "queue", "requester", "subject"],
    )


@ticket.command("show")
@click.argument("number", type=int)
@json_option
@click.pass_obj
def ticket_show(obj: Ctx, number: int, as_json: bool) -> None:
    """Show ticket NUMBER: its fields, messages (new text) and history."""
    obj.app(processing=False)
    t = tickets.by_number(number)
    if t is None:
        raise click.ClickException(f"no ticket #{number} (see `mailticket ticket list`)")
    data = tickets.as_dict(t)
    if as_json:
        emit_json(data)
        return
    click.echo(f"#{t.number} {t.subject}")
    for key in ("status", "priority", "queue", "tier", "requester", "assignee", "tags", "fields", "cc"):
        if data[key] not in (None, [], {}):
            click.echo(f"  {key:<10} {data[key]}")
    if data["previous_tickets"]:
        click.echo(f"  {'previous':<10} " + ", ".join(f"#{n}" for n in data["previous_tickets"]))
    for m in data["messages"]:
        click.echo(f"\n--- {m['date']}  {m['direction']} {m['kind']}  {m['from']}")
        click.echo(m["text"].rstrip() or "(no new text)")
        for a in m["attachments"]:
            click.echo(f"  [attachment] {a['filename']} ({a['content_type']}, {a['size']} bytes)")
    click.echo("\nhistory:")
    for e in data["events"]:
        click.echo(f"  {e['at']}  {e['actor']:<24} {e['kind']} {json.dumps(e['detail'], ensure_ascii=False)}")


as_option = click.option(
    "--as", "as_agent", required=True, metavar="AGENT", help="The active agent (address or name) who acts."
)
body_option = click.option(
    "--body",
    type=click.File("r", encoding="utf-8"),
    default="-",
    show_default=True,
    help="A file with the text, or - for standard input.",
)


@contextlib.contextmanager
def acting(obj: Ctx, who: str) -> Iterator[tuple[Agent, Env, datetime]]:
    """The agent `who` names, the pipeline's Env and now, inside one write transaction:
    an error (a ClickException too) rolls back everything the verb did."""
    app = obj.app()
    assert app.pipeline is not None  # opened for processing
    agent = agents.find(who)
    if agent is None:
        raise click.ClickException(f"{who} is not an active agent (see `mailticket agents list`)")
    try:
        with writing(), app.db.atomic():
            yield agent, app.pipeline.env, app.clock.now()
    except MailticketError as exc:
        raise click.ClickException(str(exc)) from None


def ticket_of(number: int) -> Ticket:
    t = tickets.by_number(number)
    if t is None:
        raise click.ClickException(f"no ticket #{number} (see `mailticket ticket list`)")
    return t


def read_body(body) -> str:
    text = body.read().strip()
    if not text:
        raise click.ClickException("the text is empty")
    return text


@ticket.command("reply")
@click.argument("number", type=int)
@as_option
@body_option
@json_option
@click.pass_obj
def ticket_reply(obj: Ctx, number: int, as_agent: str, body, as_json: bool) -> None:
    """Send the text to ticket NUMBER's customer (and CCs) from the helpdesk address."""
    text = read_body(body)
    with acting(obj, as_agent) as (agent, env, now):
        msgid = actions.reply(ticket_of(number), agent=agent, text=text, now=now, env=env)
    if as_json:
        emit_json({"ticket": number, "message_id": msgid})
    else:
        click.echo(f"#{number}: reply queued ({msgid})")


@ticket.command("note")
@click.argument("number", type=int)
@as_option
@body_option
@json_option
@click.pass_obj
def ticket_note(obj: Ctx, number: int, as_agent: str, body, as_json: bool) -> None:
    """Add an internal note to ticket NUMBER: never sent to the customer."""
    text = read_body(body)
    with acting(obj, as_agent) as (agent, env, now):
        actions.note(ticket_of(number), agent=agent, text=text, now=now, env=env)
    if as_json:
        emit_json({"ticket": number, "note": True})
    else:
        click.echo(f"#{number}: note added")


@ticket.command("set")
@click.argument("number", type=int)
@as_option
@click.option("--status", help="The new status (new, open, pending, on-hold, resolved, closed).")
@click.option("--priority", help="P1..P4, or a name (critical, normal, ...).")
@click.option("--assign", metavar="AGENT", help="Assign to this agent (address or name).")
@click.option("--tier", type=click.IntRange(1, 3), help="The support tier, 1 to 3.")
@click.option("--queue", help="Move to this queue.")
@click.option("--tag", "tags", multiple=True, metavar="WORD", help="Add a tag (repeatable).")
@click.option("--untag", "untags", multiple=True, metavar="WORD", help="Remove a tag (repeatable).")
@click.option("--field", "fields", multiple=True, metavar="KEY=VALUE", help="Set a field (repeatable).")
@json_option
@click.pass_obj
def ticket_set(
    obj: Ctx,
    number: int,
    as_agent: str,
    as_json: bool,
    status,
    priority,
    assign,
    tier,
    queue,
    tags,
    untags,
    fields,
) -> None:
    """Change ticket NUMBER as the agent would by mail (#status, #assign, ...): all or nothing."""
    values = {"status": status, "priority": priority, "assign": assign, "tier": tier, "queue": queue}
    lines = [f"#{name} {value}" for name, value in values.items() if value]
    lines += [f"#tag {w}" for w in tags] + [f"#untag {w}" for w in untags]
    for pair in fields:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.ClickException(f"--field {pair}: write KEY=VALUE")
        lines.append(f"#field {key} {value}")
    found, _ = commands.parse("\n".join(lines))
    if not found:
        raise click.ClickException("nothing to change: give --status, --priority, --assign, ... (see --help)")
    with acting(obj, as_agent) as (agent, env, now):
        outcomes = actions.apply(ticket_of(number), found, agent=agent, now=now, env=env)
        refused = [f"{o.command}: {o.detail}" for o in outcomes if not o.ok]
        if refused:
            raise click.ClickException("nothing changed; refused: " + "; ".join(refused))
    if as_json:
        emit_json({"ticket": number, "outcomes": [dataclasses.asdict(o) for o in outcomes]})
        return
    for o in outcomes:
        click.echo(f"#{number}: {o.command}: {o.detail}")


@ticket.command("open")
@click.option("--requester", required=True, metavar="EMAIL", help="The customer the ticket belongs to.")
@click.option("--name", default="", help="The customer's name.")
@click.option("--subject", required=True, help="The ticket's subject.")
@click.option(
    "--channel",
    type=click.Choice(actions.CHANNELS),
    default="phone",
    show_default=True,
    help="How the customer came to us.",
)
@body_option
@as_option
@json_option
@click.pass_obj
def ticket_open(
    obj: Ctx, requester: str, name: str, subject: str, channel: str, body, as_agent, as_json
) -> None:
    """Open a ticket for a customer (a call, a chat, a visit); they get the acknowledgement."""
    text = read_body(body)
    with acting(obj, as_agent) as (agent, env, now):
        t = actions.open_ticket(
            requester=requester,
            name=name,
            subject=subject,
            text=text,
            channel=channel,
            agent=agent,
            now=now,
            env=env,
        )
    if as_json:
        emit_json(tickets.as_dict(t, full=False))
    else:
        click.echo(f"#{t.number} opened for {t.requester}")


# --- agents ------------------------------------------------------------------------------


@main.group("agents")
def agents_group() -> None:
    """Agents, their groups and tiers: add, list, set, remove."""


def agent_errors(call, *args, **kwargs):
    """Run an `agents` library call; its AgentError is one line and exit 1."""
    from .errors import AgentError

    try:
        return call(*args, **kwargs)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None


def show_agents(rows, as_json: bool, with_state: bool = False) -> None:
    from . import agents

    if as_json:
        emit_json([agents.as_dict(a) for a in rows])
        return
    headers = ["email", "name", "groups", "tier", "language"] + (["active"] if with_state else [])
    table(
        [
            [a.email, a.name, ", ".join(a.groups or []), a.tier, a.language or "-"]
            + (["yes" if a.active else "removed"] if with_state else [])
            for a in rows
        ],
        headers,
    )


tier_option = click.option(
    "--tier", type=click.IntRange(1, 3), help="The agent's tier: 1 first line, 2 second line, 3 experts."
)
language_option = click.option(
    "--language", metavar="LANG", help="Language of the notifications they get (en, fr, ...)."
)


@agents_group.command("add")
@click.argument("email")
@click.option("--name", required=True, help="The agent's name, as `#assign NAME` and the history use it.")
@click.option("--group", "groups", multiple=True, metavar="G", help="A group they belong to (repeatable).")
@tier_option
@language_option
@click.pass_obj
def agents_add(obj: Ctx, email: str, name: str, groups, tier: int | None, language: str | None) -> None:
    """Make EMAIL an agent (again, when they were removed).

    The helpdesk's own addresses are never agents.
    """
    from . import agents

    app = obj.app(processing=False)
    agent = agent_errors(
        agents.add,
        email,
        name=name,
        groups=groups,
        tier=tier or 1,
        language=language or "",
        config=app.config,
    )
    show_agents([agent], as_json=False)


@agents_group.command("list")
@json_option
@click.option("--all", "include_removed", is_flag=True, help="Removed agents too.")
@click.pass_obj
def agents_list(obj: Ctx, as_json: bool, include_removed: bool) -> None:
    """List the agents by address, with their groups, tier and language.

    With --json, a list of {"email", "name", "groups", "tier", "language", "active"}.
    """
    from . import agents

    obj.app(processing=False)
    show_agents(agents.listing(include_removed), as_json, with_state=include_removed)


@agents_group.command("set")
@click.argument("email")
@click.option("--name", help="A new name.")
@click.option("--group", "groups", multiple=True, metavar="G", help="Replace their groups (repeatable).")
@click.option("--add-group", multiple=True, metavar="G", help="Add them to a group (repeatable).")
@click.option("--remove-group", multiple=True, metavar="G", help="Take them out of a group (repeatable).")
@tier_option
@language_option
@click.pass_obj
def agents_set(obj: Ctx, email: str, name, groups, add_group, remove_group, tier, language) -> None:
    """Change agent EMAIL: name, groups, tier, language."""
    from . import agents

    if not (name or groups or add_group or remove_group or tier or language is not None):
        raise click.UsageError(
            "nothing to change: give --name, --group, --add-group, --remove-group, --tier or --language"
        )
    obj.app(processing=False)
    agent = agent_errors(
        agents.update,
        email,
        name=name,
        groups=groups or None,
        add_groups=add_group,
        remove_groups=remove_group,
        tier=tier,
        language=language,
    )
    show_agents([agent], as_json=False)


@agents_group.command("remove")
@click.argument("email")
@click.pass_obj
def agents_remove(obj: Ctx, email: str) -> None:
    """Remove agent EMAIL: no more notifications or authority; their history stays."""
    from . import agents

    obj.app(processing=False)
    agent = agent_errors(agents.remove, email)
    click.echo(f"removed {agent.email} ({agent.name}); `agents add` makes them an agent again")


# --- outbox ------------------------------------------------------------------------------


@main.group("outbox")
def outbox_group() -> None:
    """Outgoing mail: list, deliver now, retry dead messages."""


@outbox_group.command("list")
@click.option(
    "--state",
    type=click.Choice(["queued", "sending", "sent", "retry", "dead"]),
    help="Only messages in this state (sending: claimed by a sender right now).",
)
@click.option("--limit", default=50, show_default=True, help="At most this many messages.")
@json_option
@click.pass_obj
def outbox_list(obj: Ctx, state, limit, as_json) -> None:
    """List outgoing messages, newest first."""
    obj.app(processing=False)
    rows = outbox.listing(state, limit)
    if as_json:
        emit_json([outbox.as_dict(r) for r in rows])
        return
    table(
        [
            [r.id, f"#{r.ticket}" if r.ticket else "", r.kind, r.state, r.attempts, r.to_addr, r.subject]
            for r in rows
        ],
        ["id", "ticket", "kind", "state", "tries", "to", "subject"],
    )


@outbox_group.command("deliver")
@click.pass_obj
def outbox_deliver(obj: Ctx) -> None:
    """Deliver every message that is due, once, and report.

    Exit 75 when the smarthost could not be used (connect, TLS, login): the messages
    wait in the queue, their attempts unspent.
    """
    app = obj.app(processing=False)
    done = outbox.deliver_due(app.config, app.clock)
    click.echo(f"{done.sent} sent, {done.retry} to retry, {done.dead} dead")
    if done.transport_error:
        click.echo(f"smarthost: {done.transport_error}", err=True)
        sys.exit(EX_TEMPFAIL)


@outbox_group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.pass_obj
def outbox_retry(obj: Ctx, ids) -> None:
    """Queue dead messages (all, or IDS) for delivery again."""
    app = obj.app(processing=False)
    n = outbox.requeue(list(ids), app.clock.now())
    click.echo(f"{n} message(s) queued again")


# --- quarantine --------------------------------------------------------------------------


@main.group()
def quarantine() -> None:
    """Messages that could not be processed: list, show, retry."""


@quarantine.command("list")
@json_option
@click.pass_obj
def quarantine_list(obj: Ctx, as_json: bool) -> None:
    """List quarantined messages with the step that failed and why."""
    obj.app(processing=False)
    rows = durable_inbox.quarantined(limit=1000)
    if as_json:
        emit_json(
            [
                {
                    "id": r.id,
                    "received_at": r.received_at.isoformat(),
                    "source": r.source,
                    "message_id": r.message_id,
                    "step": r.step,
                    "reason": r.reason,
                    "attempts": r.attempts,
                }
                for r in rows
            ]
        )
        return
    table(
        [[r.id, r.received_at.strftime("%Y-%m-%d %H:%M"), r.source, r.step, r.reason] for r in rows],
        ["id", "received", "source", "step", "reason"],
    )


@quarantine.command("show")
@click.argument("inbox_id", type=int)
@click.option("--raw", is_flag=True, help="Print the raw message bytes.")
@click.pass_obj
def quarantine_show(obj: Ctx, inbox_id: int, raw: bool) -> None:
    """Show one quarantined message: why, and its headers (or --raw bytes)."""
    obj.app(processing=False)
    row = durable_inbox.get(inbox_id)
    if row is None:
        raise click.ClickException(f"no message {inbox_id} in the inbox (see `mailticket quarantine list`)")
    data = bytes(row.raw)
    if raw:
        sys.stdout.buffer.write(data)
        return
    click.echo(f"inbox #{row.id}  state {row.state}  source {row.source}  received {row.received_at}")
    click.echo(f"step: {row.step}\nreason: {row.reason}\nattempts: {row.attempts}\n")
    click.echo(data.split(b"\n\n", 1)[0][:4000].decode("utf-8", "replace"))


@quarantine.command("retry")
@click.argument("ids", nargs=-1, type=int)
@json_option
@click.pass_obj
def quarantine_retry(obj: Ctx, ids, as_json: bool) -> None:
    """Run quarantined messages (all, or IDS) through the pipeline again."""
    app = obj.app()
    moved = durable_inbox.requeue(list(ids))
    assert app.worker is not None  # opened for processing
    results = app.worker.run_pending(ids=moved) if moved else []
    if as_json:
        for r in results:
            emit_json(r.as_dict())
        return
    for r in results:
        click.echo(
            f"{r.inbox_id}: {r.outcome}"
            + (f" #{r.ticket}" if r.ticket else "")
            + (f" ({r.reason})" if r.reason else "")
        )
    click.echo(f"{len(results)} message(s) retried")


# --- inbox -------------------------------------------------------------------------------


@main.group()
def inbox() -> None:
    """Processed messages and what became of each: list (see also `quarantine show ID`)."""


@inbox.command("list")
@click.option(
    "--outcome",
    type=click.Choice(["created", "appended", "duplicate", "suppressed", "bounce"]),
    help="Only messages with this outcome.",
)
@click.option("--unmatched", is_flag=True, help="Only messages that went to no ticket.")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many messages.")
@json_option
@click.pass_obj
def inbox_list(obj: Ctx, outcome: str | None, unmatched: bool, limit: int, as_json: bool) -> None:
    """List processed messages, newest first, with their ticket and reason.

    Bounces that match no ticket are kept only here: `mailticket inbox list --outcome
    bounce --unmatched` shows them, `mailticket quarantine show ID` their headers.
    """
    from . import models

    obj.app(processing=False)
    rows = models.inbox_listing(outcome, unmatched, limit)
    if as_json:
        emit_json(
            [
                {
                    "id": r.id,
                    "received_at": r.received_at.isoformat(),
                    "source": r.source,
                    "message_id": r.message_id,
                    "outcome": r.outcome,
                    "ticket": r.ticket,
                    "reason": r.reason,
                }
                for r in rows
            ]
        )
        return
    table(
        [
            [
                r.id,
                r.received_at.strftime("%Y-%m-%d %H:%M"),
                r.source,
                r.outcome,
                f"#{r.ticket}" if r.ticket else "-",
                (r.reason or "")[:80],
            ]
            for r in rows
        ],
        ["id", "received", "source", "outcome", "ticket", "reason"],
    )


# --- rules -------------------------------------------------------------------------------


@main.group("rules")
def rules_group() -> None:
    """Check, try and list the YAML rules in [paths] rules."""


@rules_group.command("check")
@click.argument("path", required=False, type=click.Path(exists=True))
@json_option
@click.pass_obj
def rules_check(obj: Ctx, path: str | None, as_json: bool) -> None:
    """Validate the rules (or PATH): every problem with file, line and key; exit 1 if any."""
    cfg = obj.config
    target = path or cfg.paths.rules
    problems = check_rules(target)
    if not problems:
        problems = missing_templates(load_rules(target), cfg)
    if as_json:
        emit_json(
            [
                {"file": p.file, "line": p.line, "key": p.key, "rule": p.rule, "message": p.message}
                for p in problems
            ]
        )
    else:
        for p in problems:
            click.echo(str(p))
        if not problems:
            n = len(load_rules(target))
            click.echo(f"{target}: {n} rule(s), no problems")
    if problems:
        if not as_json:
            click.echo(
                f"{len(problems)} problem(s): fix them before you start or reload the daemon", err=True
            )
        sys.exit(1)


@rules_group.command("list")
@json_option
@click.pass_obj
def rules_list(obj: Ctx, as_json: bool) -> None:
    """The rules in evaluation order (files by name, rules in file order)."""
    try:
        ruleset = load_rules(obj.config.paths.rules)
    except RulesError as exc:
        raise click.ClickException(f"the rules are broken:\n{exc}") from None
    rows = ruleset.describe()
    if as_json:
        emit_json(rows)
        return
    table(
        [
            [
                r.get("file"),
                r.get("line"),
                r.get("name"),
                r.get("applies_to"),
                "stop" if r.get("stop") else "",
                r.get("when", ""),
            ]
            for r in rows
        ],
        ["file", "line", "rule", "applies", "stop", "when"],
    )


@rules_group.command("test")
@click.argument("message", type=click.File("rb"))
@json_option
@click.pass_obj
def rules_test(obj: Ctx, message, as_json: bool) -> None:
    """Show which rules MESSAGE (an .eml file, or -) matches, why, and the result.

    Nothing is stored. A message whose subject token names an existing ticket is
    tried as a reply to it.
    """
    from .pipeline import rule_context

    app = obj.app()
    from .parsers.message import parse as parse_bytes

    parsed = parse_bytes(message.read())
    assert app.pipeline is not None and app.rules is not None  # opened for processing
    ticket = None
    number = app.pipeline.env.tokens.find(parsed.subject)
    if number:
        ticket = tickets.by_number(number)
    context = rule_context(app.pipeline.env, ticket, source="ingest", mailbox=None, queue=None)
    evaluation = app.rules.evaluate(parsed, context)
    if as_json:
        out = evaluation.as_dict()
        out["reply_to_ticket"] = ticket.number if ticket else None
        emit_json(out)
        return
    if ticket:
        click.echo(f"(tried as a reply to ticket #{ticket.number})")
    click.echo(evaluation.explain())


if __name__ == "__main__":  # pragma: no cover
    main()
