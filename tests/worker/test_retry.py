import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from worker.errors import PermanentUpstreamError, RateLimitedError, RetryableUpstreamError
from worker.retry import (
    RetryPolicy,
    backoff_s,
    classify,
    next_delay_s,
    parse_duration_s,
    parse_retry_after_s,
    should_retry,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


class Ceiling(random.Random):
    """A Random whose uniform() answers its upper bound, to read the backoff ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_retry_after_ms_is_in_milliseconds() -> None:
    assert parse_retry_after_s({"retry-after-ms": "1500"}) == 1.5


@pytest.mark.parametrize(("value", "expected"), [("7", 7.0), ("0.25", 0.25), ("0", 0.0)])
def test_retry_after_is_in_seconds(value: str, expected: float) -> None:
    assert parse_retry_after_s({"Retry-After": value}) == expected


def test_retry_after_may_be_an_http_date_relative_to_now() -> None:
    headers = {"retry-after": format_datetime(NOW + timedelta(seconds=30), usegmt=True)}
    assert parse_retry_after_s(headers, now=NOW) == 30.0


def test_an_http_date_in_the_past_means_no_wait_never_a_negative_one() -> None:
    headers = {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert parse_retry_after_s(headers, now=NOW) == 0.0
    assert parse_retry_after_s({"retry-after": "-5"}) == 0.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("20ms", 0.02), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("0.5s", 0.5), ("2", 2.0)],
)
def test_openai_reset_durations_are_parsed(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "1s later", "s", ""])
def test_a_duration_that_is_not_one_gives_none(text: str) -> None:
    assert parse_duration_s(text) is None


def test_a_ratelimit_reset_applies_when_its_bucket_is_empty() -> None:
    headers = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}
    assert parse_retry_after_s(headers) == 360.0
    assert parse_retry_after_s({"x-ratelimit-reset-requests": "20ms"}) == 0.02


def test_a_ratelimit_reset_is_ignored_while_its_bucket_has_room() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-remaining-tokens": "150000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert parse_retry_after_s(headers) is None


def test_the_largest_wait_that_applies_wins() -> None:
    headers = httpx.Headers(
        {
            "retry-after-ms": "800",
            "retry-after": "2",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1h2m3.5s",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "1s",
        }
    )
    assert parse_retry_after_s(headers) == 3723.5


@pytest.mark.parametrize(
    "headers",
    [{}, {"content-type": "application/json"}, {"retry-after": "whenever"}, {"retry-after-ms": ""}],
)
def test_headers_that_name_no_wait_give_none(headers: dict[str, str]) -> None:
    assert parse_retry_after_s(headers, now=NOW) is None


def test_backoff_doubles_from_base_until_the_cap() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=60.0)
    ceilings = [backoff_s(attempt, policy, Ceiling()) for attempt in range(1, 10)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_backoff_survives_absurd_attempt_numbers() -> None:
    policy = RetryPolicy()
    assert backoff_s(10_000, policy, Ceiling()) == 60.0
    assert backoff_s(0, policy, Ceiling()) == 1.0


def test_backoff_is_full_jitter_between_zero_and_the_ceiling() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=10.0)
    rng = random.Random(42)
    samples = [backoff_s(4, policy, rng) for _ in range(2000)]
    assert all(0.0 <= s <= 4.0 for s in samples)
    assert min(samples) < 0.4 and max(samples) > 3.6  # spread over the whole range
    assert 0.0 <= backoff_s(3, policy) <= 2.0  # the module's own randomness by default


def test_the_next_delay_honours_the_upstream_wait_when_it_is_longer() -> None:
    policy = RetryPolicy()
    error = RateLimitedError("upstream 429", retry_after_s=45.0)
    assert next_delay_s(error, 1, policy, Ceiling()) == 45.0
    # ... even beyond our cap: an early retry would only be refused again.
    assert next_delay_s(RateLimitedError("x", retry_after_s=300.0), 9, policy, Ceiling()) == 300.0


def test_the_next_delay_is_the_backoff_when_the_upstream_names_no_wait() -> None:
    policy = RetryPolicy()
    assert next_delay_s(RetryableUpstreamError("reset"), 3, policy, Ceiling()) == 4.0


def test_retryable_errors_are_retried_until_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    error = RetryableUpstreamError("connection reset")
    assert should_retry(error, 1, policy)
    assert should_retry(RateLimitedError("429"), 2, policy)
    assert not should_retry(error, 3, policy)


def test_permanent_errors_are_never_retried() -> None:
    assert not should_retry(PermanentUpstreamError("upstream 400"), 1, RetryPolicy())
    assert not should_retry(ValueError("bug"), 1, RetryPolicy())


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"base_s": 0.0}, {"base_s": 10.0, "cap_s": 5.0}]
)
def test_a_nonsensical_policy_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def envelope(message: str, type_: str | None, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


@pytest.mark.parametrize("status", [200, 201, 204])
def test_a_2xx_is_no_error(status: int) -> None:
    assert classify(status, {"id": "resp_1"}, {}) is None


def test_a_429_is_rate_limited_with_the_wait_from_its_headers() -> None:
    body = envelope("Rate limit reached for requests", "requests", "rate_limit_exceeded")
    error = classify(429, body, {"retry-after": "12", "x-request-id": "req_1"})
    assert isinstance(error, RateLimitedError)
    assert error.retry_after_s == 12.0
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.request_id == "req_1"


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504, 520, 529])
def test_timeouts_conflicts_and_server_errors_are_retryable(status: int) -> None:
    error = classify(status, envelope("The server had an error", "server_error", None), {})
    assert type(error) is RetryableUpstreamError
    assert error.status_code == status
    assert error.retry_after_s is None


def test_a_retryable_answer_carries_the_wait_its_headers_name() -> None:
    error = classify(503, "Service Unavailable", {"retry-after-ms": "2500"})
    assert isinstance(error, RetryableUpstreamError)
    assert error.retry_after_s == 2.5


def test_a_500_with_code_invalid_request_is_permanent() -> None:
    body = envelope("invalid model o1-mini-x", "comet_api_error", "invalid_request")
    error = classify(500, body, {})
    assert isinstance(error, PermanentUpstreamError)
    assert error.code == "invalid_request"
    assert "invalid model o1-mini-x" in error.message


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 301])
def test_other_client_errors_are_permanent(status: int) -> None:
    error = classify(status, envelope("nope", "invalid_request_error", None), {})
    assert isinstance(error, PermanentUpstreamError)
    assert error.status_code == status


def test_a_permanent_error_says_what_the_upstream_said() -> None:
    body = envelope(
        "Unsupported parameter: 'temperature' is not supported with this model.",
        "invalid_request_error",
        "unsupported_parameter",
        "temperature",
    )
    error = classify(400, body, {})
    assert isinstance(error, PermanentUpstreamError)
    assert str(error) == (
        "upstream 400 invalid_request_error: Unsupported parameter: 'temperature' is not "
        "supported with this model. (code unsupported_parameter, param temperature)"
    )
    assert error.code == "unsupported_parameter"
    assert error.body == body


def test_the_type_stands_in_for_a_missing_code() -> None:
    error = classify(
        401, envelope("Incorrect API key provided.", "invalid_request_error", None), {}
    )
    assert isinstance(error, PermanentUpstreamError)
    assert error.code == "invalid_request_error"
    assert str(error) == "upstream 401 invalid_request_error: Incorrect API key provided."


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "model not found"}, "upstream 404: model not found"),
        ({"message": "Not Found"}, "upstream 404: Not Found"),
        ({"detail": "Not Found"}, "upstream 404: Not Found"),
        ("<html>\n  <h1>404</h1>\n</html>", "upstream 404: <html> <h1>404</h1> </html>"),
        ({"unexpected": 1}, 'upstream 404: {"unexpected": 1}'),
        ("", "upstream 404: (empty body)"),
        (None, "upstream 404: (empty body)"),
        ({"error": {"message": "gone", "code": 404}}, "upstream 404: gone (code 404)"),
    ],
)
def test_a_body_without_the_envelope_is_quoted_briefly(body: object, expected: str) -> None:
    assert str(classify(404, body, {})) == expected


def test_a_long_body_is_cut_short_in_the_message() -> None:
    error = classify(502, "x" * 10_000, {})
    assert error is not None
    assert len(str(error)) < 400
    assert str(error).endswith("...")
