"""Agents, groups and tiers (issue 11): the `agents` commands, the lookups the pipeline and
escalation use (`find`, `members`, `group_for_tier`), and the schema migration that adds
groups and language.  On SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from mails import mail


def agents_json(helpdesk, *extra: str) -> list[dict]:
    res = helpdesk.cli("agents", "list", "--json", *extra)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def ok(helpdesk, *args: str) -> str:
    res = helpdesk.cli(*args)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture
def opened(helpdesk):
    """The helpdesk's config and database, for the library calls."""
    from mailticket.config import load
    from mailticket.db import open_database

    db = open_database(helpdesk.db_url)
    yield load(helpdesk.config_path)
    db.close()


def test_add_list_set_and_remove_keeps_the_row_for_history(helpdesk):
    ok(helpdesk, "agents", "add", "Alice@Acme.TEST", "--name", "Alice  Smith", "--group", "tier2-network",
       "--group", "billing", "--tier", "2", "--language", "FR")
    ok(helpdesk, "agents", "add", "bob@acme.test", "--name", "Bob")
    assert agents_json(helpdesk) == [
        {"email": "alice@acme.test", "name": "Alice Smith", "groups": ["billing", "tier2-network"],
         "tier": 2, "language": "fr", "active": True},
        {"email": "bob@acme.test", "name": "Bob", "groups": [], "tier": 1, "language": "", "active": True},
    ]

    out = ok(helpdesk, "agents", "set", "ALICE@acme.test", "--add-group", "tier3", "--remove-group", "billing",
             "--tier", "3", "--name", "Alice S.")
    assert "Alice S." in out and "tier2-network" in out
    [alice, _] = agents_json(helpdesk)
    assert (alice["name"], alice["groups"], alice["tier"]) == ("Alice S.", ["tier2-network", "tier3"], 3)
    ok(helpdesk, "agents", "set", "alice@acme.test", "--group", "network", "--language", "")
    [alice, _] = agents_json(helpdesk)
    assert (alice["groups"], alice["language"]) == (["network"], "")

    assert "removed alice@acme.test" in ok(helpdesk, "agents", "remove", "alice@acme.test")
    assert [a["email"] for a in agents_json(helpdesk)] == ["bob@acme.test"]
    removed = agents_json(helpdesk, "--all")[0]
    assert removed["email"] == "alice@acme.test" and removed["active"] is False
    assert removed["groups"] == ["network"]  # the row stays: the history still names her
    assert "removed" in ok(helpdesk, "agents", "list", "--all")

    # Adding her again reactivates the same row with the values given now.
    ok(helpdesk, "agents", "add", "alice@acme.test", "--name", "Alice", "--group", "billing")
    assert agents_json(helpdesk, "--all")[0] == {
        "email": "alice@acme.test", "name": "Alice", "groups": ["billing"], "tier": 1, "language": "",
        "active": True,
    }
    from mailticket.models import Agent

    assert Agent.select().count() == 2


def test_the_helpdesks_own_address_is_never_an_agent(helpdesk):
    helpdesk.write_config(aliases=["help@helpdesk.test"])
    for address in ("support@helpdesk.test", "Support@HELPDESK.test", "help@helpdesk.test"):
        res = helpdesk.cli("agents", "add", address, "--name", "Loop")
        assert res.exit_code == 1, res.output
        assert f"{address.lower()} is the helpdesk's own address: it cannot be an agent" in res.output
        assert "Traceback" not in res.output
    # Another address in the helpdesk's own domain is the usual agent.
    ok(helpdesk, "agents", "add", "alice@helpdesk.test", "--name", "Alice")
    assert [a["email"] for a in agents_json(helpdesk)] == ["alice@helpdesk.test"]


def test_refusals_are_one_line_with_the_reason(helpdesk):
    ok(helpdesk, "agents", "add", "alice@acme.test", "--name", "Alice", "--group", "billing")
    cases = [
        (("agents", "add", "alice@acme.test", "--name", "Alice"), 1, "is an agent already"),
        (("agents", "add", "carol@acme.test", "--name", "Carol", "--tier", "4"), 2, "--tier"),
        (("agents", "add", "not-an-address", "--name", "X"), 1, "is not an email address"),
        (("agents", "add", "carol@acme.test", "--name", "Carol", "--group", "two words"), 1, "bad group name"),
        (("agents", "set", "nobody@acme.test", "--tier", "2"), 1, "nobody@acme.test is not an agent"),
        (("agents", "set", "alice@acme.test"), 2, "nothing to change"),
        (("agents", "set", "alice@acme.test", "--remove-group", "network"), 1, "is not in group 'network'"),
        (("agents", "remove", "nobody@acme.test"), 1, "is not an agent"),
    ]
    for args, code, message in cases:
        res = helpdesk.cli(*args)
        assert (res.exit_code, message in res.output) == (code, True), (args, res.output)
        assert "Traceback" not in res.output
    assert agents_json(helpdesk)[0]["groups"] == ["billing"]  # nothing changed


def test_library_refuses_a_tier_outside_1_to_3(helpdesk, opened):
    from mailticket import agents
    from mailticket.errors import AgentError, MailticketError

    assert issubclass(AgentError, MailticketError)
    with pytest.raises(AgentError, match="tier 0 is not one of 1, 2, 3"):
        agents.add("carol@acme.test", name="Carol", tier=0, config=opened)
    agents.add("carol@acme.test", name="Carol", config=opened)
    with pytest.raises(AgentError, match="tier 4"):
        agents.update("carol@acme.test", tier=4)
    assert agents.by_address("CAROL@acme.test").tier == 1


def test_find_members_and_the_group_of_a_tier(helpdesk, opened):
    from mailticket import agents
    from mailticket.models import is_active_agent

    add = agents.add
    add("alice@acme.test", name="Alice Smith", groups=["tier2", "network"], tier=2, config=opened)
    add("bob@acme.test", name="Bob", groups=["general", "network"], tier=1, config=opened)
    add("carol@acme.test", name="Carol", groups=["general", "experts"], tier=3, config=opened)
    add("dave@acme.test", name="Dave", groups=["experts"], tier=3, config=opened)
    add("erin@acme.test", name="Sam", groups=["network"], tier=2, config=opened)
    add("sam@acme.test", name="Sam", groups=["tier1"], tier=2, config=opened)

    # find: an address (any case, with brackets), else an exact name (any case); active only.
    assert agents.find("<ALICE@acme.test>").email == "alice@acme.test"
    assert agents.find("  alice smith ").email == "alice@acme.test"
    assert agents.find("Alice") is None  # not a prefix match
    assert agents.find("Sam") is None  # two agents are called Sam: neither is meant
    assert agents.find("nobody@acme.test") is None

    assert [a.email for a in agents.members("network")] == ["alice@acme.test", "bob@acme.test", "erin@acme.test"]
    assert agents.members("nothing") == []

    # tier2 is named so; for tier 3, experts is the first group whose members are all tier 3
    # (general mixes tiers); tier 1 has a group by name even if its member is tier 2.
    assert agents.group_for_tier(2) == "tier2"
    assert agents.group_for_tier(3) == "experts"
    assert agents.group_for_tier(1) == "tier1"

    agents.remove("alice@acme.test")
    agents.remove("sam@acme.test")
    assert agents.find("Alice Smith") is None and agents.by_address("alice@acme.test") is None
    assert not is_active_agent("alice@acme.test")  # threading's may_write no longer trusts her
    assert [a.email for a in agents.members("network")] == ["bob@acme.test", "erin@acme.test"]
    assert agents.group_for_tier(2) is None  # no tier2 member left; network mixes tiers 1 and 2
    assert agents.group_for_tier(1) is None
    agents.update("bob@acme.test", remove_groups=["general"])
    assert agents.group_for_tier(1) is None  # bob's network still has erin (tier 2)
    agents.update("erin@acme.test", groups=["tier2"])
    assert agents.group_for_tier(1) == "network" and agents.group_for_tier(2) == "tier2"
    assert agents.as_dict(agents.find("erin@acme.test")) == {
        "email": "erin@acme.test", "name": "Sam", "groups": ["tier2"], "tier": 2, "language": "",
        "active": True,
    }


def test_schema_v2_database_migrates(helpdesk):
    from playhouse.migrate import SchemaMigrator, migrate

    from mailticket.db import SCHEMA_VERSION, open_database, schema_version
    from mailticket.models import SchemaVersion

    db = open_database(helpdesk.db_url)
    # Make it what a release of schema 2 left: agents without groups and language.
    migrator = SchemaMigrator.from_database(db)
    migrate(migrator.drop_column("agent", "groups"), migrator.drop_column("agent", "language"))
    SchemaVersion.delete().where(SchemaVersion.version > 2).execute()
    db.execute_sql("INSERT INTO agent (email, name, tier, active) VALUES ('old@acme.test', 'Old', 2, %s)"
                   .replace("%s", db.param), [True])
    db.close()
    db = open_database(helpdesk.db_url)
    try:
        assert schema_version(db) == SCHEMA_VERSION
        assert {"groups", "language"} <= {c.name for c in db.get_columns("agent")}
    finally:
        db.close()
    assert agents_json(helpdesk) == [
        {"email": "old@acme.test", "name": "Old", "groups": [], "tier": 2, "language": "", "active": True}
    ]
    ok(helpdesk, "agents", "set", "old@acme.test", "--add-group", "tier2")
    assert agents_json(helpdesk)[0]["groups"] == ["tier2"]
    [res] = helpdesk.ingest(mail(subject="After the upgrade"))
    assert res["outcome"] == "created"
