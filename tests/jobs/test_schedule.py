"""Times for `--not-before`: ISO 8601 (local without an offset) or the next HH:MM."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobs.errors import InputError
from jobs.schedule import parse_time

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
