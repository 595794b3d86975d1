"""Raw bytes -> ParsedMessage: the first step of the pipeline, and the only door to MIME.

`parse(raw)` never raises and finishes in bounded time on any bytes: whatever is broken
is repaired or skipped and written to `pm.defects`.  It fills every field, then asks
`quotes` for the new text, `autoreply` for the mail class and `language` for the language.

mail-parser does the address parsing (its RFC 5322 lexer refuses the ambiguous forms of
CVE-2023-27043 that Python 3.11's getaddresses accepts).  Its `parse_from_bytes` is not
used: it decodes every header twice and base64-encodes every attachment again.  Measured
on a mix of plain, HTML, quoted replies and a 200 KB attachment (min of 100 runs, µs):

    message         parse_from_bytes   this module (everything, quotes and class too)
    plain                   ~410         ~240
    text + HTML             ~660         ~410
    HTML only               ~400       ~1,600 (inscriptis layout: see html.py)
    200 KB PDF            ~5,400       ~2,800 (1,000 of them to base64-decode it)

So the MIME walk is our own, on the email package with the compat32 policy (docs/performance.md),
and large base64 bodies skip its line-by-line feed parser (`feed._stash_blobs`).
"""

from __future__ import annotations

import logging
import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

import mailparser.utils

from . import Address, Attachment, ParsedMessage, autoreply, language, quotes
from .decode import (
    best_effort,
    clean,
    decode_bytes,
    decode_words,
    from_surrogates,
    header_text,
    id_list,
    message_id,
    parse_date,
    safe_filename,
    unflow,
    unfold,
)
from .feed import feed
from .html import tidy, to_text

log = logging.getLogger(__name__)

MAX_PARTS = 500
MAX_DEPTH = 100
MAX_IDS = 100  # References kept (the newest): enough to thread, bounded for hostile mail
MAX_ADDRESSES = 500
MAX_DEFECTS = 50

_SIMPLE_ADDRESS = re.compile(
    r'\s*(?:"([^"\\]*)"|([^"<>,;:@\\()\[\]]*?))\s*<([^<>\s"(),;:@]+@[^<>\s"(),;:@]+)>\s*$'
)
_ANGLE = re.compile(r"<([^<>]*)>")
_BARE_ADDRESS = re.compile(r'\s*<?([^<>\s"(),;:@]+@[^<>\s"(),;:@]+)>?\s*$')
_ADDRESS_HEADERS = ("from", "to", "cc", "reply-to", "sender")
_EML_POLICY = compat32.clone(linesep="\r\n")  # an .eml file is in wire format


def parse(raw: bytes) -> ParsedMessage:
    """Everything the pipeline needs from one raw message.  Never raises."""
    defects: list[str] = []
    try:
        if not isinstance(raw, bytes):
            raw = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
        pm = _parse(raw, defects)
    except Exception as exc:  # the last net: a message must always come out
        log.exception("parse failed; falling back to a minimal message")
        defects.append(f"parse failed ({type(exc).__name__}: {exc}); minimal fallback")
        try:
            pm = _minimal(raw if isinstance(raw, bytes) else b"", defects)
        except Exception:  # noqa: BLE001
            pm = ParsedMessage(message_id=None, subject="", from_=None, defects=defects)
    _finish(pm)
    pm.defects = list(dict.fromkeys(pm.defects))[:MAX_DEFECTS]
    return pm


def _parse(raw: bytes, defects: list[str]) -> ParsedMessage:
    msg = feed(raw, defects)
    if msg is None:
        return _minimal(raw, defects)
    headers = _headers(msg, defects)
    pm = ParsedMessage(
        message_id=message_id(headers.get("message-id")),
        subject=" ".join(headers.get("subject", [""])[0].split()),
        from_=None,
        headers=headers,
        defects=defects,
    )
    _fill_envelope(pm, msg, defects)
    _Body(pm, defects).walk(msg)
    return pm


def _finish(pm: ParsedMessage) -> None:
    """The derived fields, each on its own so one failing does not lose the others."""
    try:
        pm.mail_class, pm.class_reason, pm.bounce_refs, pm.bounce_subject, pm.bounce_failed = (
            autoreply.classify(pm)
        )
    except Exception as exc:  # noqa: BLE001
        pm.defects.append(f"classification failed ({type(exc).__name__})")
    try:
        pm.language = language.guess(pm.new_text or pm.text, pm.header("content-language"))
    except Exception as exc:  # noqa: BLE001
        pm.defects.append(f"language guess failed ({type(exc).__name__})")


def _new_text(text: str, defects: list[str]) -> str:
    try:
        return quotes.new_text(text)
    except Exception as exc:  # noqa: BLE001
        defects.append(f"quote removal failed ({type(exc).__name__}); new text = text")
        return text


# -- headers ----------------------------------------------------------------------------


def _headers(msg: Message, defects: list[str]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        key = clean(str(name)).strip().lower()
        if not isinstance(value, str):
            value = str(value)
        headers.setdefault(key, []).append(header_text(value, f"header {key[:40]}", defects))
    return headers


def _fill_envelope(pm: ParsedMessage, msg: Message, defects: list[str]) -> None:
    raw: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        key = str(name).lower()
        if key in _ADDRESS_HEADERS:
            raw.setdefault(key, []).append(str(value))
    froms = _addresses(raw.get("from", []), "From", defects)
    if not froms:
        froms = _addresses(raw.get("sender", []), "Sender", defects)
        defects.append("no From address" + ("; used Sender" if froms else ""))
    pm.from_ = froms[0] if froms else None
    pm.to = _addresses(raw.get("to", []), "To", defects)
    pm.cc = _addresses(raw.get("cc", []), "Cc", defects)
    pm.reply_to = _addresses(raw.get("reply-to", []), "Reply-To", defects)
    if pm.message_id is None:
        defects.append("no Message-ID")
    pm.in_reply_to = id_list(pm.headers.get("in-reply-to", []))
    pm.references = id_list(pm.headers.get("references", []))
    if len(pm.references) > MAX_IDS:
        defects.append(f"References with {len(pm.references)} ids; kept the newest {MAX_IDS}")
        pm.references = pm.references[-MAX_IDS:]
    pm.date = parse_date(pm.header("date"), defects)
    pm.envelope_sender = _envelope_sender(pm.header("return-path"))


def _envelope_sender(value: str | None) -> str | None:
    """The address of the topmost Return-Path: "" for the null sender.

    `<>` is the null reverse-path (RFC 5321 section 4.5.5); some MTAs (Sendmail, qmail's
    tools) write it as `<MAILER-DAEMON>`, a local part without a domain."""
    if value is None:
        return None
    m = _ANGLE.search(value)
    address = (m.group(1) if m else value).strip().lower()
    return "" if address in ("", "mailer-daemon") else address


def _addresses(values: list[str], what: str, defects: list[str]) -> list[Address]:
    """Addresses of every occurrence of one header: decoded names, lower-cased emails."""
    result: list[Address] = []
    for value in values:
        value = from_surrogates(unfold(value), what, defects)
        if len(value) > 65536:
            defects.append(f"{what} header of {len(value)} characters cut")
            value = value[:65536]
        if m := _SIMPLE_ADDRESS.match(value):  # the common case, without the full lexer
            pairs = [(m.group(1) or m.group(2) or "", m.group(3))]
        elif m := _BARE_ADDRESS.match(value):
            pairs = [("", m.group(1))]
        else:
            pairs = _lex_addresses(value, what, defects)
        for name, email in pairs:
            email = clean(email or "").strip().strip("<>").strip().lower()
            if not email:
                continue
            name = " ".join(decode_words(clean(name or ""), what, defects).split())
            name = name.strip("\"' ")
            result.append(Address("" if name.lower() == email else name, email))
    unique = list(dict.fromkeys(result))
    if len(unique) > MAX_ADDRESSES:
        defects.append(f"{what} with {len(unique)} addresses; kept {MAX_ADDRESSES}")
    return unique[:MAX_ADDRESSES]


def _lex_addresses(value: str, what: str, defects: list[str]) -> list[tuple[str, str]]:
    diagnostics: list[dict] = []
    try:
        pairs = mailparser.utils.get_addresses(value, defects=diagnostics)
    except Exception:  # noqa: BLE001 - an older mail-parser, or a lexer bug on hostile input
        from email.utils import getaddresses

        pairs = getaddresses([value])
    if diagnostics:
        defects.append(f"{what}: {diagnostics[0].get('reason', 'malformed address')}")
    return [(str(n), str(e)) for n, e in pairs]


# -- the body ---------------------------------------------------------------------------


class _Body:
    """One walk over the MIME tree: texts, HTML and attachments of one message."""

    def __init__(self, pm: ParsedMessage, defects: list[str]) -> None:
        self.pm, self.defects = pm, defects
        self.plain: list[str] = []
        self.html: list[str] = []
        self.seen: set[tuple[str, bytes]] = set()
        self.dropped = 0
        self.parts = 0

    def walk(self, msg: Message) -> None:
        if getattr(msg, "_mt_unparsed", False):
            return
        stack: list[tuple[Message, int, bool]] = [(msg, 0, False)]
        while stack:
            part, depth, repaired = stack.pop()
            self.parts += 1
            if self.parts > MAX_PARTS:
                self.defects.append(f"more than {MAX_PARTS} MIME parts; the rest ignored")
                break
            for defect in part.defects:
                self.defects.append(f"MIME: {type(defect).__name__}")
            ctype = _content_type(part)
            if ctype in ("message/rfc822", "message/global") and part.is_multipart():
                self._forwarded(part)
            elif ctype == "message/delivery-status" and part.is_multipart():
                # compat32 parses the status groups as header-only messages (RFC 3464).
                groups = [_as_bytes(group) for group in _children(part)]
                self._attach(None, ctype, b"".join(groups), False, None)
            elif part.is_multipart():
                children = _children(part)
                if depth >= MAX_DEPTH:
                    self.defects.append(f"multipart nested over {MAX_DEPTH} levels; cut")
                    continue
                stack.extend((c, depth + 1, repaired) for c in reversed(children))
            elif ctype.startswith("multipart/") and not repaired:
                fixed = self._repair(part)
                if fixed is not None:
                    stack.append((fixed, depth + 1, True))
            else:
                self._leaf(part, ctype)
        self._texts()
        if self.dropped:
            self.defects.append(f"{self.dropped} identical attachments dropped")

    def _texts(self) -> None:
        pm = self.pm
        pm.html = "\n".join(self.html) if self.html else None
        plain = "\n".join(self.plain).replace("\r\n", "\n").strip("\n")
        if plain.strip():
            pm.text = plain
            pm.new_text = _new_text(plain, self.defects)
        elif pm.html:
            # The quote container is marked in the HTML, where clients say exactly where
            # it starts, and cut in the text (see quotes.mark_html).
            converted = to_text(quotes.mark_html(pm.html), self.defects)
            pm.text = tidy(converted.replace(quotes.SENTINEL, ""))
            pm.new_text = _new_text(converted, self.defects)

    def _leaf(self, part: Message, ctype: str) -> None:
        _fix_8bit_params(part, self.defects)
        disposition = _safe(part.get_content_disposition)
        filename = _safe(part.get_filename)
        if filename:
            filename = header_text(str(filename), "attachment name", self.defects)
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename:
            text = decode_bytes(_payload(part), _safe(part.get_content_charset), ctype, self.defects)
            if ctype == "text/html":
                self.html.append(text)
            else:
                if str(_safe(lambda: part.get_param("format")) or "").lower() == "flowed":
                    delsp = str(_safe(lambda: part.get_param("delsp")) or "").lower() == "yes"
                    text = unflow(text.replace("\r\n", "\n"), delsp)
                self.plain.append(text)
            return
        cid = str(part.get("content-id") or "").strip().strip("<>").strip() or None
        inline = disposition == "inline" or (disposition is None and cid is not None)
        self._attach(filename, ctype, _payload(part), inline, cid)

    def _forwarded(self, part: Message) -> None:
        """A forwarded message/rfc822 becomes one attachment, named after its subject."""
        children = _children(part)
        if not children:
            return
        inner = children[0]
        payload = _as_bytes(inner)
        subject = header_text(str(inner.get("subject") or ""), "forwarded subject", [])
        # A subject is not a path: "invoice 12/2025" keeps both halves.
        stem = subject[:120].replace("/", "_").replace("\\", "_")
        name = f"{stem or 'forwarded message'}.eml"
        self._attach(name, "message/rfc822", payload, False, None)

    def _attach(self, name: str | None, ctype: str, payload: bytes, inline: bool, cid: str | None) -> None:
        # Some clients repeat one inline logo per reply in the thread (50 copies are
        # seen); identical bytes of one type are kept once.
        key = (ctype, payload)
        if key in self.seen:
            self.dropped += 1
            return
        self.seen.add(key)
        number = len(self.pm.attachments) + 1
        self.pm.attachments.append(
            Attachment(safe_filename(name, ctype, number), ctype, payload, inline, cid)
        )

    def _repair(self, part: Message) -> Message | None:
        """A multipart whose declared boundary never occurs: reparse with the one used.

        Seen from broken list software and hand-edited forwards: the body's first
        "--xyz" line is the real boundary more often than not.
        """
        body = part.get_payload()
        if not isinstance(body, str):
            return None
        m = re.search(r"^--([^\s]{1,200})\s*$", body, re.MULTILINE)
        if m is None:
            self.defects.append("multipart without parts; body kept as text")
            self.plain.append(
                decode_bytes(body.encode("utf-8", "surrogateescape"), None, "broken multipart", self.defects)
            )
            return None
        self.defects.append(f"multipart boundary repaired to {m.group(1)[:40]!r}")
        head = f'Content-Type: {_content_type(part)}; boundary="{m.group(1)}"\n\n'
        fixed = feed(head.encode() + body.encode("utf-8", "surrogateescape"), self.defects)
        return fixed if fixed is not None and fixed.is_multipart() else None


def _children(part: Message) -> list[Message]:
    """Sub-parts of a multipart or message/* part (compat32 keeps them as a list)."""
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


def _as_bytes(msg: Message) -> bytes:
    try:
        return msg.as_bytes(policy=_EML_POLICY)
    except Exception:  # noqa: BLE001 - the generator trips on some broken headers
        return str(msg).encode("utf-8", "surrogateescape")


def _fix_8bit_params(part: Message, defects: list[str]) -> None:
    """Raw UTF-8 in Content-Type/-Disposition parameters (Apple Mail, Thunderbird write
    `filename="résumé.pdf"` unencoded): compat32 would turn it into U+FFFD."""
    for name in ("content-type", "content-disposition"):
        value = part.get(name)
        if value is not None and not isinstance(value, str):
            raw = next((v for k, v in part.raw_items() if k.lower() == name), "")
            part.replace_header(name, from_surrogates(str(raw), name, defects))


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # noqa: BLE001
        return "application/octet-stream"


def _payload(part: Message) -> bytes:
    decoded = getattr(part, "_mt_decoded", None)
    if decoded is not None:
        return decoded
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001
        data = None
    if isinstance(data, bytes):
        return data
    body = part.get_payload()
    return body.encode("utf-8", "surrogateescape") if isinstance(body, str) else b""


def _safe(getter):
    try:
        return getter()
    except Exception:  # noqa: BLE001 - bad RFC 2231 params raise deep in email.utils
        return None


def _minimal(raw: bytes, defects: list[str]) -> ParsedMessage:
    """What can be saved when the MIME parse failed: headers if any, body as text."""
    separator = b"\r\n\r\n" if b"\r\n\r\n" in raw else b"\n\n"
    head, _, body = raw.partition(separator)
    headers: dict[str, list[str]] = {}
    try:
        headers = _headers(BytesHeaderParser(policy=compat32).parsebytes(head), defects)
    except Exception:  # noqa: BLE001
        body = raw
    text = tidy(best_effort(body[:1_000_000]))
    return ParsedMessage(
        message_id=message_id(headers.get("message-id")),
        subject=" ".join(headers.get("subject", [""])[0].split()),
        from_=None,
        headers=headers,
        text=text,
        new_text=_new_text(text, defects),
        defects=defects,
    )
