"""A forwarded mail: who wrote the original, what it said, what the forwarder added.

Place in the flow: when an authenticated agent forwards a customer's mail to the
helpdesk, the pipeline calls `find(parsed)` and opens the ticket for the original
sender.  Whether the forwarder may do so is not decided here.

Two shapes:
1. Inline, in `ParsedMessage.text` (the plain part, or the HTML part as text): a rule
   (Gmail "---------- Forwarded message ---------", Thunderbird "-------- Forwarded
   Message --------"), Apple Mail's "Begin forwarded message:", or Outlook's header
   block (From/Sent/To/Subject in its languages, after a line of underscores or an
   "Original Message" rule or alone), then the original's headers in any order
   (Thunderbird starts with Subject), a blank line and its text.  Outlook writes the
   same block above a reply, so its block counts only under a forward's subject prefix
   ("FW:", "TR:", "WG:").  The note is what stands above, signature cut.
2. Attached: the first message/rfc822 part (Outlook's and Gmail's "forward as
   attachment"), parsed again with `message.parse`; the note is the outer new text.

The words (labels, rules, prefixes, per language) are `quote_words`', shared with
`quotes`, which cuts the same lines out of the new text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import ParsedMessage, message, quotes
from . import quote_words as words

# Bounds for hostile bodies, as in `quotes`.
MAX_LINES = quotes.MAX_LINES
_MAX_HEADER_LINES = 12

_C = r"[ \t\u00a0]?[:\uff1a]"  # French writes "De :", often with a non-breaking space


def _any(fragments: tuple[str, ...]) -> str:
    return "|".join(fragments)


_RULE = re.compile(rf"^\s*-{{2,}}\s*(?:{_any(words.FORWARDED)})\s*-{{2,}}\s*$", re.IGNORECASE)
_INTRO = re.compile(rf"^\s*(?:{_any(words.FORWARD_INTRO)}){_C}\s*$", re.IGNORECASE)
# Outlook's lines above its header block: a reply has them too (see the docstring).
_OUTLOOK_RULE = re.compile(
    rf"^\s*(?:_{{20,}}|-{{2,}}\s*(?:{_any(words.ORIGINAL_MESSAGE)})\s*-{{2,}})\s*$", re.IGNORECASE
)
_FORWARD_SUBJECT = re.compile(rf"^\s*(?:{_any(words.FORWARD_PREFIX)})\s*{_C}", re.IGNORECASE)
# One header line of the block, "*From:* ..." when the HTML converter kept the bold.
_LABELS = {
    "from": words.HEADER_FROM,
    "date": words.HEADER_SENT,
    "subject": words.HEADER_SUBJECT,
    "to": words.HEADER_TO,
}
_HEADER = re.compile(
    r"^\s*\*?(?:"
    + "|".join(f"(?P<{key}>{_any(labels)})" for key, labels in _LABELS.items())
    + rf"){_C}\*?\s*(?P<value>.*)$",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_ADDRESS_JUNK = re.compile(r"mailto:|[<>\[\]]", re.IGNORECASE)
_NAME_JUNK = " \t\"'()"


@dataclass(frozen=True)
class Forwarded:
    """The original of a forward: its sender's address (lower case) and name, subject,
    date as written, text, and `note`, what the forwarder wrote above it."""

    sender: str
    name: str
    subject: str
    date: str
    text: str
    note: str


def find(parsed: ParsedMessage) -> Forwarded | None:
    """The forwarded original in `parsed`, inline or attached; None when it is not a
    forward, or when the original's sender address cannot be read."""
    return _inline(parsed) or _attached(parsed)


def _inline(parsed: ParsedMessage) -> Forwarded | None:
    lines = parsed.text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:MAX_LINES]
    outlook_ok = bool(_FORWARD_SUBJECT.match(parsed.subject))
    for i, line in enumerate(lines):
        if line.lstrip().startswith(">"):
            continue  # the quoted history of a reply, which may hold an old forward
        if _RULE.match(line) or _INTRO.match(line):
            start = i + 1
        elif outlook_ok and _OUTLOOK_RULE.match(line):
            start = i + 1
        elif outlook_ok and _header(line, "from"):
            start = i
        else:
            continue
        found = _original(lines, start)
        if found is not None:
            return _forwarded(*found, note=quotes.new_text("\n".join(lines[:i])))
        if start == i + 1:
            return None  # a marker with no readable original under it
    return None


def _header(line: str, key: str) -> str | None:
    m = _HEADER.match(line)
    return m.group("value").strip() if m and m.group(key) else None


def _original(lines: list[str], start: int) -> tuple[dict[str, str], list[str]] | None:
    """The headers and text lines of the original whose header block starts at or just
    after `start` (blank lines and Apple Mail's `>` quoting skipped)."""
    while start < len(lines) and not lines[start].strip():
        start += 1
    rest = lines[start:]
    if rest and all(line.lstrip().startswith(">") for line in rest if line.strip()):
        rest = [re.sub(r"^\s*> ?", "", line) for line in rest]
    block = rest[:_MAX_HEADER_LINES]
    end = next((k for k, line in enumerate(block) if not line.strip()), len(block))
    headers: dict[str, str] = {}
    for line in block[:end]:
        m = _HEADER.match(line)
        if m is not None:  # else a long To wrapped onto the next line
            key = next(k for k in _LABELS if m.group(k))
            headers.setdefault(key, m.group("value").strip())
    if "from" not in headers or len(headers) < 2:
        return None
    return headers, rest[end:]


def _forwarded(headers: dict[str, str], body: list[str], note: str) -> Forwarded | None:
    sender, name = _mailbox(headers["from"])
    if not sender:
        return None
    text = "\n".join(line.rstrip() for line in body).strip("\n")
    return Forwarded(sender, name, headers.get("subject", ""), headers.get("date", ""), text, note)


def _mailbox(value: str) -> tuple[str, str]:
    """`Jane Doe <jane@x>`, `Jane Doe [mailto:jane@x]`, `"Doe, Jane" (jane@x)`, `jane@x`
    -> (address in lower case, name); ("", "") without an address."""
    m = _EMAIL.search(value)
    if m is None:
        return "", ""
    # Outlook's text of its HTML repeats the address: "Jane <jane@x<mailto:jane@x>>".
    name = _ADDRESS_JUNK.sub("", _EMAIL.sub("", value))
    name = " ".join(name.strip(_NAME_JUNK).split())
    return m.group(0).lower(), "" if name.lower() == m.group(0).lower() else name


def _attached(parsed: ParsedMessage) -> Forwarded | None:
    for attachment in parsed.attachments:
        if attachment.content_type in ("message/rfc822", "message/global"):
            inner = message.parse(attachment.payload)
            if inner.from_ is None:
                return None
            return Forwarded(
                inner.from_.email,
                inner.from_.name,
                inner.subject,
                inner.header("date") or "",
                inner.text,
                parsed.new_text,
            )
    return None
