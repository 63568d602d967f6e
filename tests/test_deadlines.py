"""Deadlines are counted as the ICO counts them: calendar months, working days, UK local dates."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sarbot.store.deadlines import (
    Calendar,
    can_extend,
    corresponding_date,
    days_left,
    due_date,
    extended_due_date,
    start_date,
)

pytestmark = pytest.mark.clock

ENGLAND = Calendar()
WALES = Calendar("GB", "WLS")
SCOTLAND = Calendar("GB", "SCT")
NORTHERN_IRELAND = Calendar("GB", "NIR")
WEEKENDS_ONLY = Calendar.weekends_only()

# Bank holidays in England and Wales in 2026 as published on gov.uk/bank-holidays.
ENGLAND_AND_WALES_2026 = {
    date(2026, 1, 1),  # New Year's Day
    date(2026, 4, 3),  # Good Friday
    date(2026, 4, 6),  # Easter Monday
    date(2026, 5, 4),  # Early May bank holiday
    date(2026, 5, 25),  # Spring bank holiday
    date(2026, 8, 31),  # Summer bank holiday
    date(2026, 12, 25),  # Christmas Day
    date(2026, 12, 28),  # Boxing Day (substitute day: 26 December is a Saturday)
}

# The longest run of days off in 2020-2035 is four: Good Friday to Easter Monday, or a
# Christmas on a Saturday (Saturday, Sunday and two substitute days).
LONGEST_RUN_OF_DAYS_OFF = 4


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


class TestIcoExample:
    def test_confirmation_starts_the_clock_and_saturday_moves_to_monday(self) -> None:
        """Received 30 Jan 2026, confirmed 31 Jan: 28 Feb is a Saturday, so due Mon 2 Mar 2026."""
        start = start_date(utc(2026, 1, 30, 10), utc(2026, 1, 31, 9), ENGLAND)
        assert start == date(2026, 1, 31)
        assert corresponding_date(start, 1) == date(2026, 2, 28)
        assert due_date(start, ENGLAND) == date(2026, 3, 2)

    def test_receipt_starts_the_clock_without_confirmation(self) -> None:
        """Received 3 March with nothing asked for: due 3 April (a Friday, but Good Friday)."""
        start = start_date(utc(2026, 3, 3, 12), None, ENGLAND)
        assert start == date(2026, 3, 3)
        assert due_date(start, WEEKENDS_ONLY) == date(2026, 4, 3)

    def test_confirmation_before_receipt_does_not_move_the_start_back(self) -> None:
        """An identity confirmed before the request arrived leaves the start at receipt."""
        assert start_date(utc(2026, 3, 3, 12), utc(2026, 2, 20, 12), ENGLAND) == date(2026, 3, 3)

    def test_working_day_start_is_not_required(self) -> None:
        """A request received on a Sunday starts the clock on that Sunday."""
        assert start_date(utc(2026, 3, 1, 12), None, ENGLAND) == date(2026, 3, 1)
        assert due_date(date(2026, 3, 1), WEEKENDS_ONLY) == date(2026, 4, 1)


class TestMonthEnds:
    @pytest.mark.parametrize(
        ("start", "expected"),
        [
            (date(2027, 1, 31), date(2027, 2, 28)),
            (date(2028, 1, 31), date(2028, 2, 29)),
            (date(2026, 3, 31), date(2026, 4, 30)),
            (date(2026, 8, 31), date(2026, 9, 30)),
            (date(2026, 1, 30), date(2026, 2, 28)),
            (date(2026, 1, 29), date(2026, 2, 28)),
            (date(2028, 2, 29), date(2028, 3, 29)),
            (date(2026, 2, 28), date(2026, 3, 28)),
            (date(2026, 12, 15), date(2027, 1, 15)),
            (date(2026, 12, 31), date(2027, 1, 31)),
            (date(2026, 3, 3), date(2026, 4, 3)),
        ],
    )
    def test_corresponding_date_of_next_month(self, start: date, expected: date) -> None:
        """The same day next month, or the last day of that month when it is shorter."""
        assert corresponding_date(start, 1) == expected

    def test_thirtieth_of_january_is_due_end_of_february_not_march(self) -> None:
        """30 Jan 2025 is due Fri 28 Feb 2025, not 2 March as naive day overflow would give."""
        assert due_date(date(2025, 1, 30), ENGLAND) == date(2025, 2, 28)

    def test_december_is_due_in_january_of_next_year(self) -> None:
        """15 Dec 2026 is due Fri 15 Jan 2027; 31 Dec 2026 gives Sun 31 Jan, so Mon 1 Feb."""
        assert due_date(date(2026, 12, 15), ENGLAND) == date(2027, 1, 15)
        assert due_date(date(2026, 12, 31), ENGLAND) == date(2027, 2, 1)

    def test_months_across_several_years(self) -> None:
        """Counting many months carries into later years and keeps the end-of-month rule."""
        assert corresponding_date(date(2026, 11, 30), 3) == date(2027, 2, 28)
        assert corresponding_date(date(2027, 11, 30), 3) == date(2028, 2, 29)
        assert corresponding_date(date(2026, 5, 31), 25) == date(2028, 6, 30)

    def test_less_than_a_month_is_refused(self) -> None:
        """A time limit of zero months is a programming error."""
        with pytest.raises(ValueError, match="at least one month"):
            due_date(date(2026, 3, 3), ENGLAND, months=0)


class TestBankHolidays:
    def test_england_2026_matches_the_published_list(self) -> None:
        """The weekday holidays of England in 2026 are exactly those published by gov.uk."""
        weekdays = {d for d in ENGLAND.bank_holidays(2026) if d.weekday() < 5}
        assert weekdays == ENGLAND_AND_WALES_2026

    def test_wales_shares_the_calendar_of_england(self) -> None:
        """England and Wales have the same bank holidays in every year from 2020 to 2035."""
        for year in range(2020, 2036):
            assert WALES.bank_holidays(year) == ENGLAND.bank_holidays(year), year

    @pytest.mark.parametrize("holiday", sorted(ENGLAND_AND_WALES_2026))
    def test_bank_holiday_is_not_a_working_day(self, holiday: date) -> None:
        """A published bank holiday is a weekday that is a working day only without holidays."""
        assert not ENGLAND.is_working_day(holiday)
        assert WEEKENDS_ONLY.is_working_day(holiday)

    def test_weekends_and_ordinary_days(self) -> None:
        """Saturday and Sunday are days off; an ordinary Wednesday is a working day."""
        assert not ENGLAND.is_working_day(date(2026, 3, 7))
        assert not ENGLAND.is_working_day(date(2026, 3, 8))
        assert ENGLAND.is_working_day(date(2026, 3, 4))

    @pytest.mark.parametrize(
        ("start", "expected"),
        [
            (date(2026, 4, 2), date(2026, 5, 5)),  # Sat 2 May, Mon 4 May early May holiday
            (date(2026, 4, 23), date(2026, 5, 26)),  # Sat 23 May, Mon 25 May spring holiday
            (date(2026, 7, 29), date(2026, 9, 1)),  # Sat 29 Aug, Mon 31 Aug summer holiday
        ],
    )
    def test_saturday_before_bank_holiday_monday_moves_to_tuesday(
        self, start: date, expected: date
    ) -> None:
        """A due date on the Saturday of a bank-holiday weekend moves to the Tuesday."""
        assert corresponding_date(start, 1).weekday() == 5
        assert due_date(start, ENGLAND) == expected
        assert due_date(start, WEEKENDS_ONLY) == expected - timedelta(days=1)

    def test_easter_moves_good_friday_to_tuesday(self) -> None:
        """Due on Good Friday 3 Apr 2026: Friday to Monday are off, so due Tue 7 Apr."""
        assert due_date(date(2026, 3, 3), ENGLAND) == date(2026, 4, 7)

    def test_christmas_substitute_day(self) -> None:
        """Due on Christmas Day 2026: Boxing Day's substitute Mon 28 Dec is off, so Tue 29 Dec."""
        assert due_date(date(2026, 11, 25), ENGLAND) == date(2026, 12, 29)

    def test_holiday_set_is_computed_once_per_year(self) -> None:
        """Asking twice for a year's holidays, even from an equal calendar, reuses one set."""
        assert ENGLAND.bank_holidays(2031) is Calendar("GB", "ENG").bank_holidays(2031)

    def test_weekends_only_has_no_holidays(self) -> None:
        """The weekends-only calendar knows no bank holidays."""
        assert WEEKENDS_ONLY.bank_holidays(2026) == frozenset()


class TestScotlandAndNorthernIreland:
    def test_scottish_holidays_differ_from_england(self) -> None:
        """Scotland has 2 Jan, St Andrew's Day and an early August holiday, not Easter Monday."""
        scotland = SCOTLAND.bank_holidays(2026)
        england = ENGLAND.bank_holidays(2026)
        assert {date(2026, 1, 2), date(2026, 11, 30), date(2026, 8, 3)} <= scotland - england
        assert {date(2026, 4, 6), date(2026, 8, 31)} <= england - scotland

    @pytest.mark.parametrize(
        ("start", "in_england", "in_scotland"),
        [
            (date(2025, 12, 2), date(2026, 1, 2), date(2026, 1, 5)),  # 2 January
            (date(2026, 10, 30), date(2026, 11, 30), date(2026, 12, 1)),  # St Andrew's Day
            (date(2026, 3, 3), date(2026, 4, 7), date(2026, 4, 6)),  # Easter Monday
            (date(2026, 7, 29), date(2026, 9, 1), date(2026, 8, 31)),  # August holiday
        ],
    )
    def test_due_dates_follow_the_configured_nation(
        self, start: date, in_england: date, in_scotland: date
    ) -> None:
        """The same request is due on different days in England and in Scotland."""
        assert due_date(start, ENGLAND) == in_england
        assert due_date(start, SCOTLAND) == in_scotland

    def test_northern_ireland_has_st_patricks_day(self) -> None:
        """17 March 2026 is a holiday in Northern Ireland only."""
        assert not NORTHERN_IRELAND.is_working_day(date(2026, 3, 17))
        assert ENGLAND.is_working_day(date(2026, 3, 17))


class TestCalendarSettings:
    @pytest.mark.parametrize(
        ("country", "subdivision", "timezone_name", "message"),
        [
            ("GB", None, "Europe/London", "name a subdivision"),
            ("UK", None, "Europe/London", "name a subdivision"),
            ("GB", "XYZ", "Europe/London", "no holiday calendar"),
            ("ZZ", None, "Europe/London", "no holiday calendar"),
            (None, "ENG", "Europe/London", "needs a country"),
            ("GB", "ENG", "Europe/Londres", "unknown timezone"),
            ("GB", "ENG", "", "unknown timezone"),
            ("GB", "ENG", "../../etc/passwd", "unknown timezone"),
        ],
    )
    def test_bad_settings_are_refused(
        self, country: str | None, subdivision: str | None, timezone_name: str, message: str
    ) -> None:
        """A calendar that does not exist, or a UK calendar of no nation, is refused."""
        with pytest.raises(ValueError, match=message):
            Calendar(country, subdivision, timezone_name)

    def test_default_is_england_and_wales_in_london_time(self) -> None:
        """Without settings the calendar is England's in Europe/London."""
        assert (ENGLAND.country, ENGLAND.subdivision, ENGLAND.timezone) == (
            "GB",
            "ENG",
            "Europe/London",
        )


class TestStartDateTimezone:
    @pytest.mark.parametrize(
        ("received_at", "expected"),
        [
            (utc(2026, 3, 31, 23, 30), date(2026, 4, 1)),  # BST: 00:30 on 1 April
            (utc(2026, 3, 31, 22, 59), date(2026, 3, 31)),  # BST: 23:59 on 31 March
            (utc(2026, 1, 31, 23, 30), date(2026, 1, 31)),  # GMT: still 31 January
            (utc(2026, 3, 28, 23, 30), date(2026, 3, 28)),  # the night BST starts, still GMT
            (utc(2026, 3, 29, 23, 30), date(2026, 3, 30)),  # first night of BST
            (utc(2026, 10, 24, 23, 30), date(2026, 10, 25)),  # last night of BST
            (utc(2026, 10, 25, 23, 30), date(2026, 10, 25)),  # first night of GMT
        ],
    )
    def test_start_is_the_date_in_london(self, received_at: datetime, expected: date) -> None:
        """The start date is the request's date in UK local time, not in UTC."""
        assert start_date(received_at, None, ENGLAND) == expected

    def test_late_utc_arrival_in_summer_changes_the_due_date(self) -> None:
        """23:30 UTC on 31 March 2026 is 1 April in London, so due 1 May, not 30 April."""
        start = start_date(utc(2026, 3, 31, 23, 30), None, ENGLAND)
        assert due_date(start, ENGLAND) == date(2026, 5, 1)

    def test_confirmation_date_is_read_in_london_too(self) -> None:
        """A confirmation at 23:10 UTC on a summer evening starts the clock the next day."""
        assert start_date(utc(2026, 6, 1, 9), utc(2026, 6, 10, 23, 10), ENGLAND) == date(
            2026, 6, 11
        )

    def test_other_offsets_are_converted(self) -> None:
        """A moment given with another offset is converted to London before taking its date."""
        tokyo = timezone(timedelta(hours=9))
        assert start_date(datetime(2026, 1, 1, 8, 0, tzinfo=tokyo), None, ENGLAND) == date(
            2025, 12, 31
        )

    def test_timezone_is_configurable(self) -> None:
        """With a UTC calendar, 23:30 UTC on 31 March stays 31 March."""
        calendar = Calendar(timezone="UTC")
        assert start_date(utc(2026, 3, 31, 23, 30), None, calendar) == date(2026, 3, 31)

    def test_naive_datetimes_are_refused(self) -> None:
        """A datetime without a timezone cannot be placed on a date and is refused."""
        with pytest.raises(ValueError, match="naive"):
            start_date(datetime(2026, 3, 31, 23, 30), None, ENGLAND)
        with pytest.raises(ValueError, match="naive"):
            start_date(utc(2026, 3, 1), datetime(2026, 3, 2), ENGLAND)


class TestExtension:
    def test_extension_is_three_months_from_the_start(self) -> None:
        """The ICO example extended: start 31 Jan 2026 gives Thu 30 Apr 2026."""
        assert extended_due_date(date(2026, 1, 31), ENGLAND) == date(2026, 4, 30)

    def test_extension_uses_month_end_and_working_day_rules(self) -> None:
        """30 Nov 2025 + 3 months is 28 Feb 2026, a Saturday, so due Mon 2 Mar 2026."""
        assert extended_due_date(date(2025, 11, 30), ENGLAND) == date(2026, 3, 2)

    def test_extension_skips_bank_holidays(self) -> None:
        """6 Jan 2026 + 3 months is Easter Monday 6 Apr 2026, so due Tue 7 Apr."""
        assert extended_due_date(date(2026, 1, 6), ENGLAND) == date(2026, 4, 7)
        assert extended_due_date(date(2026, 1, 6), SCOTLAND) == date(2026, 4, 6)

    def test_extension_counts_from_the_start_not_the_moved_due_date(self) -> None:
        """3 Mar 2026 is due 7 Apr (Easter); extended it is due 3 Jun, not 7 Jun."""
        assert due_date(date(2026, 3, 3), ENGLAND) == date(2026, 4, 7)
        assert extended_due_date(date(2026, 3, 3), ENGLAND) == date(2026, 6, 3)

    @pytest.mark.parametrize(
        ("today", "allowed"),
        [
            (date(2026, 1, 31), True),  # the start date
            (date(2026, 2, 28), True),  # the corresponding date, a Saturday
            (date(2026, 3, 1), True),  # Sunday, before the moved due date
            (date(2026, 3, 2), True),  # the due date itself
            (date(2026, 3, 3), False),  # the day after the due date
            (date(2026, 4, 1), False),
        ],
    )
    def test_extension_is_allowed_on_or_before_the_due_date(
        self, today: date, allowed: bool
    ) -> None:
        """An extension can be given up to and including the original due date, not after."""
        assert can_extend(date(2026, 1, 31), today, ENGLAND) is allowed


class TestDaysLeft:
    @pytest.mark.parametrize(
        ("today", "expected"),
        [(date(2026, 2, 28), 2), (date(2026, 3, 2), 0), (date(2026, 3, 5), -3)],
    )
    def test_days_left_counts_calendar_days(self, today: date, expected: int) -> None:
        """Days left are calendar days: zero on the due date, negative once overdue."""
        assert days_left(date(2026, 3, 2), today) == expected


CALENDARS = st.sampled_from([ENGLAND, WALES, SCOTLAND, NORTHERN_IRELAND, WEEKENDS_ONLY])
STARTS = st.dates(min_value=date(2020, 1, 1), max_value=date(2035, 12, 31))


class TestProperties:
    @given(start=STARTS, calendar=CALENDARS)
    def test_due_date_is_first_working_day_from_the_corresponding_date(
        self, start: date, calendar: Calendar
    ) -> None:
        """The due date is a working day, 28 to 31 + 4 days after the start, with only days off
        between the corresponding date and it."""
        due = due_date(start, calendar)
        corresponding = corresponding_date(start, 1)
        assert calendar.is_working_day(due)
        assert 28 <= (corresponding - start).days <= 31
        assert 0 <= (due - corresponding).days <= LONGEST_RUN_OF_DAYS_OFF
        skipped = (corresponding + timedelta(days=n) for n in range((due - corresponding).days))
        assert not any(calendar.is_working_day(day) for day in skipped)

    @given(start=STARTS)
    def test_corresponding_date_keeps_the_day_or_ends_the_month(self, start: date) -> None:
        """The corresponding date is in the next month, on the same day or its last day."""
        corresponding = corresponding_date(start, 1)
        assert (corresponding.year * 12 + corresponding.month) == (
            start.year * 12 + start.month + 1
        )
        if corresponding.day != start.day:
            assert corresponding.day < start.day
            assert (corresponding + timedelta(days=1)).day == 1

    @given(start=STARTS, calendar=CALENDARS)
    def test_extended_due_date_is_later_and_a_working_day(
        self, start: date, calendar: Calendar
    ) -> None:
        """The extended due date is a working day about two months after the due date."""
        due = due_date(start, calendar)
        extended = extended_due_date(start, calendar)
        assert calendar.is_working_day(extended)
        assert extended > due
        assert 89 <= (extended - start).days <= 92 + LONGEST_RUN_OF_DAYS_OFF
        assert extended == calendar.working_day_on_or_after(corresponding_date(start, 3))

    @given(start=STARTS, calendar=CALENDARS, offset=st.integers(min_value=0, max_value=40))
    def test_extension_window_ends_with_the_due_date(
        self, start: date, calendar: Calendar, offset: int
    ) -> None:
        """An extension is allowed exactly while there are zero or more days left."""
        today = start + timedelta(days=offset)
        due = due_date(start, calendar)
        assert can_extend(start, today, calendar) is (days_left(due, today) >= 0)
