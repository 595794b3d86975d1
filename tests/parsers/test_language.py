"""Language guess: function words first, Content-Language when they do not tell."""

from __future__ import annotations

import time

import pytest

from mailticket.parsers.language import guess

SAMPLES = {
    "en": "Hello, my printer is on fire and the whole office is waiting. Can you please help?",
    "fr": "Bonjour, mon imprimante est en feu et tout le bureau attend. Pouvez-vous nous aider ?",
    "nl": "Hallo, mijn printer staat in brand en het hele kantoor wacht. Kunt u ons helpen?",
    "de": "Hallo, mein Drucker brennt und das ganze Büro wartet. Können Sie uns bitte helfen?",
}


@pytest.mark.parametrize("lang", sorted(SAMPLES))
def test_function_words(lang: str) -> None:
    assert guess(SAMPLES[lang]) == lang


@pytest.mark.parametrize("lang", sorted(SAMPLES))
def test_words_beat_outlooks_interface_language(lang: str) -> None:
    assert guess(SAMPLES[lang], "en-US") == lang


@pytest.mark.parametrize(
    ("header", "expected"),
    [("fr-BE", "fr"), ("nl, en", "nl"), ("de_DE", "de"), ("es", None), ("", None), (None, None)],
)
def test_header_decides_when_the_text_does_not(header: str | None, expected: str | None) -> None:
    assert guess("OK", header) == expected


@pytest.mark.parametrize("text", ["", "OK", "12345 678", "Printer HP 4050 toner"])
def test_unsure_is_none(text: str) -> None:
    assert guess(text) is None


def test_only_the_start_is_read_and_it_is_fast() -> None:
    text = (SAMPLES["de"] + " ") * 40 + SAMPLES["en"] * 100_000  # German for 3 KB
    start = time.monotonic()
    for _ in range(1000):
        assert guess(text) == "de"
    assert time.monotonic() - start < 1.0  # ~60 µs a call measured
