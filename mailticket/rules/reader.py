"""What the parsers of conditions and actions get from the loader.

Each condition (`text.py`, `addresses.py`, `conditions.py`) and each action
(`actions.py`) is parsed beside the code that runs it, from the YAML the loader
(`load.py`) has read.  They report problems through a `Reader`, which `load.py`
implements: it turns a YAML node and key into a file and line, and knows both
vocabularies, so that a condition under `then` (or an action under `when`) is named as
such.  Nothing here imports ruamel.yaml: the nodes are plain dicts and lists to parsers.
"""

from __future__ import annotations

import difflib
from typing import Any, Protocol

PRIORITY_HELP = "P1 business-failure, P2 critical, P3 normal or P4 planned"


class Reader(Protocol):
    def bad(self, node: Any, at: Any, message: str, *, key: str | None = None, value: bool = False) -> None:
        """Report a problem at `node`'s key or item `at` (or its value, with `value`)."""
        ...

    def unknown(self, node: Any, key: str, kind: str) -> None:
        """Report `key`, not a `kind` ("condition" or "action"), with a hint."""
        ...

    def list_file(self, name: str, node: Any, at: Any, key: str) -> list[str] | None:
        """The entries of the address list `name`, or None (reported) when unreadable."""
        ...


def suggest(key: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def strings(r: Reader, v: Any, m: Any, k: Any) -> list[str] | None:
    """A text or a list of texts (numbers are taken as text)."""
    items = v if isinstance(v, list) else [v]
    if not items or any(
        isinstance(x, bool) or not isinstance(x, (str, int, float)) or not str(x).strip() for x in items
    ):
        r.bad(m, k, "expected a text or a list of texts", key=str(k))
        return None
    return [str(x).strip() for x in items]
