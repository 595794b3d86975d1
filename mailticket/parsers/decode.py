"""Bytes and encoded words -> clean str; untrusted file names -> safe ones.

Place in the flow: helpers of `message.parse`, kept apart so that each stays small.
Every function here is total: any input gives a str, never an exception, and what had
to be guessed is appended to the caller's `defects` list.
"""

from __future__ import annotations

import binascii
import codecs
import re
import unicodedata
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.utils import parsedate_to_datetime

# -- charsets -------------------------------------------------------------------------


def best_effort(data: bytes) -> str:
    """Text of bytes whose charset is unknown: UTF-8, else Windows-1252, else Latin-1.

    Outlook and old webmails send undeclared or mislabelled 8-bit; UTF-8 is strict
    enough that valid UTF-8 is almost never something else, and cp1252 is what the rest
    is in practice (its five holes fall back to Latin-1).
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_bytes(data: bytes, charset: str | None, what: str, defects: list[str]) -> str:
    """Decode `data` with its declared `charset`, falling back to `best_effort`."""
    if charset:
        label = charset.strip().strip("\"'").split("*")[0].lower()
        try:
            info = codecs.lookup(label)
            # base64, rot13, zlib ... are codecs too, but not text encodings.
            if not getattr(info, "_is_text_encoding", True):
                raise LookupError(label)
            name = info.name
            # WHATWG and every mail client read iso-8859-1 as windows-1252: its
            # 0x80-0x9F are curly quotes and the euro sign, never C1 controls.
            if name in ("latin-1", "iso8859-1"):
                return clean(_cp1252_or_latin1(data))
            return clean(data.decode(name))
        except LookupError:
            defects.append(f"unknown charset {charset[:40]!r} in {what}; guessed")
        except (UnicodeError, ValueError):
            defects.append(f"{what} is not valid {charset[:40]}; guessed")
    elif not data.isascii():
        defects.append(f"undeclared 8-bit text in {what}; guessed")
    return clean(best_effort(data))


def _cp1252_or_latin1(data: bytes) -> str:
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def clean(text: str) -> str:
    """No NUL (PostgreSQL refuses it in text) and no lone surrogate (not UTF-8-encodable)."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def from_surrogates(value: str, what: str, defects: list[str]) -> str:
    """A header value parsed from bytes: undeclared 8-bit (kept by the email package as
    surrogate escapes) decoded by `best_effort`."""
    if value.isascii():
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return clean(value)
    if raw.isascii() or not any("\udc80" <= c <= "\udcff" for c in value):
        return value
    defects.append(f"undeclared 8-bit in {what}; guessed")
    return best_effort(raw)


# -- RFC 2047 encoded words -------------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,64})\?([bBqQ])\?([^?\s]*)\?=")
_BASE64_WORD = re.compile(r"[A-Za-z0-9+/]*=*$")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def unfold(value: str) -> str:
    """RFC 5322 section 2.2.3: remove the line breaks of a folded header."""
    return _FOLD.sub("", value).replace("\r", "").replace("\n", " ") if "\n" in value else value


def decode_words(value: str, what: str, defects: list[str]) -> str:
    """Decode RFC 2047 encoded words in `value` (any charset Python knows).

    Adjacent words in one charset are joined before decoding: mailers split a
    multi-byte character across two words more often than RFC 2047 section 5 allows.
    White space between encoded words is dropped (section 6.2).  Also applied inside
    quoted strings: Outlook and others quote encoded names and every client decodes them.
    """
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: bytearray = bytearray()
    pending_charset = ""
    pos = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending:
            out.append(decode_bytes(bytes(pending), pending_charset, what, defects))
            pending = bytearray()

    for m in _ENCODED_WORD.finditer(value):
        gap = value[pos : m.start()]
        if gap and (gap.strip() or not pending):
            flush()
            out.append(gap)
        charset, kind, text = m.group(1).split("*")[0].lower(), m.group(2), m.group(3)
        try:
            if kind in "bB":
                if not _BASE64_WORD.match(text):
                    raise ValueError(text)
                data = binascii.a2b_base64(text + "=" * (-len(text) % 4))
            else:
                data = binascii.a2b_qp(text, header=True)
        except (binascii.Error, ValueError):
            defects.append(f"broken encoded word in {what}")
            flush()
            out.append(m.group(0))
            pos = m.end()
            continue
        if pending and charset != pending_charset:
            flush()
        pending_charset = charset
        pending += data
        pos = m.end()
    flush()
    out.append(value[pos:])
    return clean("".join(out))


def header_text(value: str, what: str, defects: list[str]) -> str:
    """A raw header value as the text a person would read."""
    value = from_surrogates(unfold(value), what, defects)
    return clean(decode_words(value, what, defects)).strip()


# -- message ids and dates -------------------------------------------------------

_MSG_ID = re.compile(r"<([^<>\s]{1,500})>")


def message_id(values: list[str] | None) -> str | None:
    """`<id@host>`: the first bracketed id, or a bare token wrapped in brackets."""
    if not values or not values[0].strip():
        return None
    if m := _MSG_ID.search(values[0]):
        return f"<{m.group(1)}>"
    token = values[0].split()[0].strip("<>")
    return f"<{token[:500]}>" if token else None


def id_list(values: list[str]) -> list[str]:
    ids: list[str] = []
    for value in values:
        found = _MSG_ID.findall(value)
        if not found:  # some mailers omit the brackets
            found = [t.strip("<>,;") for t in value.split() if "@" in t]
        ids.extend(f"<{i}>" for i in found if i)
    return list(dict.fromkeys(ids))


def parse_date(value: str | None, defects: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError, HeaderParseError):
        parsed = None
    if parsed is None:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            defects.append(f"unreadable Date {value[:60]!r}")
            return None
    # "-0000" (RFC 5322 section 3.3: zone unknown) and ISO dates without an offset.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# -- file names -------------------------------------------------------------------------

MAX_FILENAME_BYTES = 180
_EXTENSIONS = {
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/msword": ".doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "text/html": ".html",
    "text/calendar": ".ics",
    "text/csv": ".csv",
    "message/rfc822": ".eml",
}
_UNSAFE = re.compile(r'[<>:"|?*\\/]')
_EXT = re.compile(r"\.[A-Za-z0-9]{1,10}$")
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(1, 10)] + [f"LPT{i}" for i in range(1, 10)]
)


def default_filename(content_type: str, number: int) -> str:
    """`attachment-3.pdf`: the name of a part that came without one."""
    ext = _EXTENSIONS.get(content_type)
    if ext is None:
        ext = ".txt" if content_type.startswith(("text/", "message/")) else ".bin"
    return f"attachment-{number}{ext}"


def safe_filename(name: str | None, content_type: str, number: int) -> str:
    """A name safe to show and to store: no directory part, no control or bidi characters
    (U+202E turns "gpj.exe" into "exe.jpg" on screen), no leading dot (hidden files),
    no Windows device names, at most MAX_FILENAME_BYTES of UTF-8, extension kept."""
    if not name:
        return default_filename(content_type, number)
    name = unicodedata.normalize("NFC", name)
    # The last path component, whichever separator the sender's system used.
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cs"))
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip().rstrip(". ")
    if not name:
        return default_filename(content_type, number)
    stem, ext = name, ""
    if m := _EXT.search(name):
        stem, ext = name[: m.start()], m.group(0)
    if stem.upper() in _WINDOWS_RESERVED:
        stem = f"_{stem}"
    budget = MAX_FILENAME_BYTES - len(ext.encode())
    if len(stem.encode()) > budget:
        stem = stem.encode()[:budget].decode("utf-8", "ignore").rstrip(". ")
    return f"{stem or 'attachment'}{ext}"


# -- format=flowed ----------------------------------------------------------------------


def unflow(text: str, delsp: bool) -> str:
    """Join the soft line breaks of RFC 3676 format=flowed text (Thunderbird, Apple Mail).

    A line ending in a space continues on the next line of the same quote depth; the
    signature separator "-- " is never joined; with DelSp=yes the space goes too.
    """
    out: list[str] = []
    current: str | None = None
    depth = -1
    for line in text.split("\n"):
        d = len(line) - len(line.lstrip(">"))
        body = line[d:]
        body = body.removeprefix(" ")  # space-stuffing (section 4.4)
        if current is not None and d == depth:
            current += body
        else:
            if current is not None:
                out.append(">" * depth + (" " if depth else "") + current)
            current, depth = body, d
        if not body.endswith(" ") or body == "-- ":
            out.append(">" * depth + (" " if depth else "") + current)
            current = None
        elif delsp:
            current = current[:-1]
    if current is not None:
        out.append(">" * depth + (" " if depth else "") + current)
    return "\n".join(out)
