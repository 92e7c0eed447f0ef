"""Requests built from a prompt template over files or records, instead of a JSONL file.

Only `{identifier}` placeholders are replaced, so the braces of code or JSON in a template
or a file stay as they are. Files: `{text}`, `{path}`, `{name}`; a file too long for one
request is split at line ends into ordered chunks (`path#1`, `path#2`, ...) by a token
estimate. Records (CSV or JSONL): one request per record, `{field}` for each field.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.errors import InputError, LineFault

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
FILE_FIELDS = frozenset({"text", "path", "name"})
CHARS_PER_TOKEN = 4
BINARY_SNIFF_BYTES = 8192
# Input tokens one request may carry, by model; the rest of the context is the answer's.
CONTEXT_INPUT_TOKENS = {"o1-mini": 60_000, "o1": 100_000, "o3-mini": 100_000}
DEFAULT_INPUT_TOKENS = 60_000


@dataclass(frozen=True)
class Template:
    text: str
    source: str

    @property
    def fields(self) -> set[str]:
        return set(PLACEHOLDER.findall(self.text))

    def render(self, values: dict[str, str]) -> str:
        return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), self.text)


def load_template(path: Path) -> Template:
    try:
        return Template(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(str(path), [LineFault(0, "unreadable_template", str(exc))]) from exc


def request_body(endpoint: str, model: str, prompt: str) -> dict[str, Any]:
    if endpoint == "/v1/chat/completions":
        return {"model": model, "messages": [{"role": "user", "content": prompt}]}
    return {"model": model, "input": prompt}


def input_budget_tokens(model: str) -> int:
    base = re.sub(r"-\d{4}-\d{2}-\d{2}$", "", model)
    return CONTEXT_INPUT_TOKENS.get(base, DEFAULT_INPUT_TOKENS)


def expand_globs(patterns: Iterable[str], cwd: Path) -> list[Path]:
    """The files the patterns match (recursive `**` allowed), sorted, each once."""
    found: dict[Path, None] = {}
    faults = []
    for pattern in patterns:
        matches = sorted(
            Path(p) for p in glob.glob(pattern, root_dir=cwd, recursive=True) if (cwd / p).is_file()
        )
        if not matches:
            faults.append(LineFault(0, "no_files", f"--files {pattern!r} matches no file"))
        for m in matches:
            found.setdefault(m, None)
    if faults:
        raise InputError("--files", faults)
    return list(found)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if b"\0" in raw[:BINARY_SNIFF_BYTES]:
        raise ValueError("binary file (NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from exc


def chunks(text: str, max_tokens: int) -> list[str]:
    """Split at line ends into pieces of at most `max_tokens` (estimated), in order."""
    max_chars = max(1, max_tokens * CHARS_PER_TOKEN)
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:  # a single overlong line is cut where it must be
            if current:
                pieces.append("".join(current))
                current, size = [], 0
            pieces.append(line[:max_chars])
            line = line[max_chars:]
        if size + len(line) > max_chars and current:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        pieces.append("".join(current))
    return pieces


def file_lines(
    template: Template, files: list[Path], *, cwd: Path, model: str, endpoint: str
) -> list[bytes]:
    """Batch JSONL lines, one per file (or chunk); refuses binary and unreadable files."""
    unknown = template.fields - FILE_FIELDS
    if unknown:
        raise InputError(
            template.source,
            [
                LineFault(
                    0,
                    "unknown_placeholder",
                    f"unknown placeholder(s) {sorted(unknown)}; use {{text}}, {{path}}, {{name}}",
                )
            ],
        )
    overhead = math.ceil(len(template.render({"text": ""})) / CHARS_PER_TOKEN)
    budget = max(1, input_budget_tokens(model) - overhead)
    lines: list[bytes] = []
    faults: list[LineFault] = []
    for path in files:
        try:
            text = _read_text(cwd / path)
        except (OSError, ValueError) as exc:
            faults.append(LineFault(0, "unreadable_file", f"{path}: {exc}"))
            continue
        pieces = chunks(text, budget) if "text" in template.fields else [text]
        for n, piece in enumerate(pieces, start=1):
            custom_id = str(path) if len(pieces) == 1 else f"{path}#{n}"
            prompt = template.render({"text": piece, "path": str(path), "name": path.name})
            lines.append(_line(custom_id, endpoint, request_body(endpoint, model, prompt)))
    if faults:
        raise InputError("--files", faults)
    return lines


def _records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, record) from a CSV file with a header row, or a JSONL file."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            for record in reader:
                yield reader.line_num, record
        return
    with path.open(encoding="utf-8-sig") as f:
        for number, text in enumerate(f, start=1):
            if text.strip():
                try:
                    yield number, json.loads(text)
                except json.JSONDecodeError as exc:
                    yield number, exc


def record_lines(template: Template, path: Path, *, model: str, endpoint: str) -> list[bytes]:
    """Batch JSONL lines, one per record; custom_id is the record's `custom_id` or `id`
    field, else FILE:LINE. Every record must have every placeholder's field."""
    lines: list[bytes] = []
    faults: list[LineFault] = []
    seen: set[str] = set()
    try:
        for number, record in _records(path):
            if not isinstance(record, dict):
                what = (
                    f"invalid JSON: {record}"
                    if isinstance(record, Exception)
                    else ("a record must be a JSON object")
                )
                faults.append(LineFault(number, "invalid_record", what))
                continue
            values = {k: "" if v is None else str(v) for k, v in record.items()}
            missing = sorted(template.fields - values.keys())
            if missing:
                faults.append(LineFault(number, "missing_field", f"no field(s) {missing}"))
                continue
            custom_id = values.get("custom_id") or values.get("id") or f"{path.name}:{number}"
            if custom_id in seen:
                faults.append(
                    LineFault(number, "duplicate_custom_id", f"duplicate custom_id {custom_id!r}")
                )
                continue
            seen.add(custom_id)
            prompt = template.render(values)
            lines.append(_line(custom_id, endpoint, request_body(endpoint, model, prompt)))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(str(path), [LineFault(0, "unreadable_records", str(exc))]) from exc
    if faults:
        raise InputError(str(path), faults[:20], max(0, len(faults) - 20))
    return lines


def _line(custom_id: str, endpoint: str, body: dict[str, Any]) -> bytes:
    obj = {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()
