"""When work may start: times given on the command line (`--not-before TIME`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

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
