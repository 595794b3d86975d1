"""Charset fallbacks, encoded words, file names, format=flowed."""

from __future__ import annotations

import pytest

from mailticket.parsers.decode import (
    best_effort,
    decode_bytes,
    decode_words,
    default_filename,
    safe_filename,
    unflow,
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"caf\xc3\xa9", "café"),
        (b"caf\xe9", "café"),
        (b"\x93x\x94", "\u201cx\u201d"),
        (b"\x81", "\x81"),
        (b"", ""),
    ],
)
def test_best_effort(data: bytes, expected: str) -> None:
    assert best_effort(data) == expected


def test_decode_bytes_reports_what_it_guessed() -> None:
    defects: list[str] = []
    assert decode_bytes(b"caf\xe9", "x-unknown", "body", defects) == "café"
    assert decode_bytes(b"caf\xe9", "utf-8", "body", defects) == "café"
    assert decode_bytes(b"caf\xe9", None, "body", defects) == "café"
    assert len(defects) == 3


def test_decode_words_keeps_broken_words() -> None:
    defects: list[str] = []
    assert decode_words("=?utf-8?b?@@@?= x", "subject", defects) == "=?utf-8?b?@@@?= x"
    assert defects


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("...", "attachment-3.pdf"),
        (None, "attachment-3.pdf"),
        ("a<b>c:d|e?f*g.pdf", "a_b_c_d_e_f_g.pdf"),
        ("nul.pdf", "_nul.pdf"),
        ("é" * 200 + ".pdf", "é" * 88 + ".pdf"),
        ("tab\there.pdf", "tabhere.pdf"),
        ("trailing. . ", "trailing"),
    ],
)
def test_safe_filename(name: str | None, expected: str) -> None:
    assert safe_filename(name, "application/pdf", 3) == expected


@pytest.mark.parametrize(
    ("ctype", "expected"),
    [
        ("image/png", "attachment-1.png"),
        ("text/calendar", "attachment-1.ics"),
        ("text/x-weird", "attachment-1.txt"),
        ("message/delivery-status", "attachment-1.txt"),
        ("application/x-unknown", "attachment-1.bin"),
    ],
)
def test_default_filename(ctype: str, expected: str) -> None:
    assert default_filename(ctype, 1) == expected


def test_unflow() -> None:
    text = "one \ntwo\n> quoted \n> more\n-- \nsig"
    assert unflow(text, delsp=False) == "one two\n> quoted more\n-- \nsig"
    assert unflow("ab \ncd", delsp=True) == "abcd"
