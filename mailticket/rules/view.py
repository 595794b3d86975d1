"""The message as a condition sees it, and what a condition is.

The bottom of the rules engine (`mailticket/rules/`): it imports nothing of the rest.
`RuleContext` is what the pipeline tells the rules beyond the message; a `View` is one
message plus that context plus what earlier rules decided (`SoFar`), with the derived
text (folded case, addresses) computed once however many rules ask.  The condition
modules (`text.py`, `addresses.py`, `conditions.py`) implement `Condition`; `index.py`
reads their `trigger()`s; `evaluate.py` builds the `View` and updates `so_far` after
each rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..calendars import Calendar
    from ..parsers import ParsedMessage

SOURCES = ("smtp", "lmtp", "imap", "ingest")


@dataclass(frozen=True, kw_only=True)
class RuleContext:
    """What the rules may know beyond the message itself."""

    now: datetime  # aware; from the injected clock, for business hours
    is_reply: bool = False
    ticket_status: str | None = None  # None for a new ticket
    ticket_priority: str | None = None
    ticket_queue: str | None = None
    source: str = "smtp"  # smtp | lmtp | imap | ingest
    mailbox: str | None = None  # the IMAP mailbox or SMTP recipient it came through
    queue: str | None = None  # that mailbox's default queue
    business_hours: Calendar | None = None  # None: always open


class SoFar(Protocol):
    """What a condition may read of the decision the earlier rules made (a `Decision`)."""

    @property
    def priority(self) -> str | None: ...

    @property
    def queue(self) -> str | None: ...


# Characters that `re.IGNORECASE` matches to an ASCII letter but str.lower() does not map
# to it (see the `re` docs on IGNORECASE): folding them keeps the prefilter exact.
_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


def fold(text: str) -> str:
    # translate() with a dict is slow per character; most mail is ASCII and needs none.
    return text.lower() if text.isascii() else text.translate(_FOLD).lower()


class View:
    """One message plus its context and the decision so far; derived text computed once."""

    __slots__ = ("_addresses", "_folded", "_text", "ctx", "msg", "so_far")

    def __init__(self, msg: ParsedMessage, ctx: RuleContext, so_far: SoFar) -> None:
        self.msg, self.ctx, self.so_far = msg, ctx, so_far
        self._text: dict[str, str] = {}
        self._folded: dict[str, str] = {}
        self._addresses: dict[str, list[tuple[str, str]]] = {}

    def text(self, name: str) -> str:
        t = self._text.get(name)
        if t is None:
            m = self.msg
            t = self._text[name] = (
                m.subject if name == "subject" else m.text if name == "body" else m.new_text
            ) or ""
        return t

    def folded(self, name: str) -> str:
        t = self._folded.get(name)
        if t is None:
            t = self._folded[name] = fold(self.text(name))
        return t

    def addresses(self, name: str) -> list[tuple[str, str]]:
        """(address, domain) pairs, lower-cased, of from / to / cc / recipient (to and cc)."""
        got = self._addresses.get(name)
        if got is None:
            m = self.msg
            addrs = (
                ([m.from_] if m.from_ else [])
                if name == "from"
                else m.to
                if name == "to"
                else m.cc
                if name == "cc"
                else [*m.to, *m.cc]
            )
            got = []
            for a in addrs:
                email = a.email.lower()
                got.append((email, email.rpartition("@")[2]))
            self._addresses[name] = got
        return got


# --- what a condition is ---------------------------------------------------------------

Matched = list[tuple[str, str]]  # (condition, the text it matched)

# A necessary condition of a rule, as index keys: ("text", field, folded, literal) or
# ("addr" | "dom" | "suffix" | "local", field, key).  A rule matches only if one key is
# present; None: the index cannot tell, the rule is always tested.
Key = tuple
Trigger = frozenset[Key] | None


class Condition(Protocol):
    """Compiled once at load time from a rule's `when`."""

    def test(self, view: View) -> Matched | None:
        """The matched (condition, text) pairs, or None when it does not hold."""
        ...

    def describe(self) -> str:
        """For `mailticket rules list`."""
        ...

    def trigger(self) -> Trigger: ...


class Unindexed:
    """A condition the index cannot tell from the text or addresses: always tested."""

    def trigger(self) -> Trigger:
        return None
