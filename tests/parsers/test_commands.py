"""Commands at the top of an agent's reply: parsing and the reasons for refusal."""

from __future__ import annotations

import pytest

from mailticket.parsers import commands
from mailticket.parsers.commands import Command


def one(line: str) -> Command:
    cmds, _ = commands.parse(line)
    assert len(cmds) == 1
    return cmds[0]


@pytest.mark.parametrize(
    "line",
    [
        "#status open",
        "#status On-Hold",
        "#status: resolved",
        "#priority P1",
        "#priority p4",
        "#priority critical",
        "#priority Business failure",
        "#assign alice@acme.example",
        "#assign Alice  Martin",
        "#take",
        "#tier 3",
        "#escalate",
        "#queue network",
        "#tag vip",
        "#untag vip",
        "#field serial SN-1234 5678",
        "#cc bob@example.com",
        "#uncc bob@example.com",
        "#merge 42",
        "#link 7",
        "#note",
        "#update 2d",
        "#update off",
        "#update now",
    ],
)
def test_good_commands_are_valid(line: str) -> None:
    assert commands.validate(one(line)) is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("#status", "#status needs one of new, open, pending, on-hold, resolved, closed"),
        ("#status done", "#status needs one of"),
        ("#status open closed", "#status needs one of"),
        ("#priority", "#priority takes P1..P4 or a name"),
        ("#priority P5", "#priority takes P1..P4 or a name"),
        ("#priority urgent", "critical"),  # the reason lists the words
        ("#tier 4", "#tier takes 1 to 3"),
        ("#tier two", "#tier takes 1 to 3"),
        ("#assign", "#assign needs"),
        ("#take me", "#take takes no arguments"),
        ("#escalate now", "#escalate takes no arguments"),
        ("#queue", "#queue takes one queue name"),
        ("#queue a b", "#queue takes one queue name"),
        ("#tag", "#tag needs at least one word"),
        ("#field serial", "#field takes a key"),
        ("#field", "#field takes a key"),
        ("#field bad/key value", "#field takes a key"),
        ("#cc bob", "#cc takes one address"),
        ("#uncc", "#uncc takes one address"),
        ("#merge", "#merge takes a ticket number"),
        ("#merge x1", "#merge takes a ticket number"),
        ("#link 0", "#link takes a ticket number"),
        ("#foo bar", "unknown command #foo"),
    ],
)
def test_bad_commands_say_why(line: str, reason: str) -> None:
    assert reason in (commands.validate(one(line)) or "")


def test_arguments_split_except_assign_and_field() -> None:
    assert one("#assign  Alice   Martin ").args == ["Alice Martin"]
    assert one("#field location Building 4, 2nd floor").args == ["location", "Building 4, 2nd floor"]
    assert one("#tag vip network").args == ["vip", "network"]
    assert one("#priority Business failure").args == ["Business", "failure"]
    cmd = one("#STATUS Open")
    assert (cmd.name, cmd.args, cmd.line) == ("status", ["Open"], "#STATUS Open")


def test_blank_lines_between_commands_and_text_after_kept() -> None:
    text = "\n#status pending\n\n#priority critical\n  \n#tag vip\n\nHello Jane,\n\n#not a command here\nBye"
    cmds, rest = commands.parse(text)
    assert [c.name for c in cmds] == ["status", "priority", "tag"]
    assert rest == "Hello Jane,\n\n#not a command here\nBye"


def test_command_only_reply_leaves_nothing() -> None:
    cmds, rest = commands.parse("#status resolved\r\n#note\r\n\r\n")
    assert [c.name for c in cmds] == ["status", "note"]
    assert rest == ""


def test_hash_line_after_text_is_not_a_command() -> None:
    text = "Please see below.\n#status closed"
    assert commands.parse(text) == ([], text)


def test_numbers_and_headings_are_text() -> None:
    for text in ("#42 is still broken", "# Summary\nfine", "#\nhi"):
        assert commands.parse(text) == ([], text)


def test_unknown_command_is_returned_and_refused() -> None:
    cmds, rest = commands.parse("#Frobnicate now\n#status open\nThanks")
    assert [c.name for c in cmds] == ["frobnicate", "status"]
    assert commands.validate(cmds[0]) == "unknown command #frobnicate"
    assert commands.validate(cmds[1]) is None
    assert rest == "Thanks"
