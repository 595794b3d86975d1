"""HTML -> readable text, for messages that have no text/plain part.

Place in the flow: `message.parse` calls `to_text` on the HTML body when the sender
(Outlook on the web, many mobile clients, CRMs) sent HTML only; the result becomes
`ParsedMessage.text`, and `quotes` then cuts the history out of it.

Built on inscriptis (lxml underneath); this is the only module that imports it.  Chosen
over html2text, measured on these machines (median ms, 2 shared cores):

    input                         inscriptis   html2text
    typical 3 KB mail                    1.1         5.7
    10,000 nested <div>                  5.4         181
    20,000 links (1 MB)                  598       1,038
    5 MB table                         9,035      11,538
    broken tags / open comment     clean text   leaks "<a href='x>" and "<!--"

inscriptis keeps <script>/<style> out, lays out lists and tables readably and does not
emit Markdown (`**bold**`) that agents would see as noise.  Both are linear but slow
per byte, so input is capped (`MAX_HTML`) to bound hostile mail.  lxml (libxml2) stops
building the tree past 255 levels of nesting and the text below is lost, so an empty
result from non-empty HTML falls back to a plain tag strip.
"""

from __future__ import annotations

import html as html_lib
import logging
import re

from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig

log = logging.getLogger(__name__)

# ~0.7 µs per byte in inscriptis: 512 KB costs about 0.4 s worst case.  A real reply
# is rarely over 100 KB of HTML; newsletters that are larger lose only their tail.
MAX_HTML = 512 * 1024

# "strict" does not add the indentation "relaxed" gives to <div>s, which would push
# every line of Outlook's nested-div HTML to the right.  Links are shown by text only:
# tracking URLs would otherwise drown the message.
_CONFIG = ParserConfig(css=CSS_PROFILES["strict"], display_links=False)

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_HIDDEN_OPEN = re.compile(r"<(script|style|head)\b", re.IGNORECASE)
_BLOCK_TAG = re.compile(r"<(?:br|p|div|tr|li|h[1-6]|blockquote)\b[^>]*>", re.IGNORECASE)
# `[^<>]`, not `[^>]`: with the latter, every "<" of "<<<<..." would scan to the end.
_TAG = re.compile(r"<[^<>]*>")
_TRAILING_WS = re.compile(r"[ \t\u00a0]+$", re.MULTILINE)
_MANY_BLANKS = re.compile(r"\n{3,}")


def to_text(html: str, defects: list[str] | None = None) -> str:
    """Readable text of `html`: paragraphs and line breaks kept, tags and scripts gone.

    Never raises; what had to be repaired or cut is appended to `defects`.
    """
    if not html or not html.strip():
        return ""
    if len(html) > MAX_HTML:
        _note(defects, f"HTML body of {len(html)} characters cut to {MAX_HTML} before conversion")
        # At a tag's end: a dangling "<td><b" would be laid out as text, and libxml2
        # moves stray text in a table to before it.
        html = html[: html.rfind(">", 0, MAX_HTML) + 1 or MAX_HTML]
    try:
        text = get_text(html, _CONFIG)
    except Exception as exc:  # noqa: BLE001 - lxml raises assorted errors on hostile markup
        _note(defects, f"HTML conversion failed ({type(exc).__name__}); tags stripped instead")
        text = ""
    if not text.strip():
        # libxml2 drops everything below its depth limit (255), so "<div>" * 10000 + "x"
        # converts to nothing; a tag strip still recovers the words.
        fallback = strip_tags(html)
        if fallback.strip():
            if defects is not None and not any("tags stripped" in d for d in defects):
                _note(defects, "HTML too deeply nested to lay out; tags stripped instead")
            text = fallback
    return tidy(text)


def strip_tags(html: str) -> str:
    """A crude, linear-time HTML -> text: the fallback when layout fails."""
    html = _drop_hidden(_COMMENT.sub(" ", html))
    html = _BLOCK_TAG.sub("\n", html)
    return html_lib.unescape(_TAG.sub("", html))


def _drop_hidden(html: str) -> str:
    """Remove <script>, <style> and <head> elements, in one pass.

    A regex `<script>.*?</script>` rescans to the end for every unclosed tag, which
    is quadratic on "<script>" * 10000; here an unclosed one swallows the rest.
    """
    lower = html.lower()
    out: list[str] = []
    pos = 0
    while (m := _HIDDEN_OPEN.search(html, pos)) is not None:
        out.append(html[pos : m.start()])
        end = lower.find(f"</{m.group(1).lower()}", m.end())
        if end < 0:
            return "".join(out)
        close = lower.find(">", end)
        pos = len(html) if close < 0 else close + 1
    out.append(html[pos:])
    return "".join(out)


def tidy(text: str) -> str:
    """Trailing blanks off every line, at most one empty line in a row, no NUL."""
    text = text.replace("\r\n", "\n").replace("\x00", "")
    text = _TRAILING_WS.sub("", text)
    return _MANY_BLANKS.sub("\n\n", text).strip("\n")


def _note(defects: list[str] | None, message: str) -> None:
    log.debug(message)
    if defects is not None:
        defects.append(message)
