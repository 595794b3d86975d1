"""parse() on broken and hostile mail: always a ParsedMessage, always in bounded time."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from mailticket.parsers import ParsedMessage, feed
from mailticket.parsers.message import parse

from . import mailbuild as mb

LIMIT = 5.0  # seconds; every case here takes well under a second on the dev machines


def timed_parse(raw: bytes, limit: float = LIMIT) -> ParsedMessage:
    start = time.monotonic()
    pm = parse(raw)
    elapsed = time.monotonic() - start
    assert isinstance(pm, ParsedMessage)
    assert elapsed < limit, f"parse took {elapsed:.2f} s"
    assert isinstance(pm.text, str) and isinstance(pm.new_text, str)
    assert isinstance(pm.subject, str)
    pm.text.encode("utf-8")  # storable as UTF-8
    pm.subject.encode("utf-8")
    return pm


def nested(depth: int, inner: bytes) -> bytes:
    part = inner
    for level in range(depth):
        part = mb.multipart("mixed", [part], boundary=f"level-{level}")
    return mb.message(part)


def test_broken_multipart_boundary_is_repaired() -> None:
    body = mb.multipart("mixed", [mb.leaf("text/plain", "the real text")], boundary="actual")
    raw = mb.message(body.replace(b'boundary="actual"', b'boundary="declared"'))
    pm = timed_parse(raw)
    assert pm.text == "the real text"
    assert any("boundary" in d for d in pm.defects)


def test_missing_closing_boundary() -> None:
    body = mb.multipart("mixed", [mb.leaf("text/plain", "hello"), mb.attachment("a.pdf", b"x")])
    pm = timed_parse(mb.message(body.rsplit(b"--b-", 1)[0]))
    assert pm.text == "hello"


def test_multipart_without_any_boundary_line() -> None:
    raw = mb.message(b'Content-Type: multipart/mixed; boundary="x"\r\n\r\njust text\r\n')
    pm = timed_parse(raw)
    assert "just text" in pm.text


def test_unknown_charset() -> None:
    raw = mb.message(mb.leaf("text/plain; charset=x-unknown", b"caf\xe9 cr\xe8me"))
    pm = timed_parse(raw)
    assert pm.text == "café crème"
    assert any("x-unknown" in d for d in pm.defects)


@pytest.mark.parametrize("charset", ["base64", "rot13", "undefined", '"', "utf-8'en'"])
def test_charsets_that_are_not_text_encodings(charset: str) -> None:
    raw = mb.message(mb.leaf(f"text/plain; charset={charset}", b"plain words"))
    assert timed_parse(raw).text == "plain words"


def test_declared_charset_that_lies() -> None:
    raw = mb.message(mb.leaf("text/plain; charset=us-ascii", "naïve façade".encode()))
    assert timed_parse(raw).text == "naïve façade"


def test_undeclared_8bit() -> None:
    raw = b"Subject: \xe9t\xe9\r\nFrom: a@b\r\n\r\n\xe9t\xe9 \xe0 Paris\r\n"
    pm = timed_parse(raw)
    assert pm.subject == "été"
    assert pm.text == "été à Paris"


def test_no_from_and_no_message_id() -> None:
    pm = timed_parse(mb.plain("hello", {"From": None, "Message-ID": None}))
    assert pm.from_ is None and pm.message_id is None
    assert "no From address" in pm.defects and "no Message-ID" in pm.defects
    assert pm.text == "hello"


def test_sender_stands_in_for_a_missing_from() -> None:
    pm = timed_parse(mb.plain("hello", {"From": None, "Sender": "Bot <bot@example.com>"}))
    assert pm.from_ is not None and pm.from_.email == "bot@example.com"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n",
        b"no headers at all, just a line of text\n",
        b"From: \r\nTo: ,,,<>\r\nSubject:\r\n\r\n",
        b"From: <<<@@@>>> (unclosed\r\nTo: undisclosed-recipients:;\r\n\r\nx",
        b"Content-Type: multipart/mixed\r\n\r\n--\r\n--\r\n",
        b"Content-Type: text/plain; charset=\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n",
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n",
        b"Content-Type: message/rfc822\r\n\r\n",
        b"Content-Type: ;;;===\r\nContent-Disposition: ;filename*=x'y'%ZZ\r\n\r\nbody",
        b"\x00\x01\x02\xff\xfe" * 1000,
    ],
    ids=[
        "empty",
        "blank",
        "no-headers",
        "empty-headers",
        "bad-addresses",
        "empty-multipart",
        "bad-base64",
        "bad-qp",
        "empty-rfc822",
        "bad-params",
        "binary",
    ],
)
def test_garbage_and_empty(raw: bytes) -> None:
    pm = timed_parse(raw)
    assert pm.mail_class is not None


def test_no_headers_body_becomes_text() -> None:
    assert "just a line" in timed_parse(b"just a line of text\n").text


def test_random_bytes() -> None:
    rng = random.Random(2026)
    for _ in range(20):
        timed_parse(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 5000))))


def test_random_mutations_of_a_real_message() -> None:
    base = bytearray(
        mb.message(
            mb.multipart(
                "mixed",
                [
                    mb.alternative("hi", "<p>hi</p>").split(b"\r\n", 6)[-1],
                    mb.attachment("a.pdf", b"%PDF" * 100),
                ],
            )
        )
    )
    rng = random.Random(7)
    for _ in range(100):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 30)):
            raw[rng.randrange(len(raw))] = rng.choice(b'\r\n-=?<>:;"\\\x00\xff ')
        timed_parse(bytes(raw))


def test_ten_thousand_header_lines() -> None:
    extra = b"".join(b"X-Spam-%d: value %d\r\n" % (i, i) for i in range(10_000))
    raw = mb.plain("body after many headers").replace(b"MIME-Version", extra + b"MIME-Version")
    pm = timed_parse(raw)
    assert pm.text == "body after many headers"
    assert pm.header("x-spam-9999") == "value 9999"


def test_fifty_nested_multiparts() -> None:
    pm = timed_parse(nested(50, mb.leaf("text/plain", "deep hello")))
    assert pm.text == "deep hello"


def test_nesting_beyond_the_recursion_limit() -> None:
    pm = timed_parse(nested(1_200, mb.leaf("text/plain", "too deep")))
    assert pm.subject == "Printer on fire"
    assert any("nested" in d for d in pm.defects)


def test_parse_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # 150 levels with a long body: the feed parser's cost per line grows with depth.
    monkeypatch.setattr(feed, "PARSE_BUDGET", 0.05)
    body = "line of text\n" * 40_000
    pm = timed_parse(nested(150, mb.leaf("text/plain", body)), limit=2.0)
    assert any("budget" in d for d in pm.defects)


def test_empty_body() -> None:
    pm = timed_parse(mb.plain(""))
    assert pm.text == "" and pm.new_text == "" and pm.language is None


def test_html_nested_ten_thousand_deep() -> None:
    html = "<div>" * 10_000 + "deep text" + "</div>" * 10_000
    pm = timed_parse(mb.html_only(html))
    assert "deep text" in pm.text


def test_html_with_twenty_thousand_links() -> None:
    html = "<p>" + "".join(f'<a href="https://x.example/{i}">link {i}</a> ' for i in range(20_000))
    pm = timed_parse(mb.html_only(html))
    assert pm.text.startswith("link 0 link 1 ")
    assert "https://" not in pm.text  # link targets are not shown


def test_five_megabytes_of_html() -> None:
    html = "<table>" + "<tr><td>cell text</td><td><b>bold</b></td></tr>" * 110_000 + "</table>"
    pm = timed_parse(mb.html_only(html))
    assert pm.text.startswith("cell text")
    assert any("cut" in d for d in pm.defects)


def test_broken_html_and_scripts() -> None:
    html = (
        "<p>Hello <b>world<p>next <<<>>> <a href='x>broken</i></td> &amp;&nbsp;&bogus; "
        "<script>var leak = 1;</script><style>.leak{}</style><!-- unclosed comment"
    )
    pm = timed_parse(mb.html_only(html))
    assert "Hello world" in pm.text
    assert "leak" not in pm.text


def test_same_inline_image_fifty_times() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    parts = [mb.leaf("text/html", "<p>logo</p>")]
    parts += [mb.inline_image(f"logo{i}@x", png) for i in range(50)]
    pm = timed_parse(mb.message(mb.multipart("related", parts)))
    assert len(pm.attachments) == 1
    assert pm.attachments[0].payload == png


def test_ten_megabyte_attachment() -> None:
    payload = random.Random(1).randbytes(10 * 1024 * 1024)
    raw = mb.message(
        mb.multipart(
            "mixed",
            [
                mb.leaf("text/plain", "see attached"),
                mb.attachment("big.zip", payload, "application/zip"),
            ],
        )
    )
    pm = timed_parse(raw)
    assert pm.text == "see attached"
    assert [len(a.payload) for a in pm.attachments] == [len(payload)]
    assert pm.attachments[0].payload == payload


def test_ten_megabyte_quoted_printable_attachment() -> None:
    payload = b"=3D" * 3_500_000  # no fast path: QP goes through the feed parser
    part = mb.leaf(
        "application/octet-stream",
        payload,
        cte="quoted-printable",
        extra={"Content-Disposition": 'attachment; filename="x.bin"'},
    )
    pm = timed_parse(mb.message(mb.multipart("mixed", [mb.leaf("text/plain", "x"), part])))
    assert len(pm.attachments[0].payload) == 3_500_000


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("huge-subject", lambda: mb.plain("x", {"Subject": "=?utf-8?q?a?= " * 100_000})),
        (
            "huge-to",
            lambda: mb.plain("x", {"To": ", ".join(f"u{i}@x.example" for i in range(20_000))}),
        ),
        (
            "huge-references",
            lambda: mb.plain("x", {"References": " ".join(f"<r{i}@x>" for i in range(50_000))}),
        ),
        (
            "many-parts",
            lambda: mb.message(mb.multipart("mixed", [mb.leaf("text/plain", "p")] * 5_000)),
        ),
        ("one-long-line", lambda: mb.plain("y" * 5_000_000)),
        ("angle-brackets", lambda: mb.plain("x", {"From": "<" * 100_000})),
        (
            "many-encoded-names",
            lambda: mb.plain(
                "x", {"Cc": ", ".join(f"=?utf-8?b?w6k=?= <c{i}@x>" for i in range(5_000))}
            ),
        ),
    ],
)
def test_hostile_sizes(name: str, make: Callable[[], bytes]) -> None:
    pm = timed_parse(make())
    assert len(pm.references) <= 100
    assert len(pm.to) <= 500
    assert len(pm.attachments) <= 500
    assert len(pm.defects) <= 50
