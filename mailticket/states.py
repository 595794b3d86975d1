"""A ticket's vocabulary: its statuses and priorities (docs/architecture.md, state).

One home for these facts: the models, the configuration, the rules and (later) the
agents' `#status`/`#priority` commands all read them from here.
"""

from __future__ import annotations

# Ticket statuses, in the order a ticket usually moves through them.  `pending` waits
# on the customer; `on-hold` on someone else (a supplier, a change window).
STATUSES = ("new", "open", "pending", "on-hold", "resolved", "closed")

# Priorities: P1 business failure, P2 critical, P3 normal, P4 planned.
PRIORITIES = ("P1", "P2", "P3", "P4")

# What admins and agents may write for a priority (lower case) -> its code.
PRIORITY_NAMES = {
    "p1": "P1",
    "business-failure": "P1",
    "business failure": "P1",
    "p2": "P2",
    "critical": "P2",
    "p3": "P3",
    "normal": "P3",
    "p4": "P4",
    "planned": "P4",
}


def priority(word: str) -> str | None:
    """`P2`, `critical`, `Business failure` -> the priority's code; None when it is none."""
    return PRIORITY_NAMES.get(" ".join(word.split()).lower())
