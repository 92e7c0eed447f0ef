"""When work may run: a start time (`--not-before TIME`) and a daily window (`--window`)."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jobs.errors import InputError, LineFault

CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (local time when it has no offset), or HH:MM for the next such local time."""
    now = now or datetime.now(UTC)
    local_now = now.astimezone()
    if match := CLOCK.match(text.strip()):
        at = local_now.replace(hour=int(match[1]), minute=int(match[2]), second=0, microsecond=0)
        if at <= local_now:
            at += timedelta(days=1)
        return at.astimezone(UTC)
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InputError(
            "--not-before",
            [LineFault(0, "invalid_time", f"{text!r} is not an ISO 8601 time or HH:MM")],
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=local_now.tzinfo)
    return parsed.astimezone(UTC)


def local_zone_name() -> str | None:
    """This machine's time zone as an IANA key (TZ, or what /etc/localtime links to), so a
    window follows daylight saving; None when it cannot be told (a fixed offset is used)."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    for name in candidates:
        if name:
            with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
                ZoneInfo(name)
                return name
    return None


@dataclass(frozen=True)
class Window:
    """A daily window (`--window HH:MM-HH:MM`) on the submitter's clock: its time zone when
    known (daylight saving followed), else its UTC offset at submission. It may wrap
    midnight (22:00-06:00)."""

    start_min: int  # minutes after local midnight
    end_min: int
    utc_offset_min: int
    tz_name: str | None = None  # an IANA key; wins over the offset

    @property
    def tz(self) -> tzinfo:
        if self.tz_name:
            return ZoneInfo(self.tz_name)
        return timezone(timedelta(minutes=self.utc_offset_min))

    @classmethod
    def parse(
        cls, text: str, utc_offset_min: int | None = None, tz_name: str | None = None
    ) -> Window:
        start, sep, end = text.strip().partition("-")
        first, last = CLOCK.match(start.strip()), CLOCK.match(end.strip())
        if not sep or not first or not last:
            raise InputError(
                "--window", [LineFault(0, "invalid_window", f"{text!r} is not HH:MM-HH:MM")]
            )
        start_min = int(first[1]) * 60 + int(first[2])
        end_min = int(last[1]) * 60 + int(last[2])
        if start_min == end_min:
            raise InputError(
                "--window",
                [LineFault(0, "invalid_window", f"{text!r} is empty: it starts when it ends")],
            )
        if utc_offset_min is None:  # the submitter's clock
            offset = datetime.now(UTC).astimezone().utcoffset() or timedelta(0)
            utc_offset_min = int(offset.total_seconds() // 60)
            tz_name = tz_name or local_zone_name()
        return cls(start_min, end_min, utc_offset_min, tz_name)

    def __str__(self) -> str:
        return f"{_clock(self.start_min)}-{_clock(self.end_min)}"

    def _minute_of_day(self, at: datetime) -> tuple[datetime, float]:
        local = at.astimezone(self.tz)
        return local, local.hour * 60 + local.minute + local.second / 60

    def is_open(self, at: datetime) -> bool:
        _, minute = self._minute_of_day(at)
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    def next_open(self, at: datetime) -> datetime:
        """`at` itself when the window is open then, else when it next opens."""
        return at if self.is_open(at) else self._next_clock(at, self.start_min)

    def after_open_time(self, start: datetime, open_s: float) -> datetime:
        """When `open_s` seconds of this window have passed, counting from `start`."""
        at, left_s = self.next_open(start), open_s
        while True:
            closes = self._next_clock(at, self.end_min)  # the end of the opening holding `at`
            if (closes - at).total_seconds() >= left_s:
                return at + timedelta(seconds=left_s)
            left_s -= (closes - at).total_seconds()
            at = self.next_open(closes)

    def _next_clock(self, at: datetime, minute_of_day: int) -> datetime:
        """The first time after `at` that this window's clock shows `minute_of_day`."""
        local, _ = self._minute_of_day(at)
        hour, minute = divmod(minute_of_day, 60)
        then = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if then <= local:
            then += timedelta(days=1)
        return then.astimezone(UTC)


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
