"""When a subject access request must be answered, counted the way the ICO counts it.

The period starts on the day the request arrives, or on the day the confirmation of identity
that was asked for arrives, and ends on the corresponding calendar date of the following month
(or that month's last day when it has no such date). A deadline that falls on a weekend or a
bank holiday moves to the next working day. An extension adds two further months, counted the
same way from the same start. docs/deadlines.md gives the rules and examples.
"""

from __future__ import annotations

from calendar import monthrange
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

EXTENSION_MONTHS = 2
"""How many further months an extension adds to the first one."""

SATURDAY = 5

# The library's calendar for the whole UK (no subdivision) holds only the holidays common to
# all four nations, so it lacks e.g. Easter Monday in England; it fits no office anywhere.
_NEEDS_SUBDIVISION = frozenset({"GB", "UK"})


@lru_cache(maxsize=512)
def _holiday_dates(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays(country, subdiv=subdivision, years=year))


@dataclass(frozen=True)
class Calendar:
    """Which days are working days, and in which timezone a moment's date is read.

    ``country`` and ``subdivision`` name a calendar of the ``holidays`` library (ISO 3166
    codes, e.g. ``("GB", "ENG")``, ``("GB", "SCT")``); ``country=None`` means weekends only.
    """

    country: str | None = "GB"
    subdivision: str | None = "ENG"
    timezone: str = "Europe/London"

    def __post_init__(self) -> None:
        if self.country is None:
            if self.subdivision is not None:
                raise ValueError("a holiday subdivision needs a country")
        elif self.country in _NEEDS_SUBDIVISION and self.subdivision is None:
            raise ValueError(
                "UK bank holidays differ between its nations: name a subdivision "
                "(ENG, WLS, SCT or NIR)"
            )
        else:
            try:
                holidays.country_holidays(self.country, subdiv=self.subdivision)
            except NotImplementedError as exc:
                raise ValueError(f"no holiday calendar for this setting: {exc}") from None
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone!r}") from None

    @classmethod
    def weekends_only(cls, timezone: str = "Europe/London") -> Calendar:
        """A calendar whose only days off are Saturdays and Sundays."""
        return cls(country=None, subdivision=None, timezone=timezone)

    def bank_holidays(self, year: int) -> frozenset[date]:
        """The holidays of ``year``, including substitute days; computed once per year."""
        if self.country is None:
            return frozenset()
        return _holiday_dates(self.country, self.subdivision, year)

    def is_working_day(self, day: date) -> bool:
        return day.weekday() < SATURDAY and day not in self.bank_holidays(day.year)

    def working_day_on_or_after(self, day: date) -> date:
        """``day`` itself if it is a working day, else the next working day after it."""
        while not self.is_working_day(day):
            day += timedelta(days=1)
        return day

    def local_date(self, moment: datetime) -> date:
        """The calendar date of a timezone-aware moment in this calendar's timezone."""
        if moment.utcoffset() is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        return moment.astimezone(ZoneInfo(self.timezone)).date()


def start_date(received_at: datetime, confirmed_at: datetime | None, calendar: Calendar) -> date:
    """The day the clock starts: the local date of receipt, or of the confirmation if later."""
    start = calendar.local_date(received_at)
    if confirmed_at is None:
        return start
    return max(start, calendar.local_date(confirmed_at))


def corresponding_date(start: date, months: int) -> date:
    """The same day of the month ``months`` later, or that month's last day if it is shorter."""
    year, month_index = divmod(start.year * 12 + start.month - 1 + months, 12)
    month = month_index + 1
    return date(year, month, min(start.day, monthrange(year, month)[1]))


def due_date(start: date, calendar: Calendar, months: int = 1) -> date:
    """The last day to answer: ``months`` after ``start``, moved to a working day if needed."""
    if months < 1:
        raise ValueError("a time limit is at least one month")
    return calendar.working_day_on_or_after(corresponding_date(start, months))


def extended_due_date(start: date, calendar: Calendar) -> date:
    """The last day to answer after an extension: three months counted from ``start``."""
    return due_date(start, calendar, months=1 + EXTENSION_MONTHS)


def can_extend(start: date, today: date, calendar: Calendar) -> bool:
    """Whether the requester can still be told of an extension: on or before the due date."""
    return today <= due_date(start, calendar)


def days_left(due: date, today: date) -> int:
    """Days from ``today`` to ``due``: 0 on the due date itself, negative once it has passed."""
    return (due - today).days
