"""The retry policy: which upstream answers are worth another try, and when.

Pure functions of their arguments (time and randomness are passed in), so the
policy is tested without clocks or sleeps.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from worker.errors import (
    PermanentUpstreamError,
    RateLimitedError,
    RetryableUpstreamError,
    UpstreamError,
)

_RETRYABLE_STATUS = frozenset({408, 409})
# CometAPI answers some bad requests with 500 and this code: retrying cannot help.
_PERMANENT_500_CODES = frozenset({"invalid_request"})
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_MAX_TEXT = 300


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; `max_attempts` counts the first try."""

    max_attempts: int = 5
    base_s: float = 1.0
    cap_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got {self.base_s} and {self.cap_s}")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_duration_s(text: str) -> float | None:
    """OpenAI's reset durations (`20ms`, `6m0s`, `1h2m3.5s`) in seconds; a bare number is s."""
    text = text.strip()
    if (bare := _number(text)) is not None:
        return bare
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(value + unit for value, unit in parts) != text:
        return None
    return sum(float(value) * _UNIT_S[unit] for value, unit in parts)


def _http_date_wait_s(text: str, now: datetime) -> float | None:
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return (when - now).total_seconds()


def parse_retry_after_s(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The longest wait the headers ask for, in seconds; None when they name none."""
    lower = {key.lower(): value for key, value in headers.items()}
    waits: list[float] = []
    if (ms := _number(lower.get("retry-after-ms", ""))) is not None:
        waits.append(ms / 1000)
    if (text := lower.get("retry-after")) is not None:
        seconds = _number(text)
        if seconds is None:
            seconds = _http_date_wait_s(text, now or datetime.now(UTC))
        if seconds is not None:
            waits.append(seconds)
    for bucket in ("requests", "tokens"):
        # A reset names when the bucket refills; it only bears on us once the bucket is empty.
        remaining = _number(lower.get(f"x-ratelimit-remaining-{bucket}", ""))
        reset = lower.get(f"x-ratelimit-reset-{bucket}")
        if reset is None or (remaining is not None and remaining > 0):
            continue
        if (seconds := parse_duration_s(reset)) is not None:
            waits.append(seconds)
    return max(0.0, *waits) if waits else None


def backoff_s(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with full jitter after the `attempt`-th try (1-based)."""
    exponent = min(max(attempt, 1) - 1, 62)  # beyond 2**62 the cap has long won; avoid overflow
    ceiling_s = min(policy.cap_s, policy.base_s * 2**exponent)
    return (rng or random).uniform(0.0, ceiling_s)


def next_delay_s(
    error: RetryableUpstreamError,
    attempt: int,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> float:
    """When to retry: never sooner than the upstream asked, nor than our own backoff."""
    return max(error.retry_after_s or 0.0, backoff_s(attempt, policy, rng))


def should_retry(error: BaseException, attempt: int, policy: RetryPolicy) -> bool:
    """True if `error` is transient and fewer than `max_attempts` tries have been made."""
    return isinstance(error, RetryableUpstreamError) and attempt < policy.max_attempts


def _short_text(body: object) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "..."


def _field(value: object) -> str | None:
    # Some providers send numeric codes; empty strings carry no information.
    return None if value is None or value == "" else str(value)


def _envelope(body: object) -> tuple[str, str | None, str | None, str | None]:
    """(message, type, code, param) from OpenAI's `{"error": {...}}`, tolerant of look-alikes."""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            kind, code, param = (_field(error.get(key)) for key in ("type", "code", "param"))
            return _short_text(error["message"]), kind, code, param
        if isinstance(error, str) and error:
            return _short_text(error), None, None, None
        for key in ("message", "detail"):
            if body.get(key):
                return _short_text(body[key]), None, None, None
    return (_short_text(body) if body not in (None, "", b"") else "(empty body)"), None, None, None


def classify(status_code: int, body: object, headers: Mapping[str, str]) -> UpstreamError | None:
    """The error an upstream answer stands for; None for a 2xx."""
    if 200 <= status_code < 300:
        return None
    message, kind, code, param = _envelope(body)
    label = f"upstream {status_code}" + (f" {kind}" if kind else "")
    extra = ", ".join(
        f"{name} {value}" for name, value in [("code", code), ("param", param)] if value
    )
    text = f"{label}: {message}" + (f" ({extra})" if extra else "")
    request_id = {key.lower(): value for key, value in headers.items()}.get("x-request-id")
    error_code = code or kind
    if status_code == 429:
        return RateLimitedError(
            text,
            retry_after_s=parse_retry_after_s(headers),
            status_code=status_code,
            code=error_code,
            body=body,
            request_id=request_id,
        )
    permanent_500 = status_code == 500 and code in _PERMANENT_500_CODES
    if (status_code in _RETRYABLE_STATUS or status_code >= 500) and not permanent_500:
        return RetryableUpstreamError(
            text,
            retry_after_s=parse_retry_after_s(headers),
            status_code=status_code,
            code=error_code,
            body=body,
            request_id=request_id,
        )
    return PermanentUpstreamError(
        text, status_code=status_code, code=error_code, body=body, request_id=request_id
    )
