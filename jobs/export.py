"""Results in other shapes than OpenAI's JSONL: a CSV table, or a tree of answer files."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from jobs.errors import InputError, LineFault
from jobs.models import TOKEN_FIELDS, Request, RequestStatus

CSV_COLUMNS = (
    "custom_id",
    "status",
    "status_code",
    "answer",
    *TOKEN_FIELDS,
    "cost_usd",
    "error_code",
    "error_message",
    "reused_from",
)
ANSWER_SUFFIX = ".answer.md"
ERRORS_FILE = "_errors.jsonl"


def answer_text(body: dict[str, Any]) -> str:
    """The model's text in a Responses, Chat Completions or Embeddings body."""
    if isinstance(body.get("output_text"), str):
        return str(body["output_text"])
    if "output" in body:
        return "".join(
            part.get("text", "")
            for item in body["output"]
            if item.get("type") == "message"
            for part in item.get("content", [])
        )
    if "choices" in body:
        return "".join(str(c.get("message", {}).get("content") or "") for c in body["choices"])
    if "data" in body:  # embeddings: the vectors, as JSON
        return json.dumps([d.get("embedding") for d in body["data"]])
    return ""


def _rows(session: Session, batch_id: str) -> Iterator[Any]:
    stmt = (
        select(Request)
        .where(col(Request.batch_id) == batch_id)
        .order_by(col(Request.line))
        .execution_options(yield_per=1000)
    )
    yield from session.scalars(stmt)


def _answer(row: Request) -> str:
    if row.status != RequestStatus.SUCCEEDED or not row.response_body:
        return ""
    return answer_text(json.loads(row.response_body))


def write_csv(session: Session, batch_id: str, path: Path) -> int:
    """One row per request, answers and usage side by side; returns the rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in _rows(session, batch_id):
            values = {name: getattr(row, name, "") for name in CSV_COLUMNS}
            values["answer"] = _answer(row)
            writer.writerow(["" if values[c] is None else values[c] for c in CSV_COLUMNS])
            count += 1
    return count


def write_tree(session: Session, batch_id: str, root: Path) -> tuple[int, int]:
    """One answer file per input file, mirroring the tree (`path#n` chunks joined in order);
    what did not succeed goes to `_errors.jsonl`. Returns (files, errors)."""
    root = root.resolve()
    answers: dict[Path, list[str]] = {}
    errors: list[dict[str, Any]] = []
    for row in _rows(session, batch_id):
        relative = row.custom_id.rsplit("#", 1)[0] if "#" in row.custom_id else row.custom_id
        target = (root / (relative + ANSWER_SUFFIX)).resolve()
        if not target.is_relative_to(root):
            raise InputError(
                row.custom_id, [LineFault(row.line, "unsafe_path", "custom_id leaves the tree")]
            )
        if row.status == RequestStatus.SUCCEEDED:
            answers.setdefault(target, []).append(_answer(row))
        else:
            errors.append(
                {
                    "custom_id": row.custom_id,
                    "status": row.status,
                    "code": row.error_code,
                    "message": row.error_message,
                }
            )
    for target, parts in answers.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n\n".join(parts), encoding="utf-8")
    root.mkdir(parents=True, exist_ok=True)
    with (root / ERRORS_FILE).open("w", encoding="utf-8") as f:
        for error in errors:
            f.write(json.dumps(error) + "\n")
    return len(answers), len(errors)
