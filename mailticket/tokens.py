"""The subject token that ties a reply to its ticket: format it, find it.

The format comes from `[helpdesk] token` (default `[#{number}]`).  Clients add
prefixes (`Re:`, `AW:`, `SV:`, `TR:`, `Antw:`, `Fwd:`, nested, in any case) and
sometimes fold or re-space the subject, so the token is searched anywhere in the
subject rather than at a fixed place, and the last occurrence wins: a forwarded
thread that quotes an older ticket's subject ends with the newest token.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Reply and forward prefixes of the common clients and languages, for showing a
# clean subject; the token search itself does not need them.
_PREFIX = re.compile(
    r"^\s*((re|aw|sv|vs|tr|antw|antwort|wg|fw|fwd|rv|réf|ref|odp|r)\s*(\[\d+\])?\s*:\s*)+",
    re.IGNORECASE,
)


class TokenFormat:
    """One token format, e.g. `[#{number}]` or `[Support #{number}]`."""

    def __init__(self, template: str = "[#{number}]") -> None:
        if "{number}" not in template:
            raise ValueError(f"token format must contain {{number}}: {template!r}")
        self.template = template
        before, _, after = template.partition("{number}")
        # Whitespace inside the token may be folded or doubled by clients.
        self._pattern = re.compile(_loose(before) + r"\s*(\d{1,12})\s*" + _loose(after), re.IGNORECASE)

    def format(self, number: int) -> str:
        return self.template.replace("{number}", str(number))

    def find(self, subject: str | None) -> int | None:
        """The ticket number in `subject`, or None."""
        if not subject:
            return None
        found = self._pattern.findall(subject)
        return int(found[-1]) if found else None

    def strip(self, subject: str) -> str:
        """The subject without reply prefixes and without our token, for a new ticket's title."""
        return clean_subject(self._pattern.sub("", subject))


def _loose(literal: str) -> str:
    """A regex for `literal` that tolerates added, removed or doubled spaces."""
    return r"\s*".join(re.escape(ch) for ch in literal if not ch.isspace())


@lru_cache(maxsize=8)
def token_format(template: str) -> TokenFormat:
    return TokenFormat(template)


def clean_subject(subject: str) -> str:
    """`Re: AW: Fwd:  Printer broken ` -> `Printer broken`."""
    return " ".join(_PREFIX.sub("", subject or "").split())
