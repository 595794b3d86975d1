"""HTML -> text."""

from __future__ import annotations

import time

from mailticket.parsers.html import MAX_HTML, strip_tags, to_text


def test_layout() -> None:
    html = (
        "<p>Hi<br>there</p><ul><li>one</li><li>two</li></ul>"
        "<table><tr><td>a</td><td>b</td></tr></table><p>Caf&eacute; &lt;ok&gt;</p>"
    )
    text = to_text(html)
    assert text.startswith("Hi\nthere")
    assert "* one" in text and "* two" in text
    assert "Café <ok>" in text


def test_hidden_content_never_leaks() -> None:
    html = (
        "<html><head><title>T</title><style>.x{color:red}</style></head><body>Visible"
        "<script>var secret=1;</script></body></html>"
    )
    assert to_text(html) == "Visible"


def test_empty_and_blank() -> None:
    assert to_text("") == "" and to_text("   ") == "" and to_text("<!-- only -->") == ""


def test_oversized_input_is_cut_and_reported() -> None:
    defects: list[str] = []
    start = time.monotonic()
    text = to_text("<p>word</p>" * (MAX_HTML // 5), defects)
    assert time.monotonic() - start < 5
    assert text.startswith("word")
    assert defects and "cut" in defects[0]


def test_strip_tags_is_linear_on_unclosed_markup() -> None:
    for hostile in ("<script>" * 50_000, "<" * 500_000, "<!--" * 100_000, "<style" * 50_000):
        start = time.monotonic()
        strip_tags(hostile)
        assert time.monotonic() - start < 1
