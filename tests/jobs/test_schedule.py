"""Times for `--not-before`: ISO 8601 (local without an offset) or the next HH:MM."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobs.errors import InputError
from jobs.schedule import Window, local_zone_name, parse_time

NOW = datetime(2026, 11, 26, 22, 0, tzinfo=UTC)


def test_an_iso_time_with_an_offset_is_taken_as_it_is() -> None:
    assert parse_time("2026-11-27T01:30:00+01:00", NOW) == datetime(2026, 11, 27, 0, 30, tzinfo=UTC)


def test_an_iso_time_without_an_offset_is_local_time() -> None:
    local = datetime(2026, 11, 27, 3, 0).astimezone()
    assert parse_time("2026-11-27T03:00", NOW) == local.astimezone(UTC)


def test_hh_mm_is_the_next_such_local_time() -> None:
    at = parse_time("23:30", NOW)
    local = at.astimezone()
    assert (local.hour, local.minute) == (23, 30)
    assert NOW < at <= NOW + timedelta(days=1)


def test_a_time_that_is_neither_is_refused_by_name() -> None:
    with pytest.raises(InputError, match="'tonight' is not an ISO 8601 time or HH:MM"):
        parse_time("tonight", NOW)


UTC_WINDOW = 0  # the windows below are read on UTC's clock


def test_a_window_is_open_between_its_ends_and_closed_outside() -> None:
    window = Window.parse("09:00-17:30", UTC_WINDOW)
    assert window.is_open(NOW.replace(hour=9, minute=0))
    assert window.is_open(NOW.replace(hour=17, minute=29))
    assert not window.is_open(NOW.replace(hour=17, minute=30))
    assert not window.is_open(NOW.replace(hour=8, minute=59))
    assert str(window) == "09:00-17:30"


def test_a_window_may_wrap_midnight() -> None:
    window = Window.parse("22:00-06:00", UTC_WINDOW)
    assert window.is_open(NOW.replace(hour=23))
    assert window.is_open(NOW.replace(hour=5, minute=59))
    assert not window.is_open(NOW.replace(hour=12))


def test_next_open_is_now_inside_the_window_and_its_next_start_outside() -> None:
    window = Window.parse("01:00-02:00", UTC_WINDOW)
    inside = NOW.replace(hour=1, minute=30)
    assert window.next_open(inside) == inside
    assert window.next_open(NOW) == datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
    assert window.next_open(NOW.replace(hour=0, minute=10)) == NOW.replace(hour=1, minute=0)


def test_a_window_is_read_on_the_submitters_clock() -> None:
    window = Window.parse("09:00-10:00", 60)  # UTC+1
    assert window.is_open(NOW.replace(hour=8, minute=30))
    assert not window.is_open(NOW.replace(hour=9, minute=30))


@pytest.mark.parametrize("text", ["9-17", "09:00", "25:00-26:00", "10:00-10:00", "night"])
def test_a_bad_window_is_refused_by_name(text: str) -> None:
    with pytest.raises(InputError, match="--window"):
        Window.parse(text, UTC_WINDOW)


def test_open_time_counts_only_the_hours_the_window_is_open() -> None:
    night = Window.parse("01:00-06:00", UTC_WINDOW)  # five hours a night
    start = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
    assert night.after_open_time(start, 3 * 3600) == start.replace(hour=4)
    # 24 open hours: four whole nights and four hours of the fifth
    assert night.after_open_time(start, 24 * 3600) == datetime(2026, 12, 1, 5, 0, tzinfo=UTC)
    # counted from a time it is shut: from the next opening
    assert night.after_open_time(start.replace(hour=12), 3600) == datetime(
        2026, 11, 28, 2, 0, tzinfo=UTC
    )


def test_open_time_runs_across_midnight_in_a_wrapping_window() -> None:
    late = Window.parse("22:00-02:00", UTC_WINDOW)
    start = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
    assert late.after_open_time(start, 2 * 3600) == datetime(2026, 11, 28, 1, 0, tzinfo=UTC)
    assert late.after_open_time(start, 4 * 3600) == datetime(2026, 11, 28, 23, 0, tzinfo=UTC)


def test_a_window_in_a_named_zone_follows_daylight_saving() -> None:
    night = Window.parse("01:00-06:00", 60, "Europe/Paris")  # submitted in winter, UTC+1
    winter = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
    summer = datetime(2026, 4, 10, 12, 0, tzinfo=UTC)  # after the switch on 29 March: UTC+2
    assert night.next_open(winter) == datetime(2026, 3, 21, 0, 0, tzinfo=UTC)
    assert night.next_open(summer) == datetime(2026, 4, 10, 23, 0, tzinfo=UTC)
    assert night.is_open(datetime(2026, 4, 11, 3, 30, tzinfo=UTC))  # 05:30 in Paris
    assert not night.is_open(datetime(2026, 4, 11, 4, 30, tzinfo=UTC))  # 06:30 in Paris
    # a fixed offset would have stayed on UTC+1 all summer
    fixed = Window.parse("01:00-06:00", 60)
    assert fixed.next_open(summer) == datetime(2026, 4, 11, 0, 0, tzinfo=UTC)


def test_the_local_zone_is_taken_from_tz_when_it_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    assert local_zone_name() == "America/New_York"
    assert Window.parse("22:00-02:00").tz_name == "America/New_York"
    monkeypatch.setenv("TZ", "Not/AZone")
    assert local_zone_name() != "Not/AZone"
