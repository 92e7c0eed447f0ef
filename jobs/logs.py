"""Logging for promptq's long-running processes: text or JSON lines, secrets scrubbed from both.

The JSON formatter is written here rather than taken from python-json-logger: it is a
few lines, and its fields (`ts`, `level`, `logger`, `message`, `batch_id`, `request_id`,
`exception`) are promptq's contract, not a library's defaults.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any

from pydantic import SecretStr

from jobs.settings import Settings, get_settings

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# set by callers with `extra={"batch_id": ..., "request_id": ...}`
CONTEXT_FIELDS = ("batch_id", "request_id")
REDACTED = "[redacted]"
# A shorter configured secret would blank out ordinary words wherever they appear.
MIN_SECRET_CHARS = 8
SECRET_PATTERNS = (
    # an Authorization header's credentials (RFC 6750 token characters)
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*"), rf"\1{REDACTED}"),
    # OpenAI-style keys, which CometAPI's follow
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), REDACTED),
    # a password in a URL (database, Redis): scheme://user:PASSWORD@host
    (re.compile(r"(://[^/\s:@]*:)[^/\s@]+@"), rf"\1{REDACTED}@"),
)


class Scrubber(logging.Filter):
    """Replaces secrets in a record's message, exception and stack before any formatter runs."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # longest first, so a secret containing another is replaced whole
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len)[::-1]
        self._exceptions = logging.Formatter()

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        for pattern, replacement in SECRET_PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - logging's own error report would print the raw args
            message = f"{record.msg} [its arguments did not format]"
        record.msg, record.args = self.scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exceptions.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


def secret_values(settings: Settings) -> list[str]:
    """Every secret setting's value: the upstream key and any other `SecretStr`."""
    values = (getattr(settings, name) for name in type(settings).model_fields)
    return [value.get_secret_value() for value in values if isinstance(value, SecretStr)]


def configure_logging(
    level: str | int, fmt: str | None = None, stream: IO[str] | None = None
) -> None:
    """Every record (promptq's, Celery's, uvicorn's, warnings, a crash's) to stderr in `fmt`.

    `fmt` defaults to PROMPTQ_LOG_FORMAT; handlers set up before are replaced.
    """
    settings = get_settings()
    fmt = fmt or settings.log_format
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(Scrubber(secret_values(settings)))
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level, handlers=[handler], force=True
    )
    # warnings and a crash's traceback would otherwise be raw (and unscrubbed) lines
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("promptq").critical("uncaught exception", exc_info=(exc_type, exc, tb))
