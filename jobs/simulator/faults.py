"""Faults on demand: directives written into a prompt, and faults drawn at random rates.

Directive syntax (anywhere in the prompt text, values end at whitespace):

    #sim:status=CODE         always answer CODE (400..599) in OpenAI's error envelope
    #sim:code=NAME           the envelope's `code` for a status directive (e.g. invalid_request)
    #sim:fail=KIND*N         the first N attempts of this exact body fail with KIND, then succeed;
                             KIND is 429, 500, 503, reset, malformed or hang; `*N` defaults to 1
    #sim:latency_ms=N        this request's latency, replacing latency_ms and jitter_ms
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum

from jobs.simulator.answers import ApiError
from jobs.simulator.config import SimConfig

DIRECTIVE_MARK = "#sim:"
_DIRECTIVE = re.compile(r"#sim:([a-z_]+)=(\S*)")


class Fault(StrEnum):
    TOO_MANY_REQUESTS = "429"
    SERVER_ERROR = "500"
    UNAVAILABLE = "503"
    RESET = "reset"
    MALFORMED = "malformed"
    HANG = "hang"


# The order in which the random rates divide the unit interval of one draw.
_RATE_FIELDS = (
    (Fault.TOO_MANY_REQUESTS, "rate_429"),
    (Fault.SERVER_ERROR, "rate_500"),
    (Fault.UNAVAILABLE, "rate_503"),
    (Fault.RESET, "rate_reset"),
    (Fault.MALFORMED, "rate_malformed"),
    (Fault.HANG, "rate_hang"),
)


@dataclass(frozen=True)
class Directives:
    status: int | None = None
    code: str | None = None
    fail: Fault | None = None
    fail_times: int = 0
    latency_ms: float | None = None


NO_DIRECTIVES = Directives()


def _bad_directive(text: str) -> ApiError:
    return ApiError(400, f"Bad simulator directive: {text}", code="invalid_sim_directive")


def parse_directives(text: str) -> Directives:
    """The directives in a prompt; a malformed one is a 400 so a test's typo shows at once."""
    if DIRECTIVE_MARK not in text:
        return NO_DIRECTIVES
    found: dict[str, object] = {}
    for match in _DIRECTIVE.finditer(text):
        name, value = match.groups()
        try:
            if name == "status":
                status = int(value)
                if not 400 <= status <= 599:
                    raise ValueError(value)
                found["status"] = status
            elif name == "code":
                found["code"] = value
            elif name == "fail":
                kind, _, times = value.partition("*")
                found["fail"] = Fault(kind)
                found["fail_times"] = int(times) if times else 1
            elif name == "latency_ms":
                latency_ms = float(value)
                if not 0 <= latency_ms < float("inf"):
                    raise ValueError(value)
                found["latency_ms"] = latency_ms
            else:
                raise ValueError(name)
        except ValueError:
            raise _bad_directive(match.group(0)) from None
    return Directives(**found)  # type: ignore[arg-type]


def draw_fault(config: SimConfig, draw: float) -> Fault | None:
    """The random fault for a uniform draw in [0, 1), or None for a normal answer."""
    threshold = 0.0
    for fault, field_name in _RATE_FIELDS:
        threshold += getattr(config, field_name)
        if draw < threshold:
            return fault
    return None


def status_error(status: int, code: str | None = None) -> ApiError:
    """OpenAI's envelope for an error status, as CometAPI forwards it."""
    if status == 429:
        return ApiError(
            429,
            "Rate limit reached for requests (simulated). Please try again later.",
            error_type="requests",
            code=code or "rate_limit_exceeded",
        )
    if status == 503:
        return ApiError(
            503,
            "The server is overloaded or not ready yet (simulated).",
            error_type="server_error",
            code=code or "service_unavailable",
        )
    if status >= 500:
        return ApiError(
            status,
            "The server had an error while processing your request (simulated).",
            error_type="server_error",
            code=code or "server_error",
        )
    return ApiError(status, f"Simulated error {status}.", code=code)


def retry_headers(retry_after_s: float) -> dict[str, str]:
    # Retry-After only carries whole seconds; retry-after-ms keeps the precise value.
    return {
        "Retry-After": str(math.ceil(retry_after_s)),
        "retry-after-ms": str(round(retry_after_s * 1000)),
    }
