"""The errors of promptq's execution side.

    WorkerError
    └── UpstreamError                 an upstream call did not produce a usable answer
        ├── RetryableUpstreamError    worth another try, after `retry_after_s` if the upstream said
        │   └── RateLimitedError      a 429: the whole cluster pauses for `retry_after_s`
        └── PermanentUpstreamError    never retried (400/401/403/404/422, invalid_request 500)

Tasks catch these two branches only; they never look at status codes.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error the worker side raises on purpose."""


class UpstreamError(WorkerError):
    """An upstream call failed; `status_code` is None when no HTTP answer arrived."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        body: object | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.body = body
        self.request_id = request_id


class RetryableUpstreamError(UpstreamError):
    """A transient failure: try again, after `retry_after_s` when the upstream named a wait."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s


class RateLimitedError(RetryableUpstreamError):
    """The upstream answered 429: every worker pauses for this upstream."""


class PermanentUpstreamError(UpstreamError):
    """The upstream refused the request itself: retrying cannot help."""
