"""An agent's commands by email: the `#status open`, `#assign alice` lines on top of a reply.

Place in the flow: for a message from an authenticated agent, the pipeline calls
`parse(parsed.new_text)` (the agent's own text, their quoted copy of the notification
already cut by `quotes`), applies each command that `validate` finds well-formed, refuses
the others with the reason, and treats the rest of the text as the reply or the note.

Only the leading lines count: commands come first, blank lines may separate them, and the
first other line ends them.  "#42 is still open" or a `#` line further down is text.
A command is `#name` then its arguments, split by whitespace, except `#assign NAME` and
`#field KEY VALUE`, whose name and value are the rest of the line ("Alice Martin",
"Building 4, 2nd floor").  A colon after the name is tolerated (`#status: open`).
Unknown names are returned, so that the agent is told rather than silently ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailticket import states

NAMES = (
    "status",
    "priority",
    "assign",
    "take",
    "tier",
    "escalate",
    "queue",
    "tag",
    "untag",
    "field",
    "cc",
    "uncc",
    "merge",
    "link",
    "note",
    "update",
)
# Commands that stand alone: `#take` takes the ticket, `#note` makes the mail a note.
_BARE = ("take", "escalate", "note")
# `#update 2d` (also h, m, w), `#update off`, `#update now`.
UPDATE_EVERY = re.compile(r"(?i)([1-9][0-9]*)\s*([mhdw])")
_UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440, "w": 10080}


def update_minutes(word: str) -> int | None:
    """`2d` -> 2880, `off` -> 0; None for `now` or anything else."""
    if word.lower() == "off":
        return 0
    m = UPDATE_EVERY.fullmatch(word.strip())
    return int(m.group(1)) * _UNIT_MINUTES[m.group(2).lower()] if m else None


# `#name` at the start of the line: a letter first, so "#42" and "# Title" are text.
_COMMAND = re.compile(r"#([A-Za-z][\w-]*):?(?:\s+(.*))?$")
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+")
_FIELD_KEY = re.compile(r"[\w.-]+")
_TIERS = ("1", "2", "3")
_NUMBER = re.compile(r"[1-9][0-9]*")


@dataclass(frozen=True)
class Command:
    """One command line: `name` in lower case, `args` as written, `line` the whole line."""

    name: str
    args: list[str]
    line: str


def parse(text: str) -> tuple[list[Command], str]:
    """The commands at the top of `text`, and the rest of the text (unchanged if none)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line:
            m = _COMMAND.match(line)
            if m is None:
                break
            commands.append(_command(m.group(1).lower(), m.group(2) or "", line))
        i += 1
    if not commands:
        return [], text
    return commands, "\n".join(lines[i:]).rstrip()


def _command(name: str, rest: str, line: str) -> Command:
    rest = " ".join(rest.split())
    if name == "assign":
        args = [rest] if rest else []
    elif name == "field":
        args = rest.split(" ", 1) if rest else []
    else:
        args = rest.split()
    return Command(name, args, line)


def validate(cmd: Command) -> str | None:
    """Why `cmd` is malformed, in one line for the agent; None when it is well-formed.

    Well-formed is not permitted: whether the assignee, the queue or the ticket to merge
    exists is for the caller to check.
    """
    name, args = cmd.name, cmd.args
    if name not in NAMES:
        return f"unknown command #{name}"
    if name in _BARE:
        return f"#{name} takes no arguments" if args else None
    if name == "status":
        if len(args) != 1 or args[0].lower() not in states.STATUSES:
            return f"#status needs one of {', '.join(states.STATUSES)}"
    elif name == "priority":
        if states.priority(" ".join(args)) is None:
            words = [w for w in states.PRIORITY_NAMES if states.priority(w) != w.upper()]
            return f"#priority takes P1..P4 or a name ({', '.join(words)})"
    elif name == "tier":
        if len(args) != 1 or args[0] not in _TIERS:
            return "#tier takes 1 to 3"
    elif name == "assign":
        if not args:
            return "#assign needs an agent's address or name"
    elif name == "queue":
        if len(args) != 1:
            return "#queue takes one queue name"
    elif name in ("tag", "untag"):
        if not args:
            return f"#{name} needs at least one word"
    elif name == "field":
        if len(args) != 2 or not _FIELD_KEY.fullmatch(args[0]):
            return "#field takes a key (letters, digits, . _ -) and a value"
    elif name in ("cc", "uncc"):
        if len(args) != 1 or not _ADDRESS.fullmatch(args[0]):
            return f"#{name} takes one address"
    elif name in ("merge", "link"):
        if len(args) != 1 or not _NUMBER.fullmatch(args[0]):
            return f"#{name} takes a ticket number"
    elif name == "update":
        if len(args) != 1 or (args[0].lower() != "now" and update_minutes(args[0]) is None):
            return "#update takes an interval (2d, 4h, 30m), off or now"
    return None
