"""Business hours: when the helpdesk is open (SLA due times will live here too).

The rules' `business_hours: inside|outside` condition asks `BusinessHours.is_open(now)`
with the time from the injected clock; the scheduler will use the same object to count
SLA time.  Public holidays come from the `holidays` package for a country (and optional
subdivision); this is the only module that imports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class BusinessHours:
    """Open on `days` (0 = Monday) from `start` to `end` local time, except public holidays."""

    days: frozenset[int] = frozenset(range(5))
    start: time = time(8, 0)
    end: time = time(18, 0)
    timezone: str = "UTC"
    country: str | None = None  # ISO 3166 code such as "BE"; None: no public holidays
    subdivision: str | None = None  # e.g. "BY" for Bavaria, when holidays differ by region
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _holidays: holidays.HolidayBase | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.start < self.end:
            raise ValueError(f"business hours: start {self.start} is not before end {self.end}")
        if not self.days or not set(self.days) <= set(range(7)):
            raise ValueError(f"business hours: days must be weekdays 0-6, not {set(self.days)}")
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"business hours: unknown time zone {self.timezone!r}") from None
        days_off = None
        if self.country:
            try:
                days_off = holidays.country_holidays(self.country, subdiv=self.subdivision)
            except NotImplementedError as exc:  # what `holidays` raises for an unknown code
                raise ValueError(f"business hours: {exc}") from None
        # Frozen for callers; these two are derived once here.
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_holidays", days_off)

    @classmethod
    def parse(
        cls,
        days: str = "mon-fri",
        hours: str = "08:00-18:00",
        timezone: str = "UTC",
        country: str | None = None,
        subdivision: str | None = None,
    ) -> BusinessHours:
        """From config text: days "mon-fri" or "mon,tue,sat" or "mon-fri,sun"; hours "08:00-18:00"."""
        m = re.fullmatch(r"\s*(\d{1,2}):(\d\d)\s*-\s*(\d{1,2}):(\d\d)\s*", hours)
        if not m:
            raise ValueError(f"business hours: hours must look like 08:00-18:00, not {hours!r}")
        h1, m1, h2, m2 = map(int, m.groups())
        try:
            start, end = time(h1, m1), time(23, 59, 59, 999999) if (h2, m2) == (24, 0) else time(h2, m2)
        except ValueError:
            raise ValueError(f"business hours: no such time in {hours!r}") from None
        return cls(_parse_days(days), start, end, timezone, country, subdivision)

    def is_open(self, when: datetime) -> bool:
        """Whether `when` (timezone-aware) falls inside business hours."""
        if when.tzinfo is None:
            raise ValueError("business hours: give an aware datetime (from the clock)")
        local = when.astimezone(self._zone)
        if local.weekday() not in self.days or not self.start <= local.time() < self.end:
            return False
        return self.holiday(local.date()) is None

    def holiday(self, day: date) -> str | None:
        """The name of the public holiday on `day`, or None."""
        if self._holidays is None:
            return None
        return self._holidays.get(day)


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        try:
            a = _day(first)
            b = _day(last) if last else a
        except ValueError:
            raise ValueError(f"business hours: unknown day in {text!r} (mon..sun)") from None
        # "fri-mon" wraps over the weekend.
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
    return frozenset(days)


def _day(name: str) -> int:
    """0 for "mon" or "monday"; ValueError for anything else."""
    return WEEKDAYS.index(name) if name in WEEKDAYS else _FULL.index(name)
