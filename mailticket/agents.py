"""Agents, their groups and tiers: who works tickets, and who is told about which.

An agent is an address with a name, a tier (1 to 3: first line, second line, experts),
a language for the mail they get, and groups (for example `tier2-network`).  Groups are
what the rules (`assignee:`, `group:`, `notify:`) and escalation (`#escalate`: the next
tier's group, `group_for_tier`) name; `members` turns one into the agents to notify.

The helpdesk's own addresses are never agents (`add` refuses them): the pipeline tells
an agent's mail from our own looping mail by that.  Removing an agent keeps their row,
inactive, so that the history still names them; adding them again reactivates it.

`mailticket agents ...` (cli/admin.py) is a thin wrapper over these functions.  They write
outside any transaction of their own: each is one statement, or the caller holds one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .config import Config
from .errors import AgentError
from .models import Agent, fn

TIERS = (1, 2, 3)

# A group name is one word as rules and commands write it: `tier2-network`, `billing`.
GROUP_NAME = re.compile(r"^[\w.+-]+$")


def add(
    email: str,
    *,
    name: str,
    groups: Iterable[str] = (),
    tier: int = 1,
    language: str = "",
    config: Config,
) -> Agent:
    """Make `email` an agent; a removed agent of that address is reactivated with these values.

    Raises AgentError for one of the helpdesk's own addresses, a tier outside 1..3, an
    address that is already an active agent, or a malformed address or group.
    """
    email = _address(email)
    if config.is_ours(email):
        raise AgentError(
            f"{email} is the helpdesk's own address: it cannot be an agent "
            "(agents write from their own address)"
        )
    values = {
        "name": _name(name),
        "groups": _groups(groups),
        "tier": _tier(tier),
        "language": language.strip().lower(),
        "active": True,
    }
    agent = Agent.get_or_none(Agent.email == email)
    if agent is None:
        return Agent.create(email=email, **values)
    if agent.active:
        raise AgentError(f"{email} is an agent already (change them with `mailticket agents set`)")
    return _save(agent, values)


def update(
    email: str,
    *,
    name: str | None = None,
    groups: Iterable[str] | None = None,
    add_groups: Iterable[str] = (),
    remove_groups: Iterable[str] = (),
    tier: int | None = None,
    language: str | None = None,
) -> Agent:
    """Change an active agent: what is given is set; `groups` replaces their groups, then
    `add_groups` and `remove_groups` apply.  Removing a group they are not in is refused
    (a typo would otherwise pass unnoticed)."""
    agent = _active(email)
    values: dict = {}
    if name is not None:
        values["name"] = _name(name)
    if tier is not None:
        values["tier"] = _tier(tier)
    if language is not None:
        values["language"] = language.strip().lower()
    current = set(_groups(groups) if groups is not None else agent.groups or [])
    current |= set(_groups(add_groups))
    for group in _groups(remove_groups):
        if group not in current:
            raise AgentError(f"{agent.email} is not in group {group!r}")
        current.discard(group)
    values["groups"] = sorted(current)
    return _save(agent, values)


def remove(email: str) -> Agent:
    """Make an agent inactive: no more notifications or authority; the history keeps the address."""
    return _save(_active(email), {"active": False})


def listing(include_removed: bool = False) -> list[Agent]:
    """The agents by address: the active ones, or all."""
    query = Agent.select().order_by(Agent.email)
    if not include_removed:
        query = query.where(Agent.active)
    return list(query)


def by_address(email: str) -> Agent | None:
    """The active agent of this address (any case), or None."""
    return Agent.get_or_none((Agent.email == email.strip().strip("<>").lower()) & Agent.active)


def find(text: str) -> Agent | None:
    """The active agent `text` names: their address, else their exact name (any case).

    A name two agents share names neither: None, as for an unknown one.
    """
    text = text.strip()
    if "@" in text:
        return by_address(text)
    named = list(Agent.select().where((fn.lower(Agent.name) == text.lower()) & Agent.active).limit(2))
    return named[0] if len(named) == 1 else None


def members(group: str) -> list[Agent]:
    """The active agents in `group`, by address.  Groups are a JSON list, which SQLite and
    PostgreSQL query differently; a helpdesk has tens of agents, so they are read whole."""
    return [a for a in listing() if group in (a.groups or [])]


def group_for_tier(tier: int) -> str | None:
    """The group of the agents of `tier` (where `#escalate` sends a ticket): the group named
    `tier{N}` when an active agent has it, else the first group (by name) whose active
    members are all of that tier; None when there is none."""
    active = listing()
    by_group: dict[str, list[Agent]] = {}
    for agent in active:
        for group in agent.groups or []:
            by_group.setdefault(group, []).append(agent)
    if f"tier{tier}" in by_group:
        return f"tier{tier}"
    for group in sorted(by_group):
        if all(a.tier == tier for a in by_group[group]):
            return group
    return None


def as_dict(agent: Agent) -> dict:
    """The agent as `mailticket agents list --json` gives it (the README: Command line)."""
    return {
        "email": agent.email,
        "name": agent.name,
        "groups": list(agent.groups or []),
        "tier": agent.tier,
        "language": agent.language,
        "active": agent.active,
    }


def _active(email: str) -> Agent:
    agent = by_address(email)
    if agent is None:
        raise AgentError(f"{email.strip()} is not an agent (see `mailticket agents list`)")
    return agent


def _save(agent: Agent, values: dict) -> Agent:
    for key, value in values.items():
        setattr(agent, key, value)
    agent.save(only=list(values))
    return agent


def _address(email: str) -> str:
    address = email.strip().strip("<>").lower()
    local, _, domain = address.rpartition("@")
    if not local or "." not in domain or any(c.isspace() for c in address):
        raise AgentError(f"{email!r} is not an email address")
    return address


def _name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise AgentError("an agent needs a name (commands like `#assign NAME` use it)")
    return name


def _tier(tier: int) -> int:
    if tier not in TIERS:
        raise AgentError(f"tier {tier} is not one of 1, 2, 3")
    return tier


def _groups(groups: Iterable[str]) -> list[str]:
    names = {g.strip() for g in groups}
    bad = sorted(g for g in names if not GROUP_NAME.match(g))
    if bad:
        raise AgentError(f"bad group name {bad[0]!r}: one word of letters, digits, '.', '+', '-' or '_'")
    return sorted(names)
