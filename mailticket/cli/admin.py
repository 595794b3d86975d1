"""Administration: `agents` (who may act, their groups and tiers) and `rules` (check, list, test)."""

from __future__ import annotations

import sys

import click

from .. import tickets
from ..app import missing_templates
from ..errors import RulesError
from ..rules import check_rules, load_rules
from .base import Ctx, emit_json, json_option, main, table

# --- agents ------------------------------------------------------------------------------


@main.group("agents")
def agents_group() -> None:
    """Agents, their groups and tiers: add, list, set, remove."""


def agent_errors(call, *args, **kwargs):
    """Run an `agents` library call; its AgentError is one line and exit 1."""
    from ..errors import AgentError

    try:
        return call(*args, **kwargs)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None


def show_agents(rows, as_json: bool, with_state: bool = False) -> None:
    from .. import agents

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
    from .. import agents

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
    from .. import agents

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
    from .. import agents

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
    from .. import agents

    obj.app(processing=False)
    agent = agent_errors(agents.remove, email)
    click.echo(f"removed {agent.email} ({agent.name}); `agents add` makes them an agent again")


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
    from ..pipeline import rule_context

    app = obj.app()
    from ..parsers.message import parse as parse_bytes

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
