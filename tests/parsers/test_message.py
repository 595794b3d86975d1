"""parse(): headers, addresses, ids, dates, bodies and attachments of well-formed mail."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mailticket.parsers import Address, MailClass, ParsedMessage
from mailticket.parsers.message import parse

from . import mailbuild as mb


def test_plain_message_fields() -> None:
    raw = mb.plain(
        "Hello,\n\nMy printer is on fire. Please help, the whole office is waiting.\n",
        {
            "From": '"Doe, Jane" <Jane.Doe@Example.COM>',
            "To": "Support <support@helpdesk.example>, bob@example.org",
            "Cc": "=?utf-8?q?Ren=C3=A9_Dupont?= <rene@example.fr>",
            "Reply-To": "jane.private@example.net",
            "In-Reply-To": "<prev@helpdesk.example>",
            "References": "<first@helpdesk.example>\r\n <prev@helpdesk.example>",
            "X-Custom": "one",
        },
    )
    pm = parse(raw)
    assert isinstance(pm, ParsedMessage)
    assert pm.message_id == "<m1@example.com>"
    assert pm.subject == "Printer on fire"
    assert pm.from_ == Address("Doe, Jane", "jane.doe@example.com")
    assert pm.to == [Address("Support", "support@helpdesk.example"), Address("", "bob@example.org")]
    assert pm.cc == [Address("René Dupont", "rene@example.fr")]
    assert pm.reply_to == [Address("", "jane.private@example.net")]
    assert pm.in_reply_to == ["<prev@helpdesk.example>"]
    assert pm.references == ["<first@helpdesk.example>", "<prev@helpdesk.example>"]
    assert pm.thread_ids == ["<prev@helpdesk.example>", "<first@helpdesk.example>"]
    assert pm.date == datetime(2026, 1, 5, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    assert pm.header("x-custom") == "one"
    assert pm.headers["subject"] == ["Printer on fire"]
    assert pm.text.startswith("Hello,\n\nMy printer is on fire.")
    assert pm.new_text == pm.text
    assert pm.html is None
    assert pm.attachments == []
    assert pm.mail_class is MailClass.NORMAL
    assert pm.language == "en"
    assert pm.defects == []


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("=?utf-8?q?R=C3=A9ponse_=C3=A0_votre_demande?=", "Réponse à votre demande"),
        ("=?ISO-8859-1?Q?Gr=FC=DFe?= aus Berlin", "Grüße aus Berlin"),
        ("=?utf-8?b?0J/RgNC40LLQtdGC?=", "Привет"),
        ("=?windows-1252?q?=93quoted=94?=", "\u201cquoted\u201d"),
        ("=?iso-2022-jp?b?GyRCJUYlOSVIGyhC?=", "テスト"),
        ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # white space between words goes (RFC 2047)
        ("=?utf-8?q?caf=C3?= =?utf-8?q?=A9?=", "café"),  # a character split over two words
        ("Re: =?utf-8?q?Caf=C3=A9?= ok", "Re: Café ok"),
        ("=?utf-8?q?no_end", "=?utf-8?q?no_end"),
        ("=?x-unknown?q?caf=E9?=", "café"),  # unknown charset: utf-8, then cp1252
        ("=?utf-8?b?!!!?=", "=?utf-8?b?!!!?="),
    ],
)
def test_rfc2047_subjects(encoded: str, decoded: str) -> None:
    pm = parse(mb.plain("x", {"Subject": encoded}))
    assert pm.subject == decoded


def test_folded_subject_is_unfolded() -> None:
    pm = parse(mb.plain("x", {"Subject": "A long\r\n subject\r\n\tline"}))
    assert pm.subject == "A long subject line"


def test_message_ids_are_normalised() -> None:
    pm = parse(
        mb.plain(
            "x",
            {
                "Message-ID": "bare-id@example.com",
                "In-Reply-To": "<a@x> (Jane's message of Monday)",
                "References": "b@x, <c@x>",
            },
        )
    )
    assert pm.message_id == "<bare-id@example.com>"
    assert pm.in_reply_to == ["<a@x>"]
    assert pm.references == ["<c@x>"]
    pm = parse(mb.plain("x", {"References": "b@x c@x"}))
    assert pm.references == ["<b@x>", "<c@x>"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Mon, 5 Jan 2026 10:00:00 +0100 (CET)", datetime(2026, 1, 5, 9, 0, tzinfo=UTC)),
        ("5 Jan 2026 10:00 GMT", datetime(2026, 1, 5, 10, 0, tzinfo=UTC)),
        ("Mon, 05 Jan 26 10:00:00 -0000", datetime(2026, 1, 5, 10, 0, tzinfo=UTC)),
        ("2026-01-05T10:00:00+00:00", datetime(2026, 1, 5, 10, 0, tzinfo=UTC)),
        ("yesterday at noon", None),
        ("Mon, 32 Jan 2026 10:00:00 +0100", None),
    ],
)
def test_dates(value: str, expected: datetime | None) -> None:
    pm = parse(mb.plain("x", {"Date": value}))
    assert pm.date == expected
    if expected is None:
        assert any("Date" in d for d in pm.defects)


def test_html_only_message_is_converted() -> None:
    pm = parse(
        mb.html_only(
            "<html><head><style>p{color:red}</style><script>alert(1)</script></head><body>"
            "<p>Bonjour,</p><p>Mon imprimante ne marche pas. Pouvez-vous m&#39;aider ?</p>"
            "<ul><li>modèle HP</li></ul></body></html>"
        )
    )
    assert pm.html is not None and "<p>Bonjour,</p>" in pm.html
    assert "Bonjour," in pm.text and "m'aider" in pm.text and "modèle HP" in pm.text
    assert "alert" not in pm.text and "color" not in pm.text
    assert pm.language == "fr"


def test_alternative_prefers_the_plain_part() -> None:
    pm = parse(mb.alternative("plain version", "<p>html version</p>"))
    assert pm.text == "plain version"
    assert pm.html == "<p>html version</p>"


def test_attachments_inline_images_and_forwarded_message() -> None:
    pdf = b"%PDF-1.4 fake"
    png = b"\x89PNG\r\n\x1a\nfake"
    forwarded = mb.plain("the original", {"Subject": "Old: invoice 12/2025", "Message-ID": "<o@x>"})
    raw = mb.message(
        mb.multipart(
            "mixed",
            [
                mb.multipart(
                    "related",
                    [
                        mb.leaf("text/html; charset=utf-8", '<p>See <img src="cid:logo@x"></p>'),
                        mb.inline_image("logo@x", png),
                    ],
                ),
                mb.attachment("../../etc/passwd.pdf", pdf),
                mb.leaf("message/rfc822", forwarded, cte="7bit"),
                mb.leaf("application/octet-stream", b"\x00\x01", cte="base64"),
            ],
        )
    )
    pm = parse(raw)
    assert "See" in pm.text
    names = [a.filename for a in pm.attachments]
    assert names == ["image001.png", "passwd.pdf", "Old_ invoice 12_2025.eml", "attachment-4.bin"]
    logo, doc, eml, blob = pm.attachments
    assert logo.inline and logo.content_id == "logo@x" and logo.payload == png
    assert logo.content_type == "image/png"
    assert not doc.inline and doc.payload == pdf and doc.content_type == "application/pdf"
    assert eml.content_type == "message/rfc822" and b"Message-ID: <o@x>" in eml.payload
    assert b"the original" in eml.payload
    assert blob.payload == b"\x00\x01"


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ("attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf", "résumé.pdf"),  # RFC 2231
        ('attachment; filename="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="', "résumé.pdf"),  # Outlook
        ('attachment; filename="C:\\Users\\jane\\report.docx"', "report.docx"),
        ('attachment; filename=".htaccess"', "htaccess"),
        ('attachment; filename="evil\u202egpj.exe"', "evilgpj.exe"),
        ('attachment; filename="a\x07b.txt"', "ab.txt"),
        ('attachment; filename="CON.txt"', "_CON.txt"),
        ('attachment; filename="' + "x" * 400 + '.pdf"', "x" * 176 + ".pdf"),
        ('attachment; filename="..."', "attachment-1.pdf"),
        ("attachment", "attachment-1.pdf"),
    ],
)
def test_attachment_names_are_safe(disposition: str, expected: str) -> None:
    part = mb.leaf(
        "application/pdf", b"data", cte="base64", extra={"Content-Disposition": disposition}
    )
    pm = parse(mb.message(mb.multipart("mixed", [mb.leaf("text/plain", "hi"), part])))
    assert [a.filename for a in pm.attachments] == [expected]


def test_undeclared_8bit_body_and_header() -> None:
    raw = (
        b"From: Jos\xe9 <jose@example.com>\r\nSubject: caf\xc3\xa9 cr\xc3\xa8me\r\n"
        b"Message-ID: <a@b>\r\n\r\nd\xe9j\xe0 vu\r\n"
    )
    pm = parse(raw)
    assert pm.from_ == Address("José", "jose@example.com")
    assert pm.subject == "café crème"
    assert pm.text == "déjà vu"
    assert any("8-bit" in d for d in pm.defects)


def test_iso_8859_1_label_is_read_as_windows_1252() -> None:
    raw = mb.message(mb.leaf("text/plain; charset=iso-8859-1", b"\x93quoted\x94 \x80 5"))
    assert parse(raw).text == "\u201cquoted\u201d \u20ac 5"


def test_utf16_and_base64_bodies() -> None:
    body = "Grüße aus Köln".encode("utf-16")
    raw = mb.message(mb.leaf("text/plain; charset=utf-16", body, cte="base64"))
    assert parse(raw).text == "Grüße aus Köln"


def test_nul_and_surrogates_never_reach_the_text() -> None:
    raw = mb.message(mb.leaf("text/plain; charset=utf-16-le", b"a\x00\x00\x00\x00\xd8b\x00"))
    pm = parse(raw)
    assert "\x00" not in pm.text
    pm.text.encode("utf-8")  # no lone surrogate


def test_multiple_headers_are_kept_in_order() -> None:
    raw = mb.plain("x", {"Received": "from a", "X-Dup": "1"}).replace(
        b"X-Dup: 1\r\n", b"X-Dup: 1\r\nX-Dup: =?utf-8?q?deux_=C3=A9?=\r\nReceived: from b\r\n"
    )
    pm = parse(raw)
    assert pm.headers["x-dup"] == ["1", "deux é"]
    assert pm.headers["received"] == ["from a", "from b"]


def test_identical_inline_images_are_kept_once() -> None:
    png = b"\x89PNG same bytes"
    parts = [mb.leaf("text/html", "<p>x</p>")] + [mb.inline_image(f"i{n}@x", png) for n in range(5)]
    pm = parse(mb.message(mb.multipart("related", parts)))
    assert len(pm.attachments) == 1
    assert any("identical" in d for d in pm.defects)


def test_base64_attachment_over_the_fast_path_is_exact() -> None:
    payload = bytes(range(256)) * 1000  # 256 KB: taken out before the feed parser
    raw = mb.message(
        mb.multipart(
            "mixed",
            [
                mb.leaf("text/plain", "see attached"),
                mb.attachment("data.bin", payload, "application/octet-stream"),
                mb.leaf("text/plain", "after the attachment"),
            ],
        )
    )
    pm = parse(raw)
    assert [a.payload for a in pm.attachments] == [payload]
    assert pm.text == "see attached\nafter the attachment"


def test_forwarded_message_with_large_attachment_is_regenerated_exactly() -> None:
    payload = b"\x01\x02" * 60_000
    inner = mb.message(
        mb.multipart("mixed", [mb.leaf("text/plain", "inner"), mb.attachment("big.bin", payload)]),
        {"Subject": "Inner"},
    )
    raw = mb.message(
        mb.multipart(
            "mixed", [mb.leaf("text/plain", "fyi"), mb.leaf("message/rfc822", inner, cte="7bit")]
        )
    )
    pm = parse(raw)
    (eml,) = pm.attachments
    assert eml.filename == "Inner.eml"
    assert base64.encodebytes(payload).replace(b"\n", b"\r\n")[:1000] in eml.payload
    assert b"\r\nSubject: Inner\r\n" in eml.payload
    assert b"xmtblob" not in eml.payload
