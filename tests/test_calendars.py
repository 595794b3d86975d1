"""Business calendars: open hours, DST, holidays, closed and half days, budgets, parse errors, wording."""

from __future__ import annotations

import pickle
import timeit
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from mailticket.calendars import ALWAYS, format_when, from_legacy, parse

BXL = "Europe/Brussels"
UTC = timezone.utc
H = 3600


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(BXL))


@pytest.fixture(scope="module")
def office():
    return parse(
        "office",
        {
            "timezone": BXL,
            "hours": {"mon-fri": "08:00-12:00, 13:00-17:00"},
            "holidays": "BE",
            "closed": ["2026-12-24"],
            "half_days": {"2026-12-31": "08:00-12:00"},
        },
    )


def every_day(hours: str, **more):
    return parse("x", {"timezone": BXL, "hours": {"mon-sun": hours}, **more})


# --- hours, DST, 24:00 -----------------------------------------------------------------------


@pytest.mark.parametrize("day", [date(2026, 3, 29), date(2026, 10, 25)])
def test_a_nine_hour_day_is_nine_hours_when_the_clocks_change(day):
    cal = every_day("08:00-17:00")
    start = local(day.year, day.month, day.day, 8)
    assert cal.between(start - timedelta(hours=8), start + timedelta(days=1)) == 9 * H
    due = cal.add(start, 9 * H)
    assert due == local(day.year, day.month, day.day, 17)
    assert due.tzinfo == UTC


def test_a_24_7_calendar_counts_real_time_on_short_and_long_days():
    cal = parse("x", {"timezone": BXL, "hours": "24/7", "holidays": "BE"})
    assert cal.between(local(2026, 3, 29), local(2026, 3, 30)) == 23 * H
    assert cal.between(local(2026, 10, 25), local(2026, 10, 26)) == 25 * H
    assert cal.add(local(2026, 3, 28, 12), 24 * H) == local(2026, 3, 29, 13)
    assert not cal.is_open(local(2026, 12, 25, 12))  # Christmas, even 24/7


def test_24_00_is_midnight_at_the_end_of_the_day():
    cal = every_day("20:00-24:00")
    assert cal.is_open(local(2026, 6, 1, 23, 59, 59))
    assert not cal.is_open(local(2026, 6, 2, 0, 0))
    assert cal.add(local(2026, 6, 1, 23), 2 * H) == local(2026, 6, 2, 21)
    assert cal.between(local(2026, 6, 1), local(2026, 6, 3)) == 8 * H


def test_lunch_break_is_not_counted(office):
    assert office.is_open(local(2026, 6, 1, 11, 59))
    assert not office.is_open(local(2026, 6, 1, 12, 30))
    assert office.add(local(2026, 6, 1, 11, 30), H) == local(2026, 6, 1, 13, 30)
    assert office.between(local(2026, 6, 1), local(2026, 6, 2)) == 8 * H


def test_always_is_every_instant_in_utc():
    start = datetime(2026, 12, 25, 3, 0, tzinfo=UTC)
    assert ALWAYS.is_open(start) and ALWAYS.holiday(start.date()) is None
    assert ALWAYS.add(local(2026, 12, 25, 3), 90) == local(2026, 12, 25, 3, 1, 30)
    assert ALWAYS.between(start, start + timedelta(days=400)) == 400 * 24 * H
    assert ALWAYS.next_open(local(2026, 1, 1)).tzinfo == UTC
    assert ALWAYS.describe() == "always: UTC, always open (24/7)"


# --- holidays, closed and half days -----------------------------------------------------------


def test_public_holidays_close_the_office(office):
    assert office.holiday(date(2026, 12, 25)) == "Christmas Day"  # a Friday
    assert office.holiday(date(2026, 4, 6)) == "Easter Monday"
    assert office.holiday(date(2026, 4, 7)) is None
    assert not office.is_open(local(2026, 4, 6, 10))
    # Tue 22 16:00 + 3h: 1h on Tuesday, Wed 23 08:00-10:00 (24 closed, 25 Christmas).
    assert office.add(local(2026, 12, 22, 16), 3 * H) == local(2026, 12, 23, 10)
    assert office.add(local(2026, 12, 23, 16), 2 * H) == local(2026, 12, 28, 9)


def test_holidays_of_a_subdivision():
    bavaria = parse("x", {"hours": "24/7", "holidays": "DE", "subdivision": "BY"})
    germany = parse("x", {"hours": "24/7", "holidays": "DE"})
    assert bavaria.holiday(date(2026, 1, 6)) == "Epiphany"
    assert germany.holiday(date(2026, 1, 6)) is None
    assert bavaria.describe() == "x: UTC, always open (24/7); holidays DE-BY"


def test_site_closed_days(office):
    assert office.holiday(date(2026, 12, 24)) == "closed (site)"
    assert not office.is_open(local(2026, 12, 24, 10))
    assert office.between(local(2026, 12, 24), local(2026, 12, 25)) == 0


def test_half_days_replace_the_day_and_win_over_a_holiday(office):
    assert office.is_open(local(2026, 12, 31, 11)) and not office.is_open(local(2026, 12, 31, 14))
    assert office.between(local(2026, 12, 31), local(2027, 1, 1)) == 4 * H
    cal = parse(
        "x",
        {
            "timezone": BXL,
            "hours": {"mon-fri": "08:00-17:00"},
            "holidays": "BE",
            "half_days": {"2026-12-25": "09:00-11:00"},
        },
    )
    assert cal.holiday(date(2026, 12, 25)) is None
    assert cal.is_open(local(2026, 12, 25, 10)) and not cal.is_open(local(2026, 12, 25, 12))


# --- add, between, next_open ------------------------------------------------------------------


def test_between_undoes_add_from_anywhere(office):
    starts = [
        local(2026, 12, 18, 16, 30),  # Friday, half an hour before closing
        local(2026, 12, 19, 10),  # Saturday
        local(2026, 12, 21, 12, 15),  # lunch
        local(2026, 12, 24, 9),  # site closed
        local(2026, 12, 25, 3, 7, 11),  # Christmas night
        local(2026, 12, 31, 12),  # the half day has just ended
        local(2026, 3, 27, 16, 59, 59),  # the Friday before the clocks change
        local(2026, 6, 1, 8),  # on the dot of opening
        local(2026, 6, 1, 17),  # on the dot of closing
        datetime(2026, 10, 25, 1, 30, 0, 123456, tzinfo=UTC),
    ]
    for start in starts:
        for seconds in (0, 1, 59.5, 0.25, H, 4 * H, 8 * H, 8 * H + 1, 40 * H, 20160 * 60):
            due = office.add(start, seconds)
            assert due >= start
            assert office.between(start, due) == seconds, (start, seconds)
            if seconds:
                assert office.is_open(due - timedelta(microseconds=1))


def test_add_zero_is_next_open(office):
    friday_evening = local(2026, 12, 18, 18)
    assert office.next_open(friday_evening) == local(2026, 12, 21, 8)
    assert office.add(friday_evening, 0) == office.next_open(friday_evening)
    assert office.next_open(local(2026, 12, 21, 9)) == local(2026, 12, 21, 9)
    # A budget spent exactly at closing time is due then, not at the next opening.
    assert office.add(local(2026, 12, 21, 16), H) == local(2026, 12, 21, 17)


def test_add_across_a_year_boundary(office):
    # Wed 30: 1h; Thu 31: half day, 4h; Fri 1 Jan holiday; weekend; Mon 4 Jan: 08-12, 13-16.
    assert office.add(local(2026, 12, 30, 16), 12 * H) == local(2027, 1, 4, 16)
    assert office.between(local(2026, 12, 30, 16), local(2027, 1, 4, 16)) == 12 * H


def test_between_is_zero_backwards(office):
    assert office.between(local(2026, 6, 2), local(2026, 6, 1)) == 0
    assert office.between(local(2026, 6, 1, 9), local(2026, 6, 1, 9)) == 0


def test_a_calendar_open_only_on_a_past_half_day_is_never_open_again():
    cal = parse("x", {"hours": {}, "half_days": {"2026-01-02": "09:00-10:00"}})
    assert cal.next_open(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(2026, 1, 2, 9, tzinfo=UTC)
    with pytest.raises(ValueError, match="not open once"):
        cal.next_open(datetime(2026, 1, 3, tzinfo=UTC))


def test_naive_datetimes_and_negative_budgets_are_refused(office):
    with pytest.raises(ValueError, match="aware"):
        office.is_open(datetime(2026, 6, 1, 9))
    with pytest.raises(ValueError, match="negative"):
        office.add(local(2026, 6, 1, 9), -1)


def test_a_weeks_budget_is_fast(office):
    start = local(2026, 12, 18, 16, 30)
    assert office.add(start, 20160 * 60) == local(2027, 2, 22, 11, 30)
    seconds = timeit.timeit(lambda: office.add(start, 20160 * 60), number=100) / 100
    assert seconds < 0.002


# --- explain, describe ------------------------------------------------------------------------


def test_explain_names_the_holiday_the_closed_day_and_the_half_day(office):
    start = local(2026, 12, 23, 16, 30)
    due, lines = office.explain(start, 26.5 * H)
    assert due == office.add(start, 26.5 * H) == local(2026, 12, 31, 10)
    assert lines == [
        "starts Wed 2026-12-23 16:30 Europe/Brussels (open until 17:00)",
        "Thu 2026-12-24: closed (site)",
        "Fri 2026-12-25: public holiday (Christmas Day)",
        "Sat 2026-12-26, Sun 2026-12-27: closed (weekly hours)",
        "Thu 2026-12-31: half day 08:00-12:00",
        "due Thu 2026-12-31 10:00 Europe/Brussels after 26h30 of open time",
    ]


def test_explain_from_closed_time(office):
    due, lines = office.explain(local(2026, 4, 4, 10), 30 * 60)
    assert due == local(2026, 4, 7, 8, 30)
    assert lines == [
        "starts Sat 2026-04-04 10:00 Europe/Brussels (closed; opens Tue 2026-04-07 08:00)",
        "Sat 2026-04-04: closed (weekly hours)",
        "Sun 2026-04-05: public holiday (Easter Sunday)",
        "Mon 2026-04-06: public holiday (Easter Monday)",
        "due Tue 2026-04-07 08:30 Europe/Brussels after 0h30 of open time",
    ]


def test_explain_counts_weekends_of_a_long_budget(office):
    due, lines = office.explain(local(2026, 12, 18, 16, 30), 20160 * 60)
    assert due == local(2027, 2, 22, 11, 30)
    assert lines[1] == "20 days closed by the weekly hours (sat, sun)"
    assert "Fri 2027-01-01: public holiday (New Year's Day)" in lines
    assert lines[-1] == "due Mon 2027-02-22 11:30 Europe/Brussels after 336h00 of open time"


def test_describe():
    cal = parse(
        "office",
        {
            "timezone": BXL,
            "hours": {"mon-fri": "08:00-12:00, 13:00-17:00", "sat": "09:00-12:00"},
            "holidays": "BE",
        },
    )
    assert (
        cal.describe()
        == "office: Europe/Brussels, mon-fri 08:00-12:00, 13:00-17:00; sat 09:00-12:00; holidays BE"
    )
    odd = parse("odd", {"hours": {"monday,wed": "09:00-12:00", "fri-sun": "10:00-11:00"}})
    assert odd.describe() == "odd: UTC, mon,wed 09:00-12:00; fri-sun 10:00-11:00"


# --- parse, from_legacy -----------------------------------------------------------------------


def test_parse_collects_every_problem_and_names_its_key():
    with pytest.raises(ValueError) as caught:
        parse(
            "office",
            {
                "timezone": "Mars/Base",
                "hours": {"mon": "x", "fry": "08:00-09:00"},
                "holidays": "XX",
                "closed": ["2026-12-24", "2026-13-01"],
                "colour": "blue",
            },
        )
    assert str(caught.value).split("; ") == [
        "colour: unknown key (known: timezone, hours, holidays, subdivision, closed, half_days)",
        "timezone: unknown time zone 'Mars/Base'",
        "hours.mon: must look like 08:00-12:00, not 'x'",
        "hours.fry: unknown day 'fry' (mon..sun)",
        "holidays: unknown country 'XX'",
        "closed[1]: not an ISO date: '2026-13-01'",
    ]


@pytest.mark.parametrize(
    "table, message",
    [
        ({}, "hours: missing"),
        ({"hours": "always"}, "hours: must be \"24/7\" or a table of days, not 'always'"),
        ({"hours": {"sat,sun": ""}}, "hours: no open hours at all"),
        ({"hours": {"mon-fri": "08:00-17:00", "fri": "09:00-12:00"}}, "hours.fri: fri is given twice"),
        ({"hours": {"mon": "08:00-12:00, 11:00-13:00"}}, "hours.mon: ranges overlap"),
        ({"hours": {"mon": "17:00-08:00"}}, "hours.mon: '17:00-08:00' ends before it starts"),
        ({"hours": {"mon": "08:00-24:30"}}, "hours.mon: no such time in '08:00-24:30'"),
        (
            {"hours": "24/7", "holidays": "DE", "subdivision": "ZZ"},
            "subdivision: 'ZZ' is not a subdivision of DE",
        ),
        ({"hours": "24/7", "subdivision": "BY"}, "subdivision: needs a country in holidays"),
        ({"hours": "24/7", "closed": "2026-12-24"}, "closed: must be a list of ISO dates"),
        (
            {"hours": "24/7", "closed": ["2026-12-31"], "half_days": {"2026-12-31": "08:00-12:00"}},
            "half_days.2026-12-31: the day is also in closed",
        ),
        (
            {"hours": "24/7", "half_days": {"31/12": "08:00-12:00"}},
            "half_days.31/12: not an ISO date: '31/12'",
        ),
        ({"hours": "24/7", "timezone": 1}, "timezone: must be a string, not 1"),
    ],
)
def test_parse_refuses(table, message):
    with pytest.raises(ValueError) as caught:
        parse("x", table)
    assert str(caught.value).startswith(message)


def test_parse_takes_toml_dates_lists_of_ranges_and_lower_case_countries():
    cal = parse(
        "x",
        {"hours": {"Monday": ["08:00-12:00", "13:00-17:00"]}, "holidays": "be", "closed": [date(2026, 6, 1)]},
    )
    assert cal.week[0] == ((480, 720), (780, 1020)) and cal.country == "BE"
    assert cal.holiday(date(2026, 6, 1)) == "closed (site)"


def test_from_legacy_settings():
    cal = from_legacy("mon-fri", "08:00-18:00", BXL, "BE")
    assert cal.name == "default"
    assert cal.describe() == "default: Europe/Brussels, mon-fri 08:00-18:00; holidays BE"
    assert cal.add(local(2026, 12, 24, 17), 2 * H) == local(2026, 12, 28, 9)
    assert from_legacy("mon-sun", "00:00-24:00", "UTC", None).is_open(datetime(2026, 1, 4, 23, tzinfo=UTC))
    for bad in [
        ("mon-fry", "08:00-18:00", "UTC", None),
        ("mon-fri", "8-18", "UTC", None),
        ("mon-fri", "08:00-18:00", "Mars/Base", None),
        ("mon-fri", "08:00-18:00", "UTC", "XX"),
    ]:
        with pytest.raises(ValueError, match="^business hours: "):
            from_legacy(*bad)


def test_a_calendar_is_a_value_that_processes_can_share(office):
    again = parse(
        "office",
        {
            "timezone": BXL,
            "hours": {"mon-fri": "08:00-12:00,13:00-17:00"},
            "holidays": "BE",
            "closed": ["2026-12-24"],
            "half_days": {"2026-12-31": "08:00-12:00"},
        },
    )
    assert again == office and hash(again) == hash(office)
    copy = pickle.loads(pickle.dumps(office))
    assert copy == office and copy.add(local(2026, 12, 23, 16), 2 * H) == local(2026, 12, 28, 9)


# --- format_when ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "language, text",
    [
        ("en", "Monday, December 21 at 10:00\u202fAM CET"),
        ("en-GB", "Monday 21 December at 10:00 CET"),
        ("fr", "lundi 21 décembre à 10:00 CET"),
        ("nl", "maandag 21 december om 10:00 CET"),
        ("xx", "Monday, December 21 at 10:00\u202fAM CET"),  # unknown: English
    ],
)
def test_format_when(language, text):
    assert format_when(datetime(2026, 12, 21, 9, 0, tzinfo=UTC), language, BXL) == text


def test_format_when_zones():
    summer = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    assert format_when(summer, "fr", BXL) == "mercredi 1 juillet à 10:00 CEST"
    assert format_when(summer, "fr", "Mars/Base") == "mercredi 1 juillet à 08:00 UTC"
    assert format_when(summer, "nl", "Asia/Dubai") == "woensdag 1 juli om 12:00"  # "+04" says nothing
