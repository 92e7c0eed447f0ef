"""Validation of OpenAI batch JSONL, line by line, as a stream.

Blank lines are allowed and skipped; a UTF-8 byte order mark at the start of the file is
skipped too (editors on Windows add one). Everything else that is not a valid request
line is a fault that names its line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from jobs.constants import ENDPOINTS
from jobs.errors import InputError, LineFault

MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_FAULTS_SHOWN = 20
MAX_CUSTOM_ID_CHARS = 512
BOM = b"\xef\xbb\xbf"

LineSource = Callable[[], Iterable[bytes]]


@dataclass(frozen=True, slots=True)
class RequestLine:
    """One valid input line."""

    line: int
    custom_id: str
    url: str
    model: str
    body: dict[str, Any]


@dataclass
class Scan:
    """What a validation pass learned about a whole file."""

    requests: int = 0
    endpoint: str | None = None
    sha256: str = ""
    faults: list[LineFault] = field(default_factory=list)
    more_faults: int = 0


def _lines(source: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(source, start=1):
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        yield number, raw


def parse_line(number: int, raw: bytes, endpoint: str | None) -> RequestLine | LineFault | None:
    """A request, a fault, or None for a blank line."""
    if len(raw) > MAX_LINE_BYTES:
        return LineFault(
            number, "line_too_long", f"line is {len(raw)} bytes, over {MAX_LINE_BYTES}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LineFault(number, "invalid_encoding", f"not valid UTF-8 at byte {exc.start}")
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return LineFault(number, "invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})")
    if not isinstance(obj, dict):
        return LineFault(number, "invalid_request", f"expected a JSON object, got {_kind(obj)}")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineFault(number, "missing_custom_id", "'custom_id' must be a non-empty string")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        return LineFault(
            number, "invalid_custom_id", f"'custom_id' is longer than {MAX_CUSTOM_ID_CHARS} chars"
        )
    if obj.get("method") != "POST":
        return LineFault(
            number, "invalid_method", f"'method' must be \"POST\", got {obj.get('method')!r}"
        )
    url = obj.get("url")
    if url not in ENDPOINTS:
        return LineFault(
            number, "invalid_url", f"'url' {url!r} is not one of {', '.join(ENDPOINTS)}"
        )
    if endpoint is not None and url != endpoint:
        return LineFault(
            number, "mismatched_url", f"'url' {url!r} differs from the batch endpoint {endpoint!r}"
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        return LineFault(number, "invalid_body", f"'body' must be a JSON object, got {_kind(body)}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return LineFault(number, "missing_model", "'body.model' must be a non-empty string")
    return RequestLine(number, custom_id, url, model, body)


def scan(source: Iterable[bytes], *, endpoint: str | None = None) -> Scan:
    """Validate every line; keeps only the custom_ids, so memory does not grow with bodies."""
    result = Scan(endpoint=endpoint)
    digest = hashlib.sha256()
    first_seen: dict[str, int] = {}

    def fault(f: LineFault) -> None:
        if len(result.faults) < MAX_FAULTS_SHOWN:
            result.faults.append(f)
        else:
            result.more_faults += 1

    for number, raw in _lines(source):
        digest.update(raw)
        parsed = parse_line(number, raw, result.endpoint)
        if parsed is None:
            continue
        if isinstance(parsed, LineFault):
            fault(parsed)
            continue
        if parsed.custom_id in first_seen:
            fault(
                LineFault(
                    number,
                    "duplicate_custom_id",
                    f"duplicate custom_id {parsed.custom_id!r} (first on line "
                    f"{first_seen[parsed.custom_id]})",
                )
            )
            continue
        first_seen[parsed.custom_id] = number
        result.endpoint = result.endpoint or parsed.url
        result.requests += 1
    result.sha256 = digest.hexdigest()
    if not result.requests and not result.faults:
        fault(LineFault(0, "empty_file", "the file holds no requests"))
    return result


def check(source: Iterable[bytes], *, name: str, endpoint: str | None = None) -> Scan:
    """Scan, raising InputError (every fault named, by line) if any line is bad."""
    result = scan(source, endpoint=endpoint)
    if result.faults:
        raise InputError(name, result.faults, result.more_faults)
    return result


def requests(source: Iterable[bytes], endpoint: str) -> Iterator[RequestLine]:
    """The requests of a file that `check` passed."""
    for number, raw in _lines(source):
        parsed = parse_line(number, raw, endpoint)
        if isinstance(parsed, RequestLine):
            yield parsed
        elif parsed is not None:  # the file changed since it was checked
            raise InputError("input", [parsed])


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )
