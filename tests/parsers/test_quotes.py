"""New text of replies: one case per client style and language, plain and HTML."""

from __future__ import annotations

import time

import pytest

from mailticket.parsers import quotes
from mailticket.parsers.message import parse

from . import mailbuild as mb
from .quote_cases import CASES, PLAIN_CASES


@pytest.mark.parametrize(
    ("kind", "body", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_new_text_through_parse(kind: str, body: str, expected: str) -> None:
    raw = mb.plain(body) if kind == "plain" else mb.html_only(body)
    pm = parse(raw)
    assert pm.new_text == expected
    assert pm.text  # the full text keeps the history


@pytest.mark.parametrize(
    ("body", "expected"), [c[2:] for c in PLAIN_CASES], ids=[c[0] for c in PLAIN_CASES]
)
def test_new_text_of_plain_text(body: str, expected: str) -> None:
    assert quotes.new_text(body) == expected
    assert quotes.new_text(body.replace("\n", "\r\n")) == expected


def test_html_reply_with_a_plain_alternative_uses_the_plain_part() -> None:
    pm = parse(
        mb.alternative(
            "Thanks!\n\nOn Mon, 5 Jan 2026 at 10:00, Support <s@x.example> wrote:\n> old\n",
            '<div>Thanks!</div><div class="gmail_quote">On ... wrote:<blockquote>old</blockquote>',
        )
    )
    assert pm.new_text == "Thanks!"
    assert pm.html and "gmail_quote" in pm.html


def test_format_flowed_attribution_is_unwrapped() -> None:
    # Thunderbird sends format=flowed: the attribution is one logical line over two.
    body = (
        "Fine.\r\n\r\nOn 05/01/2026 10:00, Helpdesk Support Team of the ACME \r\n"
        "Corporation wrote:\r\n> old text\r\n"
    )
    raw = mb.message(mb.leaf("text/plain; charset=utf-8; format=flowed", body))
    pm = parse(raw)
    assert "ACME Corporation wrote:" in pm.text
    assert pm.new_text == "Fine."


def test_prose_that_looks_like_an_attribution_is_kept() -> None:
    text = "On Monday I wrote:\nthe printer is broken.\nPlease help."
    assert quotes.new_text(text) == text


def test_inline_answers_between_quotes_are_kept() -> None:
    text = "> Which model?\nHP 4050\n> Which floor?\nThird.\n"
    assert quotes.new_text(text) == "HP 4050\nThird."


def test_sentinel_cuts_and_nothing_else() -> None:
    assert quotes.new_text(f"new\n{quotes.SENTINEL}\nold") == "new"
    assert quotes.mark_html("<p>no quote</p>") == "<p>no quote</p>"


def test_hostile_text_is_bounded() -> None:
    text = ("> " * 5000 + "x\n") * 200 + "On " + "x" * 100_000 + " wrote:\n" + "y\n" * 200_000
    start = time.monotonic()
    assert isinstance(quotes.new_text(text), str)
    assert time.monotonic() - start < 2


def test_speed_of_new_text() -> None:
    bodies = [c[2] for c in PLAIN_CASES]
    start = time.monotonic()
    for _ in range(20):
        for body in bodies:
            quotes.new_text(body)
    per_call = (time.monotonic() - start) / (20 * len(bodies))
    assert per_call < 0.001  # ~30 µs measured
