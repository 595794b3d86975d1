"""The language of a message (en, fr, nl, de), so that answers use the customer's.

Place in the flow: `message.parse` sets `ParsedMessage.language` from `guess(...)`;
notify picks `ack.<language>.txt.j2` with it.

Content-Language (RFC 3282) alone is not trusted: Outlook stamps every message with
its interface language ("en-US" on a French mail from an English Windows).  A count of
common function words in the first few KB of the new text decides when it is clear;
the header decides otherwise; None when neither knows.  Costs a few tens of µs.
"""

from __future__ import annotations

LANGUAGES = ("en", "fr", "nl", "de")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Frequent, short function words that are rare in the other three languages ("de" is
# French and Dutch, "in" is English, Dutch and German: such words are left out).
_STOPWORDS: dict[str, frozenset[str]] = {
    "en": _words(
        "the and you your for with this that have not are was will please thanks thank "
        "would could can it of to my our from be on regards hello hi"
    ),
    "fr": _words(
        "le la les et vous votre vos pour avec ce cette est une un du pas je nous merci "
        "bonjour cordialement sur dans qui que mon ma mes ai au aux être avez"
    ),
    "nl": _words(
        "het een van ik jij u uw wij niet met voor dat dit zijn op bij graag bedankt "
        "hallo groet groeten vriendelijke hebben heb ook maar naar kunt"
    ),
    "de": _words(
        "der das und ich sie ihr ihre nicht mit für ist ein eine einen dem zu bitte danke "
        "hallo grüße freundlichen haben habe auch auf wir uns mein meine"
    ),
}
# Word -> the languages it counts for (only "hallo" counts twice).
_LANGUAGES_OF: dict[str, tuple[str, ...]] = {}
for _lang, _set in _STOPWORDS.items():
    for _w in _set:
        _LANGUAGES_OF[_w] = (*_LANGUAGES_OF.get(_w, ()), _lang)
_PUNCTUATION = ".,;:!?()[]{}<>\"'«»/\\*=+|\u2019\u00a0"

# How much text is looked at, and how sure the count must be.  Text is read 500
# characters at a time and the count stops once it is clear.
SAMPLE = 2000
STEP = 500
MIN_HITS = 3
MARGIN = 1.5
CLEAR_HITS = 12


def guess(text: str, content_language: str | None = None) -> str | None:
    """ISO 639-1 code among LANGUAGES, or None when unsure."""
    counts = dict.fromkeys(LANGUAGES, 0)
    get = _LANGUAGES_OF.get
    best, hits, second = "", 0, 0
    for start in range(0, min(len(text), SAMPLE), STEP):
        # A word cut at a step boundary costs at most one hit.
        for word in text[start : start + STEP].lower().split():
            for lang in get(word) or get(word.strip(_PUNCTUATION)) or ():
                counts[lang] += 1
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
        (best, hits), (_, second) = ranked[0], ranked[1]
        if hits >= CLEAR_HITS and hits >= 3 * second:
            break
    if hits >= MIN_HITS and hits >= MARGIN * second:
        return best
    return _from_header(content_language)


def _from_header(value: str | None) -> str | None:
    """First language of a Content-Language value ("fr-BE, en" -> "fr"), if one of ours."""
    if not value:
        return None
    primary = value.split(",")[0].strip().split("-")[0].split("_")[0].lower()
    return primary if primary in LANGUAGES else None
