"""How a batch runs: when, in which order, within what budget, whom to tell, what to reuse."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jobs import webhooks
from jobs.errors import InvalidRequestError
from jobs.models import Priority
from jobs.schedule import Window
from jobs.settings import get_settings


@dataclass(frozen=True)
class Policy:
    """A batch's options beyond its lines (`--not-before`, `--window`, `--priority`,
    `--max-cost`, `--max-tokens`, `--webhook`, `--reuse`), checked when built."""

    not_before: datetime | None = None
    window: Window | None = None
    priority: Priority = Priority.BULK
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    webhook_url: str | None = None
    reuse: bool = False

    def __post_init__(self) -> None:
        if self.max_cost_usd is not None and not self.max_cost_usd > 0:
            raise InvalidRequestError(
                f"--max-cost must be a positive amount of USD, not {self.max_cost_usd}",
                param="max_cost",
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequestError(
                f"--max-tokens must be a positive number, not {self.max_tokens}",
                param="max_tokens",
            )
        if self.webhook_url is not None:  # nothing is ever sent unsigned, or to a bad URL
            webhooks.require_secret(get_settings())
            webhooks.check_url(self.webhook_url)

    def start_at(self, now: datetime) -> datetime | None:
        """When the first request may go, if that is later than now."""
        at = max(now, self.not_before or now)
        if self.window is not None:
            at = self.window.next_open(at)
        return at if at > now else None

    def expires_at(self, now: datetime, completion_window_s: float) -> datetime:
        """The end of the completion window: it starts when work may; with a daily window it
        counts only the time the window is open (a 24h job in a 5-hour night runs 5 nights)."""
        start = self.start_at(now) or now
        if self.window is None:
            return start + timedelta(seconds=completion_window_s)
        return self.window.after_open_time(start, completion_window_s)

    def columns(self) -> dict[str, Any]:
        """The Batch columns that keep this policy."""
        return {
            "priority": self.priority,
            "window": str(self.window) if self.window else None,
            "window_utc_offset_min": self.window.utc_offset_min if self.window else None,
            "window_tz": self.window.tz_name if self.window else None,
            "max_cost_usd": self.max_cost_usd,
            "max_tokens": self.max_tokens,
            "webhook_url": self.webhook_url,
            "reuse": self.reuse,
        }


def window_of(
    text: str | None, utc_offset_min: int | None, tz_name: str | None = None
) -> Window | None:
    """A batch's stored window back as a Window (None when it has none)."""
    return Window.parse(text, utc_offset_min or 0, tz_name) if text else None
