"""Business calendars: when a site is open, and how far a budget of open time reaches.

An SLA clock counts open time only: `Calendar.add(start, seconds)` is the due time
of a budget, `between(a, b)` the open time spent, `explain` the same walk told in
words for an agent.  Each `[calendars.NAME]` table of the config is `parse`d into one
frozen `Calendar`; the old `[sla] business_days/business_hours/holidays` settings
become the calendar "default" (`from_legacy`), and nothing configured means `ALWAYS`.

A day's hours, most specific first: a listed half day (open those hours, even on a
public holiday), a site's own closed day, a public holiday (the `holidays` package,
for a country and optional subdivision), else the weekly hours.  Hours are local wall
time in the calendar's zone, so a 08:00-17:00 day is nine hours on the days clocks
change too; every instant returned is UTC.  The work is per day, never per minute:
a budget of weeks is a few dozen steps.

`format_when` writes a due time for a customer in their language (babel).  This is
the only module that imports `holidays` and `babel`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import babel
import babel.dates
import holidays

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ABBR = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

Ranges = tuple[tuple[int, int], ...]  # open (start, end) minutes after local midnight; end <= 1440
FULL_DAY: Ranges = ((0, 1440),)
KEYS = ("timezone", "hours", "holidays", "subdivision", "closed", "half_days")
# next_open gives up after this many days without an open minute (a calendar of half days only).
MAX_IDLE_DAYS = 3 * 366
PREFIX_DAYS = 20 * 366  # how far the running totals of open time reach from the days counted
_US = timedelta(microseconds=1)
_WEEKLY = "closed (weekly hours)"
_SITE = "closed (site)"


class _Day(NamedTuple):
    spans: tuple[tuple[datetime, datetime], ...]  # open spans in UTC, in order, not overlapping
    why: str  # "" for the weekly hours, else what made the day different ("closed (site)", ...)
    ticks: tuple[tuple[int, int], ...]  # the spans in microseconds since EPOCH (`between`'s sums)


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _ticks(when: datetime) -> int:
    """Microseconds since EPOCH, exactly (integers: no float rounding)."""
    return (when - EPOCH) // _US


@dataclass(frozen=True)
class Calendar:
    """Open hours per weekday in `timezone`, less public holidays and closed days, plus half days."""

    name: str
    timezone: str = "UTC"
    week: tuple[Ranges, ...] = (FULL_DAY,) * 7  # index 0 = Monday
    country: str | None = None  # ISO 3166 code such as "BE"; None: no public holidays
    subdivision: str | None = None  # e.g. "BY" for Bavaria
    closed: frozenset[date] = frozenset()
    half_days: tuple[tuple[date, Ranges], ...] = ()
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _holidays: holidays.HolidayBase | None = field(init=False, repr=False, compare=False)
    _half: dict[date, Ranges] = field(init=False, repr=False, compare=False)
    _flat: bool = field(init=False, repr=False, compare=False)  # open every minute: no walk needed
    _cache: dict[date, _Day] = field(init=False, repr=False, compare=False)  # per local date
    _totals: dict[date, int] = field(init=False, repr=False, compare=False)
    _ends: list[date] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen for callers; these are derived once here
        set_(self, "_zone", _zone(self.timezone))
        set_(self, "_holidays", _country(self.country, self.subdivision) if self.country else None)
        set_(self, "_half", dict(self.half_days))
        set_(self, "_cache", {})
        set_(self, "_totals", {})  # local date -> open microseconds before it (`_running`)
        set_(self, "_ends", [])  # the first and last day of _totals
        flat = self.week == (FULL_DAY,) * 7 and not (self.country or self.closed or self.half_days)
        set_(self, "_flat", flat)

    def holiday(self, day: date) -> str | None:
        """The public holiday's name, "closed (site)" for a site's closed day, else None.

        None on a listed half day too: the site is open then, whatever the date.
        """
        if day in self._half:
            return None
        if day in self.closed:
            return _SITE
        return self._holidays.get(day) if self._holidays is not None else None

    def is_open(self, when: datetime) -> bool:
        _aware(when)
        return self._flat or any(a <= when < b for a, b in self._day(self._local(when).date()).spans)

    def next_open(self, when: datetime) -> datetime:
        """`when` (in UTC) if open, else the start of the next open span; ValueError if none for years."""
        return self.add(when, 0)

    def add(self, start: datetime, seconds: float) -> datetime:
        """The instant when `seconds` of open time have passed after `start` (to the microsecond)."""
        return self._walk_to(start, seconds, None)

    def between(self, a: datetime, b: datetime) -> float:
        """Open seconds in [a, b); 0 when b <= a."""
        # In UTC: Python subtracts two datetimes of one zone as wall times, ignoring DST.
        # (Already UTC, as the database gives them: the report asks this 10^5 times.)
        if a.tzinfo is not timezone.utc:
            _aware(a)
            a = a.astimezone(timezone.utc)
        if b.tzinfo is not timezone.utc:
            _aware(b)
            b = b.astimezone(timezone.utc)
        if b <= a:
            return 0.0
        if self._flat:
            return (b - a) // _US / 1e6
        if (b - a).days > 2:  # open time before each end, from the days' running totals
            early, late = self._open_before(a), self._open_before(b)
            if early is not None and late is not None:
                return (late - early) / 1e6
        total, day, last = 0, self._local(a).date(), self._local(b).date()
        start, end = _ticks(a), _ticks(b)
        while day <= last:
            for lo, hi in self._day(day).ticks:
                if hi > start and lo < end:
                    total += min(end, hi) - max(start, lo)
            day += timedelta(days=1)
        return total / 1e6

    def explain(self, start: datetime, seconds: float) -> tuple[datetime, list[str]]:
        """The due time of `add`, and lines that say how it was reached."""
        walked: list[tuple[date, str]] = []
        due = self._walk_to(start, seconds, walked)
        local = self._local(start)
        if self._flat:
            state = "always open"
        elif self.is_open(start):
            state = f"open until {self._open_until(start)}"
        else:
            state = f"closed; opens {self._stamp(self.next_open(start), zone=False)}"
        lines = [f"starts {self._stamp(local)} ({state})"]
        groups: list[list[Any]] = []  # [first day, last day, why], consecutive days of one reason
        for day, why in walked:
            if why and groups and groups[-1][2] == why and groups[-1][1] + timedelta(days=1) == day:
                groups[-1][1] = day
            elif why:
                groups.append([day, day, why])
        weekly = [g for g in groups if g[2] == _WEEKLY]
        if len(weekly) > 3:  # weeks of weekends say nothing: count them, list the exceptions
            days = sum((g[1] - g[0]).days + 1 for g in weekly)
            names = sorted({day.weekday() for day, why in walked if why == _WEEKLY})
            lines.append(f"{days} days closed by the weekly hours ({', '.join(WEEKDAYS[n] for n in names)})")
            groups = [g for g in groups if g[2] != _WEEKLY]
        for first, last, why in groups:
            span = _dayname(first) if first == last else f"{_dayname(first)}, {_dayname(last)}"
            if (last - first).days > 1:
                span = f"{_dayname(first)} to {_dayname(last)}"
            lines.append(f"{span}: {why}")
        lines.append(f"due {self._stamp(self._local(due))} after {_duration(seconds)} of open time")
        return due, lines

    def describe(self) -> str:
        """One line for `config check` and logs: zone, hours, holidays, exceptions."""
        parts = [self.timezone]
        if self.week == (FULL_DAY,) * 7:
            parts.append("always open (24/7)")
        else:
            by_hours: dict[Ranges, list[int]] = {}
            for n, ranges in enumerate(self.week):
                if ranges:
                    by_hours.setdefault(ranges, []).append(n)
            hours = "; ".join(f"{_daylist(ns)} {_rangetext(r)}" for r, ns in by_hours.items())
            parts.append(hours or "no weekly hours")
        extra = []
        if self.country:
            extra.append(f"holidays {self.country}" + (f"-{self.subdivision}" if self.subdivision else ""))
        if self.closed:
            extra.append(f"{len(self.closed)} closed day{'s' * (len(self.closed) > 1)}")
        if self.half_days:
            extra.append(f"{len(self.half_days)} half day{'s' * (len(self.half_days) > 1)}")
        return f"{self.name}: " + "; ".join([", ".join(parts), *extra])

    # --- the walk --------------------------------------------------------------------------

    def _walk_to(self, start: datetime, seconds: float, walked: list[tuple[date, str]] | None) -> datetime:
        """Spend `seconds` of open time from `start`, day by day; note each day's reason in `walked`."""
        _aware(start)
        if seconds < 0:
            raise ValueError(f"calendar {self.name}: a negative time {seconds!r}")
        start = start.astimezone(timezone.utc)
        left = round(seconds * 1e6)  # microseconds: exact sums, so between(t, add(t, s)) == s
        if self._flat:
            return start + left * _US
        first = day = self._local(start).date()
        idle = 0
        while idle <= MAX_IDLE_DAYS:
            info = self._day(day)
            if walked is not None:
                walked.append((day, info.why))
            idle += 1
            for lo, hi in info.spans:
                if hi <= start:
                    continue
                idle, lo = 0, max(lo, start)
                if left <= (hi - lo) // _US:
                    return lo + left * _US
                left -= (hi - lo) // _US
            day += timedelta(days=1)
        raise ValueError(f"calendar {self.name}: not open once in {MAX_IDLE_DAYS} days from {first}")

    def _open_before(self, when: datetime) -> int | None:
        """Open microseconds from a fixed day (the first this calendar was asked about) to
        `when`; None when `when` is over PREFIX_DAYS days from the days counted so far
        (`between` then walks the days itself)."""
        day = self._local(when).date()
        start = self._running(day)
        if start is None:
            return None
        t = _ticks(when)
        return start + sum(min(t, hi) - lo for lo, hi in self._day(day).ticks if t > lo)

    def _running(self, day: date) -> int | None:
        """Open microseconds from the first counted day's midnight to `day`'s (running
        totals kept per day, extended either way as asked)."""
        totals, ends = self._totals, self._ends
        if not totals:
            totals[day], ends[:] = 0, [day, day]
        known = totals.get(day)
        if known is not None:
            return known
        first, last = ends
        one = timedelta(days=1)
        if day > last:
            if (day - last).days > PREFIX_DAYS:
                return None
            while last < day:
                totals[last + one] = totals[last] + self._open_on(last)
                last += one
            ends[1] = last
        else:
            if (first - day).days > PREFIX_DAYS:
                return None
            while first > day:
                totals[first - one] = totals[first] - self._open_on(first - one)
                first -= one
            ends[0] = first
        return totals[day]

    def _open_on(self, day: date) -> int:
        return sum(hi - lo for lo, hi in self._day(day).ticks)

    def _day(self, day: date) -> _Day:
        """The open spans of a local date, in UTC, with the reason when they differ from the week."""
        known = self._cache.get(day)
        if known is not None:
            return known
        why = ""
        if day in self._half:
            ranges = self._half[day]
            why = f"half day {_rangetext(ranges)}"
        elif (off := self.holiday(day)) is not None:
            ranges, why = (), off if off == _SITE else f"public holiday ({off})"
        else:
            ranges = self.week[day.weekday()]
            why = "" if ranges else _WEEKLY
        spans = self._spans(day, ranges)
        known = _Day(spans, why, tuple((_ticks(lo), _ticks(hi)) for lo, hi in spans))
        if len(self._cache) > 5000:  # years of days: start again rather than grow for ever
            self._cache.clear()
        self._cache[day] = known
        return known

    def _spans(self, day: date, ranges: Ranges) -> tuple[tuple[datetime, datetime], ...]:
        """Local minute ranges of `day` as UTC instants."""
        midnight = datetime.combine(day, time())
        offset = self._zone.utcoffset(midnight)
        if offset is not None and offset == self._zone.utcoffset(midnight + timedelta(days=1)):  # no change
            base = (midnight - offset).replace(tzinfo=timezone.utc)
            return tuple((base + timedelta(minutes=a), base + timedelta(minutes=b)) for a, b in ranges)
        spans: list[tuple[datetime, datetime]] = []
        floor = datetime.min.replace(tzinfo=timezone.utc)
        for a, b in ranges:
            # A time in the spring-forward gap moves on by the gap; keep the spans in order anyway.
            lo = max(self._utc(midnight, a), floor)
            hi = max(self._utc(midnight, b), lo)
            if hi > lo:
                spans.append((lo, hi))
            floor = hi
        return tuple(spans)

    def _utc(self, midnight: datetime, minute: int) -> datetime:
        wall = midnight + timedelta(minutes=minute)
        return wall.replace(tzinfo=self._zone).astimezone(timezone.utc)

    def _local(self, when: datetime) -> datetime:
        return when.astimezone(self._zone)

    def _open_until(self, when: datetime) -> str:
        """The local end of the open stretch around `when`, through spans that touch (a week at most)."""
        end, day = when, self._local(when).date()
        for _ in range(8):
            for lo, hi in self._day(day).spans:
                if lo <= end < hi:
                    end = hi
            day += timedelta(days=1)
        local = self._local(end)
        same_day = local.date() == self._local(when).date()
        return local.strftime("%H:%M") if same_day else self._stamp(local, zone=False)

    def _stamp(self, when: datetime, zone: bool = True) -> str:
        local = self._local(when)
        clock = local.strftime("%H:%M:%S" if local.second or local.microsecond else "%H:%M")
        return f"{_dayname(local.date())} {clock}" + (f" {self.timezone}" if zone else "")


# --- config ----------------------------------------------------------------------------------


def parse(name: str, table: dict[str, Any]) -> Calendar:
    """One `[calendars.NAME]` table; a ValueError names every bad key, joined by "; "."""
    errors: list[str] = []

    def check(key: str, convert: Any, *args: Any) -> Any:
        try:
            return convert(*args)
        except ValueError as exc:
            errors.append(f"{key}: {exc}")
            return None

    errors += [f"{key}: unknown key (known: {', '.join(KEYS)})" for key in table if key not in KEYS]
    zone = check("timezone", _text, table.get("timezone", "UTC"))
    if zone is not None and check("timezone", _zone, zone) is None:
        zone = None
    week = _week(table.get("hours"), errors)
    country = check("holidays", _text, table.get("holidays", "")) or None
    subdiv = check("subdivision", _text, table.get("subdivision", "")) or None
    if country:
        country = country.strip().upper()
        if check("holidays", _country, country, None) is None:
            country = None
        elif subdiv and check("subdivision", _country, country, subdiv.strip().upper()) is None:
            subdiv = None
    if subdiv and not table.get("holidays"):
        errors.append("subdivision: needs a country in holidays")
    closed: set[date | None] = set()
    listed = table.get("closed", [])
    if not isinstance(listed, list):
        errors.append(f"closed: must be a list of ISO dates, not {listed!r}")
        listed = []
    for n, value in enumerate(listed):
        closed.add(check(f"closed[{n}]", _date, value))
    half: dict[date, Ranges] = {}
    days = table.get("half_days", {})
    if not isinstance(days, dict):
        errors.append(f"half_days: must be a table of date = hours, not {days!r}")
        days = {}
    for key, value in days.items():
        day, ranges = check(f"half_days.{key}", _date, key), check(f"half_days.{key}", _ranges, value)
        if day is not None and day in closed:
            errors.append(f"half_days.{key}: the day is also in closed")
        elif ranges == ():
            errors.append(f"half_days.{key}: no hours (a closed day belongs in closed)")
        elif day is not None and ranges is not None:
            half[day] = ranges
    if week is not None and not any(week) and not any(half.values()):
        errors.append("hours: no open hours at all")
    if errors:
        raise ValueError("; ".join(errors))
    assert zone is not None and week is not None  # no errors: both were read
    return Calendar(
        name,
        zone,
        week,
        country,
        subdiv.strip().upper() if subdiv else None,
        frozenset(d for d in closed if d is not None),
        tuple(sorted(half.items())),
    )


def from_legacy(days: str, hours: str, timezone: str, country: str | None) -> Calendar:
    """The old `[sla] business_days`, `business_hours` and `holidays` as the calendar "default"."""
    try:
        ranges = _ranges(hours)
        if not ranges:
            raise ValueError(f"hours must look like 08:00-18:00, not {hours!r}")
        open_days = _days(days)
        _zone(timezone)
        if country:
            _country(country.strip().upper(), None)
    except ValueError as exc:
        raise ValueError(f"business hours: {exc}") from None
    week = tuple(ranges if n in open_days else () for n in range(7))
    return Calendar("default", timezone, week, country.strip().upper() if country else None)


def _week(value: Any, errors: list[str]) -> tuple[Ranges, ...] | None:
    if value == "24/7":
        return (FULL_DAY,) * 7
    if value is None:
        errors.append('hours: missing (a table such as { "mon-fri" = "08:00-17:00" }, or "24/7")')
        return None
    if not isinstance(value, dict):
        errors.append(f'hours: must be "24/7" or a table of days, not {value!r}')
        return None
    week: list[Ranges | None] = [None] * 7
    failed = False
    for key, text in value.items():
        try:
            days, ranges = _days(key), _ranges(text)
        except ValueError as exc:
            errors.append(f"hours.{key}: {exc}")
            failed = True
            continue
        for n in sorted(days):
            if week[n] is not None:
                errors.append(f"hours.{key}: {WEEKDAYS[n]} is given twice")
                failed = True
            week[n] = ranges
    return None if failed else tuple(r or () for r in week)


def _days(text: str) -> set[int]:
    """ "mon-fri", "mon,wed", "saturday", "fri-mon" (wraps over the weekend) into 0..6."""
    days: set[int] = set()
    for part in _text(text).lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        a, b = _day(first), _day(last) if last else _day(first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
    return days


def _day(name: str) -> int:
    if name in WEEKDAYS:
        return WEEKDAYS.index(name)
    if name in _FULL:
        return _FULL.index(name)
    raise ValueError(f"unknown day {name!r} (mon..sun)")


def _ranges(value: Any) -> Ranges:
    """ "08:00-12:00, 13:00-17:00" (or a list of such strings) into sorted minute ranges; "" is closed."""
    parts = [p for v in (value if isinstance(value, list) else [value]) for p in _text(v).split(",")]
    out = []
    for part in parts:
        if not part.strip():
            continue
        m = re.fullmatch(r"\s*(\d{1,2}):(\d\d)\s*-\s*(\d{1,2}):(\d\d)\s*", part)
        if not m:
            raise ValueError(f"must look like 08:00-12:00, not {part.strip()!r}")
        h1, m1, h2, m2 = map(int, m.groups())
        if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
            raise ValueError(f"no such time in {part.strip()!r}")
        a, b = h1 * 60 + m1, h2 * 60 + m2
        if a >= b:
            raise ValueError(f"{part.strip()!r} ends before it starts")
        out.append((a, b))
    out.sort()
    for (_, end), (start, _) in zip(out, out[1:]):
        if start < end:
            raise ValueError(f"ranges overlap in {value!r}")
    return tuple(out)


def _rangetext(ranges: Ranges) -> str:
    return ", ".join(f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}" for a, b in ranges)


def _daylist(days: list[int]) -> str:
    """[0, 1, 2, 3, 4] -> "mon-fri"; [0, 2] -> "mon,wed"."""
    runs: list[list[int]] = []
    for n in days:
        if runs and runs[-1][-1] == n - 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ",".join(WEEKDAYS[r[0]] + (f"-{WEEKDAYS[r[-1]]}" if len(r) > 1 else "") for r in runs)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    return value


def _date(value: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value  # a TOML local date, written without quotes
    try:
        return date.fromisoformat(_text(value).strip())
    except ValueError:
        raise ValueError(f"not an ISO date: {value!r}") from None


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _country(country: str, subdivision: str | None) -> holidays.HolidayBase:
    try:
        found = holidays.country_holidays(country, subdiv=subdivision)
    except NotImplementedError:  # what `holidays` raises for an unknown code
        if subdivision:
            raise ValueError(f"{subdivision!r} is not a subdivision of {country}") from None
        raise ValueError(f"unknown country {country!r}") from None
    # Names in English whatever the server's locale (holidays reads LANG otherwise).
    english = [lang for lang in ("en_US", "en_GB") if lang in found.supported_languages]
    if english:
        found = holidays.country_holidays(country, subdiv=subdivision, language=english[0])
    return found


def _aware(when: datetime) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("calendar: give an aware datetime (from the clock)")


def _dayname(day: date) -> str:
    return f"{_ABBR[day.weekday()]} {day.isoformat()}"


def _duration(seconds: float) -> str:
    whole = int(seconds)
    text = f"{whole // 3600}h{whole // 60 % 60:02d}"
    return text + (f"m{whole % 60:02d}s" if whole % 60 else "")


# --- for customers ---------------------------------------------------------------------------

# CLDR's "atTime" joins ("{1} 'at' {0}"), which babel's data does not carry; other
# languages get their locale's plain date-time join ("{1}, {0}").
_AT_TIME = {"en": "{1} 'at' {0}", "fr": "{1} 'à' {0}", "nl": "{1} 'om' {0}", "de": "{1} 'um' {0}"}


@functools.lru_cache(maxsize=64)
def _date_pattern(language: str) -> tuple[babel.Locale, str]:
    """The locale of `language` (English when unknown) and its weekday-day-month
    pattern with the full weekday name: worked out once per language."""
    try:
        locale = babel.Locale.parse((language or "en").replace("-", "_"))
    except (ValueError, TypeError, babel.UnknownLocaleError):
        locale = babel.Locale.parse("en")
    skeletons = locale.datetime_skeletons
    key = "MMMMEd" if "MMMMEd" in skeletons else babel.dates.match_skeleton("MMMMEd", skeletons) or "MMMMEd"
    pattern = str(skeletons.get(key, "EEEE d MMMM"))
    # The skeleton's weekday is short ("Mon"); a customer reads the full name.
    pattern = re.sub(
        r"'[^']*'|E+|c+", lambda m: m.group() if m.group()[0] == "'" else m.group()[0] * 4, pattern
    )
    return locale, pattern


def format_when(when: datetime, language: str, timezone: str) -> str:
    """`when` as a customer reads it: "lundi 21 décembre à 10:00 CET".

    Weekday, day, month and time in the language's own order (babel's CLDR data);
    an unknown language is English, an unknown zone UTC.  The zone's abbreviation is
    added when it has one in letters (CET, CEST, EST, UTC), not a bare offset (+04).
    """
    _aware(when)
    locale, pattern = _date_pattern(language)
    try:
        zone = _zone(timezone)
    except ValueError:
        zone = ZoneInfo("UTC")
    local = when.astimezone(zone)
    day = babel.dates.format_date(local, pattern, locale=locale)
    clock = babel.dates.format_time(local, "short", tzinfo=zone, locale=locale)
    abbr = local.tzname() or ""
    if abbr.isalpha():
        clock = f"{clock} {abbr}"
    join = _AT_TIME.get(locale.language) or str(locale.datetime_formats.get("full", "{1}, {0}"))
    return join.replace("'", "").replace("{1}", day).replace("{0}", clock)


# Nothing configured: open every minute, no holidays.
ALWAYS = Calendar("always")
