"""The errors of promptq's domain and producer side.

PromptqError
├── InputError            a submitted file or record is invalid (carries every fault found)
├── InvalidRequestError   a request parameter is invalid (names the parameter)
│   └── TooLargeError     an upload is over the configured size limit
├── UnauthorizedError     no API key, or one that is unknown or revoked
├── NotFoundError         no such batch, file or key (or not visible to this owner)
├── ConflictError         the object is in a state that forbids the operation
└── ServiceError          a service promptq needs (Redis, database, simulator) is unavailable
"""

from __future__ import annotations

from dataclasses import dataclass


class PromptqError(Exception):
    """Base of every error promptq raises on purpose."""


@dataclass(frozen=True)
class LineFault:
    """One fault in an input file: where (1-based line) and what."""

    line: int
    code: str
    message: str

    def __str__(self) -> str:
        # line 0: a fault of the whole input (empty file, no such glob), not of one line
        return f"line {self.line}: {self.message}" if self.line else self.message


class InputError(PromptqError):
    """An input file (or inline request) is invalid; nothing was written or queued."""

    def __init__(self, source: str, faults: list[LineFault], more: int = 0) -> None:
        self.source = source
        self.faults = faults
        self.more = more
        lines = [f"{source}: {fault}" for fault in faults]
        if more:
            lines.append(f"{source}: ... and {more} more faulty line(s)")
        super().__init__("\n".join(lines) if lines else f"{source}: invalid input")


class InvalidRequestError(PromptqError):
    """A request parameter is invalid; `param` names it, `code` is a stable machine name."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        self.param = param
        self.code = code
        super().__init__(message)


class TooLargeError(InvalidRequestError):
    """An upload is over the configured size limit."""


class UnauthorizedError(PromptqError):
    """No API key was given, or the key is unknown or revoked."""


class NotFoundError(PromptqError):
    """No such object, or not visible to the caller."""


class ConflictError(PromptqError):
    """The object's state forbids the operation."""


class ServiceError(PromptqError):
    """A service promptq depends on could not be reached or started."""
