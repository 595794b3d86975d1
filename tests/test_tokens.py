import pytest

from mailticket.tokens import TokenFormat, clean_subject


@pytest.mark.parametrize(
    "subject, number",
    [
        ("[#123] Printer", 123),
        ("Re: [#123] Printer", 123),
        ("RE: AW: SV: TR: Antw: Fwd: [#7] x", 7),
        ("Re: Printer [#42]", 42),
        ("Re: [ #42 ] folded", 42),
        ("Fwd: [#1] old, Re: [#2] new", 2),
        ("Order #12 for [1]", None),
        ("", None),
        (None, None),
    ],
)
def test_find(subject, number):
    assert TokenFormat().find(subject) == number


def test_custom_format_round_trip():
    fmt = TokenFormat("[Support #{number}]")
    assert fmt.find("Re: " + fmt.format(99) + " hello") == 99
    assert fmt.find("[#99] hello") is None
    assert fmt.strip("Re: [Support #99] hello") == "hello"


def test_clean_subject():
    assert clean_subject("Re: AW: Fwd:  Printer  broken ") == "Printer broken"
    assert clean_subject("Antw: RE[2]: Hallo") == "Hallo"
